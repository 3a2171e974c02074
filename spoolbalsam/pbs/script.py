"""Batch job scripts: render ``templates/job-<machine>.sh.j2`` with precomputed values.

Templates are logic-free: every value is computed and checked here, by small
pure functions with their own tests, and the template only substitutes. The
only filter is ``sh`` (``shlex.quote``) for values that land in shell commands.

Template context (what ``render_job_script`` passes)
----------------------------------------------------
=====================  ================================================================
``job_name``           ``qlaunch00042`` (letters, digits, ``_ . -``; first a letter)
``project``/``queue``  scheduler account and queue (required for PBS machines)
``num_nodes``          int >= 1
``wall_time_min``      int >= 1; ``walltime`` is the same as ``H:MM:SS`` (90 -> ``1:30:00``)
``job_mode``           ``mpi`` | ``serial``
``site_path``          absolute path of the site; the script ``cd``s there, exports SPOOL_SITE
``launcher_cmd``       one shell command, already shell-quoted by the caller
``filesystems``        PBS ``-l filesystems=`` (Aurora ``home:flare``, Polaris ``home:grand:eagle``)
``optional_params``    ``{key: value}`` extra directives -> ``sched_directives`` lines
``python_env_activate`` one optional shell line run before the launcher
``exit_code_file``     where the script records the launcher's exit code (``.ec``)
``exit_code_tmp``      dot-temp beside it; the record is written there then renamed
``output_file``        ``<script stem>.out`` (Slurm: also a ``#SBATCH -o`` line when unquoted-safe)
``sched_directives``   precomputed extra directive lines (Slurm ``-A``/``-p``/``-o``, optional_params)
=====================  ================================================================

Every script puts all scheduler directives before the first command (PBS and
Slurm stop reading directives there), ``cd``s to the site, runs the launcher in
the background and waits for it (so a SIGTERM from the scheduler is forwarded
and the exit code still recorded), writes ``<script>.ec`` atomically and exits
with the launcher's code. Directives cannot be quoted, so a path goes into one
only when it needs no quoting; backends always pass ``-o`` on the command line.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Mapping

from spoolbalsam.paths import TEMPLATES_DIR

# machine -> (template file, scheduler flavour, defaults)
MACHINE_TEMPLATES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "aurora": ("job-aurora.sh.j2", "pbs", {"filesystems": "home:flare"}),
    "polaris": ("job-polaris.sh.j2", "pbs", {"filesystems": "home:grand:eagle"}),
    "slurm": ("job-slurm.sh.j2", "slurm", {}),
    "local": ("job-local.sh.j2", "local", {}),
}
DIRECTIVE_PREFIX = {"pbs": "#PBS", "slurm": "#SBATCH", "local": None}

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,235}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.@:+/=-]+$")
_KEY_RE = re.compile(r"^-{0,2}[A-Za-z0-9][A-Za-z0-9_.-]*$")


def walltime_hms(minutes: int) -> str:
    """Minutes -> ``H:MM:SS`` for PBS/Slurm: 90 -> ``1:30:00``, 1440 -> ``24:00:00``."""
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise ValueError(f"wall time must be whole minutes (int), not {minutes!r}")
    if minutes < 1:
        raise ValueError(f"wall time must be at least 1 minute, not {minutes}")
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def check_token(what: str, value: Any, *, required: bool = True) -> str | None:
    """A value that goes into a directive verbatim: no spaces, quotes or ``#``."""
    if value is None or value == "":
        if required:
            raise ValueError(f"{what} is required")
        return None
    text = str(value)
    if not _TOKEN_RE.match(text):
        raise ValueError(f"{what} {text!r} cannot go into a batch directive "
                         "(allowed: letters, digits and _ . @ : + / = -)")
    return text


def directive_lines(scheduler: str, params: Mapping[str, Any] | None) -> list[str]:
    """``optional_params`` as directive lines.

    PBS: ``{"mig_count": 2}`` -> ``#PBS -l mig_count=2``; a key starting with ``-`` is an
    option: ``{"-m": "n"}`` -> ``#PBS -m n``. Slurm: ``{"qos": "debug"}`` -> ``#SBATCH --qos=debug``;
    ``{"-C": "gpu"}`` -> ``#SBATCH -C gpu``. Local scripts have no directives: params must be empty.
    """
    lines: list[str] = []
    for key, value in (params or {}).items():
        if not _KEY_RE.match(str(key)):
            raise ValueError(f"optional param name {key!r} is not a directive name")
        val = "" if value is None else str(value)
        if val and not _TOKEN_RE.match(val):
            raise ValueError(f"optional param {key}={val!r} cannot go into a batch directive")
        if scheduler == "pbs":
            lines.append(f"#PBS {key} {val}".rstrip() if key.startswith("-")
                         else f"#PBS -l {key}={val}")
        elif scheduler == "slurm":
            if key.startswith("--") or not key.startswith("-"):
                name = key.lstrip("-")
                lines.append(f"#SBATCH --{name}={val}" if val else f"#SBATCH --{name}")
            else:
                lines.append(f"#SBATCH {key} {val}".rstrip())
        elif scheduler == "local":
            raise ValueError("the local backend takes no optional batch params")
        else:
            raise ValueError(f"unknown scheduler flavour {scheduler!r}")
    return lines


def _one_line(what: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must be a single line")
    return text


def _resolve_template(machine_template: str) -> tuple[str, str, dict[str, Any]]:
    key = machine_template.strip()
    if key in MACHINE_TEMPLATES:
        return MACHINE_TEMPLATES[key]
    for name, entry in MACHINE_TEMPLATES.items():
        if key == entry[0]:
            return entry
    raise ValueError(f"no job-script template for {machine_template!r}: "
                     f"known {sorted(MACHINE_TEMPLATES)}")


def job_script_context(machine_template: str, **ctx: Any) -> dict[str, Any]:
    """The full, checked template context for ``machine_template`` (pure).

    ``script_path`` (optional) is where the script will be written; the exit-code
    file is ``<script_path stem>.ec``. Without it: ``SITE/batch/<job_name>.ec``.
    """
    _template, scheduler, defaults = _resolve_template(machine_template)
    c: dict[str, Any] = {"job_mode": "mpi", "optional_params": {}, "python_env_activate": "",
                         "queue": None, "project": None, "filesystems": None}
    c.update(defaults)
    c.update({k: v for k, v in ctx.items() if v is not None or k not in defaults})

    name = c.get("job_name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"job_name {name!r}: letters, digits, _ . - only, starting with a letter")
    nodes = c.get("num_nodes")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"num_nodes must be a positive int, not {nodes!r}")
    c["walltime"] = walltime_hms(c.get("wall_time_min"))  # type: ignore[arg-type]
    if c["job_mode"] not in ("mpi", "serial"):
        raise ValueError(f"job_mode must be 'mpi' or 'serial', not {c['job_mode']!r}")
    site = c.get("site_path")
    if not site or not os.path.isabs(str(site)):
        raise ValueError(f"site_path must be an absolute path, not {site!r}")
    c["site_path"] = str(site)
    c["launcher_cmd"] = _one_line("launcher_cmd", c.get("launcher_cmd"))
    if not c["launcher_cmd"].strip():
        raise ValueError("launcher_cmd is required")
    c["python_env_activate"] = _one_line("python_env_activate", c["python_env_activate"])

    pbs = scheduler == "pbs"
    c["project"] = check_token("project", c["project"], required=pbs)
    c["queue"] = check_token("queue", c["queue"], required=pbs)
    c["filesystems"] = check_token("filesystems", c["filesystems"], required=pbs)
    lines = []
    if scheduler == "slurm":
        if c["project"]:
            lines.append(f"#SBATCH -A {c['project']}")
        if c["queue"]:
            lines.append(f"#SBATCH -p {c['queue']}")
    script_path = c.pop("script_path", None)
    if script_path is not None:
        ec = Path(script_path).with_suffix(".ec")
    else:
        ec = Path(c["site_path"]) / "batch" / f"{name}.ec"
    out = ec.with_suffix(".out")
    c["output_file"] = str(out)
    if scheduler == "slurm" and _TOKEN_RE.match(str(out)):
        # Only when the path needs no quoting; the backend passes -o on the command line anyway.
        lines.append(f"#SBATCH -o {out}")
    c["sched_directives"] = lines + directive_lines(scheduler, c["optional_params"])
    c["exit_code_file"] = str(ec)
    c["exit_code_tmp"] = str(ec.with_name(f".{ec.name}.tmp"))
    c["scheduler"] = scheduler
    return c


def _environment(directory: Path) -> Any:
    import jinja2  # imported here: ~30 ms, only needed when a script is rendered

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory)),
                             undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["sh"] = lambda v: shlex.quote(str(v))
    return env


def render_job_script(machine_template: str, **ctx: Any) -> str:
    """Render the batch script for a machine (``aurora``, ``polaris``, ``slurm``, ``local``,
    or the template file name) with ``ctx`` (see the module docstring); returns the text.

    ``templates_dir=`` renders from another directory (a site's own copies).
    """
    templates_dir = Path(ctx.pop("templates_dir", None) or TEMPLATES_DIR)
    template, scheduler, _ = _resolve_template(machine_template)
    context = job_script_context(machine_template, **ctx)
    text: str = _environment(templates_dir).get_template(template).render(**context)
    check_directives(text, DIRECTIVE_PREFIX[scheduler])
    return text


def write_job_script(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` whole (dot-temp, fsync, rename) and make it executable."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def split_directives(text: str, prefix: str | None) -> tuple[list[str], list[str]]:
    """(directive lines, lines from the first command on) of a batch script.

    Like qsub and sbatch: the shebang, blank lines and comments before the first
    command may hold directives; the first other line ends them.
    """
    lines = text.splitlines()
    directives: list[str] = []
    for i, line in enumerate(lines):
        s = line.strip()
        if i == 0 and s.startswith("#!"):
            continue
        if not s or s.startswith("#"):
            if prefix and s.startswith(prefix + " "):
                directives.append(s)
            continue
        return directives, lines[i:]
    return directives, []


def check_directives(text: str, prefix: str | None) -> None:
    """Raise ValueError if a directive appears after the first command (it would be ignored)."""
    if not text.startswith("#!"):
        raise ValueError("job script must start with a #! line")
    if prefix is None:
        return
    _, body = split_directives(text, prefix)
    late = [ln.strip() for ln in body if ln.strip().startswith(prefix + " ")]
    if late:
        raise ValueError(f"directive after the first command would be ignored: {late[0]!r}")
