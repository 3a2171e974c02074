"""The local launcher in serial mode, with real processes: the seed campaign's packing on 12
"tiles", gpu ids per job, retries, walltime, idle exit, SIGTERM, and jobs that must not be
able to take a launcher down."""
from __future__ import annotations

import itertools
import json
import os
import signal
import time

from helpers import (drop, edit_settings, ids_in, job, launcher_ids, layout, locate, pid_alive, record,
                     rejected_entries, site_obj, site_pids, spool, start_launcher, start_site, stop_site,
                     wait_for, write_app)


def launcher_events(site) -> list[dict]:
    """Every launcher's event log (live and retired), in order: the jobs' full history."""
    out = []
    for log in sorted(site.glob("launchers/*/events.jsonl")) + \
            sorted(site.glob("launchers/.retired/*/events.jsonl")):
        out += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return out


def runs_from_events(site) -> dict[str, dict]:
    """job id -> {placement, started_at, ended_at, return_code} from the launchers' events."""
    runs: dict[str, dict] = {}
    for ev in launcher_events(site):
        if ev.get("to") == "RUNNING":
            runs[ev["job"]] = {"placement": ev["placement"], "started_at": ev["started_at"]}
        elif ev.get("to") in ("RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT"):
            runs[ev["job"]].update(ended_at=ev["ended_at"], return_code=ev["return_code"])
    return runs


def test_seed_campaign_packs_tiles_without_sharing_a_gpu(running_site):
    site = running_site
    write_app(site, "EchoHello", {
        "command_template": "echo Hello, {{ say_hello_to }}! SPOOL_GPU_IDS=$SPOOL_GPU_IDS "
                            "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; sleep 0.2"})
    for i in range(24):
        drop(site, f"tile{i:02d}.json", job(workdir=f"demo/tile{i:02d}", node_packing_count=12,
                                            gpus_per_rank=1, tags={"workflow": "demo"}))
    drop(site, "big.json", job(workdir="demo/big", ranks_per_node=1, gpus_per_rank=12))
    wait_for(lambda: len(ids_in(site, "ready")) == 25, 20, "25 jobs ready")
    start_launcher(site, idle_ttl=3)
    wait_for(lambda: len(ids_in(site, "done")) == 25, 60, "25 jobs done")
    # listings converge (a single listing can miss a job mid-merge: see test_dependencies)
    wait_for(lambda: len(spool(site, "job", "ls", "--state", "JOB_FINISHED", "--json").stdout
                         .splitlines()) == 25, 20, "25 finished jobs listed")
    wait_for(lambda: len(spool(site, "job", "ls", "--tag", "workflow=demo", "--state", "done",
                               "--json").stdout.splitlines()) == 24, 20, "24 demo jobs listed")
    # The placement history comes from the launchers' event logs (the records' merged copy
    # can miss it: see test_dependencies' merge-before-rename xfail).
    runs = runs_from_events(site)
    assert set(runs) == {f"tile{i:02d}" for i in range(24)} | {"big"}
    assert all(r["return_code"] == 0 for r in runs.values())
    host = runs["big"]["placement"]["hosts"][0]
    for job_id, r in runs.items():
        gpus = r["placement"]["gpus"][0]
        assert r["placement"]["hosts"] == [host]
        assert len(gpus) == (12 if job_id == "big" else 1), r["placement"]
        out = (site / "data" / "demo" / job_id / "job.out").read_text()
        assert f"SPOOL_GPU_IDS={','.join(gpus)} " in out, out
        assert f"CUDA_VISIBLE_DEVICES={','.join(gpus)}" in out, out
    assert sorted(runs["big"]["placement"]["gpus"][0], key=int) == [str(i) for i in range(12)]
    # no two jobs that ran at the same time shared a gpu or a core; never more than 4 cores
    for (ia, a), (ib, b) in itertools.combinations(runs.items(), 2):
        if a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]:
            assert not set(a["placement"]["gpus"][0]) & set(b["placement"]["gpus"][0]), (ia, ib)
            assert not set(a["placement"]["cpus"][0]) & set(b["placement"]["cpus"][0]), (ia, ib)
    edges = sorted([(r["started_at"], 1) for r in runs.values()] +
                   [(r["ended_at"], -1) for r in runs.values()])
    most = max(itertools.accumulate(e[1] for e in edges))
    assert 2 <= most <= 4, f"{most} jobs at once on 4 cores"
    big = runs["big"]
    assert not [j for j, r in runs.items() if j != "big" and r["started_at"] < big["ended_at"]
                and big["started_at"] < r["ended_at"]], "the 12-gpu job shared the node"


def test_nonzero_exit_is_retried_per_policy_then_failed_with_output_tail(site):
    drop(site, "f.json", job("Fail", "fail/1"))          # app: retry errors 2 -> 3 attempts
    site_obj(site).intake()
    start_launcher(site, idle_ttl=1.5)
    wait_for(lambda: locate(site, "f") == "failed", 30, "job failed")
    # as a user sees it: the record with the launcher's events not yet merged laid over it
    from spoolbalsam.spool.query import Filter, select
    [rec] = select(layout(site), Filter(ids={"f"}))
    assert rec["attempt"] == 3 and rec["retries"]["errors"] == 3
    assert rec["state"] == "FAILED" and rec["return_code"] == 3
    assert "failing attempt 3" in rec["error"] and "retry policy spent" in rec["error"]
    steps = [h["to"] for h in rec["history"]]
    assert steps.count("RUN_ERROR") == 3 and steps.count("RESTART_READY") == 2
    assert (site / "data" / "fail" / "1" / "job.out").read_text() == "failing attempt 3\n"


def test_jobs_own_retry_overrides_the_app(site):
    drop(site, "f0.json", job("Fail", "fail/0", retry={"errors": 0}))
    site_obj(site).intake()
    start_launcher(site, idle_ttl=1)
    wait_for(lambda: locate(site, "f0") == "failed", 30, "job failed")
    assert record(site, "f0")["attempt"] == 1


def test_job_longer_than_the_time_left_is_not_started(site):
    # -t 3 with the default 1 min margin leaves 2 minutes
    drop(site, "long.json", job(workdir="wall/long", wall_time_min=5))
    drop(site, "almost.json", job(workdir="wall/almost", wall_time_min=2.5))
    drop(site, "short.json", job(workdir="wall/short", wall_time_min=1))
    site_obj(site).intake()
    proc = start_launcher(site, wall_min=3, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    assert locate(site, "short") == "done"
    assert locate(site, "long") == "ready" and locate(site, "almost") == "ready"
    assert (site / "data" / "wall" / "short" / "job.out").exists()
    assert not (site / "data" / "wall" / "long" / "job.out").exists()      # never started
    assert not (site / "data" / "wall" / "almost" / "job.out").exists()


def test_launcher_exits_after_idle_ttl_and_says_goodbye(site):
    t0 = time.monotonic()
    proc = start_launcher(site, idle_ttl=1.5)
    wait_for(lambda: proc.poll() is not None, 15, "idle launcher exit")
    assert time.monotonic() - t0 >= 1.5
    assert proc.returncode == 0
    [lid] = launcher_ids(site)
    lease = json.loads((site / "launchers" / lid / "lease.json").read_text())
    assert lease["state"] == "exited" and "idle" in lease["exit_reason"]
    assert not (site / "jobs" / "running" / lid).exists()


def test_an_idle_launcher_looks_in_every_bucket_before_it_exits(site):
    # 256 buckets and a single job: a launcher that gave up after a few empty buckets
    # would exit idle at once (idle_ttl 0) and leave the job in ready/.
    for b in range(256):
        (site / "jobs" / "ready" / f"{b:02x}").mkdir(parents=True, exist_ok=True)
    drop(site, "lone.json", job(workdir="idle/lone"))
    site_obj(site).intake()
    assert locate(site, "lone") == "ready"
    proc = start_launcher(site, idle_ttl=0)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    assert locate(site, "lone") == "done"


def _job_pids(site, ids):
    pids = {}
    for pid in site_pids(site):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for j in ids:
            if f"SPOOL_JOB_ID={j}".encode() in env:
                pids[j] = pid
    return pids


def test_a_job_killed_from_outside_goes_back_for_another_launcher(site):
    drop(site, "k.json", job("Sleep", "killed/k", parameters={"secs": "30"}))
    site_obj(site).intake()
    proc = start_launcher(site, idle_ttl=1)
    pid = wait_for(lambda: _job_pids(site, ["k"]).get("k"), 20, "the job running")
    os.kill(pid, signal.SIGTERM)                 # not the launcher: the job alone
    wait_for(lambda: proc.poll() is not None, 30, "launcher idle exit")
    rec = record(site, "k")
    assert locate(site, "k") == "ready" and rec["attempt"] == 2
    assert "killed by signal SIGTERM" in json.dumps(rec["history"])
    # this launcher did not run it again (whatever killed it may kill it again here)
    assert [e["to"] for e in launcher_events(site) if e.get("job") == "k"].count("RUNNING") == 1


def test_a_dead_starter_stops_its_launcher_and_its_jobs_go_back(site):
    drop(site, "st.json", job("Sleep", "starter/k", parameters={"secs": "30"}))
    site_obj(site).intake()
    proc = start_launcher(site, idle_ttl=30)
    pid = wait_for(lambda: _job_pids(site, ["st"]).get("st"), 20, "the job running")
    starter = _ppid(pid)                         # the job's parent: its launcher's starter
    assert starter != proc.pid and _ppid(starter) == proc.pid
    os.kill(starter, signal.SIGKILL)
    wait_for(lambda: proc.poll() is not None, 20, "launcher exit")
    wait_for(lambda: not pid_alive(pid), 10, "the job killed by its launcher")
    assert locate(site, "st") == "ready" and record(site, "st")["attempt"] == 2
    [lid] = launcher_ids(site)
    lease = json.loads((site / "launchers" / lid / "lease.json").read_text())
    assert lease["state"] == "exited" and "starter" in lease["exit_reason"]


def _ppid(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def launcher_events_to(site, to: str) -> list[dict]:
    return [e for e in launcher_events(site) if e.get("to") == to]


def _lease(site) -> dict:
    [lid] = launcher_ids(site)
    return json.loads((site / "launchers" / lid / "lease.json").read_text())


def _overlaps_on_a_cpu(runs: list[dict]) -> list:
    by_cpu: dict = {}
    for r in runs:
        for c in r["placement"]["cpus"][0]:
            by_cpu.setdefault(c, []).append((r["started_at"], r["ended_at"], r["id"]))
    bad = []
    for spans in by_cpu.values():
        spans.sort()
        bad += [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    return bad


def _ready_quarter_node_jobs(site, app: str, command: str, n: int) -> list[str]:
    """``n`` ready jobs of a new app, four at a time on the 4-core node; their ids."""
    write_app(site, app, {"command_template": command})
    ids = [f"{app[0].lower()}{i:03d}" for i in range(n)]
    for j in ids:
        drop(site, f"{j}.json", job(app, f"{app.lower()}/{j}", node_packing_count=4))
    site_obj(site).intake()
    return ids


def test_short_jobs_follow_each_other_on_a_slot_as_standbys_never_sharing_it(site):
    ids = _ready_quarter_node_jobs(site, "Quick", "true", 120)
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 60, "launcher idle exit")
    s = site_obj(site)
    s.merge()
    runs = [record(site, j) for j in ids]
    assert all(r["state"] == "JOB_FINISHED" and r["attempt"] == 1 for r in runs)
    assert _lease(site)["standbys"] > 0, "no job was queued as a standby"
    assert _overlaps_on_a_cpu(runs) == [], "a standby started before its slot was free"
    started = [e["job"] for e in launcher_events_to(site, "RUNNING")]
    assert sorted(started) == ids, "a job started twice or not at all"


def test_a_job_that_runs_long_gets_no_standby(site):
    for j in ("l1", "l2", "l3"):
        drop(site, f"{j}.json", job("Sleep", f"long/{j}", parameters={"secs": "1.5"}))
    site_obj(site).intake()              # each takes the whole node: one at a time
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 60, "launcher idle exit")
    assert _lease(site)["standbys"] == 0 and _lease(site)["finished"] == 3


def test_sigterm_returns_waiting_standbys_unchanged(site):
    ids = _ready_quarter_node_jobs(site, "Nap", "sleep 0.2", 400)
    proc = start_launcher(site, idle_ttl=30)
    wait_for(lambda: len(launcher_events_to(site, "JOB_FINISHED")) >= 40, 60, "40 jobs done")
    t_term = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit after SIGTERM")
    assert _lease(site)["standbys"] > 0
    assert ids_in(site, "running") == []
    # the stop ends the job of each of the 4 slots; nothing queued behind them starts
    stopped = {e["job"] for e in launcher_events_to(site, "RUN_TIMEOUT")}
    assert 1 <= len(stopped) <= 4, [(e["job"], e["to"], round(e["t"] - t_term, 4), e.get("return_code"), e.get("placement", {}).get("cpus")) for e in launcher_events(site) if e.get("job") in stopped]
    started = {e["job"] for e in launcher_events_to(site, "RUNNING")}
    for j in ids:
        where, rec = locate(site, j), record(site, j)
        if j not in started:             # claimed as a standby perhaps, but never run
            assert where == "ready" and rec["attempt"] == 1 and rec["state"] == "READY", rec
        else:
            assert where in ("done", "ready"), (j, where)


def test_sigterm_puts_running_jobs_back_for_restart(site):
    ids = [f"s{i}" for i in range(3)]
    for j in ids:
        drop(site, f"{j}.json", job("Sleep", f"sleep/{j}", parameters={"secs": "30"},
                                    node_packing_count=4))
    site_obj(site).intake()
    proc = start_launcher(site, idle_ttl=30)
    pids = wait_for(lambda: (lambda p: p if len(p) == 3 else None)(_job_pids(site, ids)), 20,
                    "three sleep 30 jobs running")
    os.kill(proc.pid, signal.SIGTERM)
    wait_for(lambda: proc.poll() is not None, 20, "launcher exit after SIGTERM")
    assert proc.returncode == 0
    assert not any(pid_alive(p) for p in pids.values()), "job processes left running"
    assert ids_in(site, "running") == []
    for j in ids:
        assert locate(site, j) == "ready"
        rec = record(site, j)
        assert rec["attempt"] == 2 and rec["state"] == "RESTART_READY"
        assert "RUN_TIMEOUT" in [h["to"] for h in rec["history"]]
        assert rec["retries"]["timeouts"] == 1
    [lid] = launcher_ids(site)
    assert json.loads((site / "launchers" / lid / "lease.json").read_text())["state"] == "exited"


def test_tag_filter_and_cleanup_files(site):
    write_app(site, "Tidy", {"command_template": "touch scratch.tmp keep.txt; echo tidy",
                             "cleanup_files": ["*.tmp"]})
    drop(site, "mine.json", job("Tidy", "tags/mine", tags={"who": "me"}))
    drop(site, "theirs.json", job("Tidy", "tags/theirs", tags={"who": "them"}))
    site_obj(site).intake()
    proc = start_launcher(site, "--tag", "who=me", idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    assert locate(site, "mine") == "done" and locate(site, "theirs") == "ready"
    wd = site / "data" / "tags" / "mine"
    assert (wd / "keep.txt").exists() and not (wd / "scratch.tmp").exists()


# ---- jobs that must not be able to take a launcher down -------------------------------------
def test_a_job_with_a_nul_byte_in_a_parameter_cannot_kill_the_launcher(site):
    drop(site, "nul.json", job(workdir="nul/bad", parameters={"say_hello_to": "a\u0000b"}))
    drop(site, "fine.json", job(workdir="nul/fine"))
    site_obj(site).intake()
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    assert proc.returncode == 0
    assert locate(site, "fine") == "done"
    assert locate(site, "nul") == "failed" or "nul.json" in rejected_entries(site)


def test_an_app_changed_under_ready_jobs_fails_them_with_a_reason(site):
    write_app(site, "Greet", {"command_template": "echo {{ who }}"})
    drop(site, "greet.json", job("Greet", "greet/1", parameters={"who": "me"}))
    site_obj(site).intake()
    write_app(site, "Greet", {"command_template": "echo {{ who }} {{ how }}"})
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    assert proc.returncode == 0
    assert locate(site, "greet") == "failed"
    assert "how" in record(site, "greet")["error"]


def test_token_mode_job_can_run_again_after_a_failed_start_and_retry(site):
    edit_settings(site, {"claim_mode": "token"})
    write_app(site, "Later", {"command_template": "echo later"})
    drop(site, "tok.json", job("Later", "token/1"))
    site_obj(site).intake()
    app_file = site / "apps" / "Later.yml"
    saved = app_file.read_bytes()
    app_file.unlink()                                     # the app disappears before the run
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    assert locate(site, "tok") == "failed" and "Later" in record(site, "tok")["error"]
    app_file.write_bytes(saved)
    spool(site, "job", "retry", "tok")
    assert locate(site, "tok") == "ready"
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 30, "second launcher exit")
    assert locate(site, "tok") == "done"


def test_a_job_waiting_for_room_is_started_exactly_once(site):
    drop(site, "whole.json", job("Sleep", "room/whole", parameters={"secs": "1"}))
    s = site_obj(site)
    s.intake()
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: ids_in(site, "running") == ["whole"], 20, "the whole-node job running")
    drop(site, "quarter.json", job(workdir="room/quarter", node_packing_count=4))
    s.intake()                                  # ready while the node is full
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    starts = [e for e in launcher_events(site) if e.get("job") == "quarter"
              and e.get("to") == "RUNNING"]
    assert len(starts) == 1, f"started {len(starts)} times"
    [lid] = launcher_ids(site)
    lease = json.loads((site / "launchers" / lid / "lease.json").read_text())
    assert lease["launches"] == lease["finished"] == 2


def test_walltime_end_stops_running_jobs_for_the_next_allocation(site):
    edit_settings(site, {"launcher": {"walltime_margin_min": 0, "sigterm_grace_sec": 1}})
    write_app(site, "Stubborn", {"command_template": "trap '' TERM; sleep 30"})
    drop(site, "wt.json", job("Sleep", "wt/plain", parameters={"secs": "30"},
                              node_packing_count=4))
    drop(site, "st.json", job("Stubborn", "wt/stubborn", node_packing_count=4))
    drop(site, "once.json", job("Sleep", "wt/once", parameters={"secs": "30"},
                                node_packing_count=4, retry={"timeouts": 0}))
    site_obj(site).intake()
    proc = start_launcher(site, wall_min=0.05, idle_ttl=30)          # 3 seconds
    wait_for(lambda: len(ids_in(site, "running")) == 3, 20, "three jobs running")
    wait_for(lambda: proc.poll() is not None, 20, "launcher exit at its walltime")
    assert ids_in(site, "running") == []
    for j in ("wt", "st"):                # the stubborn one ignores SIGTERM: SIGKILL after 1 s
        rec = record(site, j)
        assert locate(site, j) == "ready" and rec["attempt"] == 2
        assert rec["state"] == "RESTART_READY" and rec["retries"]["timeouts"] == 1
    assert locate(site, "once") == "failed"
    assert "timeouts: 0 allowed" in record(site, "once")["error"]
    assert not [p for p in site_pids(site) if pid_alive(p)], "a job process survived"


def test_a_stopped_launcher_with_a_stale_lease_keeps_its_jobs(running_site):
    """A stale lease without proof of death (process alive) makes a launcher only suspect:
    the site must not revoke, or the job would run twice."""
    site = running_site
    stop_site(site)
    edit_settings(site, {"lease_stale_sec": 0.5, "lease_interval_sec": 0.2})
    start_site(site)
    drop(site, "slow.json", job("Sleep", "stale/slow", parameters={"secs": "1"}))
    wait_for(lambda: locate(site, "slow") == "ready", 20, "ready")
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: ids_in(site, "running") == ["slow"], 20, "running")
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        [lid] = launcher_ids(site)
        seq = json.loads((site / "launchers" / lid / "lease.json").read_text())["seq"]
        deadline = time.monotonic() + 2.5           # five stale periods
        while time.monotonic() < deadline:
            assert ids_in(site, "running") == ["slow"], "revoked a live (stopped) launcher"
            time.sleep(0.05)
        assert json.loads((site / "launchers" / lid / "lease.json").read_text())["seq"] == seq
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for(lambda: locate(site, "slow") == "done", 20, "done after SIGCONT")
    wait_for(lambda: record(site, "slow").get("return_code") == 0, 20, "merged")
    assert record(site, "slow")["attempt"] == 1


def test_two_launchers_share_the_work_and_run_each_job_once(running_site):
    site = running_site
    write_app(site, "Nap", {"command_template": "echo nap {{ n }}; sleep 0.1"})
    for i in range(30):
        drop(site, f"two{i:02d}.json", job("Nap", f"two/{i:02d}", parameters={"n": str(i)},
                                           node_packing_count=4))
    wait_for(lambda: len(ids_in(site, "ready")) == 30, 20, "ready")
    a, b = start_launcher(site, idle_ttl=1), start_launcher(site, idle_ttl=1)
    wait_for(lambda: a.poll() is not None and b.poll() is not None, 60, "both launchers exit")
    assert len(ids_in(site, "done")) == 30
    starts = [e["job"] for e in launcher_events(site) if e.get("to") == "RUNNING"]
    assert sorted(starts) == sorted(f"two{i:02d}" for i in range(30)), "a job ran twice"


def test_a_stale_standby_link_never_sends_the_launcher_round_in_circles():
    """Found by the kill soak: a launcher spun forever in _standby_depth (py-spy: active,
    never reaping again) once job A, whose standby B had started on A's slot, failed and
    came back as B's standby: B.after still named A and A.after named B."""
    from types import SimpleNamespace

    from spoolbalsam.launch.launcher import Launcher
    a = SimpleNamespace(job_id="a", after="b", standby=None)        # queued behind b
    b = SimpleNamespace(job_id="b", after="a", standby="a")         # stale: a left, b started
    c = SimpleNamespace(job_id="c", after="a", standby=None)        # a real chain: c behind a
    a2 = SimpleNamespace(job_id="a", after="b", standby="c")

    def endless(*_):
        raise AssertionError("_standby_depth went round a stale link forever")
    previous = signal.signal(signal.SIGALRM, endless)
    signal.alarm(5)
    try:
        stub = SimpleNamespace(running={"a": a, "b": b})
        assert Launcher._standby_depth(stub, a) == 1
        assert Launcher._standby_depth(stub, b) == 0
        stub = SimpleNamespace(running={"a": a2, "b": b, "c": c})
        assert Launcher._standby_depth(stub, c) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
