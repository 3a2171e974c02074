"""``EventLog``: Balsam's read-only view of job state transitions.

Guarantees
----------
* Transitions come from the two places the spool keeps them: each record's bounded
  ``history`` (read with ``spool.query.select``, so not-yet-merged launcher events are
  included) and the per-writer event logs — ``launchers/*/events.jsonl``,
  ``launchers/.retired/*/events.jsonl`` and ``site/events.jsonl`` — which hold transitions
  older than a record's last ``HISTORY_MAX`` and those of deleted jobs.
* One transition appears once: entries are the same transition when job, time and target
  state agree (that is how ``events.apply_event`` copies an event into a history).
  ``from_state`` is the job's previous transition in this merged timeline (a history's own
  ``from`` is used only for a job's first known transition).
* Nothing is written; a log line that cannot be parsed is skipped.
* Filters: ``job_id`` (one or a list), ``to_state``, ``from_state``, ``timestamp_after``,
  ``timestamp_before`` (datetime or epoch seconds), ``tags`` (jobs' tags), and
  ``site_id``/``site_name``.  Results are in time order.
"""
from __future__ import annotations

import datetime as _dt
from operator import itemgetter

from ..gcpause import paused
from ..spool import fsio
from ..spool.query import Filter, select
from .query import SimpleQuery, _as_list, _epoch, _job_id, _kv, fine_states

SKIP_KEYS = ("t", "job", "to", "from")
EVENT_FILTERS = ("job_id", "to_state", "from_state", "timestamp_after", "timestamp_before",
                 "tags", "site_id", "site_name")


class EventLog:
    """One transition: ``job_id``, ``timestamp``, ``from_state``, ``to_state``, ``data``."""

    objects: "EventLogManager"

    def __init__(self, job_id: str, t: float, from_state: str | None, to_state: str, data: dict):
        self.job_id, self.from_state, self.to_state, self.data = job_id, from_state, to_state, data
        self._t = t

    @property
    def timestamp(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._t, _dt.timezone.utc)

    def __repr__(self) -> str:
        return (f"EventLog(job_id={self.job_id!r}, {self.from_state} -> {self.to_state}, "
                f"timestamp={self.timestamp.isoformat()})")


def log_paths(layout) -> list:
    """Every per-writer event log of the site: the site's, live and retired launchers'."""
    paths = [layout.site_dir / "events.jsonl"]
    for name in sorted(fsio.list_dirs(layout.launchers)):
        paths.append(layout.launchers / name / "events.jsonl")
    retired = layout.launchers / ".retired"
    for name in sorted(fsio.list_dirs(retired)):
        paths.append(retired / name / "events.jsonl")
    return paths


def log_transitions(layout) -> list[dict]:
    """Every job transition in the site's event logs (lines with ``job`` and ``to``)."""
    out: list[dict] = []
    for path in log_paths(layout):
        events, _ = fsio.read_lines_from(path, 0)
        out.extend(ev for ev in events if "job" in ev and "to" in ev)
    return out


def merge(records, logged: list[dict], jobs: set[str] | None = None,
          logged_by: frozenset[str] = frozenset()) -> list[tuple]:
    """The transitions of ``records``' histories and of ``logged`` (log lines), each once.

    Entries are ``(t, job, to, history entry or None, log line or None)`` in time order
    (then job id); a history entry and a log line are the same transition when job, time
    and target state agree.  Only jobs in ``jobs`` are kept (all if None).  A history entry
    written ``by`` a writer in ``logged_by`` is skipped: a launcher logs every transition
    it makes before the rename that publishes it, so its log lines (in ``logged``) hold them
    all.  Pure: this is the one merge behind ``EventLog`` and ``spool report``.
    """
    from_history: dict[tuple, dict] = {}
    for rec in records:
        job = rec["id"]
        for h in rec.get("history") or ():
            if h.get("by") not in logged_by:
                from_history[(job, h.get("t"), h.get("to"))] = h
    if jobs is not None:
        logged = [ev for ev in logged if ev["job"] in jobs]
    if from_history:
        out = []
        for ev in logged:
            job = ev["job"]
            h = from_history.pop((job, ev.get("t"), ev["to"]), None)
            out.append((ev.get("t") or 0.0, job, ev["to"], h, ev))
    else:
        out = [(ev.get("t") or 0.0, ev["job"], ev["to"], None, ev) for ev in logged]
    out.extend((key[1] or 0.0, key[0], key[2], h, None) for key, h in from_history.items())
    out.sort(key=itemgetter(0, 1))        # stable: a job's lines at one instant keep their order
    return out


def _data(entry: tuple) -> dict:
    data = {}
    for src in (entry[4], entry[3]):        # the history's words win, as apply_event wrote them
        if src:
            data.update((k, v) for k, v in src.items() if k not in SKIP_KEYS)
    if "msg" in data:
        data["message"] = data.pop("msg")
    return data


def transitions(layout, ids: set[str] | None = None, tags: dict | None = None) -> list[EventLog]:
    """Every transition of the jobs ``ids`` (all jobs if None) in time order."""
    records = list(select(layout, Filter(ids=ids, tags=dict(tags or {}))))
    keep = ids if not tags else {r["id"] for r in records}
    last: dict[str, str] = {}
    out = []
    for e in merge(records, log_transitions(layout), keep):
        # The timeline decides: a history entry's "from" can skip a transition that only a
        # log holds (the site merges a job's events once it has ended).
        frm = last.get(e[1], e[3].get("from") if e[3] else None)
        last[e[1]] = e[2]
        out.append(EventLog(e[1], e[0], frm, e[2], _data(e)))
    return out


class EventLogQuery(SimpleQuery):
    FILTERS = EVENT_FILTERS
    WHAT = "event filter"

    def _fetch(self) -> list[EventLog]:
        if self._cache is None:
            from .site import resolve
            c = self._conds
            layout = resolve(c.get("site_id") or c.get("site_name"))
            ids = {_job_id(j) for j in _as_list(c["job_id"])} if "job_id" in c else None
            to = fine_states(c["to_state"]) if "to_state" in c else None
            frm = fine_states(c["from_state"]) if "from_state" in c else None
            after = _epoch(c["timestamp_after"]) if "timestamp_after" in c else None
            before = _epoch(c["timestamp_before"]) if "timestamp_before" in c else None
            tags = _kv(c["tags"], "tags") if "tags" in c else None
            with paused():         # 400k events at 100k jobs: 2.4x faster without the GC
                found = transitions(layout, ids, tags)
            self._cache = [e for e in found
                           if (to is None or e.to_state in to)
                           and (frm is None or e.from_state in frm)
                           and (after is None or e._t > after)
                           and (before is None or e._t < before)]
        return self._cache


    def count(self) -> int:
        return len(self._fetch())

    def first(self):
        found = self._fetch()
        return found[0] if found else None


class EventLogManager:
    def all(self) -> EventLogQuery:
        return EventLogQuery()

    def filter(self, **kw) -> EventLogQuery:
        return EventLogQuery().filter(**kw)

    def count(self) -> int:
        return EventLogQuery().count()


EventLog.objects = EventLogManager()
