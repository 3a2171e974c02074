"""``spool queue`` end to end against a real Slurm (``bash tests/infra/slurm-up.sh 4``).

A site ``--machine slurm`` with its site process running (``spool site start``) submits real
batch jobs with ``sbatch``; the launcher inside each allocation drains the spool.  The test
cluster keeps no accounting (sacct is disabled), so the batch job's end is learnt from
squeue/scontrol; ``-A`` is still passed and accepted (no accounting, no enforcement).

(a) a campaign: ``queue submit`` -> queued/running -> every job done -> ``finished`` in
    ``--history`` only, script kept as ``batch/1/qlaunch00001.sh``;
(b) ``scancel`` in the middle of a campaign (plain; after the launcher and its jobs were
    SIGKILLed, so only the site can give the jobs back; and with the jobs signalled just
    before the launcher, so the launcher reaps jobs killed from outside): every claimed job comes
    back to ready/ with attempt 2 and a RUN_TIMEOUT, none lost, and a second batch job
    finishes them all;
(c) ``queue term <scheduler id>`` cancels the Slurm job; it ends ``finished``;
(d) the elastic queue submits by itself, and a queue Slurm rejects gives ``submit_failed``
    with Slurm's error and no flood of retries.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from queue_helpers import (batch_record, batch_records, batch_state, cancel_site_batch_jobs,
                           cli, diagnostics, init_site, job_pids, locations, queue_rows,
                           queue_submit, reap_leftovers, records, running_dir_jobs, start_site,
                           stop_site, submit, tally, wait_until, write_app,
                           xfail_on_scheduler_race)
from sched_fixtures import require_slurm

pytestmark = pytest.mark.slurm

PROJECT = "spooltest"
QUICK = {"description": "a quick job that says where it ran",
         "command_template": "echo job {{ i }} attempt $SPOOL_ATTEMPT node $SLURMD_NODENAME; "
                             "sleep 0.3"}
# Sleeps only on its first attempt, and only until the test creates SITE/fast (so the jobs
# that were never started in the cancelled allocation are quick in the next one too).
NAP = {"description": "sleep 30 on attempt 1 (until SITE/fast exists), else return at once",
       "command_template": 'echo attempt $SPOOL_ATTEMPT; '
                           'if [ "$SPOOL_ATTEMPT" = 1 ] && [ ! -e "$SPOOL_SITE/fast" ]; '
                           'then exec sleep 30; fi; echo woke'}
SLURM_NODES = {f"n{i}" for i in range(1, 65)}


def base_settings(**scheduler) -> dict:
    return {
        "lease_interval_sec": 1,
        "launcher": {"idle_ttl_sec": 3, "cpus_per_node": 4, "sigterm_grace_sec": 2},
        "scheduler": {"sync_period_sec": 1, "submit_backoff_sec": 30,
                      "allowed_queues": {"debug": {"max_nodes": 2, "max_walltime": 10,
                                                   "max_queued_jobs": 3}},
                      "allowed_projects": [PROJECT], **scheduler},
    }


@pytest.fixture
def make_site(tmp_path):
    """``make_site(settings) -> site``: a started ``--machine slurm`` site; torn down after."""
    started = []

    def make(settings: dict | None = None, name: str = "S"):
        require_slurm(min_nodes=2)
        site = init_site(tmp_path / name, "slurm", "-A", PROJECT,
                         settings=settings or base_settings(),
                         replace=("scheduler.allowed_queues",))
        write_app(site, "quick", QUICK)
        write_app(site, "nap", NAP)
        started.append((site, start_site(site)))
        return site

    yield make
    for site, pid in started:
        cancel_site_batch_jobs(site)
        stop_site(site, pid)
        reap_leftovers(site)


def quick_jobs(n: int, tag: str = "a") -> list[dict]:
    return [{"app": "quick", "workdir": f"{tag}/{i:03d}", "parameters": {"i": str(i)},
             "node_packing_count": 4} for i in range(n)]


def nap_jobs(n: int) -> list[dict]:
    return [{"app": "nap", "workdir": f"nap/{i:02d}", "node_packing_count": 4}
            for i in range(n)]


def slurm_job_state(sid: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", sid], capture_output=True,
                         text=True, timeout=30).stdout
    m = re.search(r"\bJobState=(\S+)", out)
    return m.group(1) if m else "?"


def wait_done(site, ids, bid, timeout, allow_failed=False):
    """Every job in ``ids`` done and batch job ``bid`` finished; fail fast on a failure."""
    def progress():
        return tally(locations(site, ids)), batch_state(site, bid)

    def over(v):
        t, state = v
        if t.get("failed") and not allow_failed:
            raise AssertionError(f"job(s) failed: {t}\n{diagnostics(site)}")
        if state in ("finished", "submit_failed") and t.get("done", 0) < len(ids):
            # the batch job is over: give the site one more sync to merge what it saw
            return False
        return t.get("done", 0) == len(ids) and state == "finished"
    return wait_until(progress, over, timeout, f"{len(ids)} jobs done, batch job {bid} finished",
                      site, interval=0.3)


# ----------------------------------------------------------------------------- (a)

def test_campaign_queue_submit_runs_every_job_and_ends_in_history(make_site):
    site = make_site()
    ids = submit(site, quick_jobs(20))
    bid = queue_submit(site, "-n", 1, "-t", 5, "-j", "serial")
    assert bid == "1"

    # `queue ls` shows it active: queued first (or already running), with a scheduler id.
    row = wait_until(lambda: queue_rows(site).get(bid), lambda r: bool(r) and r[2] in
                     ("queued", "running") and r[1] != "-", 30, "queue ls to show it submitted",
                     site)
    sid = row[1]
    assert sid.isdigit(), row
    wait_until(lambda: (queue_rows(site).get(bid) or ["", "", "?"])[2], lambda s: s == "running",
               30, "queue ls to show it running", site)

    wait_done(site, ids, bid, 60)
    recs = records(site, ids)
    rec = batch_record(site, bid)
    assert rec["scheduler_id"] == sid and rec["state"] == "finished", rec
    assert rec["exit_code"] == 0 and rec["raw_state"] == "COMPLETED", rec
    assert len(rec["nodes"]) == 1 and set(rec["nodes"]) <= SLURM_NODES, rec
    for j in ids:
        r = recs[j]
        assert r["state"] == "JOB_FINISHED" and r["attempt"] == 1, r
        assert r.get("batch_job") == bid and r.get("host") == rec["nodes"][0], r
        out = (site / "data" / r["workdir"] / "job.out").read_text()
        assert f"node {rec['nodes'][0]}" in out, out

    # finished: in --history only, once; -v shows the kept script
    assert bid not in queue_rows(site), cli(site, "queue", "ls").stdout
    assert "No active batch jobs" in cli(site, "queue", "ls").stdout
    hist = queue_rows(site, "--history")
    assert list(hist) == [bid] and hist[bid][1:3] == [sid, "finished"], hist
    script = site / "batch" / "1" / "qlaunch00001.sh"
    verbose = cli(site, "queue", "ls", "--history", "-v").stdout
    assert f"submit_script: {script}" in verbose, verbose
    assert f"project: {PROJECT}" in verbose, verbose
    text = script.read_text()
    for line in ("#SBATCH -J qlaunch00001", "#SBATCH -N 1", "#SBATCH -t 0:05:00",
                 f"#SBATCH -A {PROJECT}", "#SBATCH -p debug"):
        assert line in text.splitlines(), (line, text)
    # the batch job's output is kept beside its script (where its .ec should be too: see
    # test_queue_validation.py::test_rendered_script_records_exit_code_beside_itself)
    assert "launcher finished: idle" in (site / "batch" / "1" / "qlaunch00001.out").read_text()
    assert slurm_job_state(sid) == "COMPLETED"
    assert running_dir_jobs(site) == {}


# ----------------------------------------------------------------------------- (b)



@pytest.mark.parametrize("how", [
    "scancel", "kill-then-scancel",
    "job-first-then-scancel"])
def test_scancel_mid_campaign_loses_nothing_and_a_second_allocation_finishes(make_site, how):
    """6 jobs that sleep 30 s on attempt 1, 4 at a time; the allocation is cancelled while 4
    run.

    * ``scancel``: Slurm SIGTERMs every process of the job (KILL after KillWait); the
      launcher hands its jobs back itself.
    * ``kill-then-scancel``: the launcher and its jobs die by SIGKILL first (a node crash,
      the OOM killer; ``scancel --signal=KILL`` would not do it: Slurm turns it into an
      ordinary cancel, SIGTERM first), then the job is cancelled: only the site can give
      the jobs back.
    * ``job-first-then-scancel``: the order Slurm's signal loop may take -- the jobs get
      their SIGTERM a moment before the launcher (here: explicitly, then ``scancel``).
    """
    site = make_site()
    ids = submit(site, nap_jobs(6))
    bid = queue_submit(site, "-n", 1, "-t", 5, "-j", "serial")

    def claimed():
        return sum(len(v) for v in running_dir_jobs(site).values()), batch_state(site, bid)
    wait_until(claimed, lambda v: v == (4, "running"), 45,
               "4 jobs claimed in a running allocation", site)
    # they really run (not only claimed): each has its process
    pids = wait_until(lambda: job_pids(site), lambda p: len(p) == 4, 15, "4 job processes",
                      site)
    running_before = {n[:-5] for names in running_dir_jobs(site).values() for n in names}
    assert set(pids) == running_before
    (launcher,) = running_dir_jobs(site)
    sid = batch_record(site, bid)["scheduler_id"]

    if how == "kill-then-scancel":
        # every process with SPOOL_SITE=<site> in its environment: the launcher, its
        # starter and its jobs (the batch shell got the variable by `export`, so it is not
        # among them)
        assert set(pids.values()) < set(reap_leftovers(site))
    if how == "job-first-then-scancel":
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
    subprocess.run(["scancel", sid], check=True, capture_output=True, timeout=30)

    # the site learns the allocation ended and nothing stays claimed: all 6 back in ready/
    def after():
        return tally(locations(site, ids)), batch_state(site, bid), running_dir_jobs(site)

    def back(v):
        if v[0].get("failed") or v[0].get("done"):
            if how == "scancel":
                xfail_on_scheduler_race(site, ids)
            raise AssertionError(f"jobs lost to {v[0]} by the cancel\n{diagnostics(site)}")
        return v[0] == {"ready": 6} and v[1] == "finished" and not v[2]
    wait_until(after, back, 45, "all jobs back in ready/ and the batch job finished", site)
    assert slurm_job_state(sid) in ("CANCELLED", "FAILED"), slurm_job_state(sid)
    recs = records(site, ids)
    for j in ids:
        r = recs[j]
        states = [h["to"] for h in r.get("history") or ()]
        # job-first: between the jobs' SIGTERM and the cancel the launcher is still healthy
        # and may start the waiting jobs, which the cancel then times out like the others.
        started_in_window = how == "job-first-then-scancel" and r["attempt"] == 2
        if j in running_before or started_in_window:
            assert r["attempt"] == 2 and r["state"] == "RESTART_READY", r
            assert "RUN_TIMEOUT" in states and r["retries"]["timeouts"] == 1, states
        else:
            assert r["attempt"] == 1 and r["state"] == "READY", r
            assert "RUN_TIMEOUT" not in states, states
    if how == "kill-then-scancel":
        # nobody but the site can have done it: the launcher was SIGKILLed
        site_events = [json.loads(ln) for ln in
                       (site / "site" / "events.jsonl").read_text().splitlines() if ln.strip()]
        retired = [e for e in site_events if e.get("launcher") == launcher and e.get("retired")]
        assert retired and retired[0]["retired"] == "dead" and retired[0]["revoked"] == 4, \
            site_events
        for j in running_before:
            last = [h for h in recs[j]["history"] if h["to"] == "RUN_TIMEOUT"][-1]
            assert last["by"] == "site", recs[j]["history"]

    timed_out = {j for j in ids if recs[j]["attempt"] == 2}    # running_before, + window starts
    (site / "fast").touch()
    bid2 = queue_submit(site, "-n", 1, "-t", 5, "-j", "serial")
    assert bid2 == "2"
    wait_done(site, ids, bid2, 60)
    recs = records(site, ids)
    for j in ids:
        r = recs[j]
        assert r["state"] == "JOB_FINISHED" and r.get("batch_job") == bid2, r
        want = 2 if j in timed_out else 1
        assert r["attempt"] == want, r
        out = (site / "data" / r["workdir"] / "job.out").read_text()
        assert out.split() == ["attempt", str(want), "woke"], out
    assert running_dir_jobs(site) == {}
    hist = queue_rows(site, "--history")
    assert [hist[b][2] for b in (bid, bid2)] == ["finished", "finished"], hist


# ----------------------------------------------------------------------------- (c)

def test_queue_term_by_scheduler_id_cancels_the_slurm_job(make_site):
    site = make_site()
    ids = submit(site, nap_jobs(1))
    bid = queue_submit(site, "-n", 1, "-t", 5, "-j", "serial")
    wait_until(lambda: (batch_state(site, bid), sum(map(len, running_dir_jobs(site).values()))),
               lambda v: v == ("running", 1), 45, "the job running in the allocation", site)
    sid = batch_record(site, bid)["scheduler_id"]

    out = cli(site, "queue", "term", sid).stdout
    assert f"Batch job {bid} ({sid}) will be deleted" in out, out
    row = queue_rows(site).get(bid)
    assert row and row[2] in ("pending_deletion", "finished"), row

    wait_until(lambda: batch_state(site, bid), lambda s: s == "finished", 45,
               "the batch job to finish after queue term", site)
    rec = batch_record(site, bid)
    assert rec["cancel_sent"] is True and rec["raw_state"] == "CANCELLED", rec
    assert slurm_job_state(sid) == "CANCELLED"
    hist = queue_rows(site, "--history")
    assert hist[bid][1:3] == [sid, "finished"], hist
    assert bid not in queue_rows(site)
    # the job it held is not lost
    wait_until(lambda: (locations(site, ids), running_dir_jobs(site)),
               lambda v: set(v[0].values()) <= {"ready", "failed"} and not v[1], 30,
               "the job out of running/", site)
    xfail_on_scheduler_race(site, ids)
    assert set(locations(site, ids).values()) == {"ready"}
    r = records(site, ids)[ids[0]]
    assert r["attempt"] == 2 and "RUN_TIMEOUT" in [h["to"] for h in r["history"]], r
    # a second term of a finished batch job is refused, in one line
    again = cli(site, "queue", "term", sid, check=False)
    assert again.returncode == 1 and "already finished" in again.stderr, again.stderr


# ----------------------------------------------------------------------------- (d)

ELASTIC = {"enabled": True, "queue": "debug", "project": PROJECT, "job_mode": "serial",
           "min_num_nodes": 1, "max_num_nodes": 2, "max_wall_time_min": 5,
           "min_wall_time_min": 1, "max_queued_jobs": 1, "service_period_sec": 1}


def test_elastic_queue_submits_by_itself_and_finishes_the_work(make_site):
    settings = base_settings()
    settings["elastic"] = ELASTIC
    site = make_site(settings)
    assert batch_records(site) == []          # no work, no batch job
    ids = submit(site, quick_jobs(10, tag="e"))

    bid = wait_until(lambda: [r["id"] for r in batch_records(site)], lambda b: len(b) >= 1, 30,
                     "the elastic queue to create a batch job", site)[0]
    rec = wait_until(lambda: batch_record(site, bid), lambda r: r.get("scheduler_id"), 30,
                     "the elastic batch job to be submitted", site)
    assert rec.get("elastic") is True, rec
    assert rec["queue"] == "debug" and rec["project"] == PROJECT and rec["job_mode"] == "serial"
    assert 1 <= rec["num_nodes"] <= 2 and rec["wall_time_min"] == 5, rec
    wait_done(site, ids, bid, 90)
    assert all(r["state"] == "JOB_FINISHED" for r in records(site, ids).values())
    # max_queued_jobs 1: never two elastic batch jobs at once, and no work left -> no more
    recs = batch_records(site)
    assert len(recs) == 1, recs
    assert batch_record(site, bid)["exit_code"] == 0


def test_elastic_queue_slurm_rejects_gives_submit_failed_without_flooding(make_site):
    settings = base_settings(submit_backoff_sec=30)
    settings["scheduler"]["allowed_queues"]["nosuchpart"] = {
        "max_nodes": 2, "max_walltime": 10, "max_queued_jobs": 1}
    settings["elastic"] = dict(ELASTIC, queue="nosuchpart")
    site = make_site(settings)
    submit(site, quick_jobs(10, tag="f"))

    failed = wait_until(lambda: [r for r in batch_records(site) if r["state"] == "submit_failed"],
                        lambda f: len(f) >= 1, 30, "a submit_failed batch job", site)
    rec = failed[0]
    assert rec.get("elastic") is True and rec["queue"] == "nosuchpart", rec
    err = " ".join(e["error"] for e in rec["errors"])
    assert "sbatch" in err and "nosuchpart" in err and "nvalid partition" in err, err
    verbose = cli(site, "queue", "ls", "-v", "--history").stdout
    assert "submit_failed" in verbose and "nvalid partition" in verbose, verbose

    # watch for several service periods (1 s each) inside the 30 s back-off: no flood
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert len(batch_records(site)) <= 2, [(r["id"], r["state"]) for r in batch_records(site)]
        time.sleep(0.5)
    recs = batch_records(site)
    assert len(recs) <= 2, recs
    assert sum(1 for r in recs if r.get("scheduler_id")) == 0, recs
    assert all(r["state"] in ("submit_failed", "pending_submission") for r in recs), recs
