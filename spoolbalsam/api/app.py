"""``ApplicationDefinition``: Balsam's app classes, written as the site's ``apps/NAME.yml``.

Guarantees
----------
* ``sync()`` writes ``apps/NAME.yml`` in the same format any language writes (see
  ``spoolbalsam.apps``) after validating it with ``apps.app_from_dict``, so the CLI, the
  site and launchers see exactly the app the class describes.  A bad definition fails at
  ``sync()`` with one line naming the class and the field (``AppDefinitionError``), and
  nothing is written.
* A class with ``run()`` or any hook (``preprocess``, ``postprocess``, ``handle_error``,
  ``handle_timeout``) is a Python app: ``sync()`` first writes ``apps/NAME.py`` — the class
  source, preceded by what it uses from its module (imports, constants, helper functions and
  classes; ``balsam.api`` becomes ``spoolbalsam.api``) and followed by ``SPOOL_METHODS``,
  the methods it defines — then the YAML with ``python_class: NAME``.  A global the class
  uses that cannot be written as source fails ``sync()`` naming it.
* A ``run()`` app's YAML ``command_template`` is the ``spoolbalsam.api.child`` runner
  (``PYTHON -m spoolbalsam.api.child run "$SPOOL_SITE" NAME "$SPOOL_JOB_ID"``), so any
  launcher that can run a command runs it; its parameters come from ``run``'s signature
  (no default -> required).
* ``shell_preamble()`` is evaluated once, at ``sync()`` (with ``self.job = None``), and
  stored as the YAML's ``shell_preamble`` (a list is joined with ``&&``).
* Undeclared template variables are required parameters; the class docstring is the
  app's description.
* ``load_by_name(name, site_name)`` returns a class for any app of the site: the Python
  app's own class from ``apps/NAME.py``, or a class built from a YAML-only app.
"""
from __future__ import annotations

import ast
import builtins
import difflib
import hashlib
import importlib.util
import inspect
import shlex
import sys
import textwrap
import types
from pathlib import Path

import yaml

from .. import apps as apps_mod
from ..spool import fsio
from ..spool.layout import Layout
from .query import DoesNotExist

HOOKS = ("preprocess", "postprocess", "handle_error", "handle_timeout")
METHODS = ("run",) + HOOKS + ("shell_preamble",)
FIELDS = ("site", "command_template", "parameters", "environment_variables", "cleanup_files",
          "transfers", "python_exe", "retry", "description")
JOB_ARGS = ("tags", "data", "num_nodes", "ranks_per_node", "threads_per_rank",
            "threads_per_core", "launch_params", "gpus_per_rank", "node_packing_count",
            "wall_time_min", "parent_ids", "retry", "return_code", "transfers")
API_NAMES = ("ApplicationDefinition", "Job", "BatchJob", "Site", "EventLog")


class AppDefinitionError(apps_mod.AppError):
    """One line: ``ApplicationDefinition NAME: field F: what is wrong``."""


class AppNotFound(DoesNotExist):
    pass


class ApplicationDefinition:
    """Subclass it; set ``site`` and ``command_template`` (or define ``run``); ``sync()``."""

    DoesNotExist = AppNotFound
    site = None
    command_template: str | None = None
    parameters: dict = {}
    environment_variables: dict = {}
    cleanup_files: list = []
    transfers: dict = {}
    python_exe: str | None = None
    retry: dict | None = None
    run = None

    def __init__(self, job=None):
        self.job = job

    # Balsam's default hooks: each sets the state the job moves on to.
    def preprocess(self) -> None:
        self.job.state = "PREPROCESSED"

    def postprocess(self) -> None:
        self.job.state = "POSTPROCESSED"

    def handle_error(self) -> None:
        self.job.state = "FAILED"

    def handle_timeout(self) -> None:
        self.job.state = "RESTART_READY"

    def shell_preamble(self):
        return []

    # ---- identity ---------------------------------------------------------------------------
    @classmethod
    def _site_ref(cls):
        loaded = cls.__dict__.get("_spool_layout")
        return loaded if loaded is not None else cls.site

    @classmethod
    def _layout(cls) -> Layout:
        from .site import resolve
        return resolve(cls._site_ref())

    @classmethod
    def defined_methods(cls) -> tuple[str, ...]:
        """The methods of ``METHODS`` this class defines itself (not the defaults)."""
        out = []
        for m in METHODS:
            mine = getattr(cls, m, None)
            base = getattr(ApplicationDefinition, m, None)
            if mine is not None and getattr(mine, "__code__", None) is not getattr(base, "__code__", None):
                out.append(m)
        return tuple(out)

    # ---- the YAML -------------------------------------------------------------------------------
    @classmethod
    def to_dict(cls) -> dict:
        """The ``apps/NAME.yml`` content of this class (validated by ``sync``)."""
        name = cls.__name__
        src = f"ApplicationDefinition {name}"

        def bad(fieldname, msg):
            return AppDefinitionError(f"{src}: field {fieldname!r}: {msg}")

        for key, value in cls.__dict__.items():
            if key.startswith("_") or key in FIELDS or key in METHODS or callable(value):
                continue
            close = difflib.get_close_matches(key, FIELDS + METHODS, n=1, cutoff=0.8)
            if close:
                raise bad(key, f"unknown; did you mean {close[0]!r}?")
        methods = cls.defined_methods()
        has_run = "run" in methods
        tmpl = cls.command_template
        if has_run and tmpl is not None:
            raise bad("run", "define either run() or command_template, not both")
        if not has_run and tmpl is None:
            raise bad("command_template", "is required (or define run(self, ...))")
        params = cls.parameters
        if not isinstance(params, dict):
            raise bad("parameters", "must be a dict of name -> {required, default, help}")
        params = {k: _param_spec(v) for k, v in params.items()}
        d: dict = {"name": name}
        doc = cls.__dict__.get("__doc__")
        if doc and doc.strip():
            d["description"] = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
        if has_run:
            params = _run_parameters(cls, params, bad)
            d["command_template"] = pyapp_command(cls.python_exe, name)
        else:
            if not isinstance(tmpl, str):
                raise bad("command_template", f"must be a string, got {type(tmpl).__name__}")
            d["command_template"] = tmpl.strip()
        if params:
            d["parameters"] = params
        for key in ("environment_variables", "cleanup_files", "python_exe", "retry", "transfers"):
            v = getattr(cls, key)
            if v:
                d[key] = dict(v) if isinstance(v, dict) else (list(v) if isinstance(v, (list, tuple)) else v)
        if "shell_preamble" in methods:
            try:
                pre = cls(None).shell_preamble()
            except Exception as e:
                raise bad("shell_preamble", f"raised {type(e).__name__}: {e} when evaluated at "
                          "sync() (it runs once, with self.job = None)") from None
            if pre:
                d["shell_preamble"] = list(pre) if isinstance(pre, (list, tuple)) else pre
        if methods and methods != ("shell_preamble",):
            d["python_class"] = name
        return d

    @classmethod
    def sync(cls) -> None:
        """Validate the class and write it into its site's ``apps/``."""
        d = cls.to_dict()
        name = d["name"]
        try:
            apps_mod.app_from_dict(d, f"ApplicationDefinition {name}", name)
        except AppDefinitionError:
            raise
        except apps_mod.AppError as e:
            raise AppDefinitionError(str(e)) from None
        source = class_source(cls) if d.get("python_class") else None
        layout = cls._layout()
        layout.apps.mkdir(parents=True, exist_ok=True)
        if source is not None:
            fsio.write_atomic(layout.apps / f"{name}.py", source.encode())
        text = (f"# Written by {name}.sync() ({_origin(cls)}); edit the class and sync again.\n"
                + yaml.safe_dump(d, sort_keys=False, allow_unicode=True, width=1000))
        fsio.write_atomic(layout.apps / f"{name}.yml", text.encode())
        if source is None:
            fsio.unlink_quiet(layout.apps / f"{name}.py")
        cls._spool_synced = str(layout.root)

    # ---- jobs ---------------------------------------------------------------------------------
    @classmethod
    def submit(cls, workdir, *, save: bool = True, site_name=None, **kwargs):
        """A new Job of this app (saved unless ``save=False``).  Keyword arguments that are
        job fields (tags, data, num_nodes, ...) go to the job; the rest are parameters."""
        from .job import Job
        if not cls.__dict__.get("_spool_synced") and cls.__dict__.get("_spool_layout") is None:
            cls.sync()
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in JOB_ARGS}
        job = Job(workdir=workdir, app_id=cls, site_name=site_name, parameters=kwargs, **fields)
        if save:
            job.save()
        return job

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def load_by_name(cls, app_name: str, site_name=None) -> type:
        from .site import resolve
        layout = resolve(site_name)
        path = layout.apps / f"{app_name}.yml"
        if not path.exists():
            names = sorted(p.stem for p in layout.apps.glob("*.yml"))
            raise AppNotFound(f"no app {app_name!r} in site {layout.root} (known: "
                              f"{', '.join(names) or 'none'}); define it and call sync()")
        try:
            app = apps_mod.load_app_file(path)
        except apps_mod.AppError as e:
            raise AppDefinitionError(str(e)) from None
        key = (str(layout.root), app_name, path.stat().st_mtime_ns)
        cached = _LOADED.get(key)
        if cached is None:
            cached = _class_for(app, layout)
            cached._spool_layout = layout.root
            _LOADED[key] = cached
        return cached

    @classmethod
    def load_by_site(cls, site_name=None) -> dict[str, type]:
        from .site import resolve
        layout = resolve(site_name)
        return {p.stem: cls.load_by_name(p.stem, str(layout.root))
                for p in sorted(layout.apps.glob("*.yml")) if not p.name.startswith(".")}


_LOADED: dict = {}


def pyapp_command(python_exe: str | None, name: str) -> str:
    """The command that runs a Python ``run()`` app's job (see ``launch.pyapp``)."""
    exe = python_exe or sys.executable
    return (f'{shlex.quote(exe)} -m spoolbalsam.api.child run "$SPOOL_SITE" {name} '
            f'"$SPOOL_JOB_ID"')


def _param_spec(v):
    if v is None:
        return {}
    if isinstance(v, dict):
        spec = dict(v)
        if spec.get("default") is None and "default" in spec and spec.get("required"):
            spec.pop("default")          # Balsam writes default: None for required ones
        return spec
    return v                             # app_from_dict reports the field


def _yaml_safe(v) -> bool:
    try:
        yaml.safe_dump(v)
        return True
    except yaml.YAMLError:
        return False


def _run_parameters(cls, declared: dict, bad) -> dict:
    try:
        sig = inspect.signature(cls.run)
    except (TypeError, ValueError) as e:
        raise bad("run", f"cannot read its signature: {e}") from None
    params = list(sig.parameters.values())
    if not params or params[0].name != "self":
        raise bad("run", "must be a method: run(self, ...)")
    out = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise bad("run", f"*{p.name} parameters cannot be checked; name each parameter")
        spec = dict(declared.get(p.name) or {})
        spec.pop("required", None)
        spec.pop("default", None)
        if p.annotation is not p.empty and "help" not in spec:
            ann = p.annotation
            spec["help"] = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        if p.default is p.empty:
            spec["required"] = True
        else:
            spec["required"] = False
            if _yaml_safe(p.default):
                spec["default"] = p.default
        out[p.name] = spec
    extra = sorted(set(declared) - set(out))
    if extra:
        raise bad("parameters", f"{', '.join(extra)} declared but not parameters of run()")
    return out


def _origin(cls) -> str:
    try:
        return f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
    except (OSError, TypeError):
        return "interactive"


# ---- the class source, with what it needs from its module -------------------------------------
def class_source(cls) -> str:
    """Text of ``apps/NAME.py``: imports, captured globals, the class, ``SPOOL_METHODS``."""
    name = cls.__name__
    where = f"ApplicationDefinition {name}"
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError) as e:
        src = _source_via_methods(cls)
        if src is None:
            raise AppDefinitionError(f"{where}: field 'run': its source cannot be read ({e}); "
                                     "define the class in a .py file") from None
    module = sys.modules.get(cls.__module__)
    env = vars(module) if module else {}
    lines = [f"# apps/{name}.py: written by {name}.sync() from {_origin(cls)}.",
             "# Edit the class there and sync again; launchers import this copy.",
             "from spoolbalsam.api import ApplicationDefinition", ""]
    defs: list[str] = []
    done: set[str] = {"ApplicationDefinition"}
    _capture(src, env, defs, done, where, stack=[name])
    imports = [d for d in defs if d.startswith(("import ", "from "))]
    consts = [d for d in defs if d not in imports and d.split(" = ", 1)[0].isidentifier()]
    defs = imports + consts + [d for d in defs if d not in imports and d not in consts]
    body = "\n".join(defs + ["", src.rstrip(), "",
                             f"SPOOL_METHODS = {cls.defined_methods()!r}", ""])
    text = "\n".join(lines) + body
    try:
        compile(text, f"apps/{name}.py", "exec")
    except SyntaxError as e:
        raise AppDefinitionError(f"{where}: field 'run': the written source does not compile "
                                 f"({e})") from None
    return text


def _source_via_methods(cls) -> str | None:
    """The class's source found through one of its methods' code (Jupyter on Python < 3.13,
    where ``inspect.getsource`` cannot find classes of ``__main__``)."""
    import linecache
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is None:
            continue
        text = "".join(linecache.getlines(code.co_filename))
        if not text:
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.ClassDef) and node.name == cls.__name__
                    and node.lineno <= code.co_firstlineno <= node.end_lineno):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = text.splitlines(keepends=True)[start - 1:node.end_lineno]
                return textwrap.dedent("".join(lines))
    return None


def _free_names(tree: ast.AST) -> list[str]:
    loaded: dict[str, None] = {}
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                loaded.setdefault(node.id, None)
            else:
                bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not tree:
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                bound.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return [n for n in loaded if n not in bound and not hasattr(builtins, n)]


def _capture(src: str, env: dict, defs: list[str], done: set[str], where: str,
             stack: list[str]) -> None:
    tree = ast.parse(src)
    top = tree.body[0] if len(tree.body) == 1 else tree
    for gname in _free_names(top):
        if gname in done or gname in stack:
            continue
        if gname not in env:
            continue                     # a NameError at run time, exactly as in the script
        done.add(gname)
        defs.extend(_definition(gname, env[gname], env, defs, done, where, stack))


def _definition(gname: str, value, env, defs, done, where, stack) -> list[str]:
    if isinstance(value, types.ModuleType):
        mod = value.__name__
        return [f"import {mod}" if mod == gname else f"import {mod} as {gname}"]
    for api_name in API_NAMES:
        api_mod = sys.modules.get("spoolbalsam.api")
        if api_mod is not None and getattr(api_mod, api_name, None) is value:
            return [f"from spoolbalsam.api import {api_name}" +
                    ("" if api_name == gname else f" as {gname}")]
    if isinstance(value, (type, types.FunctionType)):
        mod = getattr(value, "__module__", None)
        qual = getattr(value, "__qualname__", "")
        home = env.get("__name__")
        if mod and mod != home and mod != "__main__" and "<" not in qual and "." not in qual:
            if mod.startswith("balsam"):
                mod = "spoolbalsam.api"
            return [f"from {mod} import {qual}" + ("" if qual == gname else f" as {gname}")]
        try:
            vsrc = textwrap.dedent(inspect.getsource(value))
        except (OSError, TypeError):
            raise AppDefinitionError(f"{where}: uses {gname} whose source cannot be read; "
                                     "define it in the same .py file or import it") from None
        out: list[str] = []
        _capture(vsrc, env, out, done, where, stack + [gname])
        if value.__name__ != gname:
            vsrc += f"\n{gname} = {value.__name__}\n"
        return out + ["", vsrc.rstrip(), ""]
    if _literal(value):
        return [f"{gname} = {value!r}"]
    raise AppDefinitionError(
        f"{where}: uses the global {gname!r} (a {type(value).__name__}) that cannot be written "
        f"to apps/; import or build it inside the method, or make it a plain constant")


def _literal(value) -> bool:
    if isinstance(value, (str, int, float, bool, bytes, type(None))):
        return not isinstance(value, float) or value == value and abs(value) != float("inf")
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return False


# ---- classes for apps loaded from the site --------------------------------------------------------
def _class_for(app: apps_mod.App, layout: Layout) -> type:
    if app.python_class:
        path = layout.apps / f"{app.name}.py"
        if not path.exists():
            raise AppDefinitionError(f"{path}: missing; apps/{app.name}.yml names python_class "
                                     f"{app.python_class}: sync the class again")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        modname = f"spool_apps_{digest}_{app.name}"
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(modname, None)
            raise AppDefinitionError(f"{path}: cannot be imported: {type(e).__name__}: {e}") from None
        cls = getattr(module, app.python_class, None)
        if not (isinstance(cls, type) and issubclass(cls, ApplicationDefinition)):
            raise AppDefinitionError(f"{path}: defines no ApplicationDefinition named "
                                     f"{app.python_class}")
        return cls
    attrs = {"__doc__": app.description or None, "site": str(layout.root),
             "command_template": app.command_template,
             "parameters": {k: dict(v) for k, v in app.parameters.items()},
             "environment_variables": dict(app.environment_variables),
             "cleanup_files": list(app.cleanup_files), "python_exe": app.python_exe,
             "retry": dict(app.retry), "transfers": {k: dict(v) for k, v in app.transfers.items()},
             "__module__": __name__}
    if app.shell_preamble:
        pre = app.shell_preamble
        attrs["shell_preamble"] = lambda self: pre
    return type(app.name, (ApplicationDefinition,), attrs)


def app_path(layout: Layout, name: str) -> Path:
    return layout.apps / f"{name}.yml"

