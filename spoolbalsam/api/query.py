"""Lazy, chainable job queries (``Job.objects.filter(...)``) over ``spool.query.select``.

Guarantees
----------
* A query reads nothing until it is evaluated (iteration, ``len``, ``bool``, indexing,
  ``count``, ``first``, ``get``, ``update``, ``delete``).  Each ``filter``/``exclude``/
  ``order_by`` returns a new query; an evaluated query caches its jobs (like Balsam and
  Django); ``count()`` on an unevaluated query never builds Job objects, and when it
  filters only by state, tags and app it opens no record (the site's query index:
  ``spool.query.count``).  ``query[i:j]`` on an unevaluated query ordered by id (the
  default) or creation time reads only that page's records, as Balsam's API pages.
* Reading goes through ``spool.query.select`` only: the directories a state filter needs,
  records with the launchers' unmerged events applied, so results are right even while the
  site is stopped.
* Filters (Balsam's names): ``id`` (one or a list), ``state`` (a Balsam state, a directory
  name, or a list of them), ``state__ne``, ``tags`` (dict, or ``"K:V"`` strings; all must
  match), ``app_id``/``app_name`` (name or ApplicationDefinition class), ``workdir__contains``,
  ``parent_id`` (one or a list: children of any), ``parameters`` (dict or ``"K:V"``),
  ``batch_job_id``, ``last_update_before``/``last_update_after`` (datetime or epoch
  seconds), and ``site_id``/``site_name`` to choose the site.  An unknown filter is a
  ``TypeError`` naming it.  ``order_by``: ``id``, ``state``, ``workdir``, ``created``,
  ``last_update``, ``app_id``, ``num_nodes``, ``wall_time_min``, each with ``-`` for
  descending; the default order is by id (generated ids sort by creation time).
* ``kill()`` stops the matched jobs that run and cancels the pending ones
  (``spoolbalsam.kill``, the code of ``spool job kill``); they end in failed/ as KILLED.
* ``update(**fields)`` and ``delete()`` act job by job through the model's own ``save`` /
  ``delete`` primitives (a move with rewrite, or a rename out); they refuse, before
  changing anything, when a matched job is running.
"""
from __future__ import annotations

import datetime as _dt
import gc
import time
from typing import Any, Iterator

from ..spool import states as S
from ..spool.query import JOB_DIRS, Filter, count, ordered, select

DONE_STATES = S.FINAL_STATES          # JOB_FINISHED, FAILED, KILLED


class DoesNotExist(LookupError):
    """No object matched (each model has its own subclass: ``Job.DoesNotExist``)."""


class MultipleObjectsReturned(LookupError):
    """``get()`` matched more than one object."""


FILTER_KEYS = ("id", "state", "state__ne", "tags", "app_id", "app_name", "app",
               "workdir__contains", "parent_id", "parameters", "batch_job_id",
               "last_update_before", "last_update_after", "site_id", "site_name", "site")
ORDER_KEYS = {"id": "id", "state": "state", "workdir": "workdir", "created": "created_at",
              "created_at": "created_at", "last_update": "state_timestamp",
              "state_timestamp": "state_timestamp", "app_id": "app", "app": "app",
              "num_nodes": "num_nodes", "wall_time_min": "wall_time_min"}
UPDATABLE = ("workdir", "parameters", "tags", "data", "num_nodes", "ranks_per_node",
             "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count",
             "launch_params", "wall_time_min", "retry")
_ALL_FINE = {d: {s for s, dd in S.STATE_DIR.items() if dd == d} for d in JOB_DIRS}


def _as_list(v) -> list:
    if isinstance(v, (list, tuple, set, frozenset)):
        return list(v)
    return [v]


def _job_id(v) -> str:
    return v.id if hasattr(v, "id") and not isinstance(v, str) else str(v)


class _Conflict(dict):
    """A ``K:V`` list naming one key with two values: nothing can match it."""


def _kv(v, what: str) -> dict[str, str]:
    """A dict from a dict or Balsam's ``["K:V", ...]`` (``K=V`` also accepted)."""
    if isinstance(v, dict):
        return {str(k): val if isinstance(val, str) else str(val) for k, val in v.items()}
    out: dict[str, str] = {}
    for item in _as_list(v):
        sep = ":" if ":" in str(item) else "="
        k, found, val = str(item).partition(sep)
        if not found or not k:
            raise ValueError(f"{what} filter {item!r} must be a dict or 'KEY:VALUE'")
        if k in out and out[k] != val:
            out = _Conflict(out)
        out[k] = val
    return out


def _epoch(v) -> float:
    if isinstance(v, _dt.datetime):
        return v.timestamp()
    return float(v)


def _app_name(v) -> str:
    return v.__name__ if isinstance(v, type) else str(v)


def fine_states(names) -> set[str]:
    """Balsam state names and directory names -> the set of fine states they mean."""
    out: set[str] = set()
    for name in _as_list(names):
        name = getattr(name, "value", name)          # enum-like values
        d, fine = S.parse_state(str(name))
        if d == "rejected":
            raise ValueError("rejected files are not jobs; see `spool job ls --state rejected`")
        out.update({fine} if fine else _ALL_FINE[d])
    return out


class Conditions:
    """One ``filter(...)`` call, compiled.  ``matches(rec)`` is the whole truth;
    ``to_filter()`` is the part ``select`` can use to read less."""

    def __init__(self, kw: dict):
        self.site = None
        self.states: set[str] | None = None
        self.not_states: set[str] = set()
        self.tags: dict[str, str] = {}
        self.params: dict[str, str] = {}
        self.app: str | None = None
        self.ids: set[str] | None = None
        self.workdirs: list[str] = []
        self.parents: set[str] | None = None
        self.batch_job: str | None = None
        self.before: float | None = None
        self.after: float | None = None
        self.impossible = False
        for key, v in kw.items():
            if key not in FILTER_KEYS:
                raise TypeError(f"unknown job filter {key!r}; known: {', '.join(FILTER_KEYS)}")
            if v is None:
                continue
            if key in ("site_id", "site_name", "site"):
                self.site = v
            elif key == "state":
                self.states = fine_states(v)
            elif key == "state__ne":
                self.not_states |= fine_states(v)
            elif key == "tags":
                self.tags = _kv(v, "tags")
                self.impossible |= isinstance(self.tags, _Conflict)
            elif key == "parameters":
                self.params = _kv(v, "parameters")
                self.impossible |= isinstance(self.params, _Conflict)
            elif key in ("app_id", "app_name", "app"):
                self.app = _app_name(v)
            elif key == "id":
                self.ids = {_job_id(x) for x in _as_list(v)}
            elif key == "workdir__contains":
                self.workdirs.append(str(v))
            elif key == "parent_id":
                self.parents = {_job_id(x) for x in _as_list(v)}
            elif key == "batch_job_id":
                self.batch_job = str(v)
            elif key == "last_update_before":
                self.before = _epoch(v)
            elif key == "last_update_after":
                self.after = _epoch(v)

    def merge(self, other: "Conditions") -> "Conditions":
        """Both conditions at once (a chained ``filter``)."""
        m = Conditions({})
        m.site = other.site if other.site is not None else self.site
        m.states = _meet(self.states, other.states)
        m.not_states = self.not_states | other.not_states
        m.ids = _meet(self.ids, other.ids)
        m.parents = _meet(self.parents, other.parents)
        m.workdirs = self.workdirs + other.workdirs
        m.impossible = self.impossible or other.impossible
        for name in ("tags", "params"):
            a, b = getattr(self, name), getattr(other, name)
            if any(k in a and a[k] != v for k, v in b.items()):
                m.impossible = True
            setattr(m, name, {**a, **b})
        for name in ("app", "batch_job"):
            a, b = getattr(self, name), getattr(other, name)
            if a is not None and b is not None and a != b:
                m.impossible = True
            setattr(m, name, b if b is not None else a)
        m.before = min(x for x in (self.before, other.before, float("inf")) if x is not None)
        m.before = None if m.before == float("inf") else m.before
        m.after = max(x for x in (self.after, other.after, float("-inf")) if x is not None)
        m.after = None if m.after == float("-inf") else m.after
        return m

    @property
    def countable(self) -> bool:
        """True when ``spool.query.count`` answers a count without the records' contents
        (from the index: states, tags and app only)."""
        if self.impossible or self.params or self.ids is not None or self.workdirs:
            return False
        return (self.parents is None and not self.batch_job and self.before is None
                and self.after is None)

    def dirs(self) -> tuple[str, ...]:
        if self.states is None:
            return JOB_DIRS
        wanted = {S.STATE_DIR[s] for s in self.states}
        return tuple(d for d in JOB_DIRS if d in wanted)

    def to_filter(self) -> Filter:
        return Filter(dirs=self.dirs(), states=set(self.states or ()),
                      exclude_states=set(self.not_states), tags=dict(self.tags), app=self.app,
                      workdir_contains=self.workdirs[0] if self.workdirs else None,
                      ids=set(self.ids) if self.ids is not None else None)

    def matches(self, rec: dict) -> bool:
        if self.impossible:
            return False
        st = rec.get("state")
        if self.states is not None and st not in self.states:
            return False
        if st in self.not_states:
            return False
        if self.ids is not None and rec.get("id") not in self.ids:
            return False
        if self.app is not None and rec.get("app") != self.app:
            return False
        tags = rec.get("tags") or {}
        if any(tags.get(k) != v for k, v in self.tags.items()):
            return False
        params = rec.get("parameters") or {}
        if any(k not in params or _str(params[k]) != v for k, v in self.params.items()):
            return False
        wd = rec.get("workdir") or ""
        if any(w not in wd for w in self.workdirs):
            return False
        if self.parents is not None and not self.parents.intersection(rec.get("parent_ids") or ()):
            return False
        if self.batch_job is not None and str(rec.get("batch_job")) != self.batch_job:
            return False
        t = rec.get("state_timestamp") or 0.0
        if self.before is not None and not t < self.before:
            return False
        if self.after is not None and not t > self.after:
            return False
        return True


def _str(v) -> str:
    return v if isinstance(v, str) else str(v)


def _meet(a: set | None, b: set | None) -> set | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


class Fetched:
    """A lazy query's sequence protocol: everything goes through ``self._fetch()``, which
    reads the spool once and caches the list."""

    def __iter__(self):
        return iter(self._fetch())

    def __len__(self) -> int:
        return len(self._fetch())

    def __bool__(self) -> bool:
        return bool(self._fetch())

    def __getitem__(self, index):
        return self._fetch()[index]


class SimpleQuery(Fetched):
    """A chainable query over a small collection: ``filter(**kw)`` (names in ``FILTERS``)
    and ``all()`` return new queries; subclasses implement ``_fetch``."""

    FILTERS: tuple[str, ...] = ()
    WHAT = "filter"

    def __init__(self, conds: dict | None = None):
        self._conds = dict(conds or {})
        self._cache: list | None = None

    def filter(self, **kw):
        for k in kw:
            if k not in self.FILTERS:
                raise TypeError(f"unknown {self.WHAT} {k!r}; known: {', '.join(self.FILTERS)}")
        return type(self)({**self._conds, **{k: v for k, v in kw.items() if v is not None}})

    def all(self):
        return type(self)(self._conds)


class JobQuery(Fetched):
    """A lazy selection of jobs of one site."""

    def __init__(self, manager, cond: Conditions | None = None, excludes: tuple = (),
                 order: tuple[str, ...] = ()):
        self._manager = manager
        self._cond = cond or Conditions({})
        self._excludes = excludes
        self._order = order
        self._cache: list | None = None

    # ---- building -------------------------------------------------------------------------
    def _clone(self, **kw) -> "JobQuery":
        args = dict(cond=self._cond, excludes=self._excludes, order=self._order)
        args.update(kw)
        return JobQuery(self._manager, **args)

    def filter(self, **kw) -> "JobQuery":
        return self._clone(cond=self._cond.merge(Conditions(kw)))

    def exclude(self, **kw) -> "JobQuery":
        cond = Conditions(kw)
        if cond.site is not None:
            raise TypeError("exclude() does not take a site; use filter(site_name=...)")
        return self._clone(excludes=self._excludes + (cond,))

    def order_by(self, *fields: str) -> "JobQuery":
        for f in fields:
            if f.lstrip("-") not in ORDER_KEYS:
                raise ValueError(f"cannot order jobs by {f!r}; use one of "
                                 f"{', '.join(sorted(ORDER_KEYS))} (with - for descending)")
        return self._clone(order=tuple(f for f in fields if f))

    def all(self) -> "JobQuery":
        return self._clone()

    # ---- evaluating -----------------------------------------------------------------------
    @property
    def layout(self):
        from .site import resolve
        return resolve(self._cond.site)

    def _records(self) -> Iterator[dict]:
        if self._cond.impossible:
            return
        for rec in select(self.layout, self._cond.to_filter()):
            if self._cond.matches(rec) and not any(x.matches(rec) for x in self._excludes):
                yield rec

    def _sorted(self, recs: list[dict]) -> list[dict]:
        if not self._order:
            recs.sort(key=lambda r: r["id"])
            return recs
        for f in reversed(self._order):
            key = ORDER_KEYS[f.lstrip("-")]
            recs.sort(key=lambda r: _sort_key(r.get(key)), reverse=f.startswith("-"))
        return recs

    def _fetch(self) -> list:
        if self._cache is None:
            layout = self.layout
            make = self._manager.model._from_record
            self._cache = [make(r, layout) for r in self._sorted(list(self._records()))]
        return self._cache

    def __repr__(self) -> str:
        jobs = self._fetch()
        more = ", ..." if len(jobs) > 10 else ""
        return f"<JobQuery [{', '.join(map(repr, jobs[:10]))}{more}]>"

    def __getitem__(self, index):
        """``query[i:j]`` reads only that page (``spool.query.ordered``) when the query has
        not been evaluated and is ordered by id (the default) or creation time."""
        key = self._page_key()
        if (self._cache is None and isinstance(index, slice) and key is not None
                and index.step in (None, 1) and (index.start or 0) >= 0
                and (index.stop is None or index.stop >= 0)):
            return self._page(*key, index.start or 0, index.stop)
        return self._fetch()[index]

    def _page_key(self) -> tuple[str, bool] | None:
        """(key, newest first) when the order is one ``spool.query.ordered`` pages by."""
        if not self._order:
            return "id", False
        if len(self._order) == 1:
            name, reverse = self._order[0].lstrip("-"), self._order[0].startswith("-")
            if name == "id":
                return "id", reverse
            if name in ("created", "created_at"):
                return "created", reverse
        return None

    def _page(self, key: str, reverse: bool, start: int, stop: int | None) -> list:
        if self._cond.impossible or (stop is not None and stop <= start):
            return []
        layout = self.layout
        make = self._manager.model._from_record
        want = None if stop is None else stop - start
        out = []
        for rec in ordered(layout, self._cond.to_filter(), key, reverse):
            if not self._cond.matches(rec) or any(x.matches(rec) for x in self._excludes):
                continue
            if start > 0:
                start -= 1
                continue
            out.append(make(rec, layout))
            if want is not None and len(out) >= want:
                break
        return out

    def count(self) -> int:
        if self._cache is not None:
            return len(self._cache)
        if self._cond.impossible:
            return 0
        if self._cond.countable and not self._excludes:
            return sum(count(self.layout, self._cond.to_filter()).values())
        return sum(1 for _ in self._records())

    def exists(self) -> bool:
        if self._cache is not None:
            return bool(self._cache)
        return next(iter(self._records()), None) is not None

    def first(self):
        jobs = self._fetch()
        return jobs[0] if jobs else None

    def get(self, **kw):
        q = self.filter(**kw) if kw else self
        jobs = q._fetch()
        model = self._manager.model
        if not jobs:
            raise model.DoesNotExist(f"no job matches {_describe(q)} in site {q.layout.root}")
        if len(jobs) > 1:
            raise model.MultipleObjectsReturned(
                f"{len(jobs)} jobs match {_describe(q)} (e.g. {jobs[0].id}, {jobs[1].id}); "
                "narrow the filter or use filter() to get them all")
        return jobs[0]

    def update(self, **fields) -> int:
        """Change every matched job; returns how many were changed."""
        allowed = UPDATABLE + ("state", "state_data", "app_id")
        for k in fields:
            if k not in allowed:
                raise TypeError(f"update() cannot set {k!r}; it sets {', '.join(allowed)}")
        order = sorted(fields, key=lambda k: k != "state")     # state before state_data
        jobs = list(self._fetch())
        self._refuse_running(jobs, "update")
        n = 0
        for job in jobs:
            for k in order:
                setattr(job, k, fields[k])
            job.save()
            n += 1
        self._cache = None
        return n

    def delete(self) -> int:
        """Remove every matched job (their data/ directories stay); returns how many."""
        jobs = list(self._fetch())
        self._refuse_running(jobs, "delete")
        n = sum(1 for job in jobs if job._remove())
        self._cache = None
        return n

    def kill(self, timeout: float = 60.0) -> int:
        """Kill the matched jobs that have not finished (running ones through their
        launchers, pending ones cancelled; see ``Job.kill``); returns how many were killed
        or cancelled.  ``Job.Busy`` names those not stopped within ``timeout`` seconds."""
        from ..kill import KILLABLE_DIRS
        from .job import _kill
        self._cache = None
        if self._cond.impossible:
            return 0
        flt = self._cond.to_filter()
        flt.dirs = tuple(d for d in flt.dirs if d in KILLABLE_DIRS)    # finished: nothing to do
        ids = [r["id"] for r in select(self.layout, flt) if self._cond.matches(r)
               and not any(x.matches(r) for x in self._excludes)]
        if not ids:
            return 0
        outcomes = _kill(self.layout, ids, timeout)
        bad = [o for o in outcomes if not o.ok and o.outcome != "not_found"]
        if bad:
            raise self._manager.model.Busy(
                f"{len(bad)} job(s) not killed: " + "; ".join(f"{o.id} {o.message}"
                                                              for o in bad[:3]))
        return sum(1 for o in outcomes if o.outcome in ("killed", "cancelled"))

    def _refuse_running(self, jobs: list, what: str) -> None:
        running = [j for j in jobs if j._dir == "running"]
        if running:
            raise self._manager.model.Busy(
                f"cannot {what} {len(running)} running job(s) ({', '.join(j.id for j in running[:3])}"
                f"{', ...' if len(running) > 3 else ''}); nothing was changed. Exclude them with "
                f"state__ne='RUNNING' or wait for them to end")


def _sort_key(v: Any):
    return (v is None, v if v is not None else 0)


def _describe(q: JobQuery) -> str:
    c = q._cond
    parts = []
    if c.ids is not None:
        parts.append(f"id={sorted(c.ids)[:3]}")
    if c.states is not None:
        parts.append(f"state={sorted(c.states)}")
    if c.tags:
        parts.append(f"tags={c.tags}")
    if c.app:
        parts.append(f"app_id={c.app!r}")
    if c.workdirs:
        parts.append(f"workdir__contains={c.workdirs}")
    return "(" + ", ".join(parts) + ")" if parts else "(all jobs)"


class JobManager:
    """``Job.objects``: create, bulk_create, query, wait."""

    def __init__(self, model):
        self.model = model

    # ---- creating -------------------------------------------------------------------------
    def create(self, **fields):
        job = self.model(**fields)
        job.save()
        return job

    def bulk_create(self, jobs) -> list:
        """Create many jobs (a grouped sync per chunk of them); returns them (now with ids)."""
        jobs = list(jobs)
        # The cyclic GC would walk every live job again and again while 100,000 records
        # are built (none of them cyclic); pausing it saves ~10-20% of a bulk create.
        paused = len(jobs) > 1000 and gc.isenabled()
        if paused:
            gc.disable()
        try:
            self.model._create_many(jobs)
        finally:
            if paused:
                gc.enable()
        return jobs

    def bulk_update(self, jobs) -> None:
        for job in jobs:
            job.save()

    # ---- querying -------------------------------------------------------------------------
    def all(self) -> JobQuery:
        return JobQuery(self)

    def filter(self, **kw) -> JobQuery:
        return JobQuery(self).filter(**kw)

    def exclude(self, **kw) -> JobQuery:
        return JobQuery(self).exclude(**kw)

    def order_by(self, *fields) -> JobQuery:
        return JobQuery(self).order_by(*fields)

    def get(self, **kw):
        return JobQuery(self).get(**kw)

    def count(self) -> int:
        return JobQuery(self).count()

    def first(self):
        return JobQuery(self).first()

    # ---- waiting --------------------------------------------------------------------------
    def bulk_refresh(self, jobs) -> None:
        """Refresh many jobs with one ``select`` per site."""
        by_site: dict = {}
        for job in jobs:
            if job.id is not None:
                by_site.setdefault(job._layout.root, (job._layout, []))[1].append(job)
        for layout, group in by_site.values():
            want = {j.id: j for j in group}
            for rec in select(layout, Filter(ids=set(want))):
                want.pop(rec["id"])._load(rec, layout)
            for job in want.values():
                job._vanished()

    def wait(self, jobs, timeout: float | None = None, poll_interval: float = 1.0,
             return_when: str = "ALL_COMPLETED"):
        """Block until all (or, with ``FIRST_COMPLETED``, any) jobs are JOB_FINISHED or
        FAILED (or KILLED), or ``timeout`` seconds pass.  Returns ``(done, not_done)`` lists."""
        if return_when not in ("ALL_COMPLETED", "FIRST_COMPLETED"):
            raise ValueError(f"return_when must be ALL_COMPLETED or FIRST_COMPLETED, "
                             f"got {return_when!r}")
        jobs = list(jobs)
        _need_saved(jobs)
        deadline = None if timeout is None else time.monotonic() + timeout
        self.bulk_refresh(jobs)
        while True:
            done = [j for j in jobs if j.state in DONE_STATES]
            not_done = [j for j in jobs if j.state not in DONE_STATES]
            if not not_done or (return_when == "FIRST_COMPLETED" and done):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            pause = poll_interval if deadline is None else min(
                poll_interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            self.bulk_refresh(not_done)
        return WaitResult(done, not_done)

    def as_completed(self, jobs, timeout: float | None = None, poll_interval: float = 1.0):
        """Yield each job as it reaches JOB_FINISHED, FAILED or KILLED; ``TimeoutError`` once
        ``timeout`` seconds have passed with jobs still pending."""
        pending = list(jobs)
        _need_saved(pending)
        deadline = None if timeout is None else time.monotonic() + timeout
        self.bulk_refresh(pending)
        while True:
            for job in [j for j in pending if j.state in DONE_STATES]:
                pending.remove(job)
                yield job
            if not pending:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending)} job(s) still pending after {timeout} s "
                                   f"(e.g. {pending[0].id} is {pending[0].state})")
            pause = poll_interval if deadline is None else min(
                poll_interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            self.bulk_refresh(pending)


def _need_saved(jobs) -> None:
    unsaved = [j for j in jobs if j.id is None]
    if unsaved:
        raise ValueError(f"{len(unsaved)} job(s) were never saved (id is None); save() or "
                         "bulk_create() them before waiting")


class WaitResult(tuple):
    """``(done, not_done)``, also as ``.done`` and ``.not_done`` (like Balsam's)."""

    def __new__(cls, done: list, not_done: list):
        return super().__new__(cls, (done, not_done))

    @property
    def done(self) -> list:
        return self[0]

    @property
    def not_done(self) -> list:
        return self[1]
