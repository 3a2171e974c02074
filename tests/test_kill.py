"""``spool job kill`` with real launchers, real processes and real signals.

A running job is stopped by the launcher that runs it (its process group, what escaped it,
an MPI job's mpiexec and ranks, a running hook), pending jobs are cancelled without
running, and every killed job ends in failed/ as KILLED, once, and can be retried.
Orphans are looked for the way the site looks for them: every process in /proc whose
environment carries the job's ``SPOOL_JOB_ID`` (``spool.lease.job_processes``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from spoolbalsam.api import ApplicationDefinition
from spoolbalsam.spool import fsio, kills
from spoolbalsam.spool.lease import job_processes

from campaign_helpers import launcher_events
from helpers import (PY, drop, ids_in, job, launcher_ids, layout, locate, record, spool,
                     spool_sub, start_launcher, wait_for, write_app)
from sched_fixtures import require_mpiexec

# A job whose shell starts a child that leaves the job's process group and session
# (setsid): only a kill that looks beyond the group finds it.
ESCAPER = {"command_template": "sh -c 'setsid sleep {{ secs }} & sleep {{ secs }}'"}


def _procs(site, *ids) -> list[int]:
    return job_processes(layout(site).root, set(ids))


def _running(site, job_id, n_procs=1):
    """Wait until ``job_id`` is in running/ and at least ``n_procs`` of its processes run."""
    wait_for(lambda: locate(site, job_id) == "running", 30, f"{job_id} claimed")
    wait_for(lambda: len(_procs(site, job_id)) >= n_procs, 30, f"{job_id}'s processes")


def _kill(site, *args, timeout=60):
    return spool_sub(site, "job", "kill", *args, timeout=timeout)


def _final_events(site, job_id) -> list[dict]:
    """The verdicts (JOB_FINISHED, FAILED, KILLED) the launchers wrote for ``job_id``."""
    return [e for e in launcher_events(site) if e.get("job") == job_id
            and e.get("to") in ("JOB_FINISHED", "FAILED", "KILLED")]


def _mailboxes_empty(site) -> bool:
    """No request left in any launcher's mailbox, open or closed (retired launchers too)."""
    boxes = list(site.glob(f"launchers/*/{kills.DIRNAME}")) + \
        list(site.glob(f"launchers/.retired/*/{kills.CLOSED}"))
    return not any(fsio.list_names(box) for box in boxes)


# ---- the bar: a sleep 600 job killed within 5 s, nothing left, the launcher goes on -------------
def test_a_running_job_is_killed_within_5s_leaving_no_process_and_the_launcher_goes_on(running_site):
    site = running_site
    write_app(site, "Escaper", ESCAPER)
    drop(site, "victim.json", job("Escaper", "k/victim", id="victim", node_packing_count=2,
                                  parameters={"secs": 600}, tags={"camp": "k"}))
    proc = start_launcher(site, idle_ttl=30)
    _running(site, "victim", n_procs=3)          # sh, its sleep, and the escaped sleep
    assert len({os.getsid(p) for p in _procs(site, "victim")}) == 2   # one left the session

    t0 = time.monotonic()
    res = _kill(site, "victim")
    wait_for(lambda: locate(site, "victim") == "failed", 10, "the job in failed/", 0.005)
    took = time.monotonic() - t0
    assert took < 5.0, f"{took:.2f} s from the command to failed/"
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"victim killed (it was running on launcher {launcher_ids(site)[0]})"
    wait_for(lambda: not _procs(site, "victim"), 5, "no process of the killed job")

    rec = record(site, "victim")
    assert rec["state"] == "KILLED" and rec["attempt"] == 1
    assert rec["error"].startswith("killed by ") and "(spool job kill)" in rec["error"]
    assert rec["return_code"] == -signal.SIGTERM             # sh died of our SIGTERM
    assert [e["to"] for e in _final_events(site, "victim")] == ["KILLED"]
    listed = spool(site, "job", "ls", "--state", "KILLED", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in listed] == ["victim"]

    # the launcher goes on: jobs submitted after the kill run to the end on it
    for i in range(3):
        drop(site, f"after{i}.json", job(workdir=f"k/after{i}", id=f"after{i}",
                                         node_packing_count=4))
    wait_for(lambda: {"after0", "after1", "after2"} <= set(ids_in(site, "done")), 30,
             "the jobs submitted after the kill done")
    assert proc.poll() is None and launcher_ids(site) == [launcher_ids(site)[0]]
    assert _mailboxes_empty(site)                # the request is deleted once it is done with


# ---- pending jobs -----------------------------------------------------------------------------
def test_pending_jobs_are_cancelled_without_running_and_their_children_fail(running_site):
    site = running_site
    drop(site, "p.json", job(workdir="c/p", id="p"))
    drop(site, "kid.json", job(workdir="c/kid", id="kid", parent_ids=["p"]))
    drop(site, "grandkid.json", job(workdir="c/gk", id="grandkid", parent_ids=["kid"]))
    drop(site, "other.json", job(workdir="c/other", id="other"))
    wait_for(lambda: {"p", "other"} <= set(ids_in(site, "ready"))
             and {"kid", "grandkid"} <= set(ids_in(site, "waiting")), 20, "jobs published")
    res = _kill(site, "p", "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert lines[0] == {"id": "p", "outcome": "cancelled", "state": "KILLED", "was": "ready",
                        "message": "cancelled (it was ready; it never ran)"}
    assert {(d["id"], d["outcome"]) for d in lines[1:]} == {("kid", "failed"), ("grandkid", "failed")}
    rec = record(site, "p")
    assert rec["state"] == "KILLED" and "before it ran" in rec["error"]
    assert record(site, "kid")["error"] == "parent p failed"
    assert record(site, "grandkid")["error"] == "parent kid failed"
    assert locate(site, "other") == "ready"
    # a launcher now runs only the job that was not cancelled
    start_launcher(site, idle_ttl=1)
    wait_for(lambda: locate(site, "other") == "done", 30, "the other job done")
    assert not (site / "data/c/p/job.out").exists()
    assert [e["job"] for e in launcher_events(site) if e.get("to") == "RUNNING"] == ["other"]
    # the command's hints told the site's query index about every move it made
    wait_for(lambda: spool(site, "job", "ls", "--state", "failed", "--by-state").stdout.split()
             == ["FAILED", "2", "KILLED", "1"], 20, "the index to count the moves")


def test_a_job_staging_its_inputs_is_cancelled_and_the_site_lets_it_go(tmp_path):
    """A job in stagein/ (its input copy in flight on a scripted backend) is cancelled by
    the command; the site forgets it, and the copy's end brings nothing back."""
    from helpers import make_site, reap_site_processes, site_obj
    from test_transfers import CAT, Scripted
    remote = tmp_path / "remote"
    (remote / "in").mkdir(parents=True)
    site = make_site(tmp_path / "S", apps={"Cat": CAT}, settings={"transfers": {
        "transfer_locations": {"remote": f"file://{remote}"}}})
    try:
        st = site_obj(site)
        fake = st.staging.backends["file"] = Scripted()
        for job_id, parents in (("j", []), ("kid", ["j"])):
            drop(site, f"{job_id}.json", {"id": job_id, "app": "Cat", "workdir": job_id,
                                          "parent_ids": parents,
                                          "transfers": {"input": f"remote:{remote}/in/a"}})
        st.tick(1.0)
        assert locate(site, "j") == "stagein" and len(fake.submitted) == 1
        assert locate(site, "kid") == "waiting"
        res = spool(site, "job", "kill", "j")
        assert res.stdout.splitlines() == ["j cancelled (it was stagein; it never ran)",
                                           "kid failed: it was waiting for j"]
        fake.end(0)                                   # the copy ends after the cancel
        for t in (2.0, 3.0, 100.0):                   # 100: past the site's full rescan
            st.tick(t)
        assert locate(site, "j") == "failed" and record(site, "j")["state"] == "KILLED"
        assert locate(site, "kid") == "failed"
        assert record(site, "kid")["error"] == "parent j failed"
    finally:
        reap_site_processes(site)


def test_kill_by_tag_reports_each_job_and_exits_1_for_a_missing_one(running_site):
    site = running_site
    drop(site, "run.json", job("Sleep", "t/run", id="run", parameters={"secs": 600},
                               tags={"camp": "t"}, node_packing_count=4))
    drop(site, "fin.json", job(workdir="t/fin", id="fin", tags={"camp": "t"}, node_packing_count=4))
    start_launcher(site, idle_ttl=30)
    wait_for(lambda: locate(site, "fin") == "done", 30, "fin done")
    _running(site, "run")
    drop(site, "wait.json", job(workdir="t/wait", id="wait", tags={"camp": "t"},
                                parent_ids=["run"]))
    drop(site, "keep.json", job(workdir="t/keep", id="keep", tags={"camp": "u"},
                                parent_ids=["run"]))
    wait_for(lambda: {"wait", "keep"} <= set(ids_in(site, "waiting")), 20, "children waiting")

    res = _kill(site, "--tag", "camp=t", "-y")
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    launcher = launcher_ids(site)[0]
    # the finished job is not named: a filter picks jobs that can still be killed
    assert lines == [f"run killed (it was running on launcher {launcher})",
                     "wait cancelled (it was waiting; it never ran)"]
    assert record(site, "run")["state"] == "KILLED"
    # the child outside the campaign fails naming its killed parent (the site's merge)
    wait_for(lambda: locate(site, "keep") == "failed", 20, "the other child failed")
    assert record(site, "keep")["error"] == "parent run failed"
    assert record(site, "fin")["state"] == "JOB_FINISHED"
    tally = spool(site, "job", "ls", "--tag", "camp=t", "--by-state").stdout.split()
    assert tally == ["JOB_FINISHED", "1", "KILLED", "2"]
    # spool report groups failures by the way of killing, not by each kill's user and time
    rep = json.loads(spool(site, "report", "--json", "--no-png", "--tag", "camp=t").stdout)
    assert rep["failures"] == {"killed (spool job kill)": 1,
                               "killed (spool job kill) before it ran": 1}

    res = _kill(site, "fin", "run", "nosuch")
    assert res.returncode == 1
    assert res.stdout.splitlines() == ["fin already finished (JOB_FINISHED)",
                                       "run already finished (KILLED)", "nosuch not found"]
    assert res.stderr.strip() == "spool: 1 of 3 job(s) not found"
    assert _kill(site).returncode == 1                       # nothing named: one-line error
    bad = _kill(site, "--state", "done", "-y")
    assert bad.returncode == 1 and "only jobs not yet in done/ or failed/" in bad.stderr


def test_retry_brings_a_killed_job_back_with_the_next_attempt(running_site):
    site = running_site
    write_app(site, "Once", {"command_template":
                             "sh -c 'if [ $SPOOL_ATTEMPT = 1 ]; then sleep 600; fi; echo ok'"})
    drop(site, "r.json", job("Once", "r/1", id="r", node_packing_count=4))
    start_launcher(site, idle_ttl=30)
    _running(site, "r")
    assert _kill(site, "r").returncode == 0
    assert record(site, "r")["state"] == "KILLED"
    # not retried by the retry policy (Sleep-like apps default to 5 timeouts)
    assert locate(site, "r") == "failed"
    res = spool(site, "job", "retry", "r")
    assert "ready again (attempt 2)" in res.stdout
    wait_for(lambda: locate(site, "r") == "done", 30, "the retried job done")
    wait_for(lambda: record(site, "r").get("state") == "JOB_FINISHED", 20, "its verdict merged")
    rec = record(site, "r")
    assert rec["attempt"] == 2 and rec["error"] is None
    steps = [h["to"] for h in rec["history"]]
    assert "KILLED" in steps and steps[-1] == "JOB_FINISHED"
    assert (site / "data/r/1/job.out").read_text() == "ok\n"


# ---- races ----------------------------------------------------------------------------------------
def test_jobs_ending_as_the_request_lands_get_exactly_one_verdict(running_site):
    """Four jobs end 0.4-1.0 s after they start and are killed about 0.6 s in.  Whichever
    way each race goes, the command reports it, and each job has one verdict and one place."""
    site = running_site
    ids = [f"e{i}" for i in range(4)]
    for i, job_id in enumerate(ids):
        drop(site, f"{job_id}.json", job("Sleep", f"e/{job_id}", id=job_id, node_packing_count=4,
                                         parameters={"secs": round(0.4 + 0.2 * i, 1)}))
    wait_for(lambda: set(ids) <= set(ids_in(site, "ready")), 20, "jobs ready")
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: len(_procs(site, *ids)) == 4, 30, "the four jobs running", 0.005)
    time.sleep(0.5)     # not a synchronisation: the moment of the kill, amid the jobs' ends
    res = _kill(site, *ids)
    assert res.returncode == 0, res.stderr
    outcomes = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert set(outcomes) == set(ids)
    for job_id in ids:
        wait_for(lambda: record(site, job_id).get("state") in ("JOB_FINISHED", "KILLED"), 20,
                 f"{job_id}'s verdict merged")
        where, state = locate(site, job_id), record(site, job_id)["state"]
        assert (where, state) in (("done", "JOB_FINISHED"), ("failed", "KILLED")), (job_id, where)
        said = outcomes[job_id]
        if state == "KILLED":
            assert said.startswith("killed (it was running"), said
        else:
            assert said.startswith(("finished on its own (JOB_FINISHED)",
                                    "already finished (JOB_FINISHED)")), said
        assert [e["to"] for e in _final_events(site, job_id)] == [state]   # one verdict
    assert not [e for e in launcher_events(site) if e.get("zombie")]
    assert not _procs(site, *ids)
    # a request that landed just as its job ended is deleted at the launcher's next look
    # while it holds a job, or when it exits
    assert proc.wait(30) == 0
    wait_for(lambda: _mailboxes_empty(site), 10, "every request deleted")


def test_a_request_for_a_job_the_launcher_does_not_hold_is_dropped_and_changes_nothing(running_site):
    """A request that lands after its job ended, or before the job was claimed here, is
    deleted at the launcher's next look; the job ends (or runs later) as it would have."""
    site = running_site
    drop(site, "fin.json", job(workdir="n/fin", id="fin"))
    start_launcher(site, idle_ttl=30)
    wait_for(lambda: locate(site, "fin") == "done", 30, "fin done")
    drop(site, "hold.json", job("Sleep", "n/hold", id="hold", parameters={"secs": 600}))
    _running(site, "hold")                    # the node is full: 'later' waits in ready/
    drop(site, "later.json", job(workdir="n/later", id="later"))
    wait_for(lambda: locate(site, "later") == "ready", 20, "later ready")
    [launcher] = launcher_ids(site)
    assert kills.send(layout(site), launcher, {"fin": 1, "later": 1}, "test@here", "test") == kills.SENT
    wait_for(lambda: _mailboxes_empty(site), 10, "the request dropped")
    assert locate(site, "hold") == "running" and locate(site, "later") == "ready"
    assert _kill(site, "hold").returncode == 0
    wait_for(lambda: locate(site, "later") == "done", 30, "later run to its end")
    assert record(site, "fin").get("state") in ("JOB_FINISHED", None)
    assert [e["to"] for e in _final_events(site, "later")] == ["JOB_FINISHED"]


def test_a_job_killed_while_its_launcher_dies_never_runs_again(running_site):
    """The launcher is stopped (SIGSTOP) so it cannot act on the request, then killed -9:
    the site closes its mailbox, finds the request, and the job goes to failed/ as KILLED
    instead of back to ready/."""
    site = running_site
    drop(site, "z.json", job("Sleep", "z/1", id="z", parameters={"secs": 600}))
    proc = start_launcher(site, idle_ttl=30)
    _running(site, "z")
    [launcher] = launcher_ids(site)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        res = _kill(site, "z", "--timeout", "1")
        assert res.returncode == 1
        assert res.stdout.startswith(f"z not confirmed: launcher {launcher} has not stopped it")
        assert os.listdir(site / "launchers" / launcher / kills.DIRNAME)    # the request stands
        # Ctrl-C while it waits: it says which job it has not seen settled
        waiting = subprocess.Popen([PY, "-m", "spoolbalsam.cli", "--site", str(site), "job",
                                    "kill", "z"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(fsio.list_names(site / "launchers" / launcher / kills.DIRNAME)) == 2,
                 20, "its request sent")
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=20)
        assert waiting.returncode == 130, err
        assert out.strip() == ("z not confirmed: interrupted before it was settled; run the "
                               "command again")
        assert err.strip() == "spool: interrupted; the jobs not confirmed above may still run"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGCONT)
    proc.wait(10)
    wait_for(lambda: locate(site, "z") == "failed", 30, "the site's revoke")
    rec = record(site, "z")
    assert rec["state"] == "KILLED" and rec["attempt"] == 1, rec
    assert "killed by " in rec["error"] and f"launcher {launcher} dead" in rec["error"]
    assert (site / "launchers" / ".retired" / launcher / kills.CLOSED).is_dir()
    wait_for(lambda: not _procs(site, "z"), 10, "the job's processes gone")
    # it stays killed: another launcher finds nothing to run
    other = start_launcher(site, idle_ttl=1)
    assert other.wait(30) == 0
    assert locate(site, "z") == "failed"
    assert [e["to"] for e in launcher_events(site) if e.get("job") == "z"] == ["RUNNING"]
    res = _kill(site, "z")
    assert res.returncode == 0 and res.stdout.strip() == "z already finished (KILLED)"


# ---- what a job's process tree can be ------------------------------------------------------------
class SlowPre(ApplicationDefinition):
    command_template = "echo ran"

    def preprocess(self):
        import os
        import time
        open(os.path.join(os.getcwd(), "pre.began"), "w").close()
        time.sleep(600)


class SlowPost(ApplicationDefinition):
    command_template = "echo ran"

    def postprocess(self):
        import os
        import time
        open(os.path.join(os.getcwd(), "post.began"), "w").close()
        time.sleep(600)


class SlowRun(ApplicationDefinition):
    def run(self):
        import os
        import time
        open(os.path.join(os.getcwd(), "run.began"), "w").close()
        time.sleep(600)


@pytest.mark.parametrize("app,hook", [("SlowPre", "pre"), ("SlowPost", "post"), ("SlowRun", "run")])
def test_a_job_in_a_running_hook_or_run_is_killed_with_its_process(running_site, app, hook):
    site = running_site
    for cls in (SlowPre, SlowPost, SlowRun):
        cls.site = str(site)
        cls.sync()
    drop(site, "h.json", job(app, "h/1", id="h", parameters={}))
    start_launcher(site, idle_ttl=30)
    wait_for(lambda: (site / f"data/h/1/{hook}.began").exists(), 60, f"its {hook} hook")
    assert _procs(site, "h")                                # the hook's child
    res = _kill(site, "h")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("h killed")
    rec = record(site, "h")
    assert rec["state"] == "KILLED"
    if hook == "pre":
        assert rec["error"].endswith("before it started (in preprocess)")
        assert not (site / "data/h/1/job.out").exists()     # never ran
    elif hook == "post":
        assert rec["error"].endswith("(in postprocess)") and rec["return_code"] == 0
    else:
        assert rec["error"].endswith("(spool job kill)") and rec["return_code"] == -signal.SIGTERM
        assert job_obj_result(site, "h") is None
    wait_for(lambda: not _procs(site, "h"), 10, "the hook's process gone")
    assert not [p for p in (site / "data/h/1").iterdir() if p.name.startswith(".spool-hook")]


def test_a_standby_waiting_in_the_starter_is_dropped_and_killed_unstarted(running_site):
    """Short runs of an app make the launcher queue standbys behind its running jobs; a
    kill of a standby drops it from the starter: KILLED, never started."""
    site = running_site
    for i in range(8):
        drop(site, f"w{i}.json", job("Sleep", f"sb/w{i}", id=f"w{i}", node_packing_count=4,
                                     parameters={"secs": 0.05}))
    start_launcher(site, idle_ttl=30)
    wait_for(lambda: len(ids_in(site, "done")) == 8, 30, "the short warm-up runs done")
    longs = [f"l{i}" for i in range(8)]
    for job_id in longs:
        drop(site, f"{job_id}.json", job("Sleep", f"sb/{job_id}", id=job_id,
                                         node_packing_count=4, parameters={"secs": 600},
                                         tags={"sb": "1"}))
    wait_for(lambda: len(ids_in(site, "running")) == 8 and len(_procs(site, *longs)) == 4, 30,
             "four running, four standbys behind them")
    running = {j for j in longs if _procs(site, j)}
    standby = sorted(set(longs) - running)[0]
    res = _kill(site, standby)
    assert res.returncode == 0 and res.stdout.startswith(f"{standby} killed"), res.stdout
    rec = record(site, standby)
    assert rec["state"] == "KILLED" and rec["error"].endswith("before it started")
    assert not (site / "data" / "sb" / standby / "job.out").exists()
    assert all(locate(site, j) == "running" for j in running)     # their slots go on
    assert _kill(site, "--tag", "sb=1", "-y").returncode == 0
    assert {record(site, j)["state"] for j in longs} == {"KILLED"}
    wait_for(lambda: not _procs(site, *longs), 10, "no process left")


@pytest.mark.mpi
def test_an_mpi_job_is_killed_with_its_ranks(running_site):
    require_mpiexec()
    site = running_site
    drop(site, "m.json", job("Sleep", "m/1", id="m", ranks_per_node=2, node_packing_count=2,
                             parameters={"secs": 600}))
    start_launcher(site, idle_ttl=30)
    # mpiexec, hydra's proxy and two ranks, each in a session of its own
    _running(site, "m", n_procs=4)
    t0 = time.monotonic()
    res = _kill(site, "m")
    assert res.returncode == 0 and res.stdout.startswith("m killed"), res.stdout + res.stderr
    assert time.monotonic() - t0 < 5.0
    wait_for(lambda: not _procs(site, "m"), 5, "no rank, proxy or mpiexec left")
    rec = record(site, "m")
    assert rec["state"] == "KILLED" and rec["placement"]["hosts"]


def job_obj_result(site, job_id):
    """What ``Job.result_nowait`` raises for a killed run() app: its KILLED verdict."""
    from spoolbalsam.api import Job
    from spoolbalsam.api.job import JobFailed
    with pytest.raises(JobFailed, match=f"job {job_id} KILLED: killed by "):
        Job.objects.get(id=job_id, site_id=str(site)).result_nowait()


# ---- the Python API ---------------------------------------------------------------------------
def test_job_kill_and_query_kill_share_the_command(running_site):
    from spoolbalsam.api import Job
    from spoolbalsam.api.job import JobFailed
    site = running_site
    drop(site, "a.json", job("Sleep", "api/a", id="a", parameters={"secs": 600}, tags={"g": "1"}))
    drop(site, "b.json", job("Sleep", "api/b", id="b", parameters={"secs": 600}, tags={"g": "1"}))
    drop(site, "c.json", job("Sleep", "api/c", id="c", parameters={"secs": 600}, tags={"g": "1"}))
    wait_for(lambda: {"a", "b", "c"} <= set(ids_in(site, "ready")), 20, "jobs ready")
    start_launcher(site, idle_ttl=30)
    wait_for(lambda: len(ids_in(site, "running")) == 1, 30, "one job running")
    [running] = ids_in(site, "running")
    job_obj = Job.objects.get(id=running, site_id=str(site))
    assert job_obj.kill() == "killed"
    assert job_obj.state == "KILLED" and job_obj.error.endswith("(Python API)")
    assert Job.objects.filter(state="KILLED", site_id=str(site)).count() == 1
    assert job_obj.done()
    # the other two: one may have been claimed meanwhile; both end KILLED either way
    assert Job.objects.filter(tags={"g": "1"}, site_id=str(site)).kill() == 2
    assert sorted(j.id for j in Job.objects.filter(state="KILLED", site_id=str(site))) == ["a", "b", "c"]
    assert job_obj.kill() == "finished"                     # killing again changes nothing
    with pytest.raises(JobFailed, match="KILLED: killed by "):
        job_obj.result_nowait()


@pytest.mark.parametrize("args,words", [
    ((), "say which jobs: IDs, --tag KEY=VALUE or --state STATE"),
    (("x", "--timeout", "-1"), "--timeout -1: must be >= 0 seconds"),
    (("--tag", "nokv", "-y"), "tag 'nokv' must look like KEY=VALUE"),
    (("--state", "NOPE", "-y"), "unknown state 'NOPE'"),
    (("--state", "done", "-y"), "only jobs not yet in done/ or failed/ can be killed"),
])
def test_bad_kill_options_are_one_line_errors_that_change_nothing(site, args, words):
    drop(site, "j.json", job(workdir="bad/j", id="j"))
    res = spool(site, "job", "kill", *args, expect=1)
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert locate(site, "j") == "created"                   # nothing moved
