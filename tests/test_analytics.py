"""``spoolbalsam.api.analytics`` and the report's numbers, as pure functions over hand-built
events: no site, no processes."""
from __future__ import annotations

import datetime as _dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolbalsam.api.analytics import (Transition, available_nodes, integral, runs,
                                       throughput_report, utilization_report, value_at)
from spoolbalsam.api.events import EventLog, merge
from spoolbalsam.launch.resources import NODE_UNITS
from spoolbalsam.report.gather import Allocation, Campaign, failure_reason
from spoolbalsam.report.numbers import quantile, report

UTC = _dt.timezone.utc
T0 = 1_800_000_000.0


def placement(hosts: int = 1, pack: int = 1, tiles: int = 0) -> dict:
    """A launcher's placement: ``hosts`` nodes, 1/``pack`` of each, ``tiles`` GPU ids each."""
    units = NODE_UNITS if hosts > 1 else NODE_UNITS // pack
    return {"hosts": [f"n{i}" for i in range(hosts)], "cpus": [[0]] * hosts,
            "gpus": [[f"{g}.0" for g in range(tiles)]] * hosts, "units": units}


def ev(t: float, job: str, to: str, **data) -> dict:
    """A raw log line."""
    return {"t": T0 + t, "job": job, "to": to, **data}


def run(job: str, start: float, end: float | None, **p) -> list[dict]:
    out = [ev(start, job, "RUNNING", placement=placement(**p))]
    if end is not None:
        out += [ev(end, job, "RUN_DONE"), ev(end, job, "JOB_FINISHED")]
    return out


def at(series, t: float) -> float:
    times, values = series
    return value_at([x.timestamp() for x in times], values, T0 + t)


# ---- empty input -------------------------------------------------------------------------------
def test_no_events_give_empty_series():
    assert throughput_report([]) == ([], [])
    assert utilization_report([]) == ([], [])
    assert utilization_report([], unit="tiles") == ([], [])
    assert available_nodes([]) == ([], [])


# ---- throughput --------------------------------------------------------------------------------
def test_throughput_counts_transitions_into_the_state_in_time_order():
    events = run("a", 0, 30) + run("b", 5, 10) + run("c", 1, None)
    events += [ev(40, "d", "FAILED")]
    random.Random(1).shuffle(events)
    times, counts = throughput_report(events)
    finished = sorted(e["t"] for e in events if e["to"] == "JOB_FINISHED")
    assert [t.timestamp() for t in times] == finished
    assert counts == list(range(1, len(finished) + 1))
    assert all(t.tzinfo is not None for t in times)
    times, counts = throughput_report(events, to_state="FAILED")
    assert [t.timestamp() for t in times] == [T0 + 40] and counts == [1]


def test_eventlog_objects_and_log_lines_give_the_same_reports():
    lines = run("a", 0, 30, pack=2, tiles=1) + run("b", 5, 10, pack=2, tiles=1)
    objs = [EventLog(e["job"], e["t"], None, e["to"], {k: v for k, v in e.items()
                                                      if k not in ("t", "job", "to")})
            for e in lines]
    assert throughput_report(objs) == throughput_report(lines)
    assert utilization_report(objs) == utilization_report(lines)
    assert utilization_report(objs, unit="tiles") == utilization_report(lines, unit="tiles")


# ---- utilization -------------------------------------------------------------------------------
def test_node_weighting_counts_a_packed_job_as_its_share_of_a_node():
    events = run("a", 10, 20, pack=2) + run("b", 15, 30, pack=2) + run("m", 40, 50, hosts=3)
    series = utilization_report(events)
    assert at(series, 5) == 0
    assert at(series, 12) == 0.5
    assert at(series, 17) == 1.0
    assert at(series, 25) == 0.5
    assert at(series, 35) == 0
    assert at(series, 45) == 3          # a multi-node job holds its nodes whole
    assert series[1][-1] == 0


def test_without_node_weighting_each_running_job_counts_one():
    events = run("a", 10, 20, pack=2) + run("b", 15, 30, pack=2) + run("m", 40, 50, hosts=3)
    series = utilization_report(events, node_weighting=False)
    assert (at(series, 12), at(series, 17), at(series, 45)) == (1, 2, 1)


def test_tiles_count_the_gpu_ids_of_the_placement():
    events = run("a", 10, 20, pack=12, tiles=1) + run("b", 15, 30, pack=6, tiles=2)
    events += run("m", 40, 50, hosts=2, tiles=12)
    series = utilization_report(events, unit="tiles")
    assert (at(series, 12), at(series, 17), at(series, 25), at(series, 45)) == (1, 3, 2, 24)


def test_balsam_style_data_without_a_placement_is_weighted_by_num_nodes_over_packing():
    events = [ev(0, "a", "RUNNING", num_nodes=1, node_packing_count=4), ev(10, "a", "RUN_DONE"),
              ev(0, "b", "RUNNING"), ev(5, "b", "RUN_DONE")]
    series = utilization_report(events)
    assert at(series, 1) == 1.25 and at(series, 7) == 0.25 and series[1][-1] == 0


def test_twelve_jobs_packed_on_one_node_fill_it_exactly_and_leave_it_exactly_empty():
    events = []
    for i in range(12):
        events += run(f"j{i}", 0, 10 + i, pack=12, tiles=1)
    series = utilization_report(events)
    assert max(series[1]) == 1.0          # integer occupancy units, not 12 x 0.08333
    assert series[1][-1] == 0
    assert at(series, 10.5) == 11 / 12


def test_a_retried_job_has_two_runs_and_is_idle_between_them():
    events = [ev(10, "r", "RUNNING", placement=placement()), ev(12, "r", "RUN_ERROR"),
              ev(12, "r", "RESTART_READY"), ev(20, "r", "RUNNING", placement=placement()),
              ev(25, "r", "RUN_DONE"), ev(25, "r", "JOB_FINISHED")]
    spans = runs(Transition(e["t"], e["job"], e["to"], e) for e in events)
    assert [(r.start - T0, r.end - T0) for r in spans] == [(10, 12), (20, 25)]
    series = utilization_report(events)
    assert (at(series, 11), at(series, 15), at(series, 22), at(series, 30)) == (1, 0, 1, 0)


def test_a_job_still_running_holds_its_share_to_the_end():
    events = run("done", 0, 10) + run("still", 5, None, pack=4)
    series = utilization_report(events)
    assert series[1][-1] == 0.25
    assert at(series, 1e6) == 0.25
    assert runs(Transition(e["t"], e["job"], e["to"], e) for e in events)[-1].end is None


def test_a_run_ends_at_the_jobs_next_transition_whatever_it_is():
    # a revoke (RUN_TIMEOUT by the site), or a second RUNNING without an end in between
    events = [ev(0, "a", "RUNNING", placement=placement()), ev(4, "a", "RUN_TIMEOUT"),
              ev(6, "b", "RUNNING", placement=placement()),
              ev(8, "b", "RUNNING", placement=placement(pack=2)), ev(9, "b", "RUN_DONE")]
    spans = runs(Transition(e["t"], e["job"], e["to"], e) for e in events)
    assert [(r.job, r.start - T0, r.end - T0) for r in spans] == [("a", 0, 4), ("b", 6, 8),
                                                                    ("b", 8, 9)]
    series = utilization_report(events)
    assert (at(series, 7), at(series, 8.5), at(series, 10)) == (1, 0.5, 0)


def test_unknown_unit_is_refused():
    with pytest.raises(ValueError, match="unit"):
        utilization_report(run("a", 0, 1), unit="cores")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 50), st.integers(1, 12),
                          st.integers(0, 4), st.booleans()), max_size=25),
       st.lists(st.integers(-5, 160), min_size=1, max_size=10))
def test_busy_at_any_instant_is_the_sum_over_the_runs_covering_it(specs, probes):
    events, spans = [], []
    for i, (start, length, pack, tiles, ended) in enumerate(specs):
        end = start + length if ended else None
        events += run(f"j{i}", start, end, pack=pack, tiles=tiles)
        spans.append((start, end, pack, tiles))
    nodes = utilization_report(events)
    tile_series = utilization_report(events, unit="tiles")
    for p in probes:
        covering = [s for s in spans if s[0] <= p and (s[1] is None or p < s[1])]
        expect_units = sum(NODE_UNITS // s[2] for s in covering)
        assert at(nodes, p) == expect_units / NODE_UNITS
        assert at(tile_series, p) == sum(s[3] for s in covering)
    times = [t.timestamp() for t in nodes[0]]
    area = integral(times, nodes[1], T0, T0 + 200)
    expect = sum((min(s[1] if s[1] is not None else 200, 200) - s[0]) * (NODE_UNITS // s[2])
                 for s in spans) / NODE_UNITS
    assert area == pytest.approx(expect, rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(-3, 3)), max_size=12),
       st.integers(-10, 70), st.integers(-10, 70))
def test_integral_is_the_area_under_the_steps_in_any_window(points, a, b):
    points = sorted(dict(points).items())          # distinct instants, in order
    times, values = [float(t) for t, _ in points], [v for _, v in points]
    # brute force: the value on each unit interval [x, x+1) of the window
    expect = sum(value_at(times, values, x) for x in range(a, b)) if b > a else 0
    assert integral(times, values, a, b) == pytest.approx(expect)


# ---- allocations -------------------------------------------------------------------------------
class FakeBatchJob:
    def __init__(self, start, end, n):
        self.start_time, self.end_time, self.num_nodes = start, end, n


def test_available_nodes_follows_batch_jobs_start_to_end():
    dt = lambda s: _dt.datetime.fromtimestamp(T0 + s, UTC)  # noqa: E731
    jobs = [FakeBatchJob(dt(0), dt(100), 4), FakeBatchJob(dt(50), None, 2),   # still running
            FakeBatchJob(None, None, 8),                                        # never started
            {"start_time": T0 + 20, "end_time": T0 + 60, "num_nodes": 1}]      # a record
    times, nodes = available_nodes(jobs)
    got = lambda s: value_at([t.timestamp() for t in times], nodes, T0 + s)  # noqa: E731
    assert (got(-1), got(10), got(30), got(55), got(70), got(150)) == (0, 4, 5, 7, 6, 2)
    assert all(isinstance(n, int) for n in nodes)


def test_integral_and_value_at_of_a_step_series():
    times, values = [10.0, 20.0, 30.0], [2, 5, 0]
    assert value_at(times, values, 9.9) == 0 and value_at(times, values, 20) == 5
    assert integral(times, values, 0, 100) == 2 * 10 + 5 * 10
    assert integral(times, values, 15, 25) == 2 * 5 + 5 * 5
    assert integral(times, values, 40, 30) == 0


# ---- the merge of histories and logs -----------------------------------------------------------
def test_a_transition_in_a_history_and_a_log_is_kept_once_with_the_logs_details():
    hist = [{"t": T0, "from": "CREATED", "to": "READY", "by": "site"},
            {"t": T0 + 1, "from": "READY", "to": "RUNNING", "by": "L"}]
    logged = [ev(1, "a", "RUNNING", placement=placement(pack=2)), ev(3, "a", "RUN_DONE"),
              ev(2, "gone", "RUNNING")]
    merged = merge([{"id": "a", "history": hist}], logged, {"a"})
    assert [(e[0] - T0, e[2]) for e in merged] == [(0, "READY"), (1, "RUNNING"), (3, "RUN_DONE")]
    assert merged[1][3] is hist[1] and merged[1][4]["placement"]["units"] == NODE_UNITS // 2


# ---- the report's numbers over a hand-built campaign -------------------------------------------
def campaign(transitions, allocations=(), tags=None, now=None, failures=(), apps=None):
    trs = sorted((Transition(e["t"], e["job"], e["to"], e) for e in transitions),
                 key=lambda t: t.t)
    return Campaign(site="s", machine="local", tags=tags or {}, now=now or T0 + 1000,
                    states={"done": 2, "failed": len(failures)}, transitions=trs,
                    apps=apps or {}, failures=list(failures), allocations=list(allocations),
                    allocation_source="launchers")


def test_report_window_throughput_and_utilization():
    events = run("a", 10, 70, pack=2, tiles=6) + run("b", 10, 130, pack=2, tiles=6)
    alloc = [Allocation(T0, T0 + 150, 1, 12, "L")]        # idle for 20 s at the end
    r = report(campaign(events, alloc, apps={"a": "Sim", "b": "Sim"}))
    assert r["start"] == T0 and r["end"] == T0 + 150          # the allocation's start to end
    assert r["finished"]["count"] == 2
    assert r["finished"]["minutes"] == [70 / 60, 130 / 60]
    assert r["finished"]["per_minute"] == pytest.approx(2 / (150 / 60))
    busy_node_s = 0.5 * 60 + 0.5 * 120
    assert r["utilization"]["nodes_percent"] == pytest.approx(100 * busy_node_s / 150)
    assert r["utilization"]["tiles_percent"] == pytest.approx(100 * (6 * 60 + 6 * 120) / (12 * 150))
    rt = r["run_time_sec"]["Sim"]
    assert (rt["runs"], rt["min"], rt["max"], rt["median"]) == (2, 60, 120, 90)


def test_report_of_a_tag_filter_uses_the_jobs_window_and_clips_the_allocation():
    events = run("a", 100, 160)
    alloc = [Allocation(T0, T0 + 1000, 2, 0, "L")]
    r = report(campaign(events, alloc, tags={"k": "v"}))
    assert (r["start"], r["end"]) == (T0 + 100, T0 + 160)
    assert r["utilization"]["nodes_percent"] == pytest.approx(50)      # 1 of 2 nodes
    assert r["utilization"]["tiles_percent"] is None


def test_report_runs_to_now_while_a_job_runs():
    r = report(campaign(run("a", 0, None), now=T0 + 300))
    assert r["end"] == T0 + 300 and r["running_now"] == 1
    assert r["utilization"]["nodes_percent"] is None        # no allocation recorded
    assert r["utilization"]["busy_node_hours"] == pytest.approx(300 / 3600)


def test_report_of_an_empty_site():
    r = report(campaign([]))
    assert r["finished"]["count"] == 0 and r["finished"]["per_minute"] is None
    assert r["busy"]["minutes"] == [] and r["run_time_sec"] == {} and r["failures"] == {}


def test_failures_are_grouped_by_reason():
    reasons = [failure_reason("exit code 3; retry policy spent (errors: 2 allowed)"),
               failure_reason("exit code 3"),
               failure_reason("parent 01m90t683vkrqqgp121ehd1kw6 failed"),
               failure_reason("parent 01m90t687cpg7d0jh8mp88yj0m failed"),
               failure_reason(None)]
    r = report(campaign([], failures=reasons))
    assert r["failures"] == {"exit code 3": 2, "parent <job> failed": 2,
                             "(no reason recorded)": 1}


def test_quantiles_interpolate_between_ranks():
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([5.0], 0.9) == 5.0
    assert quantile([0.0, 10.0], 0.9) == 9.0
