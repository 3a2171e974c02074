"""Per-writer event logs and the one function that merges an event into a record.

Each launcher appends to ``launchers/L/events.jsonl`` and only to it; the site appends to
``site/events.jsonl``.  An event is one JSON line::

    {"t": 1764100000.12, "job": ID, "attempt": 2, "to": "RUN_DONE", "by": "L",
     "return_code": 0, "host": "x4102c5s0b0n0", "started_at": ..., "ended_at": ...}

A launcher writes the event *before* the rename that makes the move visible, so a record's
details can always be found.  The site merges launcher events into records (rewriting the
records in done/ and failed/) and remembers in ``site/merged.json`` how far it has read
each log.  A launcher that moves a job with a rewrite (into failed/ or ready/, and into
done/ with ``launcher.merge_verdicts``) publishes the record with its events already
applied and marks the final event ``"merged": true`` (``MERGED``): the site then only
checks that the record is in place (and releases the job's children); it rewrites nothing.
A ``merged`` event whose move failed (the job was revoked meanwhile: a zombie) changes
nothing, like any event of an older attempt.  Readers (CLI, API) apply the events past those offsets on top of what they read
from disk, with the same ``apply_event``, so they show the truth even while the site is
stopped.  Merging is idempotent: an event already in a record's history is skipped, and an
event of an older attempt than the record's never changes its state (zombies).
"""
from __future__ import annotations

from pathlib import Path

from . import fsio
from .layout import Layout
from .record import transition

RUN_ENDS = ("RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT")
STARTED_BY = RUN_ENDS + ("KILLED",)       # events that say when the run they end started
MERGED = "merged"    # true on a final event whose move published the record with it merged
DETAIL_FIELDS = ("return_code", "host", "launcher", "batch_job", "started_at", "ended_at",
                 "error", "placement", "affinity", "retries", "result", "exception",
                 "data", "transfer_items")


def already_applied(rec: dict, ev: dict) -> bool:
    return any(h.get("t") == ev["t"] and h.get("to") == ev["to"] for h in rec.get("history") or ())


def apply_event(rec: dict, ev: dict) -> dict:
    """``rec`` with event ``ev`` merged in (a new dict; ``rec`` is not changed)."""
    if ev.get("job") != rec.get("id") or already_applied(rec, ev):
        return rec
    if ev.get("attempt", 0) < rec.get("attempt", 0):
        return rec  # a zombie's verdict on an attempt that was already revoked
    fields = {k: ev[k] for k in DETAIL_FIELDS if k in ev}
    if "attempt" in ev:
        fields["attempt"] = ev["attempt"]
    if ev["to"] in STARTED_BY and rec.get("state") != "RUNNING" and ev.get("started_at"):
        # The RUNNING event may have been merged away (the site keeps no per-job state
        # for running jobs); the end of a run says when it started, so the step is kept.
        rec = transition(rec, "RUNNING", ev.get("by", "?"), t=ev["started_at"])
    return transition(rec, ev["to"], ev.get("by", "?"), ev.get("msg"), t=ev["t"], **fields)


EXITS = ("JOB_FINISHED", "FAILED", "KILLED", "RESTART_READY", "READY")


def awaits_outcome(evs: list[dict]) -> bool:
    """True if one job's events (in log order) end in a run end whose outcome is not among
    them yet: the site holds such events until the outcome comes (``merge_state``).

    # race: a run end and its outcome can be far apart in a launcher's log (a postprocess
    # hook runs between them, up to its timeout), or a reader can see the one write that
    # holds both half done (a write that crosses a page boundary becomes visible page by
    # page).  The details live in the run end (return code, times, host), so it must not
    # be consumed alone; holding it per job, instead of not reading past it, lets every
    # later event of the same log be merged meanwhile, and a launcher that died before the
    # outcome holds nothing back when it is retired.
    """
    ended = False
    for ev in evs:
        if ev.get("to") in RUN_ENDS:
            ended = True
        elif ev.get("to") in EXITS:
            ended = False
    return ended


def event_logs(layout: Layout) -> dict[str, Path]:
    """Every launcher's event log, by launcher id."""
    return {name: layout.launchers / name / "events.jsonl"
            for name in fsio.list_dirs(layout.launchers)}


def merge_state(layout: Layout) -> tuple[dict[str, int], dict[str, list[dict]],
                                         dict[str, list[dict]]]:
    """The site's merge progress: (offset per launcher log, pending verdicts per job, held
    run ends per job).

    ``site/merged.json`` = ``{"offsets": {L: bytes}, "pending": {ID: [events]},
    "held": {ID: [events]}}``.  A verdict the site read before its launcher's rename made it
    visible stays in ``pending`` until the site has merged it; a run end read before its
    outcome stays in ``held`` (``awaits_outcome``).  So neither a site restart nor a reader
    loses either.
    """
    try:
        state = fsio.read_json(layout.site_dir / "merged.json", retry=False)   # absent: none yet
    except FileNotFoundError:
        return {}, {}, {}
    return (dict(state.get("offsets", {})), dict(state.get("pending", {})),
            dict(state.get("held", {})))


def save_merge_state(layout: Layout, offsets: dict, pending: dict, held: dict) -> None:
    """Written whole but not synced: merging is idempotent, so after a power loss an older
    state only means some events are merged again."""
    fsio.write_json_atomic(layout.site_dir / "merged.json",
                           {"offsets": offsets, "pending": pending, "held": held},
                           durable=False)


def unmerged_events(layout: Layout) -> dict[str, list[dict]]:
    """Events the site has not merged yet, by job id, in log order."""
    offsets, pending, held = merge_state(layout)
    by_job: dict[str, list[dict]] = {k: list(v) for k, v in held.items()}
    for k, v in pending.items():
        by_job.setdefault(k, []).extend(v)
    for launcher, path in event_logs(layout).items():
        events, _ = fsio.read_lines_from(path, offsets.get(launcher, 0))
        for ev in events:
            if "job" in ev:
                by_job.setdefault(ev["job"], []).append(ev)
    return by_job


def overlay(rec: dict, pending: dict[str, list[dict]]) -> dict:
    for ev in pending.get(rec.get("id"), ()):
        rec = apply_event(rec, ev)
    return rec
