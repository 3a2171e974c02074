"""``Job``: Balsam's job object over a spool record.

Guarantees
----------
* ``Job(...)`` takes every field of Balsam's job (``workdir``, ``app_id`` as a name or an
  ``ApplicationDefinition`` class, ``site_name``, ``parameters``, ``tags``, ``data``,
  resources, ``launch_params``, ``wall_time_min``, ``parent_ids``) and checks nothing until
  it is saved; an unsaved job has ``id is None``.
* Creating is ``spoolbalsam.submit.submit_jobs``: every job is validated the way the site
  will (``intake.check_job``), then all are written to ``jobs/created/``, a chunk of
  them under each grouped sync.  Nothing is written unless every job is valid; the
  ``SubmitError`` names the job and the field.  The API adds one dict per job on top of it.
* Changing a saved job (``save()`` after setting fields, ``state = ...``, queries'
  ``update``) is a move with a rewrite (``Store.move_rewrite``) through this process's own
  limbo directory, so it can never resurrect a job a launcher claimed meanwhile: if the
  launcher wins, the change is retried on the job's new place or refused.  Running jobs
  are refused (``Job.Busy``); a job the site has not taken in yet (``jobs/created/``) is
  waited for while the site runs.  ``delete()`` renames the record out to
  ``site/removed/`` (like ``spool job rm``); its ``data/`` directory stays.  ``kill()``
  stops a running job through its launcher or cancels a pending one (``spoolbalsam.kill``,
  shared with ``spool job kill``).
* Reading (``refresh_from_db``, queries) goes through ``spool.query.select``, so a job shows
  the launchers' verdicts even while the site is stopped.
* ``result()`` returns what a ``run()`` app returned, or raises its exception again as a
  ``JobFailed`` that is also an instance of the same builtin type (``except ValueError``
  works).  Results come from the record (``result``/``exception``, merged from launcher
  events) or from ``job.result.json`` in the workdir of the same attempt.
"""
from __future__ import annotations

import builtins
import datetime as _dt
import os
import time
from pathlib import Path

import orjson

from ..apps import AppRegistry
from ..launch.pyapp import read_result
from ..spool import fsio, hints
from ..spool import states as S
from ..spool.layout import Layout
from ..spool.query import Filter, select
from ..spool.record import USER_FIELDS, InvalidJob, transition
from ..spool.store import Store
from ..submit import SubmitError, submit_jobs
from .query import DONE_STATES, DoesNotExist, JobManager, MultipleObjectsReturned

INTAKE_WAIT_SEC = 10.0
SETTABLE_STATES = {S.READY, S.STAGED_IN, S.PREPROCESSED, S.RESTART_READY, S.POSTPROCESSED,
                   S.STAGED_OUT, S.JOB_FINISHED, S.FAILED}
FIELDS = ("workdir", "parameters", "tags", "data", "num_nodes", "ranks_per_node",
          "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count",
          "launch_params", "wall_time_min", "parent_ids", "retry", "transfers")
DEFAULTS = {"parameters": dict, "tags": dict, "data": dict, "launch_params": dict,
            "parent_ids": list, "num_nodes": 1, "ranks_per_node": 1, "threads_per_rank": 1,
            "threads_per_core": 1, "gpus_per_rank": 0, "node_packing_count": 1,
            "wall_time_min": 0, "retry": None, "workdir": None, "transfers": None}
IGNORED_ARGS = ("return_code", "site_path", "pending_file_cleanup")


class JobDoesNotExist(DoesNotExist):
    pass


class JobMultipleObjectsReturned(MultipleObjectsReturned):
    pass


class JobBusy(RuntimeError):
    """The job cannot be changed now (it is running, or not taken in by the site yet)."""


class NoResult(ValueError):
    """The job has no return value or exception (yet)."""


class JobFailed(Exception):
    """A ``run()`` app raised (or the job failed without a result).

    ``type_name`` is the remote exception's type, ``traceback`` its traceback text.
    """

    def __init__(self, message: str, *, type_name: str = "JobFailed", traceback: str = "",
                 job_id: str | None = None):
        super().__init__(message)
        self.type_name, self.traceback, self.job_id = type_name, traceback, job_id


_FAILED_TYPES: dict[str, type] = {}


def _failure(type_name: str, message: str, tb: str, job_id: str) -> JobFailed:
    """A JobFailed that is also the builtin exception type the app raised, if any."""
    base = getattr(builtins, type_name, None)
    if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
        cls = _FAILED_TYPES.get(type_name)
        if cls is None:
            try:
                cls = type(type_name, (JobFailed, base), {"__module__": "builtins"})
            except TypeError:           # a builtin that cannot be a second base
                cls = None
            _FAILED_TYPES[type_name] = cls
        if cls is not None:
            try:
                return cls(message, type_name=type_name, traceback=tb, job_id=job_id)
            except TypeError:
                pass
    return JobFailed(f"{type_name}: {message}", type_name=type_name, traceback=tb, job_id=job_id)


def _epoch_dt(t):
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc) if t else None


def _writer() -> str:
    return f"api:{fsio.HOST}:{os.getpid()}"


def _limbo(layout: Layout) -> Path:
    """This process's own limbo (a move-with-rewrite's commit point).

    Named ``site/limbo-api/HOST.PID.START``; before its first use, the limbos of dead API
    processes of this host are finished (``Store.finish_limbo``), so a crash mid-move loses
    no job: the held record is published where it was going, without the change."""
    from ..spool.lease import pid_alive, proc_start
    base = layout.site_dir / "limbo-api"
    mine = base / f"{fsio.HOST}.{os.getpid()}.{proc_start(os.getpid())}"
    if not mine.exists():
        mine.mkdir(parents=True, exist_ok=True)
        store = Store(layout)
        for name in fsio.list_dirs(base):
            host, pid, start = (name.rsplit(".", 2) + ["", ""])[:3]
            if host != fsio.HOST or not pid.isdigit() or name == mine.name:
                continue
            if not pid_alive(int(pid), None if start in ("", "None") else start):
                store.finish_limbo(base / name)
                try:
                    (base / name).rmdir()
                except OSError:
                    pass
    return mine


def _check_json(value, what: str, source: str) -> None:
    try:
        orjson.dumps(value)
    except TypeError:
        bad = [k for k, v in value.items() if not _jsonable(v)] if isinstance(value, dict) else []
        which = f" {bad[0]!r}" if bad else ""
        raise SubmitError(f"{source}: field {what!r}: value{which} is not JSON (spoolbalsam "
                          "stores parameters and data as JSON: use str, numbers, lists, dicts)"
                          ) from None


def _jsonable(v) -> bool:
    try:
        orjson.dumps(v)
        return True
    except TypeError:
        return False


class _Field:
    """A user field: reads the job's current value, writes mark it for the next save()."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, job, owner=None):
        if job is None:
            return self
        return job._f.get(self.name)

    def __set__(self, job, value):
        if self.name == "workdir" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        job._f[self.name] = value


class _ReadOnly:
    def __init__(self, name: str, key: str | None = None, conv=None):
        self.name, self.key, self.conv = name, key or name, conv

    def __get__(self, job, owner=None):
        if job is None:
            return self
        v = job._rec.get(self.key) if job._rec else None
        return self.conv(v) if self.conv else v

    def __set__(self, job, value):
        raise AttributeError(f"Job.{self.name} is set by spoolbalsam and cannot be assigned")


class Job:
    """A Balsam job.  ``Job(workdir, app_id=..., site_name=..., parameters=..., ...)``."""

    DoesNotExist = JobDoesNotExist
    MultipleObjectsReturned = JobMultipleObjectsReturned
    NoResult = NoResult
    Busy = JobBusy
    objects: JobManager

    return_code = _ReadOnly("return_code")
    state_timestamp = _ReadOnly("state_timestamp", conv=_epoch_dt)
    last_update = _ReadOnly("last_update", "state_timestamp", conv=_epoch_dt)
    batch_job_id = _ReadOnly("batch_job_id", "batch_job")
    error = _ReadOnly("error")
    transfer_items = _ReadOnly("transfer_items", conv=lambda v: [dict(i) for i in v or ()])
    attempt = _ReadOnly("attempt")
    history = _ReadOnly("history", conv=lambda v: list(v or ()))
    created_at = _ReadOnly("created_at", conv=_epoch_dt)
    started_at = _ReadOnly("started_at", conv=_epoch_dt)
    ended_at = _ReadOnly("ended_at", conv=_epoch_dt)
    host = _ReadOnly("host")
    launcher = _ReadOnly("launcher")
    placement = _ReadOnly("placement")

    def __init__(self, workdir=None, app_id=None, site_name=None, *, app_name=None, app=None,
                 site_id=None, site=None, **fields):
        for k in IGNORED_ARGS:
            fields.pop(k, None)
        unknown = [k for k in fields if k not in DEFAULTS]
        if unknown:
            raise SubmitError(f"Job(): field {unknown[0]!r}: unknown; known: workdir, app_id, "
                              f"site_name, {', '.join(FIELDS[1:])}")
        f = {k: (v() if callable(v) else v) for k, v in DEFAULTS.items()}
        f.update((k, v) for k, v in fields.items() if v is not None)
        f["workdir"] = os.fspath(workdir) if isinstance(workdir, os.PathLike) else workdir
        self._f = f
        self._app = app_id if app_id is not None else (app_name if app_name is not None else app)
        self._site_ref = site_name if site_name is not None else (site_id if site_id is not None else site)
        self._layout: Layout | None = None
        self._rec: dict | None = None
        self._new_state: tuple[str, str | None] | None = None

    # ---- identity and state ---------------------------------------------------------------
    @property
    def id(self) -> str | None:
        return self._rec["id"] if self._rec else None

    @property
    def app_id(self) -> str | None:
        a = self._app
        return a.__name__ if isinstance(a, type) else a

    @app_id.setter
    def app_id(self, value) -> None:
        self._app = value

    app_name = app_id

    @property
    def app(self):
        """The ``ApplicationDefinition`` class of this job's app."""
        from .app import ApplicationDefinition
        if isinstance(self._app, type):
            return self._app
        return ApplicationDefinition.load_by_name(self.app_id, self.site_id)

    @property
    def site_id(self) -> str | None:
        try:
            return str(self._site().root)
        except DoesNotExist:
            return None

    @property
    def site_name(self) -> str:
        from .site import site_name
        return site_name(self._site().root)

    @property
    def state(self) -> str | None:
        if self._new_state:
            return self._new_state[0]
        return self._rec.get("state") if self._rec else None

    @state.setter
    def state(self, value) -> None:
        value = str(getattr(value, "value", value)).upper()
        if value not in S.STATE_DIR:
            raise ValueError(f"unknown state {value!r}; use one of {', '.join(S.ALL_STATES)}")
        self._new_state = (value, self._new_state[1] if self._new_state else None)

    @property
    def state_data(self) -> dict:
        """Data of the last transition: its message, and the error if the job failed."""
        out = {}
        if self._new_state and self._new_state[1]:
            out["message"] = self._new_state[1]
        elif self._rec and self._rec.get("history"):
            last = self._rec["history"][-1]
            if last.get("msg"):
                out["message"] = last["msg"]
        if self._rec and self._rec.get("error"):
            out["error"] = self._rec["error"]
        return out

    @state_data.setter
    def state_data(self, value) -> None:
        msg = value.get("message") if isinstance(value, dict) else value
        msg = None if msg is None else (msg if isinstance(msg, str) else orjson.dumps(value).decode())
        state = self._new_state[0] if self._new_state else None
        self._new_state = (state, msg) if state else None
        if state is None:
            raise ValueError("set job.state before job.state_data (it describes the transition)")

    @property
    def _dir(self) -> str | None:
        return self._rec.get("_dir") if self._rec else None

    @property
    def workdir_path(self) -> Path:
        """The absolute path of the job's working directory."""
        return self._site().workdir(self.workdir)

    def resolve_workdir(self, data_path) -> Path:
        return Path(data_path) / self.workdir

    def get_parameters(self) -> dict:
        return dict(self._f["parameters"])

    def set_parameters(self, value: dict) -> None:
        self._f["parameters"] = dict(value)

    def parent_query(self):
        return type(self).objects.filter(id=list(self.parent_ids), site_id=self.site_id)

    def __repr__(self) -> str:
        return (f"Job(id={self.id!r}, app_id={self.app_id!r}, workdir={self.workdir!r}, "
                f"state={self.state!r})")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        if self.id is None or other.id is None:
            return self is other
        return self.id == other.id and self._site().root == other._site().root

    def __hash__(self) -> int:
        return hash(self.id) if self.id is not None else id(self)

    # ---- site -------------------------------------------------------------------------------
    def _site(self) -> Layout:
        if self._layout is None:
            from .site import resolve
            ref = self._site_ref
            if ref is None and isinstance(self._app, type):
                ref = self._app._site_ref()
            self._layout = resolve(ref)
        return self._layout

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def _from_record(cls, rec: dict, layout: Layout) -> "Job":
        job = cls.__new__(cls)
        job._app = None
        job._site_ref = None
        job._new_state = None
        job._layout = layout
        job._load(rec, layout)
        return job

    def _load(self, rec: dict, layout: Layout) -> None:
        self._rec = rec
        self._layout = layout
        self._app = rec.get("app")
        self._new_state = None
        self._f = {k: _copy(rec.get(k, DEFAULTS[k]() if callable(DEFAULTS[k]) else DEFAULTS[k]))
                   for k in FIELDS}

    def _vanished(self) -> None:
        raise self.DoesNotExist(f"job {self.id} is no longer in site {self._site().root} "
                                "(deleted, or rejected by the site: `spool job ls --state rejected`)")

    def refresh_from_db(self) -> None:
        if self.id is None:
            raise self.DoesNotExist("this job was never saved (id is None)")
        layout = self._site()
        for rec in select(layout, Filter(ids={self.id})):
            self._load(rec, layout)
            return
        self._vanished()

    def done(self) -> bool:
        """Refresh, then True if the job is JOB_FINISHED, FAILED or KILLED."""
        self.refresh_from_db()
        return self.state in DONE_STATES

    # ---- creating -----------------------------------------------------------------------------
    def _raw(self, source: str) -> dict:
        f = self._f
        app = self.app_id
        if not app:
            raise SubmitError(f"{source}: field 'app_id': is required (an app name or an "
                              "ApplicationDefinition class)")
        raw = {"app": app}
        for k in FIELDS:
            v = f.get(k)
            if v is None:
                continue
            if k == "parent_ids":
                v = [p.id if isinstance(p, Job) else p for p in v]
                if any(p is None for p in v):
                    raise SubmitError(f"{source}: field 'parent_ids': a parent Job was never "
                                      "saved; save parents first")
            elif k in ("parameters", "data"):
                _check_json(v, k, source)
            raw[k] = v
        return raw

    @classmethod
    def _create_many(cls, jobs: list["Job"]) -> None:
        from .site import resolve
        resolved: dict = {}
        groups: dict[Path, tuple[Layout, list[Job]]] = {}
        for i, job in enumerate(jobs):
            if job.id is not None:
                raise SubmitError(f"job {job.id} is already saved; bulk_create takes new jobs")
            if job._layout is None:
                ref = job._site_ref
                if ref is None and isinstance(job._app, type):
                    ref = job._app._site_ref()
                key = ref if isinstance(ref, (str, type(None))) else id(ref)
                if key not in resolved:
                    resolved[key] = resolve(ref)
                job._layout = resolved[key]
            groups.setdefault(job._layout.root, (job._layout, []))[1].append(job)
        for layout, group in groups.values():
            _check_classes_synced(layout, group)
            source = "Job" if len(group) == 1 else "Job.objects.bulk_create"
            if len(group) == 1 and group[0].workdir:
                source = f"Job(workdir={group[0].workdir!r})"
            raws = [j._raw(source if len(group) == 1 else f"{source} [job {n}]")
                    for n, j in enumerate(group)]
            recs = submit_jobs(layout, raws, source=source)
            for job, rec in zip(group, recs):
                # The record shares no mutable value with the job's fields, so a later
                # in-place change (job.data["k"] = v) is seen by save().
                for k in ("parameters", "data"):
                    if rec.get(k):
                        rec[k] = orjson.loads(orjson.dumps(rec[k]))
                rec["_dir"] = "created"
                job._rec = rec
                job._f["workdir"] = rec["workdir"]
                job._f["parent_ids"] = list(rec["parent_ids"])
                job._new_state = None

    # ---- changing -------------------------------------------------------------------------------
    def save(self) -> "Job":
        """Create the job, or apply the fields and state set since it was loaded."""
        if self.id is None:
            type(self)._create_many([self])
            return self
        changes = {}
        for k, v in self._f.items():
            old = self._rec.get(k, _default(k))
            if v != old and _normalized(k, v, self.id) != old:
                changes[k] = v
        if self.app_id != self._rec.get("app"):
            changes["app"] = self.app_id
        state, msg = self._new_state or (None, None)
        if not changes and state is None:
            return self
        rec = _rewrite(self._site(), self.id, changes, state, msg)
        self._load(rec, self._site())
        return self

    def delete(self) -> None:
        """Remove the job (not while it runs).  Its data/ directory is kept."""
        if self.id is None:
            raise self.DoesNotExist("this job was never saved (id is None)")
        self._remove()
        self._rec = None

    def _remove(self) -> bool:
        return _remove(self._site(), self.id)

    def kill(self, timeout: float = 60.0) -> str:
        """Stop the job if it runs (through its launcher), cancel it if it is pending; it
        ends in failed/ as KILLED (``spool job kill``).  Returns ``"killed"``,
        ``"cancelled"`` or ``"finished"`` (it had ended already), and refreshes the job.
        ``Job.Busy`` if its launcher did not stop it within ``timeout`` seconds (the
        request stands) or it cannot be killed now."""
        if self.id is None:
            raise self.DoesNotExist("this job was never saved (id is None)")
        [outcome] = _kill(self._site(), [self.id], timeout)
        if outcome.outcome == "not_found":
            self._vanished()
        if not outcome.ok:
            raise JobBusy(f"job {self.id}: {outcome.message}")
        self.refresh_from_db()
        return outcome.outcome

    # ---- results ----------------------------------------------------------------------------------
    def result_nowait(self):
        """The run() app's return value, or its exception raised again; ``Job.NoResult`` if
        there is none yet."""
        if self.id is None:
            raise self.NoResult("this job was never saved (id is None)")
        self.refresh_from_db()
        rec = self._rec
        res = rec.get("result")
        exc = rec.get("exception")
        if res is None and exc is None:
            found = read_result(self._site().workdir(rec["workdir"]), rec)
            if found is not None:
                res, exc = (found, None) if "return_value" in found else (None, found)
        if isinstance(res, dict) and "return_value" in res:
            return res["return_value"]
        if exc is not None:
            raise _as_failure(exc, self.id)
        if rec.get("state") in (S.FAILED, S.KILLED):
            raise JobFailed(f"job {self.id} {rec['state']}: {rec.get('error') or 'no reason recorded'}",
                            job_id=self.id)
        raise self.NoResult(f"job {self.id} ({rec.get('state')}) has no return value or "
                            "exception" + ("" if rec.get("state") in DONE_STATES else " yet"))

    def result(self, timeout: float | None = None):
        """Wait until the job is done (``TimeoutError`` after ``timeout`` s), then
        ``result_nowait()``."""
        if self.id is None:
            raise self.NoResult("this job was never saved (id is None)")
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while not self.done():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} is still {self.state} after {timeout} s")
            time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 1.0)
        return self.result_nowait()


def _copy(v):
    if isinstance(v, dict):
        return dict(v)
    if isinstance(v, list):
        return list(v)
    return v


def _normalized(key: str, value, job_id: str):
    """``value`` as the record would hold it (so an int tag equals its string)."""
    if value is None or key not in USER_FIELDS:
        return value
    try:
        return USER_FIELDS[key][1](value)
    except ValueError as e:
        raise SubmitError(str(InvalidJob(f"job {job_id}", key, str(e)))) from None


def _default(k: str):
    d = DEFAULTS.get(k)
    return d() if callable(d) else d


def _as_failure(exc, job_id: str) -> JobFailed:
    if isinstance(exc, dict):
        text = str(exc.get("exception") or "Exception: (no message)")
        tb = str(exc.get("traceback") or "")
    else:
        text, tb = str(exc), ""
    type_name, sep, message = text.partition(": ")
    if not sep or not type_name.replace(".", "").replace("_", "").isalnum():
        type_name, message = "Exception", text
    return _failure(type_name.rsplit(".", 1)[-1], message, tb, job_id)


def _check_classes_synced(layout: Layout, jobs: list[Job]) -> None:
    seen = set()
    for job in jobs:
        if isinstance(job._app, type) and job._app not in seen:
            seen.add(job._app)
            name = job._app.__name__
            if not (layout.apps / f"{name}.yml").exists():
                raise SubmitError(f"app {name} is not in site {layout.root}: call "
                                  f"{name}.sync() before creating its jobs")


# ---- the two ways to change a saved job ----------------------------------------------------------
def _locate_settled(layout: Layout, store: Store, job_id: str):
    """(directory, path) of the job, waiting while it sits in created/ and the site runs."""
    from ..site.service import running_site
    deadline = time.monotonic() + INTAKE_WAIT_SEC
    while True:
        loc = store.locate_own(job_id)
        if loc is None:
            raise Job.DoesNotExist(f"job {job_id} is not in site {layout.root} (deleted?)")
        if loc[0] != "created" and not store.own_name(loc[0], loc[1], job_id):
            raise JobBusy(f"job {job_id} is being moved by another process (held at "
                          f"{loc[1]}); try again")
        if loc[0] != "created":
            return loc
        if running_site(layout) is None and store.own_name(loc[0], loc[1], job_id):
            return loc
        if time.monotonic() >= deadline:
            raise JobBusy(f"job {job_id} is still in jobs/created/ after {INTAKE_WAIT_SEC:g} s: "
                          f"the site has not taken it in; see {layout.log}/site.log")
        time.sleep(0.02)


def _rewrite(layout: Layout, job_id: str, changes: dict, state: str | None,
             msg: str | None) -> dict:
    """Apply ``changes`` (and a move to ``state``) to a job that is not running."""
    store = Store(layout)
    source = f"job {job_id}"
    for _ in range(5):
        where, path = _locate_settled(layout, store, job_id)
        if where == "running":
            raise JobBusy(f"job {job_id} is running (jobs/running/{path.parent.name}/); it can "
                          "be changed once it has ended")
        if where == "created":
            raise JobBusy(f"job {job_id} is still in jobs/created/ and the site is not running; "
                          "start it (`spool site start`) so it takes the job in, then retry")
        recs = list(select(layout, Filter(dirs=(where,), ids={job_id})))
        if not recs:
            continue                                   # it moved meanwhile: look again
        rec = {k: v for k, v in recs[0].items() if not k.startswith("_")}
        new = dict(rec)
        new.update(_validated(changes, rec, layout, source))
        dest = where
        if state is not None:
            if state not in SETTABLE_STATES:
                raise ValueError(f"{source}: state {state} is set by spoolbalsam itself; a "
                                 f"script may set {', '.join(sorted(SETTABLE_STATES))}")
            dest = S.STATE_DIR[state]
            extra = {}
            if dest == "ready" and where in ("done", "failed"):
                extra = dict(attempt=rec.get("attempt", 1) + 1, error=None,
                             retries={"errors": 0, "timeouts": 0})
            new = transition(new, state, _writer(), msg, **extra)
        if store.move_rewrite(path, layout.job_path(dest, job_id), new, _limbo(layout)):
            hints.send(layout, [job_id], "save")
            new["_dir"] = dest
            new["state"] = S.fine_state(dest, new.get("state"))
            return new
    raise JobBusy(f"job {job_id} kept moving while it was being changed; try again")


def _validated(changes: dict, rec: dict, layout: Layout, source: str) -> dict:
    out = {}
    for key, value in changes.items():
        if key == "parent_ids":
            if list(value or ()) != list(rec.get("parent_ids") or ()):
                raise SubmitError(f"{source}: field 'parent_ids': can only be given when the "
                                  "job is created")
            continue
        if key == "transfers":
            if (value or {}) != (rec.get("transfers") or {}):
                raise SubmitError(f"{source}: field 'transfers': can only be given when the "
                                  "job is created")
            continue
        if key == "app":
            out["app"] = value
            continue
        if key in ("parameters", "data"):
            _check_json(value, key, source)
        try:
            out[key] = USER_FIELDS[key][1](value) if value is not None else None
        except ValueError as e:
            raise SubmitError(str(InvalidJob(source, key, str(e)))) from None
        if key == "retry" and value is None:
            out.pop(key)
    if "app" in out or "parameters" in out:
        app_name = out.get("app", rec.get("app"))
        params = out.get("parameters", rec.get("parameters") or {})
        apps = AppRegistry(layout.apps)
        app = apps.get(app_name)
        if app is None:
            raise SubmitError(f"{source}: field 'app_id': unknown app {app_name!r} "
                              f"(known: {', '.join(apps.names()) or 'none'})")
        problem = app.check_parameters(params)
        if problem:
            raise SubmitError(f"{source}: field 'parameters': {problem}")
    return out


def _kill(layout: Layout, ids: list[str], timeout: float) -> list:
    """``spoolbalsam.kill.kill`` through this process's limbo; the outcomes."""
    from ..kill import kill
    return kill(layout, ids, why="Python API", timeout=timeout,
                limbo=_limbo(layout)).outcomes


def _remove(layout: Layout, job_id: str) -> bool:
    """Rename the job out to site/removed/ (not while it runs).  False if it is gone."""
    store = Store(layout)
    trash = layout.site_dir / "removed"
    for _ in range(5):
        try:
            where, path = _locate_settled(layout, store, job_id)
        except JobDoesNotExist:
            return False
        if where == "running":
            raise JobBusy(f"job {job_id} is running (jobs/running/{path.parent.name}/); it can "
                          "be deleted once it has ended")
        trash.mkdir(parents=True, exist_ok=True)
        # race: a launcher may claim a ready job at this moment; the rename decides.
        if fsio.rename_quiet(path, trash / f"{job_id}.json"):
            hints.send(layout, [job_id], "delete")
            return True
    raise JobBusy(f"job {job_id} kept moving while it was being deleted; try again")


for _name in FIELDS:
    setattr(Job, _name, _Field(_name))
Job.objects = JobManager(Job)
