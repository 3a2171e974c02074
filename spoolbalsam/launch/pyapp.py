"""Running Python apps' code — ``run()`` and the hooks — in a child process.

A launcher never imports user code: a bug, a crash or a ``sys.exit`` in an app can only end
its own child process.  This module is the launcher's side (``run_argv``,
``start_hook``/``run_hook``, ``methods_of``, ``result_fields``), which reads app files only
with ``ast``.  The child's side is ``spoolbalsam.api.child``, started by command line
(``python -m spoolbalsam.api.child run|hook ...``), which imports ``apps/NAME.py``
(written by ``ApplicationDefinition.sync()``).

``run``: the child reads the job's record (its path, or its id located in the spool), builds
the app with ``self.job`` = a read-only ``JobView`` of the record, calls
``run(**parameters)`` in the job's workdir and writes ``job.result.json`` there (rank 0
only under MPI)::

    {"job": ID, "attempt": N, "return_value": VALUE}          (exit 0; repr if not JSON,
                                                               then also "repr": true)
    {"job": ID, "attempt": N, "exception": "Type: message",
     "traceback": "..."}                                      (exit 1, traceback in job.out)

``hook``: the child reads the record from a file, calls ``preprocess``/``postprocess``/
``handle_error``/``handle_timeout`` in the workdir with a ``JobView`` whose ``state``,
``data`` and ``state_data`` may be set, and writes ``{"state", "data", "state_data",
"error"}`` to a result file; ``state``/``data`` are None when the hook did not set/change
them.  Hook output is appended to ``WORKDIR/hooks.log``.  Any exception (or a timeout, or a
child that dies) becomes ``error``; nothing is ever raised to the launcher.
"""
from __future__ import annotations

import ast
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from ..spool import fsio

RESULT_FILE = "job.result.json"
HOOK_LOG = "hooks.log"
HOOKS = ("preprocess", "postprocess", "handle_error", "handle_timeout")


# ---- the launcher's side ----------------------------------------------------------------------
def preamble_for(app) -> str | None:
    """The app's shell preamble as one shell string (a list is joined with ``&&``)."""
    pre = getattr(app, "shell_preamble", None)
    if isinstance(pre, (list, tuple)):
        pre = " && ".join(str(p) for p in pre)
    return pre or None


def run_argv(site_root: Path, app, rec: dict) -> list[str]:
    """argv of the process that runs a ``run()`` app's job (in its workdir, as ``cwd``)."""
    job = rec.get("_path") or rec["id"]
    argv = [app.python_exe or sys.executable, "-m", "spoolbalsam.api.child", "run",
            str(site_root), app.name, str(job)]
    pre = preamble_for(app)
    if pre:
        argv = ["/bin/bash", "-c", f'{pre}\nexec "$@"', "spool-pyapp", *argv]
    return argv


_METHODS: dict[str, tuple[int, tuple[str, ...]]] = {}


def methods_of(site_root: Path, app) -> tuple[str, ...]:
    """The methods (``run`` and hooks) the app's class defines itself, read from
    ``SPOOL_METHODS`` in ``apps/NAME.py`` with ``ast`` (no user code runs).  () for apps
    without ``python_class``."""
    if not getattr(app, "python_class", None):
        return ()
    path = Path(site_root) / "apps" / f"{app.name}.py"
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return ()
    cached = _METHODS.get(str(path))
    if cached and cached[0] == mtime:
        return cached[1]
    found: tuple[str, ...] = ()
    try:
        tree = ast.parse(path.read_bytes())
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id == "SPOOL_METHODS"):
                found = tuple(str(m) for m in ast.literal_eval(node.value))
    except (SyntaxError, ValueError, OSError):
        found = ()
    _METHODS[str(path)] = (mtime, found)
    return found


def has_hook(site_root: Path, app, hook: str) -> bool:
    """True if the app's class defines ``hook`` itself (else the launcher's default applies)."""
    return hook in methods_of(site_root, app)


def is_run_app(site_root: Path, app) -> bool:
    return "run" in methods_of(site_root, app)


def read_result(workdir: Path, rec: dict) -> dict | None:
    """``job.result.json`` of ``rec``'s attempt, or None (absent, another job's, older)."""
    try:
        # written atomically by the job before it exited: absent means none, no retry
        data = fsio.read_json(Path(workdir) / RESULT_FILE, retry=False)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("job") != rec.get("id"):
        return None
    if data.get("attempt", 1) != rec.get("attempt", 1):
        return None
    return data


def result_fields(workdir: Path, rec: dict) -> dict:
    """Event fields carrying a run() app's outcome: ``{"result": {...}}``,
    ``{"exception": {...}}`` or ``{}`` (merge them into the RUN_DONE/RUN_ERROR event)."""
    data = read_result(workdir, rec)
    if data is None:
        return {}
    if "return_value" in data:
        return {"result": data}
    return {"exception": {k: data[k] for k in ("exception", "traceback") if k in data}}


def _env(site_root: Path, app, rec: dict, workdir: Path) -> dict:
    env = dict(os.environ)
    env.update(getattr(app, "environment_variables", None) or {})
    env.update(SPOOL_SITE=str(site_root), SPOOL_JOB_ID=rec["id"], SPOOL_WORKDIR=str(workdir),
               SPOOL_ATTEMPT=str(rec.get("attempt", 1)))
    return env


class HookRun:
    """A hook running in its child.  ``poll()`` -> result dict or None; ``wait(timeout)``."""

    def __init__(self, hook: str, proc: subprocess.Popen | None, infile: Path | None,
                 outfile: Path | None, immediate: dict | None = None):
        self.hook, self.proc, self.infile, self.outfile = hook, proc, infile, outfile
        self.result = immediate

    def poll(self) -> dict | None:
        if self.result is not None:
            return self.result
        rc = self.proc.poll()
        if rc is None:
            return None
        return self._collect(rc)

    def wait(self, timeout: float | None) -> dict:
        if self.result is not None:
            return self.result
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.expire(timeout)
        return self._collect(rc)

    def expire(self, timeout: float) -> dict:
        """Kill a hook that overran ``timeout`` seconds; its result says so."""
        if self.result is not None:
            return self.result
        if self.proc is not None and self.proc.poll() is not None:   # it just made it
            return self._collect(self.proc.returncode)
        self.kill()
        return self._finish({"state": None, "data": None,
                             "error": f"hook {self.hook} timed out after {timeout:g} s"})

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def _collect(self, rc: int) -> dict:
        try:
            res = fsio.read_json(self.outfile)
        except (FileNotFoundError, ValueError):
            # a child killed while it wrote its result leaves that write's temp behind
            for name in os.listdir(self.outfile.parent):
                if name.startswith(f".{self.outfile.name}."):
                    fsio.unlink_quiet(self.outfile.parent / name)
            if rc < 0:
                # Killed by a signal from outside (the OOM killer, an operator): the hook
                # said nothing, so its job is not judged by it (see ``Launcher._after_hook``).
                res = {"state": None, "data": None, "error": None,
                       "killed": f"signal {signal.Signals(-rc).name}"}
            else:
                res = {"state": None, "data": None,
                       "error": f"hook {self.hook} ended with exit code {rc} and no result "
                                f"(see {HOOK_LOG} in the workdir)"}
        return self._finish(res)

    def _finish(self, res: dict) -> dict:
        for p in (self.infile, self.outfile):
            if p is not None:
                fsio.unlink_quiet(p)
        killed = res.get("killed")
        res = {"state": res.get("state"), "data": res.get("data"),
               "state_data": res.get("state_data"), "error": res.get("error")}
        if killed:
            res["killed"] = killed              # by a signal from outside: no verdict
        self.result = res
        return res


HOOK_FILE_PREFIX = ".spool-hook."


def clear_hook_files(workdir: Path) -> int:
    """Remove the files of hooks that can no longer be running in ``workdir`` (their
    launcher is dead and the job revoked): the record handed to the hook, its result, and
    the temp of a result being written.  How many were removed."""
    try:
        names = [n for n in os.listdir(workdir) if n.startswith(HOOK_FILE_PREFIX)
                 or n.startswith("." + HOOK_FILE_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for n in names:
        fsio.unlink_quiet(Path(workdir) / n)
    return len(names)


def start_hook(site_root: Path, app, rec: dict, hook: str) -> HookRun:
    """Start ``hook`` of ``rec``'s app in a child (in the job's workdir); never raises."""
    if hook not in HOOKS:
        return HookRun(hook, None, None, None, {"state": None, "data": None, "state_data": None,
                                                "error": f"unknown hook {hook!r}"})
    try:
        site_root = Path(site_root)
        workdir = site_root / "data" / rec["workdir"]
        workdir.mkdir(parents=True, exist_ok=True)
        tag = f"{HOOK_FILE_PREFIX}{hook}.{os.getpid()}.{secrets.token_hex(4)}"
        infile, outfile = workdir / f"{tag}.in.json", workdir / f"{tag}.out.json"
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        fsio.write_atomic(infile, orjson.dumps(clean), durable=False)
        argv = [app.python_exe or sys.executable, "-m", "spoolbalsam.api.child", "hook",
                str(site_root), app.name, hook, str(infile), str(outfile)]
        with open(workdir / HOOK_LOG, "ab") as log:
            proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=_env(site_root, app, rec, workdir),
                                    start_new_session=True)
        return HookRun(hook, proc, infile, outfile)
    except Exception as e:  # the launcher must never see an exception from a hook
        return HookRun(hook, None, None, None, {"state": None, "data": None, "state_data": None,
                                                "error": f"hook {hook} could not start: {e}"})


def run_hook(site_root: Path, app, rec: dict, hook: str, timeout: float = 300.0) -> dict:
    """Run ``hook`` to its end: ``{"state", "data", "state_data", "error"}``; never raises."""
    return start_hook(site_root, app, rec, hook).wait(timeout)
