"""Dependencies: children wait for all parents; a failed parent fails its descendants with a
reason naming it; parents in the same drop batch work; the site never loses a release."""
from __future__ import annotations

import time

import pytest

from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import Store

from helpers import (drop, job, locate, record, rejected_entries, site_obj, start_launcher,
                     start_site, wait_for)


def test_child_waits_until_all_parents_are_done(running_site):
    site = running_site
    drop(site, "p1.json", job(workdir="dep/p1"))
    drop(site, "p2.json", job("Sleep", "dep/p2", parameters={"secs": "1"}))
    drop(site, "kid.json", job(workdir="dep/kid", parent_ids=["p1", "p2"]))
    wait_for(lambda: locate(site, "kid") == "waiting", 20, "kid waiting")
    assert record(site, "kid")["state"] == "AWAITING_PARENTS"
    assert not (site / "data" / "dep" / "kid").exists()
    start_launcher(site, idle_ttl=4)
    wait_for(lambda: locate(site, "kid") == "done", 40, "kid done")
    wait_for(lambda: all(locate(site, j) == "done" and record(site, j).get("return_code") == 0
                         for j in ("p1", "p2", "kid")), 20, "the three records merged")
    recs = {j: record(site, j) for j in ("p1", "p2", "kid")}
    assert recs["kid"]["started_at"] >= max(recs["p1"]["ended_at"], recs["p2"]["ended_at"])
    assert recs["kid"]["return_code"] == 0


def test_failed_parent_fails_children_and_grandchildren_naming_it(running_site):
    site = running_site
    drop(site, "bad-parent.json", job("Fail", "dep/bad", retry={"errors": 0}))
    drop(site, "child.json", job(workdir="dep/child", parent_ids=["bad-parent"]))
    drop(site, "grandchild.json", job(workdir="dep/gc", parent_ids=["child"]))
    drop(site, "sibling.json", job(workdir="dep/sib"))
    wait_for(lambda: locate(site, "grandchild") == "waiting", 20, "grandchild waiting")
    start_launcher(site, idle_ttl=3)
    # (locate says "failed" already while the site's rewrite holds the job in its limbo)
    wait_for(lambda: record(site, "grandchild")["state"] == "FAILED", 40, "grandchild failed")
    assert locate(site, "bad-parent") == "failed" and locate(site, "child") == "failed"
    child, gc = record(site, "child"), record(site, "grandchild")
    assert "bad-parent" in child["error"] and child["state"] == "FAILED"
    assert "child" in gc["error"]
    assert not (site / "data" / "dep" / "child").exists(), "a failed child must never run"
    wait_for(lambda: locate(site, "sibling") == "done", 20, "unrelated job done")
    # a child submitted after its parent failed fails at once, naming the parent
    drop(site, "late-child.json", job(workdir="dep/late", parent_ids=["bad-parent"]))
    wait_for(lambda: locate(site, "late-child") == "failed", 20, "late child failed")
    assert "bad-parent" in record(site, "late-child")["error"]


def test_parent_in_the_same_drop_batch(site):
    # dropped while the site is stopped, so the site sees them in one intake batch; the
    # child's file sorts before its parent's
    drop(site, "a-child.json", job(workdir="batch/child", parent_ids=["b-parent"]))
    drop(site, "b-parent.json", job(workdir="batch/parent"))
    start_site(site)
    wait_for(lambda: locate(site, "a-child") == "waiting", 20, "child waiting")
    start_launcher(site, idle_ttl=3)
    wait_for(lambda: locate(site, "a-child") == "done", 40, "child done")


def test_parent_in_the_same_batch_whose_file_name_is_not_its_id(site):
    drop(site, "a-child.json", job(workdir="batch2/child", parent_ids=["the-parent"]))
    drop(site, "b-parent.json", job(workdir="batch2/parent", id="the-parent"))
    site_obj(site).intake()
    assert rejected_entries(site) == {}
    assert locate(site, "the-parent") == "ready" and locate(site, "a-child") == "waiting"


# ---- exact interleavings, in process -------------------------------------------------------
def _claimed_parent_and_waiting_child(site):
    drop(site, "par.json", job(workdir="race/par"))
    drop(site, "kid.json", job(workdir="race/kid", parent_ids=["par"]))
    s = site_obj(site)
    s.intake()
    lay = Layout(site)
    claimed = Store(lay).claim(lay.job_path("ready", "par"), "L1")
    assert claimed and locate(site, "kid") == "waiting"
    return s, lay, claimed


def _launcher_verdict(lay: Layout, rec: dict) -> None:
    """What a launcher writes (and syncs) before its rename: RUNNING, RUN_DONE, JOB_FINISHED."""
    log = fsio.AppendLog(lay.launcher_dir("L1") / "events.jsonl")
    t = time.time()
    base = {"job": rec["id"], "attempt": 1, "by": "L1", "launcher": "L1"}
    log.append({**base, "t": t, "to": "RUNNING", "started_at": t})
    log.append({**base, "t": t + 0.1, "to": "RUN_DONE", "return_code": 0, "ended_at": t + 0.1})
    log.append({**base, "t": t + 0.2, "to": "JOB_FINISHED"})
    log.close()


def test_release_when_the_site_merges_after_the_launchers_rename(site):
    s, lay, claimed = _claimed_parent_and_waiting_child(site)
    _launcher_verdict(lay, fsio.read_json(claimed))
    Store(lay).move(claimed, lay.job_path("done", "par"))
    s.tick()
    assert record(site, "par")["return_code"] == 0
    assert locate(site, "kid") == "ready"


def test_release_when_the_site_merges_between_the_launchers_verdict_and_rename(site):
    s, lay, claimed = _claimed_parent_and_waiting_child(site)
    _launcher_verdict(lay, fsio.read_json(claimed))
    s.tick()                                   # the site wakes on the event-log write ...
    Store(lay).move(claimed, lay.job_path("done", "par"))   # ... and then the launcher renames
    for _ in range(3):
        s.tick()
    assert locate(site, "kid") == "ready", "child of a finished parent still waiting"
    assert record(site, "par")["return_code"] == 0


def test_a_parent_held_in_a_launcher_limbo_still_exists(site):
    drop(site, "held.json", job(workdir="limbo/held"))
    s = site_obj(site)
    s.intake()
    lay = Layout(site)
    limbo = lay.launcher_dir("L1") / "limbo"
    limbo.mkdir(parents=True)
    lay.job_path("ready", "held").rename(limbo / "held@ready.json")
    drop(site, "held-kid.json", job(workdir="limbo/kid", parent_ids=["held"]))
    s.intake()
    assert rejected_entries(site) == {}
    assert locate(site, "held-kid") == "waiting"


def test_verdict_read_before_rename_survives_a_site_restart(site):
    s, lay, claimed = _claimed_parent_and_waiting_child(site)
    _launcher_verdict(lay, fsio.read_json(claimed))
    s.tick()                                            # verdict seen, rename not yet
    del s                                               # kill -9 of the site
    Store(lay).move(claimed, lay.job_path("done", "par"))    # the launcher renames
    s2 = site_obj(site)
    s2.recover()
    for _ in range(3):
        s2.tick()
    assert locate(site, "kid") == "ready"
    assert record(site, "par")["return_code"] == 0


def test_merged_history_keeps_running_when_the_log_is_read_in_pieces(site):
    s, lay, claimed = _claimed_parent_and_waiting_child(site)
    log = fsio.AppendLog(lay.launcher_dir("L1") / "events.jsonl")
    t = time.time()
    base = {"job": "par", "attempt": 1, "by": "L1", "launcher": "L1"}
    log.append({**base, "t": t, "to": "RUNNING", "started_at": t, "pid": 1})
    log.flush()
    s.tick()                                             # the site reads RUNNING alone
    # a run's end says when it started (the launcher's contract; events.apply_event)
    log.append({**base, "t": t + 0.1, "to": "RUN_DONE", "return_code": 0, "started_at": t,
                "ended_at": t + 0.1})
    log.append({**base, "t": t + 0.2, "to": "JOB_FINISHED"})
    log.close()
    Store(lay).move(claimed, lay.job_path("done", "par"))
    s.tick()
    rec = record(site, "par")
    assert rec["return_code"] == 0
    assert [h["to"] for h in rec["history"]][1:] == ["RUNNING", "RUN_DONE", "JOB_FINISHED"]


def test_a_reader_never_misses_a_job_the_site_is_merging(site, monkeypatch):
    from spoolbalsam.spool.query import select
    s, lay, claimed = _claimed_parent_and_waiting_child(site)   # kid waits, par claimed
    _launcher_verdict(lay, fsio.read_json(claimed))
    Store(lay).move(claimed, lay.job_path("done", "par"))
    reader = select(lay)
    first = next(reader)                     # the reader has started (kid, in waiting/)
    seen = [first["id"]]
    real_commit = fsio.Batch.commit

    def commit(self):                        # the reader goes on while par is in site/limbo
        seen.extend(r["id"] for r in reader)
        real_commit(self)
    monkeypatch.setattr(fsio.Batch, "commit", commit)
    s.merge()
    monkeypatch.undo()
    assert record(site, "par")["return_code"] == 0
    assert sorted(seen) == ["kid", "par"]
