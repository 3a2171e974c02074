"""Running Python apps' code — ``run()`` and the hooks — in a child process.

A launcher never imports user code: a bug, a crash or a ``sys.exit`` in an app can only end
its own child process.  This module is both the launcher's side (``run_argv``,
``start_hook``/``run_hook``, ``methods_of``, ``result_fields``), which reads app files only
with ``ast``, and the child's side (``python -m spoolbalsam.launch.pyapp run|hook ...``),
which imports ``apps/NAME.py`` (written by ``ApplicationDefinition.sync()``).

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
import traceback
import types
from pathlib import Path

import orjson

from ..spool import fsio

RESULT_FILE = "job.result.json"
HOOK_LOG = "hooks.log"
HOOKS = ("preprocess", "postprocess", "handle_error", "handle_timeout")
STATES = ("CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED", "RUNNING",
          "RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT", "RESTART_READY", "POSTPROCESSED",
          "STAGED_OUT", "JOB_FINISHED", "FAILED")


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
    argv = [app.python_exe or sys.executable, "-m", "spoolbalsam.launch.pyapp", "run",
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
            res = {"state": None, "data": None,
                   "error": f"hook {self.hook} ended with exit code {rc} and no result "
                            f"(see {HOOK_LOG} in the workdir)"}
        return self._finish(res)

    def _finish(self, res: dict) -> dict:
        for p in (self.infile, self.outfile):
            if p is not None:
                fsio.unlink_quiet(p)
        res = {"state": res.get("state"), "data": res.get("data"),
               "state_data": res.get("state_data"), "error": res.get("error")}
        self.result = res
        return res


def start_hook(site_root: Path, app, rec: dict, hook: str) -> HookRun:
    """Start ``hook`` of ``rec``'s app in a child (in the job's workdir); never raises."""
    if hook not in HOOKS:
        return HookRun(hook, None, None, None, {"state": None, "data": None, "state_data": None,
                                                "error": f"unknown hook {hook!r}"})
    try:
        site_root = Path(site_root)
        workdir = site_root / "data" / rec["workdir"]
        workdir.mkdir(parents=True, exist_ok=True)
        tag = f".spool-hook.{hook}.{os.getpid()}.{secrets.token_hex(4)}"
        infile, outfile = workdir / f"{tag}.in.json", workdir / f"{tag}.out.json"
        clean = {k: v for k, v in rec.items() if not k.startswith("_")}
        fsio.write_atomic(infile, orjson.dumps(clean), durable=False)
        argv = [app.python_exe or sys.executable, "-m", "spoolbalsam.launch.pyapp", "hook",
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


# ---- the child's side -----------------------------------------------------------------------------
_SETTABLE = ("state", "data", "state_data")


class JobView:
    """``self.job`` inside an app: the record's fields as attributes.  Read-only in
    ``run()``; in hooks ``state``, ``data`` and ``state_data`` may be set."""

    def __init__(self, rec: dict, site_root: Path, writable: bool = False):
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_site", Path(site_root))
        object.__setattr__(self, "_writable", writable)
        object.__setattr__(self, "_set", {})

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._set:
            return self._set[name]
        rec = self._rec
        if name == "app_id":
            return rec.get("app")
        if name == "batch_job_id":
            return rec.get("batch_job")
        if name == "workdir_path":
            return self._site / "data" / rec["workdir"]
        if name == "site_path":
            return self._site
        if name == "state_data":
            last = (rec.get("history") or [{}])[-1]
            return {"message": last["msg"]} if last.get("msg") else {}
        if name in rec:
            value = rec[name]
            if name == "data" and self._writable:
                return value                 # in-place changes are noticed at the end
            if isinstance(value, dict):
                return types.MappingProxyType(value)
            if isinstance(value, list):
                return tuple(value)
            return value
        raise AttributeError(f"job has no field {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if not self._writable or name not in _SETTABLE:
            where = "in run()" if not self._writable else "in a hook (only state, data, state_data)"
            raise AttributeError(f"job.{name} cannot be set {where}")
        if name == "state":
            value = str(getattr(value, "value", value)).upper()
            if value not in STATES:
                raise ValueError(f"unknown state {value!r}; use one of {', '.join(STATES)}")
        self._set[name] = value

    def get_parameters(self) -> dict:
        return dict(self._rec.get("parameters") or {})

    def __repr__(self) -> str:
        return f"JobView(id={self._rec.get('id')!r}, workdir={self._rec.get('workdir')!r})"


def _load_class(site_root: Path, name: str):
    from spoolbalsam.api.app import ApplicationDefinition
    return ApplicationDefinition.load_by_name(name, str(Path(site_root).resolve()))


def _read_job(site_root: Path, ref: str) -> dict:
    p = Path(ref)
    if ref.endswith(".json") and p.exists():
        return fsio.read_json(p)
    from ..spool.layout import Layout
    from ..spool.store import Store, read_job
    loc = Store(Layout(Path(site_root).resolve())).locate(ref)
    if loc is None:
        raise LookupError(f"job {ref} is not in site {site_root}")
    return read_job(loc[1], loc[0])


RANK_VARS = ("PMI_RANK", "PALS_RANKID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")


def _rank() -> int | None:
    """This process's MPI rank, if started by an MPI launcher (as ``launch.entry`` reads it)."""
    for var in RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def _exception_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def child_run(site_root: str, app_name: str, job_ref: str) -> int:
    rec = _read_job(Path(site_root), job_ref)
    workdir = Path(site_root) / "data" / rec["workdir"]
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    writer = _rank() in (None, 0)
    base = {"job": rec["id"], "attempt": rec.get("attempt", 1)}
    if writer:
        fsio.unlink_quiet(workdir / RESULT_FILE)
    try:
        cls = _load_class(Path(site_root), app_name)
        value = cls(JobView(rec, Path(site_root))).run(**(rec.get("parameters") or {}))
        code = 0
    except SystemExit as e:
        if e.code in (None, 0):
            value, code = None, 0
        else:
            code = e.code if isinstance(e.code, int) else 1
            if writer:
                fsio.write_json_atomic(workdir / RESULT_FILE, {**base, "exception": _exception_text(e),
                                                               "traceback": traceback.format_exc()})
            return code
    except BaseException as e:  # noqa: BLE001 - the job's outcome, reported, not raised
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        if writer:
            fsio.write_json_atomic(workdir / RESULT_FILE, {**base, "exception": _exception_text(e),
                                                           "traceback": tb})
        return 1
    if writer:
        try:
            payload = {**base, "return_value": value}
            data = fsio.dumps(payload)
        except TypeError:
            payload = {**base, "return_value": repr(value), "repr": True}
            data = fsio.dumps(payload)
        fsio.write_atomic(workdir / RESULT_FILE, data)
    return code


def child_hook(site_root: str, app_name: str, hook: str, infile: str, outfile: str) -> int:
    out: dict = {"state": None, "data": None, "state_data": None, "error": None}
    try:
        rec = fsio.read_json(Path(infile))
        before = orjson.dumps(rec.get("data"))
        view = JobView(rec, Path(site_root), writable=True)
        cls = _load_class(Path(site_root), app_name)
        getattr(cls(view), hook)()
        out["state"] = view._set.get("state")
        data = view._set.get("data", rec.get("data"))
        if "data" in view._set or orjson.dumps(data) != before:
            out["data"] = data
        sd = view._set.get("state_data")
        out["state_data"] = sd if sd is None or isinstance(sd, (str, dict)) else str(sd)
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, never raised
        traceback.print_exc()
        out.update(state=None, data=None, error=f"hook {hook} raised {_exception_text(e)}")
        code = 1
    try:
        fsio.write_atomic(Path(outfile), orjson.dumps(out), durable=False)
    except TypeError as e:
        fsio.write_atomic(Path(outfile), orjson.dumps(
            {"state": None, "data": None, "error": f"hook {hook} set data that is not JSON: {e}"}),
            durable=False)
        code = 1
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 4 and argv[0] == "run":
        return child_run(*argv[1:])
    if len(argv) == 6 and argv[0] == "hook":
        return child_hook(*argv[1:])
    sys.stderr.write("usage: python -m spoolbalsam.launch.pyapp run SITE APP JOB_ID_OR_FILE\n"
                     "       python -m spoolbalsam.launch.pyapp hook SITE APP HOOK IN OUT\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
