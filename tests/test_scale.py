"""What keeps one site fast with a thousand launchers, and safe while it is fast.

* The site finds a job through its query index (``Site.locate``: one or two looks), never
  by looking into every launcher's ``running/`` directory; its answers agree with
  ``Store.locate`` wherever the job is.
* It opens only the launcher event logs that grew, and reads a lease again only when its
  launcher rewrote it.
* With ``launcher.merge_verdicts`` a launcher publishes each finished job's record with its
  verdict merged in; the site rewrites nothing.  ``kill -9`` of such a launcher at each
  point of its move (real processes; ``strace`` stops it at the exact system call), and of
  the site between a publication and its index line, loses nothing and runs nothing twice.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from spoolbalsam.site import loop
from spoolbalsam.spool import fsio, index
from spoolbalsam.spool import states as S
from spoolbalsam.spool.store import Store

from helpers import (PY, drop, edit_settings, ids_in, job, launcher_ids, layout, locate, popen,
                     record, rejected_entries, site_obj, start_launcher, start_site, stop_site,
                     wait_for, write_app)

# Each run appends "start ATTEMPT" and "end ATTEMPT" to runs.log in its workdir.
ONCE = {"command_template": 'echo "start $SPOOL_ATTEMPT" >> runs.log; sleep {{ secs }}; '
                            'echo "end $SPOOL_ATTEMPT" >> runs.log'}


def runs(site: Path, workdir: str) -> list[str]:
    try:
        return (site / "data" / workdir / "runs.log").read_text().splitlines()
    except FileNotFoundError:
        return []


def needs_strace() -> None:
    if shutil.which("strace") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("strace is required for the kill -9 window tests (apt-get install strace)")
        pytest.skip("strace is not installed")


def traced(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)


def kill_at(pid: int, path: Path, calls: str, log: Path) -> subprocess.Popen:
    """Attach strace to process ``pid``: its first call of ``calls`` on ``path`` is not made,
    and the process gets SIGKILL right there."""
    tracer = popen(["strace", "-qq", "-o", str(log), "-p", str(pid), "-P", str(path),
                    "-e", f"trace={calls}", "-e", f"inject={calls}:error=EIO:signal=KILL:when=1"])
    wait_for(lambda: traced(pid), 10, "strace attached")
    return tracer


def _several_launcher_dirs(site: Path, n: int) -> list[str]:
    """``n`` launcher directories with running/ dirs, as idle launchers leave them."""
    lay = layout(site)
    names = [f"L{i:03d}" for i in range(n)]
    for name in names:
        (lay.running / name).mkdir(parents=True)
        (lay.launcher_dir(name) / "limbo").mkdir(parents=True)
        (lay.launcher_dir(name) / "events.jsonl").write_bytes(b"")
    return names


# ---- finding jobs through the index -------------------------------------------------------
def test_a_child_taken_in_before_its_parents_drop_waits_for_it(site):
    s = site_obj(site)
    s.recover()                                  # the index is checked: Site.locate uses it
    assert s.index_checked
    drop(site, "a-kid.json", job(workdir="k/kid", parent_ids=["z-parent"]))
    drop(site, "z-parent.json", job(workdir="k/parent"))
    assert s.intake(limit=1) == 1                # the child's name sorts first: alone
    assert rejected_entries(site) == {}
    assert locate(site, "a-kid") == "waiting" and locate(site, "z-parent") == "created"
    s.intake()
    assert locate(site, "z-parent") == "ready"


def test_taking_in_new_jobs_looks_into_no_launchers_directory(site, monkeypatch):
    _several_launcher_dirs(site, 300)
    s = site_obj(site)
    s.recover()
    drop(site, "p0.json", job(workdir="n/p0"))
    s.intake()
    looked: list[str] = []
    real = Store.locate
    monkeypatch.setattr(Store, "locate", lambda self, j, limbo=None: looked.append(j)
                        or real(self, j, limbo))
    stats: list[str] = []
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: stats.append(str(p)) or real_exists(p))
    for i in range(50):
        drop(site, f"n{i:02d}.json", job(workdir=f"n/{i}", parent_ids=["p0"] if i % 2 else []))
    assert s.intake() == 50
    assert looked == [], "a new id or a known parent needed a look everywhere"
    assert not [p for p in stats if "/jobs/running/" in p]
    assert len(stats) <= 3 * 50                  # a look or two per job and parent
    assert sorted(ids_in(site, "ready")) == sorted(["p0"] + [f"n{i:02d}" for i in range(0, 50, 2)])
    assert sorted(ids_in(site, "waiting")) == [f"n{i:02d}" for i in range(1, 50, 2)]


def test_a_parent_claimed_by_a_launcher_the_site_has_not_heard_of_costs_no_look_everywhere(
        site, monkeypatch):
    """A parent claimed moments ago (its RUNNING event not read yet) is in one of a thousand
    running/L/ directories: its children's intake asks only whether it is done, failed or
    before that (``Site.where``), in a few looks, and they wait for it."""
    names = _several_launcher_dirs(site, 300)
    lay = layout(site)
    s = site_obj(site)
    s.recover()
    drop(site, "p0.json", job(workdir="n/p0"))
    drop(site, "p1.json", job(workdir="n/p1"))
    s.intake()
    store = Store(lay)
    assert store.claim(lay.job_path("ready", "p0"), names[150]) is not None
    os.rename(store.claim(lay.job_path("ready", "p1"), names[151]), lay.job_path("done", "p1"))
    looked: list[str] = []
    real = Store.locate
    monkeypatch.setattr(Store, "locate", lambda self, j, limbo=None, drops=True:
                        looked.append(j) or real(self, j, limbo, drops))
    stats: list[str] = []
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: stats.append(str(p)) or real_exists(p))
    for i in range(20):
        drop(site, f"c{i:02d}.json", job(workdir=f"n/c{i}", parent_ids=[f"p{i % 2}"]))
    assert s.intake() == 20
    assert looked == []
    assert not [p for p in stats if "/jobs/running/" in p]
    assert sorted(ids_in(site, "waiting")) == [f"c{i:02d}" for i in range(0, 20, 2)]
    assert sorted(ids_in(site, "ready")) == [f"c{i:02d}" for i in range(1, 20, 2)]
    assert s.where("p0") == "running" and s.where("p1") == "done" and s.where("c00") == "waiting"
    assert s.where("never") is None


def test_the_sites_locate_agrees_with_the_stores_wherever_a_job_is(site):
    lay = layout(site)
    s = site_obj(site)
    s.recover()
    for j in ("w-par", "r1", "run1", "d1", "f1", "lim1", "gone"):
        drop(site, f"{j}.json", job(workdir=f"a/{j}"))
    drop(site, "w1.json", job(workdir="a/w1", parent_ids=["w-par"]))
    s.intake()
    store = Store(lay)
    claimed = store.claim(lay.job_path("ready", "run1"), "L7")
    s.running_at["run1"] = "L7"
    os.rename(store.claim(lay.job_path("ready", "d1"), "L7"), lay.job_path("done", "d1"))
    os.rename(lay.job_path("ready", "f1"), lay.job_path("failed", "f1"))   # index says ready
    (lay.launcher_dir("L7") / "limbo").mkdir(parents=True, exist_ok=True)
    os.rename(lay.job_path("ready", "lim1"), lay.launcher_dir("L7") / "limbo" / "lim1@done.json")
    os.unlink(lay.job_path("ready", "gone"))
    drop(site, "new1.json", job(workdir="a/new1"))
    assert claimed is not None
    for j in ("w-par", "w1", "r1", "run1", "d1", "f1", "lim1", "gone", "new1", "never"):
        assert s.locate(j) == store.locate(j), j
    assert s.locate("run1")[0] == "running" and s.locate("lim1")[0] == "done"
    assert s.locate("gone") is None and s.locate("never") is None
    for j in ("w-par", "w1", "r1", "run1", "d1", "f1", "new1", "never"):
        assert s.where(j) == store.where(j), j
    assert s.where("lim1") in ("running", "done")      # between two directories
    # unlinked by hand, no hint: between two directories for all it knows, until the
    # backstop's exact look (settle_all_waiting)
    assert s.where("gone") == "running" and s.locate("gone") is None


# ---- launcher directories: only what changed ---------------------------------------------
def test_the_site_opens_only_the_event_logs_that_grew(site, monkeypatch):
    names = _several_launcher_dirs(site, 40)
    s = site_obj(site)
    s.recover()
    s.merge()
    opened: list[str] = []
    real = fsio.read_lines_at
    monkeypatch.setattr(fsio, "read_lines_at", lambda p, off: opened.append(Path(p).parent.name)
                        or real(p, off))
    s.merge()
    assert opened == []
    lay = layout(site)
    with open(lay.launcher_dir(names[7]) / "events.jsonl", "ab") as f:
        f.write(b'{"t": 1, "job": "x", "attempt": 1, "to": "RUNNING", "by": "L007"}\n')
    s.merge()
    assert opened == [names[7]]
    assert s.offsets[names[7]] > 0
    s.merge()
    assert opened == [names[7]]


def test_a_lease_is_judged_once_a_period_and_read_again_only_when_rewritten(site, monkeypatch):
    names = _several_launcher_dirs(site, 5)
    lay = layout(site)
    for name in names:
        fsio.write_json_atomic(lay.launcher_dir(name) / "lease.json",
                               {"seq": 1, "host": "elsewhere", "pid": 1}, durable=False)
    s = site_obj(site)
    read: list[str] = []
    real = loop.read_lease
    monkeypatch.setattr(loop, "read_lease", lambda p: read.append(p.parent.name) or real(p))
    s.check_launchers(100.0)
    assert sorted(read) == names
    s.check_launchers(100.0 + loop.JUDGE_PERIOD / 2)      # within the period: no look
    assert len(read) == 5
    time.sleep(0.01)                                       # a new mtime for the rewrite
    fsio.write_json_atomic(lay.launcher_dir(names[2]) / "lease.json",
                           {"seq": 2, "host": "elsewhere", "pid": 1}, durable=False)
    s.check_launchers(100.0 + loop.JUDGE_PERIOD)
    assert read[5:] == [names[2]]
    assert s.judge.seen[names[2]][0] == 2


# ---- launchers that merge their own verdicts ------------------------------------------------
def _ready_job(site: Path, name: str = "once", secs: str = "0.1") -> None:
    write_app(site, "Once", ONCE)
    drop(site, f"{name}.json", job("Once", f"once/{name}", parameters={"secs": secs},
                                   node_packing_count=4))
    s = site_obj(site)
    s.recover()
    s.intake()
    assert locate(site, name) == "ready"


def test_a_launcher_publishes_finished_records_whole_with_no_site_running(site, monkeypatch):
    edit_settings(site, {"launcher": {"merge_verdicts": True}})
    for i in range(3):
        _ready_job(site, f"m{i}")
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 60, "the launcher to finish and exit")
    lay = layout(site)
    inodes = {}
    for i in range(3):
        rec = record(site, f"m{i}")                # no site ran: this is the launcher's file
        assert rec["state"] == S.JOB_FINISHED and rec["return_code"] == 0
        steps = [h["to"] for h in rec["history"]]
        assert steps[-3:] == ["RUNNING", "RUN_DONE", "JOB_FINISHED"], steps
        inodes[f"m{i}"] = os.stat(lay.job_path("done", f"m{i}")).st_ino
    [lid] = launcher_ids(site)
    assert not (lay.launcher_dir(lid) / "spare").exists()     # its spares went with it
    s = site_obj(site)
    s.recover()
    read: list[str] = []
    real = loop.read_job
    monkeypatch.setattr(loop, "read_job", lambda p, d, retry=True: read.append(d)
                        or real(p, d, retry))
    s.tick()
    s.tick()
    assert read == [], "the site read a record whose verdict its launcher had merged"
    assert {j: os.stat(lay.job_path("done", j)).st_ino for j in inodes} == inodes, \
        "the site rewrote a record the launcher had published"
    assert s.unsettled == {}
    t = index.load(lay, overlay=False)
    assert t.counts() == {S.JOB_FINISHED: 3}


def test_without_merge_verdicts_the_site_merges_as_before(site):
    edit_settings(site, {"launcher": {"merge_verdicts": False}})
    _ready_job(site, "plain")
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 60, "the launcher to finish and exit")
    lay = layout(site)
    raw = fsio.read_json(lay.job_path("done", "plain"))
    assert raw.get("return_code") is None            # a plain rename: the claimed record
    s = site_obj(site)
    s.recover()
    s.tick()
    assert fsio.read_json(lay.job_path("done", "plain"))["return_code"] == 0


@pytest.mark.parametrize("window", ["before the move", "after the move, before the record"])
def test_kill9_of_a_merging_launcher_mid_move_keeps_its_verdict_and_runs_nothing_twice(
        site, tmp_path, window):
    """The launcher has synced RUN_DONE + JOB_FINISHED (merged) to its log.  Killed just
    before renaming the job out of running/L/ (the job is there, with a durable verdict), or
    just before publishing its record into done/ (the job is only in its limbo): the site
    takes the dead launcher's job on to done/ with its verdict, and never runs it again."""
    needs_strace()
    edit_settings(site, {"launcher": {"merge_verdicts": True}})
    _ready_job(site, "once", secs="1.5")
    start_site(site)
    proc = start_launcher(site, idle_ttl=30)
    lay = layout(site)
    wait_for(lambda: ids_in(site, "running") == ["once"] and runs(site, "once/once"), 20,
             "the job running")
    [lid] = launcher_ids(site)
    if window == "before the move":          # its rename of the job out of running/L/
        tracer = kill_at(proc.pid, lay.running / lid / "once.json", "rename,renameat,renameat2",
                         tmp_path / "strace.log")
    else:                                     # the first sync of the batch that publishes
        tracer = kill_at(proc.pid, lay.jobs, "syncfs", tmp_path / "strace.log")
    assert proc.wait(30) == -signal.SIGKILL
    tracer.wait(10)
    if window == "before the move":
        assert (lay.running / lid / "once.json").exists()
    else:
        assert (lay.launcher_dir(lid) / "limbo" / "once@done.json").exists()
        assert not lay.job_path("done", "once").exists()
    wait_for(lambda: (lay.launchers / ".retired" / lid).is_dir(), 30, "the dead launcher retired")
    rec = record(site, "once")
    assert locate(site, "once") == "done"
    assert rec["state"] == S.JOB_FINISHED and rec["return_code"] == 0 and rec["attempt"] == 1
    assert runs(site, "once/once") == ["start 1", "end 1"]
    stop_site(site)
    assert index.verify(lay) == []
    assert not list(lay.launchers.glob(".retired/*/spare/*"))


def test_a_job_published_just_before_a_kill9_of_the_site_keeps_its_id(site, tmp_path):
    """The site publishes a job, then dies before the tick's index line (strace kills it at
    that write).  Restarted, it checks its index against the directories before any intake
    (a second drop of the same id already in created/ must not hide the published job from
    that check), so the second drop is refused and the first job stays as it was."""
    needs_strace()
    lay = layout(site)
    drop(site, "dup.json", job(workdir="dup/first"))
    index_log = lay.site_dir / "index" / "1.log"     # a fresh site's first generation
    traced_site = popen(["strace", "-f", "-qq", "-o", str(tmp_path / "strace.log"),
                         "-P", str(index_log), "-e", "trace=write",
                         "-e", "inject=write:error=EIO:signal=KILL:when=1",
                         PY, "-m", "spoolbalsam.site.service", str(site)],
                        log=tmp_path / "site.out", cwd=site)
    assert traced_site.wait(60) is not None
    assert locate(site, "dup") == "ready"
    assert index.load(lay, overlay=False).find_rows(["dup"]) == {}   # the line never came
    drop(site, "dup.json", job(workdir="dup/second"))    # there as the restarted site looks
    start_site(site)
    wait_for(lambda: "dup.json" in rejected_entries(site), 20, "the second drop refused")
    assert "already exists" in rejected_entries(site)["dup.json"][1]
    assert record(site, "dup")["workdir"] == "dup/first"
    stop_site(site)
    assert index.verify(lay) == []


def test_children_released_by_a_merge_are_published_after_a_crash_before_the_commit(
        site, monkeypatch):
    """A merge releases the children of the parents it finished under one batch: their
    READY is synced to the site's event log, each goes into the site's limbo, then the
    batch publishes them.  A site that dies before the commit (the batch never commits:
    its temps and limbo copies stay, as after a kill -9) leaves the children in its limbo;
    the next site's recovery publishes each in ready/ with READY applied."""
    lay = layout(site)
    s = site_obj(site)
    s.recover()
    drop(site, "par.json", job(workdir="rel/par"))
    for k in ("k1", "k2"):
        drop(site, f"{k}.json", job(workdir=f"rel/{k}", parent_ids=["par"]))
    s.intake()
    assert locate(site, "k1") == "waiting" and locate(site, "k2") == "waiting"
    # a launcher L1 ran the parent: its events, then its rename into done/
    store = Store(lay)
    running = store.claim(lay.job_path("ready", "par"), "L1")
    events = lay.launcher_dir("L1") / "events.jsonl"
    events.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    events.write_text("".join(f'{{"t": {now + i}, "job": "par", "attempt": 1, "to": "{to}", '
                              f'"by": "L1"{extra}}}\n' for i, (to, extra) in enumerate(
                                  [("RUNNING", ""), ("RUN_DONE", ', "return_code": 0'),
                                   ("JOB_FINISHED", "")])))
    os.rename(running, lay.job_path("done", "par"))

    class Crash(BaseException):
        pass
    real_commit = fsio.Batch.commit

    def commit(batch):
        if any("/jobs/ready/" in str(p) for p in batch.held):
            raise Crash()                   # the site dies here: nothing after runs
        return real_commit(batch)
    monkeypatch.setattr(fsio.Batch, "commit", commit)
    with pytest.raises(Crash):
        s.merge()
    monkeypatch.setattr(fsio.Batch, "commit", real_commit)
    assert not os.path.exists(lay.job_path("waiting", "k1"))
    assert not os.path.exists(lay.job_path("ready", "k1"))
    assert sorted(n.split("@")[0] for n in os.listdir(lay.site_dir / "limbo")) == ["k1", "k2"]

    s2 = site_obj(site)                      # the restarted site
    s2.recover()
    for k in ("k1", "k2"):
        assert locate(site, k) == "ready"
        rec = record(site, k)
        assert rec["state"] == "READY"
        assert ("READY", "all parents finished") in [(h["to"], h.get("msg"))
                                                      for h in rec["history"]]
    assert os.listdir(lay.site_dir / "limbo") == []
    assert index.verify(lay) == []
