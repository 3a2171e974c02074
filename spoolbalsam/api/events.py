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


def _log_paths(layout):
    paths = [layout.site_dir / "events.jsonl"]
    for name in sorted(fsio.list_dirs(layout.launchers)):
        paths.append(layout.launchers / name / "events.jsonl")
    retired = layout.launchers / ".retired"
    for name in sorted(fsio.list_dirs(retired)):
        paths.append(retired / name / "events.jsonl")
    return paths


def transitions(layout, ids: set[str] | None = None, tags: dict | None = None) -> list[EventLog]:
    """Every transition of the jobs ``ids`` (all jobs if None) in time order."""
    entries: dict[tuple, dict] = {}
    tagged: set[str] | None = set() if tags else None
    for rec in select(layout, Filter(ids=ids, tags=dict(tags or {}))):
        if tagged is not None:
            tagged.add(rec["id"])
        for h in rec.get("history") or ():
            key = (rec["id"], h.get("t"), h.get("to"))
            data = {k: v for k, v in h.items() if k not in SKIP_KEYS}
            if "msg" in data:
                data["message"] = data.pop("msg")
            entries[key] = {"job": rec["id"], "t": h.get("t") or 0.0, "from": h.get("from"),
                            "to": h.get("to"), "data": data}
    for path in _log_paths(layout):
        events, _ = fsio.read_lines_from(path, 0)
        for ev in events:
            job, to = ev.get("job"), ev.get("to")
            if job is None or to is None:
                continue
            if (ids is not None and job not in ids) or (tagged is not None and job not in tagged):
                continue
            data = {k: v for k, v in ev.items() if k not in SKIP_KEYS}
            if "msg" in data:
                data["message"] = data.pop("msg")
            key = (job, ev.get("t"), to)
            if key in entries:
                entries[key]["data"] = {**data, **entries[key]["data"]}
            else:
                entries[key] = {"job": job, "t": ev.get("t") or 0.0, "from": None, "to": to,
                                "data": data}
    ordered = sorted(entries.values(), key=lambda e: (e["t"], e["job"]))
    last: dict[str, str] = {}
    out = []
    for e in ordered:
        # The timeline decides: a history entry's "from" can skip a transition that only a
        # log holds (the site merges a job's events once it has ended).
        frm = last.get(e["job"], e["from"])
        last[e["job"]] = e["to"]
        out.append(EventLog(e["job"], e["t"], frm, e["to"], e["data"]))
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
            self._cache = [e for e in transitions(layout, ids, tags)
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
