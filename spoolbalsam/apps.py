"""App definitions: ``apps/NAME.yml`` that any language can write.

::

    # apps/EchoHello.yml
    description: Say hello from a GPU tile
    command_template: echo Hello, {{ say_hello_to }}! ZE_AFFINITY_MASK=$ZE_AFFINITY_MASK
    parameters:                       # optional: undeclared template variables are required
      say_hello_to: {required: true, help: who to greet}
      greeting: {default: Hello}
    environment_variables: {OMP_PROC_BIND: spread}
    shell_preamble: module load frameworks     # string, or a list joined with &&
    cleanup_files: ["*.tmp"]                   # globs inside the workdir, removed after success
    retry: {errors: 0, timeouts: 5}            # reruns before FAILED (job.retry overrides)
    python_class: EchoHello                    # for Python apps: class in apps/NAME.py
    transfers:                                 # Balsam's transfer slots (transfer.items)
      input: {required: true, direction: in, local_path: input.dat}

Rendering: every parameter value is shell-quoted (``shlex.quote``) *before* Jinja2 sees it,
so one parameter is always one shell word and a value can never inject commands.  A
template that is plain text and ``{{ name }}`` substitutions only is rendered without
Jinja2, to the same output (most are; importing Jinja2 costs a process ~35 ms).
A command with no shell syntax left after rendering is exec'd directly (no shell started);
anything else runs under ``/bin/bash -c``.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .transfer.items import check_slots

DEFAULT_RETRY = {"errors": 0, "timeouts": 5}
APP_KEYS = {"name", "description", "command_template", "parameters", "environment_variables",
            "shell_preamble", "cleanup_files", "retry", "python_class", "python_exe",
            "transfers"}
_SHELL_CHARS = re.compile(r"[$`|&;<>(){}*?\[\]~!#\\\n'\"]")
_VAR = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")
_OPENS = re.compile(r"(?=\{\{)|\{%|\{#|\r")       # where Jinja2 syntax may start (or a CR
                                                   # it rewrites)
_JINJA_WORDS = {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in",
                "is", "if", "else", "for", "import", "with", "without", "recursive", "loop"}


class AppError(ValueError):
    """One line: ``FILE: field NAME: what is wrong``."""


@dataclass
class App:
    name: str
    command_template: str | None
    parameters: dict = field(default_factory=dict)       # name -> {required, default, help}
    environment_variables: dict = field(default_factory=dict)
    shell_preamble: str | None = None
    cleanup_files: list = field(default_factory=list)
    retry: dict = field(default_factory=lambda: dict(DEFAULT_RETRY))
    description: str = ""
    python_class: str | None = None
    python_exe: str | None = None
    transfers: dict = field(default_factory=dict)        # slot -> {direction, local_path, ...}
    source: Path | None = None
    _template: object = field(default=None, repr=False, compare=False)   # Jinja2's, or a
                                                      # list of names (simple_variables)

    @property
    def required(self) -> list[str]:
        return [k for k, v in self.parameters.items() if v.get("required")]

    def check_parameters(self, params: dict) -> str | None:
        """None if ``params`` suit this app, else a one-line reason naming the parameter."""
        missing = [k for k in self.required if k not in params]
        if missing:
            return f"missing required parameter(s) {', '.join(missing)} of app {self.name}"
        unknown = [k for k in params if k not in self.parameters]
        if unknown:
            known = ", ".join(self.parameters) or "none"
            return (f"unknown parameter(s) {', '.join(unknown)} for app {self.name} "
                    f"(it takes: {known})")
        return None

    def check_render(self, params: dict) -> None:
        """Raise what ``render(params)`` would raise (for a template of plain text and
        ``{{ name }}`` only, without rendering it: only a missing value can fail)."""
        if self._template is None:
            self.render(params)
            return
        if isinstance(self._template, list):
            for n in self._template:
                if n not in params and "default" not in self.parameters.get(n, {}):
                    raise ValueError(f"{n!r} is undefined")
            return
        self.render(params)

    def render(self, params: dict) -> str:
        """The command line for ``params`` (defaults filled in, every value shell-quoted)."""
        values = {k: v["default"] for k, v in self.parameters.items() if "default" in v}
        values.update(params)
        quoted = {k: shlex.quote(v if isinstance(v, str) else _plain(v)) for k, v in values.items()}
        if self._template is None:
            names = simple_variables(self.command_template)
            self._template = names if names is not None else _jinja().from_string(
                self.command_template)
        if isinstance(self._template, list):
            missing = [n for n in self._template if n not in quoted]
            if missing:
                raise ValueError(f"{missing[0]!r} is undefined")   # as Jinja2's StrictUndefined
            text = self.command_template                # Jinja2 drops one trailing newline
            return _VAR.sub(lambda m: quoted[m.group(1)], text[:-1] if text[-1:] == "\n" else text)
        return self._template.render(**quoted)


def _plain(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        import orjson
        return orjson.dumps(v).decode()
    return str(v)


_ENV = None


def _jinja():
    global _ENV
    if _ENV is None:
        import jinja2
        _ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                                  keep_trailing_newline=False)
    return _ENV


def argv_for(command: str) -> list[str]:
    """Exec the command directly when it has no shell syntax, else through bash."""
    if not _SHELL_CHARS.search(command):
        argv = command.split()
        if argv:
            return argv
    return ["/bin/bash", "-c", command]


def simple_variables(template: str) -> list[str] | None:
    """The variables of a template that is text and ``{{ name }}`` only, in order; None if
    it may use any other Jinja2 syntax."""
    found = list(_VAR.finditer(template))
    starts = {m.start() for m in found}
    if any(m.start() not in starts or m.group() for m in _OPENS.finditer(template)):
        return None
    names = [m.group(1) for m in found]
    return None if _JINJA_WORDS.intersection(names) else names


def template_variables(template: str) -> set[str]:
    names = simple_variables(template)
    if names is not None:
        return set(names)
    import jinja2.meta
    return set(jinja2.meta.find_undeclared_variables(_jinja().parse(template)))


def app_from_dict(d: object, source: str, name: str) -> App:
    """Validate an app definition; every error names ``source`` and the field."""
    def bad(fieldname, msg):
        return AppError(f"{source}: field {fieldname!r}: {msg}")
    if not isinstance(d, dict):
        raise AppError(f"{source}: an app definition must be a mapping, got {type(d).__name__}")
    unknown = set(d) - APP_KEYS
    if unknown:
        raise bad(sorted(unknown)[0], f"unknown field; known: {', '.join(sorted(APP_KEYS))}")
    name = d.get("name", name)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", name):
        raise bad("name", f"{name!r} is not a valid app name")
    tmpl = d.get("command_template")
    if tmpl is None and not d.get("python_class"):
        raise bad("command_template", "is required (or python_class for a Python run() app)")
    if tmpl is not None and (not isinstance(tmpl, str) or not tmpl.strip()):
        raise bad("command_template", "must be a non-empty string")
    params_in = d.get("parameters") or {}
    if not isinstance(params_in, dict):
        raise bad("parameters", "must be a mapping of name -> {required, default, help}")
    params = {}
    for pname, spec in params_in.items():
        if not isinstance(pname, str) or not pname.isidentifier():
            raise bad("parameters", f"{pname!r} is not an identifier")
        if spec is None:
            spec = {}
        if not isinstance(spec, dict) or set(spec) - {"required", "default", "help"}:
            raise bad("parameters", f"{pname}: give a mapping with required/default/help")
        spec = dict(spec)
        spec.setdefault("required", "default" not in spec)
        if spec["required"] and "default" in spec:
            raise bad("parameters", f"{pname}: a parameter with a default is not required")
        params[pname] = spec
    if tmpl is not None:
        try:
            used = template_variables(tmpl)
        except Exception as e:  # jinja2.TemplateSyntaxError
            raise bad("command_template", f"template error: {e}") from None
        for var in sorted(used - set(params)):
            params[var] = {"required": True}
        unused = sorted(set(params) - used)
        if unused and not d.get("python_class"):
            raise bad("parameters", f"{', '.join(unused)} declared but not used in command_template")
    env = d.get("environment_variables") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise bad("environment_variables", "must be a mapping of NAME: value")
    env = {k: str(v) for k, v in env.items()}
    pre = d.get("shell_preamble")
    if isinstance(pre, list):
        pre = " && ".join(map(str, pre))
    if pre is not None and not isinstance(pre, str):
        raise bad("shell_preamble", "must be a string or a list of strings")
    cleanup = d.get("cleanup_files") or []
    if not isinstance(cleanup, list) or not all(isinstance(g, str) for g in cleanup):
        raise bad("cleanup_files", "must be a list of glob patterns")
    retry = dict(DEFAULT_RETRY)
    r = d.get("retry") or {}
    if not isinstance(r, dict) or set(r) - set(DEFAULT_RETRY) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r.values()):
        raise bad("retry", "must be {errors: N, timeouts: M} with N, M >= 0")
    retry.update(r)
    try:
        slots = check_slots(d.get("transfers"))
    except ValueError as e:
        raise bad("transfers", str(e)) from None
    return App(name=name, command_template=tmpl, parameters=params,
               environment_variables=env, shell_preamble=pre, cleanup_files=cleanup,
               retry=retry, description=str(d.get("description") or ""),
               python_class=d.get("python_class"), python_exe=d.get("python_exe"),
               transfers=slots)


def load_app_file(path: Path) -> App:
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise AppError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    app = app_from_dict(d, str(path), path.stem)
    if app.name != path.stem:
        raise AppError(f"{path}: field 'name': {app.name!r} differs from the file name; "
                       f"rename the file to {app.name}.yml")
    app.source = path
    return app


class AppRegistry:
    """The apps of one site, reloaded when a definition file changes (cheap stat check)."""

    def __init__(self, apps_dir: Path):
        self.dir = apps_dir
        self._apps: dict[str, tuple[float, App]] = {}
        self.errors: dict[str, str] = {}

    def get(self, name: str) -> App | None:
        from .spool.record import app_name_problem
        if app_name_problem(name):           # "../x", a 100 kB name: never a file of apps/
            return None
        path = self.dir / f"{name}.yml"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:                      # absent, or a name the filesystem refuses
            self._apps.pop(name, None)
            return None
        cached = self._apps.get(name)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            app = load_app_file(path)
        except AppError as e:
            self.errors[name] = str(e)
            self._apps.pop(name, None)
            return None
        self.errors.pop(name, None)
        self._apps[name] = (mtime, app)
        return app

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.yml") if not p.name.startswith("."))

    def pinned(self) -> "AppRegistry":
        """A view that looks each app up once (for checking a batch of jobs: one ``stat``
        per app, not per job)."""
        view = AppRegistry(self.dir)
        view._apps, view.errors = self._apps, self.errors
        view._seen = {}
        view.get = lambda name: view._seen[name] if name in view._seen else \
            view._seen.setdefault(name, AppRegistry.get(view, name))
        return view

    def all(self) -> list[App]:
        return [a for a in (self.get(n) for n in self.names()) if a is not None]
