"""Read a campaign off a site: records, transitions and allocations, into plain data.

Reads only; writes nothing, so it is safe beside a running site and launchers.

* **Jobs**: ``spool.query.select(layout, Filter(tags=...))`` (records with the launchers'
  unmerged events applied).  Of each record only its app, directory, resources, history
  and, for a failed job, the reason are kept.  The report covers the jobs the site holds:
  the history of a removed job is left out.
* **State counts**: ``spool.query.counts(layout)`` (names only) for the whole site; with a
  tag filter, a tally of the selected records by directory.
* **Transitions**: every per-writer event log (``api.events.log_paths``: the site's, live
  and retired launchers') merged with the records' histories by ``api.events.merge``, each
  transition once.  A launcher logs every transition it makes before the rename that
  publishes it, so the history entries written by a launcher whose log was read are
  skipped, and so are the site's: its unlogged steps (intake, a parent's failure, releasing
  children) never start or end a run or finish a job, and those that do (revokes) are in
  its log.  What is left comes from writers without a log (``spool job retry``, a script's
  ``Job.save``) or from a launcher whose log is gone; for such a RUNNING step the job's
  ``num_nodes``/``node_packing_count`` stand in for its placement.  Logs are streamed
  (``fsio.iter_lines``) and each line slimmed as it is read (a RUNNING line keeps its
  ``placement``, the rest only time, job and state): one launcher's log can hold every
  job's events, and parsed whole a 100 MB log took ~800 MB.
* **Allocations** (what was there to be busy): on a machine with a batch scheduler, each
  started batch job (``batch/N``: ``start_time`` .. ``end_time``, ``num_nodes``, and the
  machine's GPU ids per node); on the ``local`` machine -- or when no batch job has a start
  time -- each launcher's lease (``nodes``, ``gpus``, ``started_at`` .. ``ended_at``).  A
  launcher that died without writing ``ended_at`` ended when the site retired it; one still
  alive is open (until now).  Times are the launchers' own wall clocks, like their events.

The cyclic GC is paused while this reads (``gcpause``): at 100k jobs it tripled the time.

# race: logs grow and records move while this reads.  A log's last line may be half
# written (it is left out, as every reader does); a job moving between directories is seen
# once by ``select``; a transition read from both a log and a history counts once.  Logs
# are read before records, so a transition logged in between shows in the records (states,
# failures) and not in the series: the series are the campaign as of the log read.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import settings as settings_mod
from ..gcpause import paused
from ..api.analytics import Transition
from ..api.events import log_paths, merge
from ..spool import fsio
from ..spool.layout import Layout
from ..spool.lease import read_lease
from ..spool.query import JOB_DIRS, Filter, counts, select

_EMPTY: dict = {}
_ULID = re.compile(r"\b[0-9a-hjkmnp-tv-z]{26}\b")
_KILLED_BY = re.compile(r"^killed by \S+ at .+? \((.*?)\)")   # spool.kills.describe


@dataclass
class Allocation:
    start: float
    end: float | None            # None: still there
    nodes: int
    tiles: int
    name: str


@dataclass
class Campaign:
    """Everything the report needs, as plain data (``numbers.report`` is pure over it)."""

    site: str
    machine: str
    tags: dict[str, str]
    now: float
    states: dict[str, int]
    transitions: list[Transition]        # of the selected jobs, in time order (plain tuples)
    apps: dict[str, str]                 # job id -> app
    failures: list[str]                  # one reason per failed job
    allocations: list[Allocation]
    allocation_source: str               # "batch jobs" | "launchers" | "none"
    timings: dict[str, float] = field(default_factory=dict)


def failure_reason(message: str | None) -> str:
    """A failure message as a reason to group by: its first line, without the retry
    policy's note, with job ids replaced by ``<job>``."""
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    line = line.split("; retry policy spent", 1)[0].strip()
    line = _KILLED_BY.sub(r"killed (\1)", line)     # one group per way of killing, not per kill
    line = _ULID.sub("<job>", line)
    return (line[:77] + "...") if len(line) > 80 else (line or "(no reason recorded)")


def _reason(rec: dict) -> str:
    for h in reversed(rec.get("history") or ()):
        if h.get("to") in ("FAILED", "KILLED") and h.get("msg"):
            return failure_reason(h["msg"])
    return failure_reason(rec.get("error"))


def _slim(ev: dict) -> dict:
    """A log line cut down to what the report reads."""
    out = {"t": ev.get("t") or 0.0, "job": ev["job"], "to": ev["to"]}
    if ev["to"] == "RUNNING" and "placement" in ev:
        out["placement"] = ev["placement"]
    return out


def read_logs(layout: Layout, spans_of: set[str]):
    """(slim job transitions, launchers whose log was read, launcher -> (first, last) event
    time for the launchers in ``spans_of``, launcher -> when the site retired it)."""
    logged: list[dict] = []
    read_from: set[str] = set()
    spans: dict[str, tuple[float, float]] = {}
    retired: dict[str, float] = {}
    site_log = layout.site_dir / "events.jsonl"
    for path in log_paths(layout):
        if not path.exists():
            continue
        first = len(logged)
        if path == site_log:                          # the site's log: retirements too
            for ev in fsio.iter_lines(path):
                if "job" in ev and "to" in ev:
                    logged.append(_slim(ev))
                elif "retired" in ev and ev.get("launcher"):
                    retired[ev["launcher"]] = ev.get("t") or 0.0
            continue
        # streamed and slimmed line by line: one launcher's log may hold every job's events
        logged.extend(_slim(ev) for ev in fsio.iter_lines(path) if "job" in ev and "to" in ev)
        read_from.add(path.parent.name)
        if path.parent.name in spans_of and len(logged) > first:
            ts = [ev["t"] for ev in logged[first:]]
            spans[path.parent.name] = (min(ts), max(ts))
    return logged, frozenset(read_from), spans, retired


def _lease_dirs(layout: Layout) -> list[Path]:
    return ([layout.launchers / n for n in fsio.list_dirs(layout.launchers)]
            + [layout.launchers / ".retired" / n
               for n in fsio.list_dirs(layout.launchers / ".retired")])


def read_leases(layout: Layout) -> dict[str, dict]:
    """Every launcher's lease (live and retired), by launcher id."""
    out = {}
    for d in _lease_dirs(layout):
        lease = read_lease(d / "lease.json")
        if lease is not None:
            out[d.name] = lease
    return out


def launcher_allocations(leases: dict[str, dict], spans: dict[str, tuple[float, float]],
                         retired: dict[str, float], gpus_per_node: int) -> list[Allocation]:
    """One allocation per launcher: its nodes from ``started_at`` to ``ended_at``.  A lease
    without them (written before they existed) takes its log's first and last event."""
    out = []
    for name, lease in sorted(leases.items()):
        span = spans.get(name)
        start = lease.get("started_at") or (span[0] if span else None)
        if start is None:
            continue                   # an old lease of a launcher that never ran a job
        end = lease.get("ended_at") or retired.get(name)
        if end is None and lease.get("state") == "exited":
            end = span[1] if span else start
        nodes = len(lease.get("nodes") or ()) or 1
        tiles = lease.get("gpus")
        out.append(Allocation(float(start), float(end) if end else None, nodes,
                              int(tiles) if tiles is not None else nodes * gpus_per_node, name))
    return out


def batch_allocations(layout: Layout, gpus_per_node: int) -> list[Allocation]:
    from ..site import batch as batch_mod
    out = []
    for rec in batch_mod.load_all(layout):
        if not rec.get("start_time"):
            continue
        n = int(rec.get("num_nodes") or 0)
        out.append(Allocation(float(rec["start_time"]),
                              float(rec["end_time"]) if rec.get("end_time") else None,
                              n, n * gpus_per_node, f"batch job {rec['id']}"))
    return out


def gather(layout: Layout, tags: dict[str, str] | None = None, now: float | None = None) -> Campaign:
    with paused():                  # millions of small objects, none cyclic (see gcpause)
        return _gather(layout, dict(tags or {}), now)


def _gather(layout: Layout, tags: dict[str, str], now: float | None) -> Campaign:
    clock = time.perf_counter
    timings: dict[str, float] = {}
    settings = settings_mod.load(layout.settings)
    machine = settings_mod.machine_from_settings(settings)
    now = time.time() if now is None else now

    t = clock()
    leases = read_leases(layout)
    logged, logged_by, spans, retired = read_logs(
        layout, {k for k, v in leases.items() if not (v.get("started_at") and v.get("ended_at"))})
    # A launcher logs every transition it makes; the site's own unlogged steps (intake,
    # a parent's failure, releasing children) never start or end a run or finish a job.
    logged_by |= {"site"}
    timings["read logs"] = clock() - t

    t = clock()
    light: list[dict] = []
    apps: dict[str, str] = {}
    sizes: dict[str, tuple] = {}
    failures: list[str] = []
    tally: dict[str, int] = {}
    for rec in select(layout, Filter(tags=tags)):
        job = rec["id"]
        hist = [h for h in rec.get("history") or () if h.get("by") not in logged_by]
        if hist:
            light.append({"id": job, "history": hist})
        apps[job] = rec.get("app") or "?"
        sizes[job] = (rec.get("num_nodes") or 1, rec.get("node_packing_count") or 1)
        d = rec["_dir"]
        tally[d] = tally.get(d, 0) + 1
        if d == "failed":
            failures.append(_reason(rec))
    timings["read records"] = clock() - t

    t = clock()
    states = counts(layout) if not tags else {d: tally.get(d, 0) for d in JOB_DIRS}
    timings["count states"] = clock() - t

    t = clock()
    def sized(job):               # a RUNNING step only a history holds (its log is gone)
        n, k = sizes.get(job, (1, 1))
        return {"num_nodes": n, "node_packing_count": k}
    # plain (t, job, to, data) tuples: what a Transition is, without its constructor's cost
    transitions = [(tt, job, to, _EMPTY if to != "RUNNING" else ev if ev is not None else sized(job))
                   for tt, job, to, _, ev in merge(light, logged, set(apps), logged_by)]
    del light, logged
    timings["merge"] = clock() - t

    t = clock()
    gpus = len(machine.gpu_ids)
    allocations, source = [], "none"
    if machine.scheduler != "local":
        allocations = batch_allocations(layout, gpus)
        source = "batch jobs" if allocations else source
    if not allocations:
        allocations = launcher_allocations(leases, spans, retired, gpus)
        source = "launchers" if allocations else source
    timings["read allocations"] = clock() - t

    return Campaign(site=settings.get("site_name") or layout.root.name, machine=machine.name,
                    tags=tags, now=now, states=states, transitions=transitions, apps=apps,
                    failures=failures, allocations=allocations, allocation_source=source,
                    timings=timings)
