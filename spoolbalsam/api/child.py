"""The child process that runs a Python app's code: ``run()`` or one hook.

Started by the launcher (``launch.pyapp.run_argv`` / ``start_hook``) as
``python -m spoolbalsam.api.child run SITE APP JOB_ID_OR_FILE`` or
``python -m spoolbalsam.api.child hook SITE APP HOOK IN OUT``, in the job's workdir.  This is
the only place user code is imported (``apps/NAME.py``, a subclass of the API's
``ApplicationDefinition``), which is why it lives in ``api/`` and the launcher only ever
names it on a command line.  The protocol (``job.result.json``, the hook's result file) is
described in ``launch.pyapp``.
"""
from __future__ import annotations

import os
import sys
import traceback
import types
from pathlib import Path

import orjson

from ..launch.pyapp import RESULT_FILE
from ..spool import fsio
from ..spool.states import ALL_STATES

STATES = tuple(s for s in ALL_STATES if s != "REJECTED")


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
    from .app import ApplicationDefinition
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
    sys.stderr.write("usage: python -m spoolbalsam.api.child run SITE APP JOB_ID_OR_FILE\n"
                     "       python -m spoolbalsam.api.child hook SITE APP HOOK IN OUT\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
