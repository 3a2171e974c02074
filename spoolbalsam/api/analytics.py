"""Balsam's ``balsam.analytics`` over a spoolbalsam site: throughput, utilization, allocation.

A Balsam notebook runs with its import lines changed::

    from spoolbalsam.api import BatchJob, EventLog
    from spoolbalsam.api.analytics import available_nodes, throughput_report, utilization_report

    times, done = throughput_report(EventLog.objects.filter(tags={"workflow": "x"}))
    plt.step(times, done, where="post")

Return shapes are Balsam's: two lists of equal length, times (timezone-aware UTC
``datetime``) and values, a step series (value ``i`` holds from ``times[i]`` until
``times[i + 1]``; plot it with ``where="post"``).  Empty input gives ``([], [])``, where
Balsam raises.

Semantics
---------
* ``throughput_report(events, to_state)``: the times of the transitions into ``to_state``
  in time order, and ``1 .. n`` (one point per transition, as Balsam).
* ``utilization_report(events, node_weighting=True, unit="nodes")``: what the running jobs
  hold.  A *run* is a job's transition into RUNNING up to that job's next transition (in
  Balsam's words: the next event ``from_state == "RUNNING"``); a retried job has one run per
  attempt, and a job still running holds its share to the end of the series.  Weights:
  with ``node_weighting`` a run counts its nodes as placed -- ``num_nodes /
  node_packing_count`` for a packed single-node job, ``num_nodes`` for a multi-node job
  (Balsam's weighting) -- read from the RUNNING event's ``placement`` (hosts x occupancy
  units), else from ``num_nodes``/``node_packing_count`` in its data, else 1; without it
  every run counts 1 (running jobs).  ``unit="tiles"`` counts the GPU ids the placement
  gave the run instead (tiles on Aurora, GPUs elsewhere).  One point per distinct instant
  (all changes at one instant applied together; Balsam emits one point per event).
* ``available_nodes(batch_jobs)``: the nodes of the batch jobs that have started, from
  their start to their end; a batch job still running counts up to the end of the series
  (Balsam skips it).

The arithmetic is pure and exact: weights are integers (nodes in occupancy units of
``resources.NODE_UNITS``, tiles, jobs) summed as integers and scaled once, so a node packed
by twelve jobs is busy ``1.0``, never ``0.9999999``.  ``spool report`` feeds the same
functions (``runs``, ``busy_changes``, ``step_series``, ``integral``) from the raw logs.
"""
from __future__ import annotations

import bisect
import datetime as _dt
from itertools import accumulate
from operator import itemgetter, mul, sub
from typing import Any, Iterable, NamedTuple

from ..gcpause import paused
from ..launch.resources import NODE_UNITS

RUNNING = "RUNNING"
UNITS = ("nodes", "tiles", "jobs")
_first = itemgetter(0)


class Transition(NamedTuple):
    """One state change of one job: epoch seconds, job id, target state, details.  The
    arithmetic reads it by index, so a plain ``(t, job, to, data)`` tuple serves too."""

    t: float
    job: str
    to: str
    data: dict


class Run(NamedTuple):
    """A job's stay in RUNNING: from ``start`` until ``end`` (None: still running)."""

    start: float
    end: float | None
    job: str
    data: dict


# ---- from Balsam's inputs to plain data --------------------------------------------------------
def _epoch(v) -> float:
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=_dt.timezone.utc)
        return v.timestamp()
    return float(v)


def as_transition(ev: Any) -> Transition:
    """An ``EventLog`` object, a raw log line (``{"t", "job", "to", ...}``) or a
    ``Transition`` as a ``Transition``."""
    if isinstance(ev, Transition):
        return ev
    if isinstance(ev, dict):
        if "job" in ev:
            return Transition(float(ev["t"]), ev["job"], ev["to"], ev)
        return Transition(_epoch(ev["timestamp"]), ev["job_id"], ev["to_state"],
                          ev.get("data") or {})
    t = getattr(ev, "_t", None)
    return Transition(float(t) if t is not None else _epoch(ev.timestamp), ev.job_id,
                      ev.to_state, ev.data or {})


def _to_datetimes(times: list[float]) -> list[_dt.datetime]:
    utc = _dt.timezone.utc
    return [_dt.datetime.fromtimestamp(t, utc) for t in times]


# ---- the arithmetic (pure) ---------------------------------------------------------------------
def finish_times(transitions: Iterable[Transition], to_state: str = "JOB_FINISHED") -> list[float]:
    """The times of the transitions into ``to_state``, sorted."""
    return sorted(tr[0] for tr in transitions if tr[2] == to_state)


def runs(transitions: Iterable[Transition]) -> list[Run]:
    """Every stay in RUNNING: a RUNNING transition up to the same job's next transition.

    ``transitions`` may come in any order; they are taken in time order (a job's
    transitions at one instant keep their given order)."""
    ordered = sorted(transitions, key=_first)
    open_runs: dict[str, Transition] = {}
    out: list[Run] = []
    add = out.append
    for tr in ordered:                     # (t, job, to, data), by index: a hot loop
        begun = open_runs.pop(tr[1], None)
        if begun is not None:
            add(Run(begun[0], tr[0], tr[1], begun[3]))
        if tr[2] == RUNNING:
            open_runs[tr[1]] = tr
    out.extend(Run(tr[0], None, tr[1], tr[3]) for tr in open_runs.values())
    out.sort(key=_first)
    return out


def node_units(data: dict, fallback: int = NODE_UNITS) -> int:
    """Nodes a run holds, in occupancy units (``NODE_UNITS`` = one whole node)."""
    p = data.get("placement")
    if isinstance(p, dict) and p.get("hosts"):
        return len(p["hosts"]) * int(p.get("units", NODE_UNITS))
    if data.get("num_nodes") is not None:
        n = float(data["num_nodes"])
        k = max(int(data.get("node_packing_count") or 1), 1)
        return round(n * NODE_UNITS / k) if n <= 1 else round(n * NODE_UNITS)
    return fallback


def tile_count(data: dict, fallback: int = 0) -> int:
    """GPU ids (tiles) a run holds, from its placement."""
    p = data.get("placement")
    if isinstance(p, dict) and p.get("hosts"):
        return sum(len(g) for g in p.get("gpus") or ())
    return fallback


def weight(data: dict, unit: str = "nodes") -> int:
    """A run's integer weight in ``unit`` (nodes: occupancy units; see ``scale``)."""
    if unit == "nodes":
        return node_units(data)
    if unit == "tiles":
        return tile_count(data)
    if unit == "jobs":
        return 1
    raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")


def scale(unit: str) -> int:
    """What one of ``unit`` is in the integer weights: a node is ``NODE_UNITS``."""
    return NODE_UNITS if unit == "nodes" else 1


def busy_changes(spans: Iterable[Run], weights: Iterable[int]) -> list[tuple[float, int]]:
    """(instant, change) pairs: +weight at each run's start, -weight at its end.  A zero
    weight still marks its instants, so series of one set of runs share one time axis."""
    out: list[tuple[float, int]] = []
    for r, w in zip(spans, weights):
        out.append((r.start, w))
        if r.end is not None:
            out.append((r.end, -w))
    return out


def step_series(changes: Iterable[tuple[float, int]], per: int = 1) -> tuple[list[float], list[float]]:
    """The running sum of ``changes`` after each distinct instant, divided by ``per``.

    Integers are summed exactly and divided once, so the series returns to exactly 0."""
    ordered = sorted(changes, key=_first)
    if not ordered:
        return [], []
    times = [c[0] for c in ordered]
    totals = list(accumulate(c[1] for c in ordered))
    last = len(times) - 1
    # one point per instant: the sum after its last change
    keep = [i for i in range(last) if times[i] != times[i + 1]] + [last]
    if per == 1:
        return [times[i] for i in keep], [totals[i] for i in keep]
    return [times[i] for i in keep], [totals[i] / per for i in keep]


def value_at(times: list[float], values: list[float], t: float) -> float:
    """The step series' value at instant ``t`` (0 before its first point)."""
    i = bisect.bisect_right(times, t) - 1
    return values[i] if i >= 0 else 0


def integral(times: list[float], values: list[float], t0: float, t1: float) -> float:
    """The area under the step series between ``t0`` and ``t1`` (value x seconds)."""
    if t1 <= t0 or not times:
        return 0.0
    i = max(bisect.bisect_right(times, t0) - 1, 0)       # the step holding t0 (or the first)
    j = bisect.bisect_left(times, t1)                      # the first point at or after t1
    if j <= i:
        return 0.0 if times[i] > t0 else values[i] * (t1 - t0)
    # whole steps i .. j-1, then trim the first one's head before t0 and the last one's
    # tail after t1
    edges = times[i:j] + [t1]
    area = sum(map(mul, values[i:j], map(sub, edges[1:], edges[:-1])))
    if times[i] < t0:
        area -= values[i] * (t0 - times[i])
    return area


def allocation_changes(spans: Iterable[tuple[float, float | None, int]]) -> list[tuple[float, int]]:
    """(instant, change) pairs of allocations given as (start, end or None, size); one
    without a start is skipped."""
    out: list[tuple[float, int]] = []
    for start, end, size in spans:
        if start is None:
            continue
        out.append((start, size))
        if end is not None:
            out.append((end, -size))
    return out


# ---- Balsam's functions ------------------------------------------------------------------------
def throughput_report(events: Iterable[Any], to_state: str = "JOB_FINISHED"
                      ) -> tuple[list[_dt.datetime], list[int]]:
    """(times, cumulative count) of the transitions into ``to_state``."""
    with paused():
        times = finish_times((as_transition(e) for e in events), to_state)
        return _to_datetimes(times), list(range(1, len(times) + 1))


def utilization_report(events: Iterable[Any], node_weighting: bool = True, unit: str = "nodes"
                       ) -> tuple[list[_dt.datetime], list[float]]:
    """(times, busy) of the running jobs: nodes (weighted as placed), or running jobs
    without ``node_weighting``, or tiles with ``unit="tiles"``."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if unit == "nodes" and not node_weighting:
        unit = "jobs"
    with paused():
        spans = runs(as_transition(e) for e in events)
        times, values = step_series(busy_changes(spans, (weight(r.data, unit) for r in spans)),
                                    scale(unit))
        return _to_datetimes(times), values


def _batch_span(bj: Any) -> tuple[float | None, float | None, int]:
    get = bj.get if isinstance(bj, dict) else (lambda k: getattr(bj, k, None))
    start, end = get("start_time"), get("end_time")
    return (_epoch(start) if start else None, _epoch(end) if end else None,
            int(get("num_nodes") or 0))


def available_nodes(batch_jobs: Iterable[Any]) -> tuple[list[_dt.datetime], list[int]]:
    """(times, nodes) allocated by the batch jobs (``BatchJob`` objects or their records)."""
    times, values = step_series(allocation_changes(_batch_span(b) for b in batch_jobs))
    return _to_datetimes(times), [int(v) for v in values]
