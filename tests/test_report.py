"""``spool report`` and ``--json`` on the listing commands, on a small real campaign.

One campaign per module: a local site, its real site process, a batch job that the site
starts as a real launcher (``spool queue submit``), and jobs of known durations (``sleep 1``
packed two to a node), whole-node jobs and a job that fails three times.  Every number the
report prints is checked against the event logs and lease files read here, independently
(``campaign_helpers.run_intervals`` pairs each start with its end in the launchers' logs).
"""
from __future__ import annotations

import bisect
import json
import os
import struct
import sys
import time
from pathlib import Path

import pytest

from campaign_helpers import launcher_events, run_intervals
from helpers import (edit_settings, make_site, reap_site_processes, spool, spool_sub,
                     start_site, stop_site, wait_for)
from spoolbalsam.launch.resources import NODE_UNITS

SCRIPTS = Path(__file__).parent / "api_scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLEEP_SECS = 1.0
GPUS = 4


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = make_site(tmp_path_factory.mktemp("report") / "S", gpus=GPUS, cpus=4)
    edit_settings(root, {"scheduler": {"sync_period_sec": 0.5},
                         "launcher": {"idle_ttl_sec": 2}})
    try:
        start_site(root)
        for i in range(4):
            spool(root, "job", "create", "-a", "Sleep", "-w", f"a/s{i}", "-p",
                  f"secs={SLEEP_SECS}", "-npc", "2", "-g", "1", "--tag", "wave=a")
        for i in range(2):
            spool(root, "job", "create", "-a", "EchoHello", "-w", f"b/e{i}", "-p",
                  "say_hello_to=report", "--tag", "wave=b")
        spool(root, "job", "create", "-a", "Fail", "-w", "b/f", "--tag", "wave=b")
        spool(root, "queue", "submit", "-n", "1", "-t", "10", "-j", "serial")
        wait_for(lambda: _counts(root)["done"] == 6 and _counts(root)["failed"] == 1, 90,
                 "the campaign to end")
        wait_for(lambda: '"finished"' in spool(root, "queue", "ls", "--history", "--json").stdout,
                 60, "the batch job to finish")
        stop_site(root)
        yield root
    finally:
        stop_site(root)
        reap_site_processes(root)


def _counts(root):
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.query import counts
    return counts(Layout(root))


def _records(root):
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.query import select
    return {r["id"]: r for r in select(Layout(root))}


def _report(root, *args) -> dict:
    res = spool_sub(root, "report", "--json", *args, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _leases(root) -> list[dict]:
    out = []
    for base in (root / "launchers", root / "launchers" / ".retired"):
        for d in base.iterdir():
            if not d.name.startswith(".") and (d / "lease.json").exists():
                out.append(json.loads((d / "lease.json").read_text()))
    return out


def _node_weight(placement: dict) -> float:
    return len(placement["hosts"]) * placement["units"] / NODE_UNITS


def _at(minutes: list[float], values: list, t_min: float):
    i = bisect.bisect_right(minutes, t_min) - 1
    return values[i] if i >= 0 else 0


# ---- the numbers against the logs --------------------------------------------------------------
def test_report_numbers_match_the_event_logs(campaign):
    r = _report(campaign, "--no-png")
    events = launcher_events(campaign)
    runs = run_intervals(campaign)
    recs = _records(campaign)
    assert runs and all(run["end"] is not None for run in runs)

    finished = sorted(e["t"] for e in events if e.get("to") == "JOB_FINISHED")
    assert r["finished"]["count"] == len(finished) == 6
    assert r["finished"]["minutes"] == pytest.approx([(t - r["start"]) / 60 for t in finished],
                                                     abs=1e-9)
    assert r["states"] == _counts(campaign)
    assert r["failures"] == {"exit code 3": 1}
    assert r["running_now"] == 0

    # the window: from the allocation's start to its end (the launcher idles after the work)
    [lease] = _leases(campaign)
    assert lease["state"] == "exited" and lease["gpus"] == GPUS
    t0 = min([lease["started_at"]] + [run["start"] for run in runs])
    t1 = max([lease["ended_at"]] + [e["t"] for e in events])
    assert (r["start"], r["end"]) == (pytest.approx(t0, abs=1e-6), pytest.approx(t1, abs=1e-6))

    # busy nodes and tiles at each run's midpoint: the runs covering that instant
    for run in runs:
        mid = (run["start"] + run["end"]) / 2
        covering = [x for x in runs if x["start"] <= mid < x["end"]]
        nodes = _at(r["busy"]["minutes"], r["busy"]["nodes"], (mid - r["start"]) / 60)
        tiles = _at(r["busy"]["minutes"], r["busy"]["tiles"], (mid - r["start"]) / 60)
        assert nodes == pytest.approx(sum(_node_weight(x["placement"]) for x in covering))
        assert tiles == sum(len(g) for x in covering for g in x["placement"]["gpus"])
        if recs[run["job"]]["app"] == "Sleep":
            assert nodes >= 0.5 and tiles >= 1          # itself: half a node and one tile
    assert r["busy"]["nodes"][-1] == 0 and max(r["busy"]["nodes"]) <= 1

    # utilization: busy node-seconds over the lease's node-seconds
    busy = sum(_node_weight(x["placement"]) * (x["end"] - x["start"]) for x in runs)
    busy_tiles = sum(len(g) * (x["end"] - x["start"]) for x in runs for g in x["placement"]["gpus"])
    alloc = len(lease["nodes"]) * (lease["ended_at"] - lease["started_at"])
    u = r["utilization"]
    assert u["nodes_percent"] == pytest.approx(100 * busy / alloc, rel=1e-6)
    assert u["tiles_percent"] == pytest.approx(100 * busy_tiles / (GPUS * alloc), rel=1e-6)
    assert r["allocated"]["source"] == "launchers" and max(r["allocated"]["nodes"]) == 1
    assert max(r["allocated"]["tiles"]) == GPUS

    # run times per app: every attempt, as the logs time them
    by_app: dict[str, list[float]] = {}
    for x in runs:
        by_app.setdefault(recs[x["job"]]["app"], []).append(x["end"] - x["start"])
    assert set(r["run_time_sec"]) == set(by_app) == {"Sleep", "EchoHello", "Fail"}
    for app, durations in by_app.items():
        s = r["run_time_sec"][app]
        assert s["runs"] == len(durations)
        assert (s["min"], s["max"]) == (pytest.approx(min(durations)), pytest.approx(max(durations)))
    assert r["run_time_sec"]["Fail"]["runs"] == 3          # retry errors: 2 -> three attempts
    # the starter notes a start after posix_spawn returns: on a busy machine a few ms late
    assert SLEEP_SECS - 0.05 <= r["run_time_sec"]["Sleep"]["min"] < SLEEP_SECS + 5


def test_report_for_a_tag_counts_only_those_jobs(campaign):
    r = _report(campaign, "--no-png", "--tag", "wave=a")
    recs = [x for x in _records(campaign).values() if x["tags"].get("wave") == "a"]
    mine = {x["id"] for x in recs}
    runs = [x for x in run_intervals(campaign) if x["job"] in mine]
    assert r["jobs"] == len(recs) == 4 and r["states"]["done"] == 4
    assert r["finished"]["count"] == 4 and r["failures"] == {}
    assert set(r["run_time_sec"]) == {"Sleep"}
    assert r["start"] == pytest.approx(min(x["start"] for x in runs), abs=1e-6)
    assert max(r["busy"]["nodes"]) == pytest.approx(max(
        sum(_node_weight(y["placement"]) for y in runs if y["start"] <= x["start"] < y["end"])
        for x in runs))


def test_report_text_summary(campaign):
    r = _report(campaign, "--no-png")
    res = spool_sub(campaign, "report", "--no-png", timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"{r['finished']['count']} finished" in out
    assert f"nodes {r['utilization']['nodes_percent']:.1f}%" in out
    assert "exit code 3" in out and "Sleep" in out
    assert len(out.splitlines()) <= 24                    # one screen


def test_report_writes_a_readable_png(campaign, tmp_path):
    out = tmp_path / "campaign.png"
    res = spool_sub(campaign, "report", "--out", str(out), timeout=120)
    assert res.returncode == 0, res.stderr
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])       # the IHDR chunk
    assert width >= 1000 and height >= 700
    assert f"PNG         {out}" in res.stdout
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]   # no temp left


def test_without_matplotlib_the_report_still_prints_and_says_how(campaign, tmp_path):
    hide = tmp_path / "hide"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text(
        "raise ImportError('matplotlib hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(hide), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    res = spool_sub(campaign, "report", timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "finished" in res.stdout and "Utilization" in res.stdout
    [line] = res.stderr.strip().splitlines()
    assert "spoolbalsam[plot]" in line and not (tmp_path / "report.png").exists()
    res = spool_sub(campaign, "report", "--json", "--out", str(tmp_path / "x.png"),
                    timeout=120, env=env)
    assert res.returncode == 1 and "spoolbalsam[plot]" in res.stderr
    assert json.loads(res.stdout)["finished"]["count"] == 6


def test_a_balsam_analytics_snippet_runs_with_the_import_changed(campaign, tmp_path):
    png = tmp_path / "throughput.png"
    env = {**os.environ, "SPOOL_SITE": str(campaign)}
    import subprocess
    res = subprocess.run([sys.executable, str(SCRIPTS / "analytics_throughput.py"), str(png),
                          "wave", "a"], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    mine = {i for i, x in _records(campaign).items() if x["tags"].get("wave") == "a"}
    finished = sorted(e["t"] for e in launcher_events(campaign)
                      if e.get("to") == "JOB_FINISHED" and e["job"] in mine)
    assert got["done"] == len(finished) == 4
    assert got["first_done"] == pytest.approx(finished[0], abs=1e-6)
    assert got["last_nodes"] == 0 and got["peak_nodes"] in (0.5, 1.0)
    assert png.read_bytes()[:8] == PNG_MAGIC


# ---- --json on every listing, errors on stderr ----------------------------------------------------
def test_listings_print_json(campaign):
    apps = [json.loads(line) for line in spool(campaign, "app", "ls", "--json").stdout.splitlines()]
    assert sorted(a["name"] for a in apps) == sorted(p.stem for p in (campaign / "apps").glob("*.yml"))
    sleep = next(a for a in apps if a["name"] == "Sleep")
    assert sleep["command_template"] == "sleep {{ secs }}" and "secs" in sleep["parameters"]

    [bj] = [json.loads(line) for line in
            spool(campaign, "queue", "ls", "--history", "--json").stdout.splitlines()]
    assert bj["state"] == "finished" and bj["num_nodes"] == 1 and bj["job_mode"] == "serial"
    assert spool(campaign, "queue", "ls", "--json").stdout == ""       # none active

    status = json.loads(spool(campaign, "site", "status", "--json").stdout)
    assert status["counts"] == _counts(campaign) and status["site_process"] is None
    assert status["machine"] == "local" and status["root"] == str(campaign)
    assert status["query_index"]["jobs"] == len(_records(campaign))     # the site indexed them

    recs = _records(campaign)
    fail_id = next(i for i, x in recs.items() if x["app"] == "Fail")
    shown = json.loads(spool(campaign, "job", "show", fail_id, "--json").stdout)
    assert shown["id"] == fail_id and shown["state"] == "FAILED" and shown["attempt"] == 3
    assert [h["to"] for h in shown["history"]][-1] == "FAILED"
    lines = spool(campaign, "job", "ls", "--json").stdout.splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(recs)


@pytest.mark.parametrize("args", [
    ["app", "ls", "--json"], ["queue", "ls", "--json"], ["site", "status", "--json"],
    ["job", "ls", "--json"], ["job", "show", "x", "--json"], ["report", "--json"],
    ["report"],
])
def test_listing_errors_go_to_stderr_with_a_non_zero_exit(tmp_path, args):
    res = spool_sub(tmp_path / "no-site", *args, timeout=60)
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.startswith("spool: ") and "not a spoolbalsam site" in res.stderr


@pytest.mark.parametrize("args, words", [
    (["job", "show", "nosuchjob", "--json"], "no job nosuchjob"),
    (["report", "--tag", "wave"], "KEY=VALUE"),
    (["report", "--out", "elsewhere/r.png"], "does not exist"),
    (["report", "--out", "r.svg"], ".png"),
])
def test_bad_input_is_one_line_on_stderr(campaign, tmp_path, args, words):
    res = spool_sub(campaign, *args, timeout=60, cwd=tmp_path)
    assert res.returncode == 1 and res.stdout == ""
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("spool: ") and words in line
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "r.svg").exists()


# ---- a machine with a batch scheduler: the allocation is the batch jobs ----------------------------
def _done_record(layout, job_id: str, hist: list[tuple[float, str, str]], **fields) -> None:
    """A finished job's record as the site leaves it in done/ (history: (t, to, by))."""
    from spoolbalsam.spool import fsio
    from spoolbalsam.spool.record import normalize, transition
    rec = normalize({"id": job_id, "app": "Sim", "workdir": f"w/{job_id}", **fields}, "test")
    for t, to, by in hist:
        rec = transition(rec, to, by, t=t)
    path = layout.job_path("done", job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fsio.write_json_atomic(path, rec)


def test_on_a_batch_machine_the_allocation_is_the_batch_jobs(tmp_path):
    from spoolbalsam.api import BatchJob
    from spoolbalsam.api.analytics import available_nodes
    from spoolbalsam.spool import fsio
    from spoolbalsam.spool.layout import Layout
    root = tmp_path / "aurora-site"
    spool(None, "site", "init", str(root), "--machine", "aurora", "-A", "proj")
    layout = Layout(root)
    t0 = time.time() - 3600
    batches = {"1": (2, t0, t0 + 600, "finished"), "2": (1, t0 + 300, None, "running"),
               "3": (4, None, None, "queued")}
    for bid, (n, start, end, state) in batches.items():
        (layout.batch / bid).mkdir(parents=True)
        fsio.write_json_atomic(layout.batch / bid / "request.json", {
            "id": bid, "num_nodes": n, "wall_time_min": 30, "queue": "debug",
            "project": "proj", "job_mode": "mpi", "filter_tags": {}, "optional_params": {}})
        fsio.write_json_atomic(layout.batch / bid / "state.json", {
            "state": state, "scheduler_id": f"{bid}.pbs", "start_time": start, "end_time": end})
    # one job run by a launcher (its log), one marked finished by a script (its history only)
    lid = "mpi-x1000c0s0b0n0-abcdefgh"
    place = {"hosts": ["x1000c0s0b0n0"], "cpus": [[1]], "gpus": [["0.0", "0.1"]],
             "units": NODE_UNITS // 6}
    log = layout.launchers / ".retired" / lid / "events.jsonl"
    log.parent.mkdir(parents=True)
    lines = [{"t": t0 + 10, "job": "ran", "attempt": 1, "to": "RUNNING", "by": lid,
              "launcher": lid, "placement": place, "started_at": t0 + 10},
             {"t": t0 + 70, "job": "ran", "attempt": 1, "to": "RUN_DONE", "by": lid,
              "launcher": lid, "placement": place},
             {"t": t0 + 70.5, "job": "ran", "attempt": 1, "to": "JOB_FINISHED", "by": lid,
              "launcher": lid}]
    fsio.write_atomic(log, b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    _done_record(layout, "ran", [(t0, "READY", "site"), (t0 + 10, "RUNNING", lid),
                                 (t0 + 70, "RUN_DONE", lid), (t0 + 70.5, "JOB_FINISHED", lid)])
    _done_record(layout, "marked", [(t0, "READY", "site"), (t0 + 500, "JOB_FINISHED", "script")])

    r = _report(root, "--no-png")
    assert r["machine"] == "aurora"
    a = r["allocated"]
    assert a["source"] == "batch jobs" and a["count"] == 2          # the queued one never started
    for at_s, nodes in ((100, 2), (400, 3), (700, 1)):
        i = bisect.bisect_right(a["minutes"], (t0 + at_s - r["start"]) / 60) - 1
        assert (a["nodes"][i], a["tiles"][i]) == (nodes, 12 * nodes)
    assert r["finished"]["count"] == 2                              # the script's too
    assert r["finished"]["minutes"] == pytest.approx([(t0 + 70.5 - r["start"]) / 60,
                                                      (t0 + 500 - r["start"]) / 60])
    busy = r["utilization"]["busy_node_hours"] * 3600
    assert busy == pytest.approx(60 / 6)                             # 1/6 node for 60 s
    assert r["utilization"]["busy_tile_hours"] * 3600 == pytest.approx(2 * 60)
    assert r["end"] > t0 + 600 and r["running_now"] == 0            # batch job 2 is still on

    times, nodes = available_nodes(BatchJob.objects.filter(site_id=str(root)))
    assert [t.timestamp() for t in times] == pytest.approx([t0, t0 + 300, t0 + 600], abs=1e-5)
    assert nodes == [2, 3, 1]


def test_app_ls_json_names_a_broken_app_with_its_error(tmp_path):
    from helpers import write_app
    root = make_site(tmp_path / "S")
    write_app(root, "Broken", {"command_template": "x {{ a }}", "retry": "often"})
    apps = {a["name"]: a for a in map(json.loads,
                                      spool(root, "app", "ls", "--json").stdout.splitlines())}
    assert set(apps) == {"Broken", "EchoHello", "Fail", "Sleep"}
    assert set(apps["Broken"]) == {"name", "error"} and "retry" in apps["Broken"]["error"]
    assert apps["Fail"]["retry"] == {"errors": 2, "timeouts": 5}
