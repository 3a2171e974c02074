"""The report's numbers: a pure function of a ``gather.Campaign`` (what ``--json`` prints).

Window: the campaign starts at its first run, finish or allocation start, whichever is
first, and ends at its last one -- or now, while a job runs or an allocation is open.  With
a tag filter, the window is that of the selected jobs (first run or finish to the last)
and the allocations are counted inside it only.  Every time in the document is in
**minutes from the campaign start** (``start`` is that instant in epoch seconds), the axis
of the PNG.

* ``finished``: the JOB_FINISHED transitions as a cumulative step series, and the rate
  over the window (jobs per minute).
* ``busy``: nodes (as placed: a job packed ``k`` to a node holds ``1/k``) and tiles (GPU ids)
  held by running jobs, one step series (``api.analytics.runs``: RUNNING to the job's
  next transition, every attempt).
* ``allocated``: nodes and tiles of the allocations (``gather``), one step series.
* ``utilization``: busy node-hours / allocated node-hours inside the window, in percent
  (and the same for tiles); ``null`` without allocations (or without tiles).
* ``run_time_sec``: per app, the durations of the runs that ended (every attempt): count,
  min, quartiles, 90th percentile, max, mean (linear interpolation between ranks).
* ``failures``: failed jobs per reason, most frequent first.
"""
from __future__ import annotations

import math

from ..api.analytics import (allocation_changes, busy_changes, finish_times, integral,
                             node_units, runs, scale, step_series, tile_count)
from ..spool.query import JOB_DIRS
from .gather import Campaign

STATE_ORDER = JOB_DIRS + ("rejected",)


def quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile of ascending values, interpolated linearly between ranks."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def run_time_stats(durations: list[float]) -> dict:
    d = sorted(durations)
    return {"runs": len(d), "min": d[0], "p25": quantile(d, 0.25), "median": quantile(d, 0.5),
            "p75": quantile(d, 0.75), "p90": quantile(d, 0.9), "max": d[-1],
            "mean": sum(d) / len(d)}


def _window(c: Campaign, spans, finishes) -> tuple[float, float]:
    starts = [r.start for r in spans[:1]] + finishes[:1]
    ends = [r.end for r in spans if r.end is not None] + finishes[-1:]
    open_work = any(r.end is None for r in spans)
    if not c.tags:
        starts += [a.start for a in c.allocations]
        ends += [a.end for a in c.allocations if a.end is not None]
        open_work = open_work or any(a.end is None for a in c.allocations)
    if not starts:
        return c.now, c.now
    t0 = min(starts)
    t1 = c.now if open_work else max(ends + [t0])
    return t0, max(t1, t0)


def report(c: Campaign) -> dict:
    finishes = finish_times(c.transitions)
    spans = runs(c.transitions)
    t0, t1 = _window(c, spans, finishes)
    minutes = (t1 - t0) / 60

    def rel(times):
        return [(t - t0) / 60 for t in times]

    # Zero weights keep their instants, so the nodes and tiles series share a time axis.
    busy_t, busy_nodes = step_series(busy_changes(spans, [node_units(r.data) for r in spans]),
                                     scale("nodes"))
    _, busy_tiles = step_series(busy_changes(spans, [tile_count(r.data) for r in spans]))
    alloc_t, alloc_nodes = step_series(allocation_changes(
        (a.start, a.end, a.nodes) for a in c.allocations))
    _, alloc_tiles = step_series(allocation_changes(
        (a.start, a.end, a.tiles) for a in c.allocations))

    def hours(times, values):
        return integral(times, values, t0, t1) / 3600

    busy_nh, alloc_nh = hours(busy_t, busy_nodes), hours(alloc_t, alloc_nodes)
    busy_th, alloc_th = hours(busy_t, busy_tiles), hours(alloc_t, alloc_tiles)

    durations: dict[str, list[float]] = {}
    for r in spans:
        if r.end is not None:
            durations.setdefault(c.apps.get(r.job, "?"), []).append(r.end - r.start)
    failures: dict[str, int] = {}
    for reason in c.failures:
        failures[reason] = failures.get(reason, 0) + 1

    return {
        "site": c.site, "machine": c.machine, "tags": c.tags,
        "start": t0, "end": t1, "minutes": minutes,
        "jobs": sum(v for k, v in c.states.items() if k != "rejected"),
        "states": {**{k: c.states[k] for k in STATE_ORDER if k in c.states},
                   **{k: v for k, v in c.states.items() if k not in STATE_ORDER}},
        "finished": {"count": len(finishes), "per_minute": len(finishes) / minutes if minutes > 0 else None,
                     "minutes": rel(finishes), "cumulative": list(range(1, len(finishes) + 1))},
        "running_now": sum(1 for r in spans if r.end is None),
        "busy": {"minutes": rel(busy_t), "nodes": busy_nodes, "tiles": busy_tiles},
        "allocated": {"source": c.allocation_source, "count": len(c.allocations),
                      "minutes": rel(alloc_t), "nodes": alloc_nodes, "tiles": alloc_tiles},
        "utilization": {
            "busy_node_hours": busy_nh, "allocated_node_hours": alloc_nh,
            "nodes_percent": 100 * busy_nh / alloc_nh if alloc_nh > 0 else None,
            "busy_tile_hours": busy_th, "allocated_tile_hours": alloc_th,
            "tiles_percent": 100 * busy_th / alloc_th if alloc_th > 0 else None,
        },
        "run_time_sec": {app: run_time_stats(d) for app, d in sorted(durations.items())},
        "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
