"""Crash safety with real processes and real signals (kill -9), plus the exact crash windows
that a signal cannot hit on purpose, simulated in process."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from spoolbalsam.spool import fsio
from spoolbalsam.spool.ids import shard

from helpers import (pending_drops, counts, drop, edit_settings, ids_in, job, kill9, launcher_ids, locate, pid_alive, record,
                     records, rejected_entries, site_info, site_obj, spool, start_launcher,
                     start_site, stop_site, wait_for, write_app)

# Each attempt appends "start|end ATTEMPT PID" to attempts.log in its workdir; only the first
# attempt sleeps, so a re-run finishes at once.
MARKER = {"command_template": 'echo "start $SPOOL_ATTEMPT $$" >> attempts.log; '
                              'if [ "$SPOOL_ATTEMPT" = 1 ]; then sleep {{ secs }}; fi; '
                              'echo "end $SPOOL_ATTEMPT $$" >> attempts.log'}


def attempts(site: Path, workdir: str) -> list[tuple[str, int, int]]:
    try:
        text = (site / "data" / workdir / "attempts.log").read_text()
    except FileNotFoundError:
        return []
    return [(w, int(a), int(p)) for w, a, p in (ln.split() for ln in text.splitlines())]


def _kill_launcher_mid_run(site: Path, n: int = 3):
    write_app(site, "Marker", MARKER)
    ids = [f"m{i}" for i in range(n)]
    for j in ids:
        drop(site, f"{j}.json", job("Marker", f"mark/{j}", parameters={"secs": "30"},
                                    node_packing_count=4))
    wait_for(lambda: len(ids_in(site, "ready")) == n, 20, "jobs ready")
    proc = start_launcher(site, idle_ttl=60)
    wait_for(lambda: all(attempts(site, f"mark/{j}") for j in ids), 20, "every job started")
    first_pids = {j: attempts(site, f"mark/{j}")[0][2] for j in ids}
    [lid] = launcher_ids(site)
    assert sorted(ids_in(site, "running")) == ids
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return ids, first_pids, lid


@pytest.mark.parametrize("claim_mode", ["rename", "token"])
def test_kill9_launcher_jobs_are_revoked_then_finish_elsewhere(site, claim_mode):
    edit_settings(site, {"claim_mode": claim_mode})
    start_site(site)
    ids, _, lid = _kill_launcher_mid_run(site)
    wait_for(lambda: sorted(ids_in(site, "ready")) == ids, 20, "jobs revoked back to ready/")
    assert ids_in(site, "running") == []
    for j in ids:
        rec = record(site, j)
        assert rec["attempt"] == 2 and rec["state"] == "RESTART_READY"
        steps = [h["to"] for h in rec["history"]]
        assert "RUN_TIMEOUT" in steps, steps
        assert lid in next(h["msg"] for h in rec["history"] if h["to"] == "RUN_TIMEOUT")
    wait_for(lambda: (site / "launchers" / ".retired" / lid).is_dir(), 10, "launcher retired")
    start_launcher(site, idle_ttl=2)
    wait_for(lambda: sorted(ids_in(site, "done")) == ids, 30, "all jobs done on a new launcher")
    for j in ids:
        assert [(w, a) for w, a, _ in attempts(site, f"mark/{j}")
                if a == 2] == [("start", 2), ("end", 2)]
    assert counts(site)["done"] == len(ids) and counts(site)["ready"] == 0
    if claim_mode == "token":
        assert not [p for p in (site / "jobs" / "claims").rglob("*") if p.is_file()]
    stop_site(site)


def test_kill9_launcher_no_job_runs_twice_at_the_same_time(running_site):
    site = running_site
    ids, first_pids, _ = _kill_launcher_mid_run(site)
    wait_for(lambda: sorted(ids_in(site, "ready")) == ids, 20, "jobs revoked back to ready/")
    start_launcher(site, idle_ttl=2)
    wait_for(lambda: all(("start", 2) in [(w, a) for w, a, _ in attempts(site, f"mark/{j}")]
                         for j in ids), 30, "second attempts started")
    overlapping = [j for j in ids if pid_alive(first_pids[j])]
    assert overlapping == [], f"attempt 1 still running beside attempt 2 for {overlapping}"


# ---- kill -9 of the site mid-intake ---------------------------------------------------------
def test_kill9_site_mid_intake_of_2000_files_loses_and_duplicates_nothing(site):
    n = 2000
    names = {}
    for i in range(n):
        name = f"k{i:04d}.json"
        bad = i % 40 == 0
        names[name] = bad
        drop(site, name, b"{broken" if bad else json.dumps(job(workdir=f"k/{i}")).encode())
    first_good = site / "jobs" / "ready" / shard("k0001") / "k0001.json"
    # round 1: kill as soon as the first job is published (mid-publication)
    pid = start_site(site)
    wait_for(first_good.exists, 60, "the first job published", 0.0005)
    kill9(pid)
    wait_for(lambda: not pid_alive(pid), 10, "site dead")
    left = len(pending_drops(site))
    assert left > 0, "the kill came after the intake had finished; nothing was tested"
    # round 2: kill once the site has started removing taken files
    pid = start_site(site)
    wait_for(lambda: len(pending_drops(site)) < left, 60, "intake finishing files", 0.001)
    kill9(pid)
    wait_for(lambda: not pid_alive(pid), 10, "site dead")
    # round 3: let it finish
    start_site(site)
    wait_for(lambda: not pending_drops(site), 60, "every drop handled")
    stop_site(site)
    ready = ids_in(site, "ready")
    assert len(ready) == len(set(ready)), "a job was published twice"
    good = sorted(nm[:-5] for nm, bad in names.items() if not bad)
    assert sorted(ready) == good, "a valid drop was lost or a stranger appeared"
    rej = [p.name for p in (site / "jobs" / "rejected").iterdir()
           if not p.name.startswith(".") and not p.name.endswith(".reason")]
    originals = [r.split("-", 1)[1] for r in rej]
    assert sorted(originals) == sorted(nm for nm, bad in names.items() if bad), \
        "every bad drop must be in rejected/ exactly once"
    assert all(v[0] == b"{broken" for v in rejected_entries(site).values())
    assert counts(site)["waiting"] == counts(site)["failed"] == 0


# ---- kill -9 of the site while a launcher finishes jobs --------------------------------------
def test_kill9_site_while_launcher_finishes_jobs_then_restart_merges_all(running_site):
    site = running_site
    write_app(site, "Nap", {"command_template": "echo nap {{ n }}; sleep 0.3"})
    ids = [f"n{i}" for i in range(10)]
    for j in ids:
        drop(site, f"{j}.json", job("Nap", f"nap/{j}", parameters={"n": j}, node_packing_count=4))
    # (all jobs pack 4 to a node, so a start-twice bug cannot block a whole-node job here:
    # test_launcher_local covers that one)
    drop(site, "nfail.json", job("Fail", "nap/fail", retry={"errors": 0}, node_packing_count=4))
    drop(site, "nkid.json", job(workdir="nap/kid", parent_ids=["n9"]))
    wait_for(lambda: len(ids_in(site, "ready")) == 11, 20, "jobs ready")
    launcher = start_launcher(site, idle_ttl=1.5)
    wait_for(lambda: len(ids_in(site, "done")) >= 3, 30, "some jobs done")
    kill9(site_info(site)["pid"])
    wait_for(lambda: launcher.poll() is not None, 60, "launcher to finish and exit")
    # none lost: a job the site was merging when it died is held in site/limbo until restart
    # (or both in limbo and published, if it died just before dropping the limbo copy)
    done, failed = ids_in(site, "done"), ids_in(site, "failed")
    held = [n.split("@")[0] for n in fsio.list_names(site / "site" / "limbo")]
    # (nkid may have been released and run before the kill)
    assert (set(done) | set(failed) | set(held)) - {"nkid"} == set(ids) | {"nfail"}, "job lost"
    assert set(done) <= set(ids) | {"nkid"} and set(failed) <= {"nfail"}
    assert len(done) == len(set(done))
    # readers merge the launcher's events themselves while the site is down
    shown = {r["id"]: r for r in map(json.loads, spool(site, "job", "ls", "--json").stdout
                                     .splitlines())}
    for j in ids_in(site, "done"):
        assert shown[j]["state"] == "JOB_FINISHED" and shown[j]["return_code"] == 0, shown[j]
    assert shown["nkid"]["state"] in ("AWAITING_PARENTS", "READY", "JOB_FINISHED")
    start_site(site)
    wait_for(lambda: all(r.get("return_code") == 0 and r.get("state") == "JOB_FINISHED"
                         for r in records(site, "done")) and
             set(ids) <= set(ids_in(site, "done")),
             30, "every done record merged on disk after the restart")
    for j in ids:
        rec = record(site, j)
        assert rec["placement"] and rec["ended_at"] >= rec["started_at"]
        assert "RUN_DONE" in [h["to"] for h in rec["history"]]
    wait_for(lambda: locate(site, "nkid") in ("ready", "done"), 20, "child released after restart")
    assert record(site, "nfail")["return_code"] == 3


# ---- crash windows a signal cannot aim at -----------------------------------------------------
class Crash(BaseException):
    pass


def test_site_crash_mid_revoke_still_gives_the_job_a_new_attempt(site, monkeypatch):
    drop(site, "rv.json", job(workdir="rv/1"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    assert s.store.claim(lay.job_path("ready", "rv"), "Ldead")
    dead = __import__("subprocess").Popen(["true"])
    dead.wait()
    fsio.write_json_atomic(lay.launcher_dir("Ldead") / "lease.json",
                           {"seq": 1, "host": fsio.HOST, "pid": dead.pid, "state": "running"})
    ready_dir = str(lay.state_dir("ready"))
    real = fsio.write_json_atomic

    def crash_on_publish(path, obj, **kw):
        if str(path).startswith(ready_dir):
            raise Crash()
        return real(path, obj, **kw)
    monkeypatch.setattr(fsio, "write_json_atomic", crash_on_publish)
    with pytest.raises(Crash):
        s.check_launchers(0.0)
    monkeypatch.undo()
    s2 = site_obj(site)
    s2.recover()
    s2.tick()
    assert locate(site, "rv") == "ready"
    rec = record(site, "rv")
    assert rec["attempt"] == 2 and "RUN_TIMEOUT" in [h["to"] for h in rec["history"]]


def test_jobs_held_by_a_site_killed_mid_merge_stay_visible_to_readers(site, monkeypatch):
    from spoolbalsam.spool.query import select
    from spoolbalsam.spool.store import Store
    drop(site, "vis.json", job(workdir="vis/1"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    claimed = Store(lay).claim(lay.job_path("ready", "vis"), "L1")
    log = fsio.AppendLog(lay.launcher_dir("L1") / "events.jsonl")
    log.append({"t": 1.0, "job": "vis", "attempt": 1, "to": "RUN_DONE", "return_code": 0,
                "by": "L1"})
    log.append({"t": 2.0, "job": "vis", "attempt": 1, "to": "JOB_FINISHED", "by": "L1"})
    log.close()
    Store(lay).move(claimed, lay.job_path("done", "vis"))
    monkeypatch.setattr(fsio.Batch, "commit", lambda self: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        s.merge()
    monkeypatch.undo()
    assert fsio.list_names(lay.site_dir / "limbo") == ["vis@done.json"]
    shown = [r["id"] for r in select(lay)]
    assert shown == ["vis"]


def test_a_run_end_read_without_its_outcome_is_merged_with_it_later(site):
    from spoolbalsam.spool.store import Store
    # A reader can see a launcher's write half done (RUN_DONE visible, the JOB_FINISHED
    # written with it not yet); the site must not consume the run end alone, or the
    # return code and times are lost when JOB_FINISHED arrives by itself.
    drop(site, "torn.json", job(workdir="torn/1"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    claimed = Store(lay).claim(lay.job_path("ready", "torn"), "L1")
    path = lay.launcher_dir("L1") / "events.jsonl"
    run_done = {"t": 1.0, "job": "torn", "attempt": 1, "to": "RUN_DONE", "return_code": 0,
                "started_at": 0.5, "ended_at": 1.0, "by": "L1"}
    finished = {"t": 2.0, "job": "torn", "attempt": 1, "to": "JOB_FINISHED", "by": "L1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(run_done).encode() + b"\n")
    s.merge()
    Store(lay).move(claimed, lay.job_path("done", "torn"))
    with open(path, "ab") as f:
        f.write(json.dumps(finished).encode() + b"\n")
    s.merge()
    rec = record(site, "torn")
    assert rec["state"] == "JOB_FINISHED" and rec["return_code"] == 0
    assert [h["to"] for h in rec["history"]][-3:] == ["RUNNING", "RUN_DONE", "JOB_FINISHED"]


# A launcher killed (a real SIGKILL, sent by itself) the instant its starter reported a job's
# process running, before it could log anything about it.  The job's pid goes to a file.
KILLED_AFTER_START = """
import os, signal, sys
from spoolbalsam.launch.launcher import Launcher
def announce(self, run):
    with open(sys.argv[2], "w") as f:
        f.write(str(run.proc.pid))
    os.kill(os.getpid(), signal.SIGKILL)
Launcher._announce = announce
from spoolbalsam.cli import cli
cli(["--site", sys.argv[1], "launcher", "-j", "serial", "-t", "10", "--idle-ttl", "30"])
"""


def test_kill9_right_after_a_start_still_never_runs_a_job_twice(running_site, tmp_path):
    import subprocess
    import sys
    site = running_site
    write_app(site, "Marker", MARKER)
    drop(site, "aim.json", job("Marker", "aim/1", parameters={"secs": "30"}))
    wait_for(lambda: locate(site, "aim") == "ready", 20, "ready")
    pid_file = tmp_path / "first.pid"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_AFTER_START, str(site), str(pid_file)],
                            start_new_session=True)
    proc.wait(30)
    assert proc.returncode == -9
    first_pid = int(pid_file.read_text())
    # the launcher's starter sees it go and kills the job it had started for it
    wait_for(lambda: not pid_alive(first_pid), 10, "attempt 1's process killed")
    wait_for(lambda: locate(site, "aim") == "ready", 20, "revoked")
    start_launcher(site, idle_ttl=2)
    wait_for(lambda: ("start", 2) in [(w, a) for w, a, _ in attempts(site, "aim/1")], 30,
             "attempt 2 started")
    assert [(w, a) for w, a, _ in attempts(site, "aim/1") if a == 1] in ([], [("start", 1)])
    assert record(site, "aim")["attempt"] == 2


def test_a_retry_killed_midway_leaves_the_job_visible_and_recoverable(site, monkeypatch):
    from spoolbalsam.spool.query import select
    drop(site, "rt.json", job("Fail", "rt/1", retry={"errors": 0}))
    site_obj(site).intake()
    start_launcher(site, idle_ttl=1)
    wait_for(lambda: locate(site, "rt") == "failed", 30, "failed")
    ready_dir = str(site / "jobs" / "ready")
    real = fsio.write_json_atomic

    def crash_on_publish(path, obj, **kw):
        if str(path).startswith(ready_dir):
            raise Crash()
        return real(path, obj, **kw)
    monkeypatch.setattr(fsio, "write_json_atomic", crash_on_publish)
    with pytest.raises(Crash):
        spool(site, "job", "retry", "rt")
    monkeypatch.undo()
    assert [r["id"] for r in select(site_obj(site).layout)] == ["rt"], "job invisible"
    s = site_obj(site)
    s.recover()
    s.tick()
    assert locate(site, "rt") in ("failed", "ready")


def _dead_lease(lay, launcher: str) -> None:
    """A lease of ``launcher`` naming a process of this host that has exited."""
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    fsio.write_json_atomic(lay.launcher_dir(launcher) / "lease.json",
                           {"seq": 1, "host": fsio.HOST, "pid": dead.pid, "state": "running"})


def test_verdicts_logged_behind_a_run_end_awaiting_its_hook_are_merged_when_the_launcher_dies(
        site):
    """Found by the kill soak: a run end whose outcome waits for a postprocess hook held
    back the merge of every later line of its launcher's log, and a launcher killed then
    was retired with those verdicts never merged: jobs sat in done/ unmerged forever."""
    from spoolbalsam.spool.store import Store
    for j in ("hooked", "plain"):
        drop(site, f"{j}.json", job(workdir=f"held/{j}"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    store = Store(lay)
    claimed = {j: store.claim(lay.job_path("ready", j), "L1") for j in ("hooked", "plain")}
    log = fsio.AppendLog(lay.launcher_dir("L1") / "events.jsonl")
    end = {"return_code": 0, "started_at": 0.5, "ended_at": 1.0, "by": "L1"}
    log.append({"t": 1.0, "job": "hooked", "attempt": 1, "to": "RUN_DONE", **end})  # hook runs
    log.append({"t": 2.0, "job": "plain", "attempt": 1, "to": "RUN_DONE", **end})
    log.append({"t": 2.1, "job": "plain", "attempt": 1, "to": "JOB_FINISHED", "by": "L1"})
    log.close()
    store.move(claimed["plain"], lay.job_path("done", "plain"))
    _dead_lease(lay, "L1")
    s.tick()
    assert (lay.launchers / ".retired" / "L1").is_dir()
    plain = record(site, "plain")
    assert plain["state"] == "JOB_FINISHED" and plain["return_code"] == 0, plain
    assert locate(site, "hooked") == "ready" and record(site, "hooked")["attempt"] == 2


def test_a_run_end_held_for_its_hook_is_merged_with_its_late_outcome(site):
    """The outcome of a job whose postprocess hook ran long arrives after other verdicts
    were merged: the run end's details still reach the record."""
    from spoolbalsam.spool.store import Store
    for j in ("slow", "fast"):
        drop(site, f"{j}.json", job(workdir=f"late/{j}"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    store = Store(lay)
    claimed = {j: store.claim(lay.job_path("ready", j), "L1") for j in ("slow", "fast")}
    path = lay.launcher_dir("L1") / "events.jsonl"
    log = fsio.AppendLog(path)
    log.append({"t": 1.0, "job": "slow", "attempt": 1, "to": "RUN_DONE", "return_code": 0,
                "started_at": 0.5, "ended_at": 1.0, "by": "L1"})
    log.append({"t": 2.0, "job": "fast", "attempt": 1, "to": "RUN_DONE", "return_code": 0,
                "started_at": 1.5, "ended_at": 2.0, "by": "L1"})
    log.append({"t": 2.1, "job": "fast", "attempt": 1, "to": "JOB_FINISHED", "by": "L1"})
    log.flush()
    store.move(claimed["fast"], lay.job_path("done", "fast"))
    s.merge()
    assert record(site, "fast")["return_code"] == 0       # not held up by the slow hook
    s2 = site_obj(site)                                    # a site restart keeps what it holds
    log.append({"t": 9.0, "job": "slow", "attempt": 1, "to": "JOB_FINISHED", "by": "L1"})
    log.close()
    store.move(claimed["slow"], lay.job_path("done", "slow"))
    s2.merge()
    rec = record(site, "slow")
    assert rec["state"] == "JOB_FINISHED" and rec["return_code"] == 0 and rec["ended_at"] == 1.0


def _dead_pid() -> int:
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_dead_launchers_temps_and_hook_files_are_swept_when_it_is_retired(site):
    """Found by the kill soak: a launcher killed mid-write left its dot-temps in done/ and
    ready/ (removed only by a site restart an hour later) and a postprocess hook's files in
    the job's workdir, for good."""
    drop(site, "sw.json", job(workdir="sweep/1"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    s.store.claim(lay.job_path("ready", "sw"), "L1")
    pid = _dead_pid()
    fsio.write_json_atomic(lay.launcher_dir("L1") / "lease.json",
                           {"seq": 1, "host": fsio.HOST, "pid": pid, "state": "running"})
    dead = [lay.state_dir("done") / shard("x1") / f".x1.json.{fsio.HOST}.{pid}.0badf00d",
            lay.state_dir("ready") / shard("x2") / f".x2.json.{fsio.HOST}.{pid}.0badf00e",
            lay.launcher_dir("L1") / f".lease.json.{fsio.HOST}.{pid}.0badf00f",
            site / "data" / "sweep" / "1" / f".spool-hook.postprocess.{pid}.0a0b0c0d.in.json",
            site / "data" / "sweep" / "1" / f"..spool-hook.postprocess.{pid}.0a0b0c0d.out.json"
                                           f".{fsio.HOST}.{pid + 1}.01020304"]
    live = lay.state_dir("done") / shard("x3") / f".x3.json.{fsio.HOST}.{os.getpid()}.0badf010"
    other = lay.state_dir("done") / shard("x4") / ".x4.json.elsewhere.1.0badf011"
    for p in dead + [live, other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"{")
    s.tick()
    assert (lay.launchers / ".retired" / "L1").is_dir() and locate(site, "sw") == "ready"
    retired = lay.launchers / ".retired" / "L1"
    assert [p for p in dead if p.exists() or (retired / p.name).exists()] == []
    assert live.exists() and other.exists(), "a live or remote writer's temp must stay"


def test_a_restarted_site_sweeps_the_temps_of_its_killed_predecessor_at_once(site):
    """Found by the kill soak: temps of a site killed mid-batch stayed until a restart at
    least an hour later; a temp whose writer is a dead process of this host goes now."""
    lay = site_obj(site).layout
    pid = _dead_pid()
    dead = [lay.state_dir("ready") / "0a" / f".j.json.{fsio.HOST}.{pid}.00000001",
            lay.created / f".k.json.{fsio.HOST}.{pid}.00000002",
            lay.site_dir / f".merged.json.{fsio.HOST}.{pid}.00000003"]
    young_remote = lay.created / ".m.json.elsewhere.77.00000004"
    old_remote = lay.created / ".n.json.elsewhere.78.00000005"
    for p in dead + [young_remote, old_remote]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"{")
    os.utime(old_remote, (1, 1))
    site_obj(site).recover()
    assert [p for p in dead if p.exists()] == [] and not old_remote.exists()
    assert young_remote.exists()


def test_a_duplicate_drop_of_a_running_jobs_id_never_costs_its_verdict(site):
    """Found by the fuzz soak: a file dropped under the id of a job that had just finished
    (its verdict read before its rename, as launchers write them) made the site take the
    job for revoked -- locate finds created/ first -- and drop its verdict: the job stayed
    in done/ unmerged for good."""
    from spoolbalsam.spool.store import Store
    drop(site, "dupv.json", job(workdir="dupv/1"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    store = Store(lay)
    claimed = store.claim(lay.job_path("ready", "dupv"), "L1")
    log = fsio.AppendLog(lay.launcher_dir("L1") / "events.jsonl")
    log.append({"t": 1.0, "job": "dupv", "attempt": 1, "to": "RUN_DONE", "return_code": 0,
                "started_at": 0.5, "ended_at": 1.0, "by": "L1"})
    log.append({"t": 1.1, "job": "dupv", "attempt": 1, "to": "JOB_FINISHED", "by": "L1"})
    log.close()
    s.merge()                                   # the verdict, before the launcher's rename
    assert "dupv" in s.unsettled
    drop(site, "dupv.json", job(workdir="dupv/again"))       # a duplicate submission
    store.move(claimed, lay.job_path("done", "dupv"))
    s.merge()
    from spoolbalsam.spool.store import read_job
    rec = read_job(lay.job_path("done", "dupv"), "done")
    assert rec["state"] == "JOB_FINISHED" and rec["return_code"] == 0, rec
    s.intake()
    assert "already exists" in rejected_entries(site)["dupv.json"][1]


def test_a_merge_that_meets_a_full_disk_holds_nothing_and_is_done_again(site, monkeypatch):
    """Found by the disk-full soak: a merge whose new records could not be written left
    the jobs it had taken into site/limbo (and temps in done/) until the site restarted;
    the campaign could not finish.  Now the batch is taken back whole and redone."""
    import errno
    from spoolbalsam.spool.store import Store, read_job
    drop(site, "full.json", job(workdir="full/1"))
    s = site_obj(site)
    s.intake()
    lay = s.layout
    store = Store(lay)
    claimed = store.claim(lay.job_path("ready", "full"), "L1")
    log = fsio.AppendLog(lay.launcher_dir("L1") / "events.jsonl")
    log.append({"t": 1.0, "job": "full", "attempt": 1, "to": "RUN_DONE", "return_code": 0,
                "started_at": 0.5, "ended_at": 1.0, "by": "L1"})
    log.append({"t": 1.1, "job": "full", "attempt": 1, "to": "JOB_FINISHED", "by": "L1"})
    log.close()
    store.move(claimed, lay.job_path("done", "full"))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fsio, "_write_temp", full)
    monkeypatch.setattr(fsio, "overwrite", full)
    with pytest.raises(OSError):
        s.merge()
    monkeypatch.undo()
    assert fsio.list_names(lay.site_dir / "limbo") == [] and locate(site, "full") == "done"
    assert [p for p in (site / "jobs").rglob(".*") if p.is_file()] == []
    s.merge()                                    # space again: the same events, merged
    rec = read_job(lay.job_path("done", "full"), "done")
    assert rec["state"] == "JOB_FINISHED" and rec["return_code"] == 0
