"""``BatchJob``: Balsam's batch-job object over ``spoolbalsam.site.batch`` requests.

Guarantees
----------
* ``BatchJob.objects.create(site_id=..., num_nodes=..., wall_time_min=..., job_mode=...,
  queue=..., project=..., filter_tags=..., optional_params=...)`` publishes one request with
  ``batch.create_request`` (the same record ``spool queue submit`` writes); the site submits
  it to the scheduler.  Field types are checked first (``SubmitError`` naming the field);
  the site's own limits (``batch.validate_request``: queue, project, node and walltime
  limits) are checked too, and a request they refuse is still created — as in Balsam, the
  site marks it ``submit_failed`` with the reason — but the caller gets a one-line
  ``BatchJobWarning`` at once saying what to change in settings.yml.
* ``scheduler_id``, ``state``, ``status_info``, ``start_time``, ``end_time`` are read from the
  site's ``batch/N/state.json`` (only the site writes it); they are read-only.
* Deleting (``delete()``, or ``state = "pending_deletion"`` + ``save()``) writes the same
  ``batch/N/term`` request as ``spool queue term``; the site asks the scheduler to let go.
"""
from __future__ import annotations

import datetime as _dt
import warnings

from ..site import batch as batch_mod
from .. import settings as settings_mod
from ..spool import fsio
from ..submit import SubmitError
from .query import DoesNotExist, MultipleObjectsReturned, SimpleQuery, _as_list

FIELDS = ("site_id", "num_nodes", "wall_time_min", "job_mode", "queue", "project",
          "filter_tags", "optional_params")
READ_ONLY = ("id", "scheduler_id", "state", "status_info", "start_time", "end_time")


class BatchJobWarning(UserWarning):
    """The site will refuse this request (it becomes submit_failed); the message says why."""


class BatchJobDoesNotExist(DoesNotExist):
    pass


class BatchJobMultipleObjectsReturned(MultipleObjectsReturned):
    pass


def _checked(fields: dict) -> dict:
    def bad(name, msg):
        return SubmitError(f"BatchJob: field {name!r}: {msg}")
    n = fields.get("num_nodes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad("num_nodes", f"must be a whole number >= 1, got {n!r}")
    w = fields.get("wall_time_min")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
        raise bad("wall_time_min", f"must be a number of minutes > 0, got {w!r}")
    if fields.get("job_mode") not in ("mpi", "serial"):
        raise bad("job_mode", f"must be 'mpi' or 'serial', got {fields.get('job_mode')!r}")
    for name in ("queue", "project"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise bad(name, f"must be a string, got {fields[name]!r}")
    for name in ("filter_tags", "optional_params"):
        v = fields.get(name)
        if v is None:
            fields[name] = {}
        elif not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise bad(name, f"must be a dict of strings, got {v!r}")
        else:
            fields[name] = {k: str(x) for k, x in v.items()}
    return fields


def _user_level() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package."""
    import sys
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("spoolbalsam.api"):
        frame, level = frame.f_back, level + 1
    return level


def _dt_or_none(t):
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc) if t else None


class BatchJob:
    """A batch job (an allocation request) of a site."""

    DoesNotExist = BatchJobDoesNotExist
    MultipleObjectsReturned = BatchJobMultipleObjectsReturned
    objects: "BatchJobManager"

    def __init__(self, num_nodes=None, wall_time_min=None, job_mode="mpi", queue=None,
                 project=None, site_id=None, filter_tags=None, optional_params=None,
                 partitions=None, **unknown):
        if unknown:
            raise SubmitError(f"BatchJob: field {next(iter(unknown))!r}: unknown; known: "
                              f"{', '.join(FIELDS)}")
        if partitions:
            raise SubmitError("BatchJob: field 'partitions': not supported by spoolbalsam; "
                              "submit one batch job per job mode")
        self.site_id = site_id
        self.num_nodes, self.wall_time_min, self.job_mode = num_nodes, wall_time_min, job_mode
        self.queue, self.project = queue, project
        self.filter_tags = dict(filter_tags or {})
        self.optional_params = dict(optional_params or {})
        self._rec: dict | None = None
        self._layout = None
        self._delete_requested = False

    # ---- read-only --------------------------------------------------------------------------
    @property
    def id(self) -> int | None:
        return int(self._rec["id"]) if self._rec else None

    @property
    def scheduler_id(self):
        return self._rec.get("scheduler_id") if self._rec else None

    @property
    def state(self) -> str | None:
        if self._delete_requested:
            return "pending_deletion"
        return self._rec.get("state") if self._rec else None

    @state.setter
    def state(self, value: str) -> None:
        if value != "pending_deletion":
            raise ValueError(f"a batch job's state is set by the site; a script may only set "
                             f"'pending_deletion' (to delete it), not {value!r}")
        self._delete_requested = True

    @property
    def status_info(self) -> dict:
        rec = self._rec or {}
        info = {k: rec[k] for k in ("submit_script", "exit_code", "raw_state", "nodes")
                if rec.get(k) is not None}
        if rec.get("submit_time"):
            info["submit_time"] = _dt_or_none(rec["submit_time"])
        errors = rec.get("errors") or []
        if errors:
            info["error"] = errors[-1].get("error")
            info["error_time"] = _dt_or_none(errors[-1].get("t"))
        return info

    @property
    def start_time(self):
        return _dt_or_none((self._rec or {}).get("start_time"))

    @property
    def end_time(self):
        return _dt_or_none((self._rec or {}).get("end_time"))

    # ---- saving ------------------------------------------------------------------------------
    def _site(self):
        if self._layout is None:
            from .site import resolve
            self._layout = resolve(self.site_id)
            self.site_id = str(self._layout.root)
        return self._layout

    def save(self) -> "BatchJob":
        if self._rec is None:
            self._create()
        elif self._delete_requested:
            self._term()
        else:
            changed = [k for k in FIELDS[1:] if getattr(self, k) != self._rec.get(k)]
            if changed:
                raise ValueError(f"batch job {self.id} was already requested; {changed[0]} "
                                 "cannot change (delete it and create another)")
        return self

    def _create(self) -> None:
        layout = self._site()
        try:
            s = settings_mod.load(layout.settings)
            machine = settings_mod.machine_from_settings(s)
        except settings_mod.SettingsError as e:
            raise SubmitError(str(e)) from None
        if self.queue is None:
            self.queue = next(iter(s["scheduler"]["allowed_queues"] or machine.queues), None)
        if self.project is None:
            self.project = (s["scheduler"]["allowed_projects"] or [""])[0]
        req = _checked({k: getattr(self, k) for k in FIELDS[1:]})
        try:
            batch_mod.validate_request(req, s, machine, str(layout.settings),
                                       batch_mod.load_all(layout))
            refusal = None
        except batch_mod.BatchRequestError as e:
            refusal = str(e)
        bid = batch_mod.create_request(layout, req)
        self._rec = batch_mod.load(layout, bid) or {"id": bid, **req}
        if refusal:
            warnings.warn(f"batch job {bid} will not be submitted by the site (it becomes "
                          f"submit_failed): {refusal}", BatchJobWarning, stacklevel=_user_level())

    def _term(self) -> None:
        layout = self._site()
        self.refresh_from_db()
        if self._rec["state"] in batch_mod.FINAL:
            self._delete_requested = False
            return
        fsio.write_atomic(layout.batch / str(self.id) / "term", b"requested\n")
        self._delete_requested = False
        self.refresh_from_db()

    def delete(self) -> None:
        """Ask the site to delete this batch job from the scheduler."""
        if self._rec is None:
            raise self.DoesNotExist("this batch job was never saved (id is None)")
        self._delete_requested = True
        self._term()

    def refresh_from_db(self) -> None:
        if self._rec is None:
            raise self.DoesNotExist("this batch job was never saved (id is None)")
        rec = batch_mod.load(self._site(), str(self.id))
        if rec is None:
            raise self.DoesNotExist(f"batch job {self.id} is gone from {self._site().batch}")
        self._load(rec)

    def _load(self, rec: dict) -> None:
        self._rec = rec
        for k in FIELDS[1:]:
            v = rec.get(k)
            setattr(self, k, dict(v) if isinstance(v, dict) else v)

    @classmethod
    def _from_record(cls, rec: dict, layout) -> "BatchJob":
        bj = cls.__new__(cls)
        bj._layout, bj.site_id, bj._delete_requested = layout, str(layout.root), False
        bj.filter_tags, bj.optional_params = {}, {}
        bj._load(rec)
        return bj

    def __repr__(self) -> str:
        return (f"BatchJob(id={self.id}, scheduler_id={self.scheduler_id!r}, state={self.state!r}, "
                f"queue={self.queue!r}, num_nodes={self.num_nodes}, wall_time_min={self.wall_time_min}, "
                f"job_mode={self.job_mode!r})")

    def __eq__(self, other) -> bool:
        return isinstance(other, BatchJob) and other.id is not None and other.id == self.id \
            and other.site_id == self.site_id

    def __hash__(self) -> int:
        return hash((self.site_id, self.id))


BATCH_FILTERS = ("id", "site_id", "state", "scheduler_id", "queue", "project", "job_mode",
                 "filter_tags")


class BatchJobQuery(SimpleQuery):
    FILTERS = BATCH_FILTERS
    WHAT = "batch job filter"

    def _fetch(self) -> list[BatchJob]:
        if self._cache is None:
            from .site import resolve
            c = self._conds
            layout = resolve(c.get("site_id"))
            ids = {str(i) for i in _as_list(c["id"])} if "id" in c else None
            states = set(_as_list(c["state"])) if "state" in c else None
            sched = {str(i) for i in _as_list(c["scheduler_id"])} if "scheduler_id" in c else None
            out = []
            for rec in batch_mod.load_all(layout):
                if ids is not None and rec["id"] not in ids:
                    continue
                if states is not None and rec.get("state") not in states:
                    continue
                if sched is not None and str(rec.get("scheduler_id")) not in sched:
                    continue
                if any(k in c and rec.get(k) != c[k] for k in ("queue", "project", "job_mode")):
                    continue
                tags = rec.get("filter_tags") or {}
                if any(tags.get(k) != v for k, v in (c.get("filter_tags") or {}).items()):
                    continue
                out.append(BatchJob._from_record(rec, layout))
            self._cache = out
        return self._cache


    def __repr__(self) -> str:
        return f"<BatchJobQuery {self._fetch()!r}>"

    def count(self) -> int:
        return len(self._fetch())

    def first(self):
        found = self._fetch()
        return found[0] if found else None

    def get(self, **kw) -> BatchJob:
        found = self.filter(**kw)._fetch() if kw else self._fetch()
        if not found:
            raise BatchJob.DoesNotExist(f"no batch job matches {kw or self._conds}")
        if len(found) > 1:
            raise BatchJob.MultipleObjectsReturned(
                f"{len(found)} batch jobs match {kw or self._conds} (ids "
                f"{', '.join(str(b.id) for b in found[:5])}); narrow the filter")
        return found[0]

    def delete(self) -> int:
        n = 0
        for bj in self._fetch():
            if bj.state not in batch_mod.FINAL:
                bj.delete()
                n += 1
        return n


class BatchJobManager:
    def create(self, **fields) -> BatchJob:
        return BatchJob(**fields).save()

    def all(self) -> BatchJobQuery:
        return BatchJobQuery()

    def filter(self, **kw) -> BatchJobQuery:
        return BatchJobQuery().filter(**kw)

    def get(self, **kw) -> BatchJob:
        return BatchJobQuery().get(**kw)

    def count(self) -> int:
        return BatchJobQuery().count()


BatchJob.objects = BatchJobManager()
