"""The claim protocol with real processes: claim races, token mode, rewrite vs claim, limbo."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
from pathlib import Path

import pytest

from spoolbalsam.spool import fsio
from spoolbalsam.spool.ids import new_id, shard
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import LIMBO_SEP, Store

from helpers import temps_under

CTX = mp.get_context("fork")


def make_ready(root: Path, n: int) -> tuple[Layout, list[str]]:
    lay = Layout(root)
    lay.make()
    ids = [new_id() for _ in range(n)]
    b = fsio.Batch(lay.jobs)
    for i, job_id in enumerate(ids):
        b.add_json(lay.job_path("ready", job_id), {"id": job_id, "n": i, "state": "READY",
                                                   "attempt": 1})
    b.commit()
    return lay, ids


def visible_names(lay: Layout) -> dict[str, list[str]]:
    """job id -> every visible place it has (state dirs, running/L, limbos)."""
    where: dict[str, list[str]] = {}
    for state in ("waiting", "ready", "done", "failed"):
        for _, p in Store(lay).iter_dir(state):
            where.setdefault(p.name[:-5], []).append(state)
    for launcher in fsio.list_dirs(lay.running):
        for n in fsio.list_names(lay.running / launcher):
            where.setdefault(n[:-5], []).append(f"running/{launcher}")
    return where


def _claimer(root: str, launcher: str, mode: str, barrier, out_path: str) -> None:
    store = Store(Layout(Path(root)), mode)
    claimed = []
    barrier.wait()
    while True:
        got = 0
        for bucket in store.ready_buckets():
            names = store.ready_names(bucket)
            random.shuffle(names)
            for p in names:
                if store.claim(p, launcher) is not None:
                    claimed.append(p.name[:-5])
                    got += 1
        if got == 0 and not any(store.ready_names(b) for b in store.ready_buckets()):
            break
    Path(out_path).write_text(json.dumps(claimed))


def run_claimers(root: Path, n_procs: int, mode: str) -> dict[str, list[str]]:
    barrier = CTX.Barrier(n_procs)
    procs, outs = [], {}
    for i in range(n_procs):
        out = root / f"claimed-{i}.json"
        outs[f"L{i}"] = out
        procs.append(CTX.Process(target=_claimer, args=(str(root), f"L{i}", mode, barrier, str(out))))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, f"claimer exited with {p.exitcode}"
    return {k: json.loads(v.read_text()) for k, v in outs.items()}


@pytest.mark.parametrize("mode", ["rename", "token"])
def test_racing_claimers_claim_every_job_exactly_once(tmp_path, mode):
    lay, ids = make_ready(tmp_path, 500)
    claimed = run_claimers(tmp_path, 4, mode)
    every = [j for c in claimed.values() for j in c]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert set(every) == set(ids), "a job was lost"
    # what each claimer believes it owns is exactly what its running/ directory holds
    for launcher, mine in claimed.items():
        assert sorted(n[:-5] for n in fsio.list_names(lay.running / launcher)) == sorted(mine)
    assert all(len(v) == 1 for v in visible_names(lay).values())
    assert list(Store(lay).iter_dir("ready")) == []
    if mode == "token":
        tokens = [p for p in (lay.jobs / "claims").rglob("*") if p.is_file()]
        assert sorted(p.name for p in tokens) == sorted(ids)
        for launcher, mine in claimed.items():
            for job_id in mine[:20]:
                tok = lay.jobs / "claims" / shard(job_id) / job_id
                assert tok.read_text() == launcher


def test_token_mode_refuses_a_claim_while_another_holds_the_token(tmp_path):
    lay, [job_id] = make_ready(tmp_path, 1)
    store = Store(lay, "token")
    assert store._take_token(job_id, "other")
    assert store.claim(lay.job_path("ready", job_id), "L1") is None
    assert lay.job_path("ready", job_id).exists()          # untouched
    store.drop_token(job_id)
    assert store.claim(lay.job_path("ready", job_id), "L1") == lay.running / "L1" / f"{job_id}.json"


def test_unknown_claim_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="claim_mode"):
        Store(Layout(tmp_path), "optimistic")


def _rewriter(root: str, ids: list[str], barrier, out_path: str) -> None:
    lay = Layout(Path(root))
    store = Store(lay)
    won = []
    barrier.wait()
    for job_id in ids:
        src = lay.job_path("ready", job_id)
        new = {"id": job_id, "state": "FAILED", "rewritten": True, "attempt": 1}
        if store.move_rewrite(src, lay.job_path("failed", job_id), new, lay.site_dir / "limbo"):
            won.append(job_id)
    Path(out_path).write_text(json.dumps(won))


def test_move_rewrite_racing_claims_has_one_winner_per_job(tmp_path):
    lay, ids = make_ready(tmp_path, 300)
    order = ids[:]
    random.Random(7).shuffle(order)
    barrier = CTX.Barrier(3)
    procs = [CTX.Process(target=_rewriter, args=(str(tmp_path), order, barrier,
                                                  str(tmp_path / "rewritten.json")))]
    for i in range(2):
        procs.append(CTX.Process(target=_claimer, args=(str(tmp_path), f"L{i}", "rename", barrier,
                                                        str(tmp_path / f"claimed-{i}.json"))))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rewritten = json.loads((tmp_path / "rewritten.json").read_text())
    claimed = [j for i in range(2) for j in json.loads((tmp_path / f"claimed-{i}.json").read_text())]
    assert len(set(rewritten) | set(claimed)) == len(rewritten) + len(claimed), "two winners"
    assert set(rewritten) | set(claimed) == set(ids), "a job was lost"
    where = visible_names(lay)
    assert set(where) == set(ids)
    assert all(len(v) == 1 for v in where.values()), {k: v for k, v in where.items() if len(v) > 1}
    for job_id in rewritten:
        assert where[job_id] == ["failed"]
        assert fsio.read_json(lay.job_path("failed", job_id))["rewritten"] is True
    for job_id in claimed:
        assert where[job_id][0].startswith("running/")
    assert fsio.list_names(lay.site_dir / "limbo") == []        # nothing half-done


# ---- finish_limbo: every half-done step of a move with a rewrite ---------------------------
def _one_ready(tmp_path) -> tuple[Layout, Store, str, Path]:
    lay, [job_id] = make_ready(tmp_path, 1)
    return lay, Store(lay), job_id, lay.site_dir / "limbo"


def test_finish_limbo_drops_the_limbo_copy_when_the_destination_exists(tmp_path):
    lay, store, job_id, limbo = _one_ready(tmp_path)
    dest = lay.job_path("failed", job_id)
    fsio.write_json_atomic(dest, {"id": job_id, "state": "FAILED"})
    lay.job_path("ready", job_id).rename(limbo / f"{job_id}{LIMBO_SEP}failed.json")
    assert store.finish_limbo(limbo) == [job_id]
    assert fsio.list_names(limbo) == []
    assert fsio.read_json(dest)["state"] == "FAILED"
    assert store.locate(job_id) == ("failed", dest)


def test_finish_limbo_publishes_a_limbo_only_job_where_it_was_going(tmp_path):
    lay, store, job_id, limbo = _one_ready(tmp_path)
    data = lay.job_path("ready", job_id).read_bytes()
    lay.job_path("ready", job_id).rename(limbo / f"{job_id}{LIMBO_SEP}done.json")
    loc = store.locate(job_id)                 # a limbo-held job may be reported held there
    assert loc is None or loc[1].parent == limbo
    assert store.finish_limbo(limbo) == [job_id]
    assert lay.job_path("done", job_id).read_bytes() == data
    assert os.listdir(limbo) == []


def test_finish_limbo_restores_a_move_into_a_launchers_running_dir(tmp_path):
    lay, store, job_id, limbo = _one_ready(tmp_path)
    lay.job_path("ready", job_id).rename(limbo / f"{job_id}{LIMBO_SEP}running.L7.json")
    store.finish_limbo(limbo)
    assert store.locate(job_id) == ("running", lay.running / "L7" / f"{job_id}.json")


class Crash(BaseException):
    """A simulated kill -9 at a precise step (BaseException: nothing may swallow it)."""


@pytest.mark.parametrize("step", ["after_limbo_rename", "after_publish"])
def test_move_rewrite_interrupted_at_each_step_is_finished_by_finish_limbo(tmp_path, monkeypatch,
                                                                          step):
    lay, store, job_id, limbo = _one_ready(tmp_path)
    new = {"id": job_id, "state": "RESTART_READY", "attempt": 2}
    src, dst = lay.job_path("ready", job_id), lay.job_path("failed", job_id)
    if step == "after_limbo_rename":
        monkeypatch.setattr(fsio, "write_json_atomic", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    else:
        real_unlink = os.unlink
        monkeypatch.setattr(os, "unlink", lambda p, *a, **k: (_ for _ in ()).throw(Crash())
                            if str(p).startswith(str(limbo)) else real_unlink(p, *a, **k))
    with pytest.raises(Crash):
        store.move_rewrite(src, dst, new, limbo)
    monkeypatch.undo()
    assert not src.exists()
    store.finish_limbo(limbo)
    assert fsio.list_names(limbo) == []
    assert store.locate(job_id) == ("failed", dst)            # exactly one visible name
    if step == "after_publish":
        assert fsio.read_json(dst) == new


def test_move_rewrite_lost_race_publishes_nothing(tmp_path):
    lay, store, job_id, limbo = _one_ready(tmp_path)
    assert store.claim(lay.job_path("ready", job_id), "L1")
    ok = store.move_rewrite(lay.job_path("ready", job_id), lay.job_path("failed", job_id),
                            {"id": job_id}, limbo)
    assert ok is False
    assert visible_names(lay) == {job_id: ["running/L1"]}


def test_locate_and_iter_dir_see_every_state_and_skip_temps(tmp_path):
    lay, ids = make_ready(tmp_path, 10)
    store = Store(lay)
    (lay.job_path("ready", ids[0]).parent / f".{ids[0]}.json.tmp").write_text("{}")
    assert sorted(p.name[:-5] for _, p in store.iter_dir("ready")) == sorted(ids)
    store.claim(lay.job_path("ready", ids[1]), "L1")
    assert store.locate(ids[1])[0] == "running"
    assert store.locate("no-such-job") is None


# ---- spares: rewrites reuse the files they replaced ----------------------------------------
def _rewrite_all(lay: Layout, store: Store, ids: list[str], spares: fsio.Spares, n: int) -> None:
    batch = fsio.Batch(lay.jobs, spares)
    for job_id in ids:
        path = lay.job_path("ready", job_id)
        assert store.move_rewrite(path, path, {"id": job_id, "state": "READY", "n": n},
                                  lay.site_dir / "limbo", batch)
    batch.commit()


def test_batched_rewrites_reuse_the_files_they_replaced_and_create_none(tmp_path):
    lay, ids = make_ready(tmp_path, 20)
    store, spares = Store(lay), fsio.Spares(lay.site_dir / "spare", rest=0.0)
    first = {j: os.stat(lay.job_path("ready", j)).st_ino for j in ids}
    _rewrite_all(lay, store, ids, spares, 1)          # no spares yet: 20 new files
    second = {j: os.stat(lay.job_path("ready", j)).st_ino for j in ids}
    assert len(spares.free) == 20 and fsio.list_names(lay.site_dir / "limbo") == []
    _rewrite_all(lay, store, ids, spares, 2)          # every record written into a spare
    third = {j: os.stat(lay.job_path("ready", j)).st_ino for j in ids}
    assert set(third.values()) == set(first.values()), "the rewrite created new files"
    assert not set(third.values()) & set(second.values())
    for j in ids:
        assert fsio.read_json(lay.job_path("ready", j)) == {"id": j, "state": "READY", "n": 2}
    assert len(os.listdir(lay.site_dir / "spare")) == 20 and not temps_under(lay.jobs)


def test_a_spare_rests_before_it_is_reused(tmp_path):
    lay, ids = make_ready(tmp_path, 3)
    spares = fsio.Spares(lay.site_dir / "spare", rest=60.0)
    _rewrite_all(lay, Store(lay), ids, spares, 1)
    assert len(spares.free) == 3 and spares.take() is None


def test_a_hard_linked_record_is_never_written_into(tmp_path):
    lay, [job_id] = make_ready(tmp_path, 1)
    path = lay.job_path("ready", job_id)
    keep = tmp_path / "my-copy.json"
    os.link(path, keep)                               # a user keeps a link to the record
    before = keep.read_bytes()
    spares = fsio.Spares(lay.site_dir / "spare", rest=0.0)
    _rewrite_all(lay, Store(lay), [job_id], spares, 1)
    _rewrite_all(lay, Store(lay), [job_id], spares, 2)
    assert keep.read_bytes() == before
    assert fsio.read_json(path)["n"] == 2


def test_a_reader_of_a_recycled_file_is_told_the_job_moved_on(tmp_path):
    from spoolbalsam.spool.store import read_job
    lay, [a, b] = make_ready(tmp_path, 2)
    held = lay.site_dir / "spare" / "x"
    held.parent.mkdir(parents=True)
    os.link(lay.job_path("ready", b), held)           # a's name now reaches b's record,
    os.replace(held, lay.job_path("ready", a))        # as through a recycled open file
    with pytest.raises(FileNotFoundError):
        read_job(lay.job_path("ready", a), "ready")
    assert read_job(lay.job_path("ready", b), "ready")["id"] == b


@pytest.mark.parametrize("src,dst", [("running", "done"), ("running", "failed"),
                                     ("running", "ready"), ("ready", "running"),
                                     ("waiting", "ready"), ("created", "ready"),
                                     ("done", "ready"), ("failed", "ready")])
def test_locate_finds_a_job_that_moves_at_any_moment_of_its_look(tmp_path, monkeypatch,
                                                                  src, dst):
    """One move (a claim, a finish, a retry, a revoke) between any two of locate's looks
    never makes a job look gone: the settle and merge steps would drop it."""
    lay = Layout(tmp_path / "S")
    lay.make()
    (lay.running / "L1").mkdir()
    real = os.path.exists
    for k in range(1, 16):
        job_id = new_id()
        path = lay.job_path(src, job_id, "L1")
        fsio.write_json_atomic(path, {"id": job_id})
        looks = []

        def exists(p, job_id=job_id, path=path, looks=looks, k=k):
            got = real(p)
            looks.append(p)
            if len(looks) == k:
                fsio.rename(path, lay.job_path(dst, job_id, "L1"))
            return got
        monkeypatch.setattr(os.path, "exists", exists)
        try:
            found = Store(lay).locate(job_id, {})
        finally:
            monkeypatch.setattr(os.path, "exists", real)
        assert found is not None, f"{src} -> {dst} after look {k} of {len(looks)}: lost"
        assert found[0] in (src, dst)


@pytest.mark.parametrize("step", ["created->intake", "intake->ready"])
def test_locate_finds_a_drop_the_site_is_taking_in_at_any_moment_of_its_look(tmp_path,
                                                                             monkeypatch, step):
    """The site holds a drop in site/intake/ while it checks and publishes it (milliseconds
    to a batch's syncs): a reader looking then must see it (CREATED), not a vanished job."""
    lay = Layout(tmp_path / "S")
    lay.make()
    real_exists, real_list = os.path.exists, fsio.list_names
    for k in range(1, 10):
        job_id = new_id()
        created, held = lay.created / f"{job_id}.json", lay.site_dir / "intake" / f"1.0~{job_id}.json"
        src, dst = (created, held) if step == "created->intake" else (held, lay.job_path("ready", job_id))
        fsio.write_json_atomic(src, {"id": job_id})
        looks = []

        def look(got, looks=looks, k=k, src=src, dst=dst):
            looks.append(1)
            if len(looks) == k:
                fsio.rename(src, dst)
            return got
        monkeypatch.setattr(os.path, "exists", lambda p: look(real_exists(p)))
        monkeypatch.setattr(fsio, "list_names", lambda d, suffix=".json": look(real_list(d, suffix)))
        try:
            found = Store(lay).locate(job_id, {})
        finally:
            monkeypatch.setattr(os.path, "exists", real_exists)
            monkeypatch.setattr(fsio, "list_names", real_list)
        assert found is not None, f"{step} after look {k} of {len(looks)}: lost"
        assert found[0] in ("created", "ready")


def test_a_mover_never_takes_a_copy_held_in_someone_elses_limbo(tmp_path, monkeypatch):
    """The site merges a done/ record through its limbo: a CLI retry or rm that found the
    job there and renamed the held copy would leave it with two names once the site
    publishes.  Movers wait for the job's own name (``locate_own``)."""
    from spoolbalsam.api.job import _remove
    lay, [j] = make_ready(tmp_path, 1)
    store = Store(lay)
    fsio.rename(lay.job_path("ready", j), lay.job_path("failed", j))
    held = lay.site_dir / "limbo" / f"{j}@failed.json"
    held.parent.mkdir(parents=True, exist_ok=True)
    fsio.rename(lay.job_path("failed", j), held)             # the site, mid-merge
    assert store.locate(j) == ("failed", held)
    assert not store.own_name("failed", held, j)
    assert store.locate_own(j, wait=0.05) == ("failed", held)  # still held: reported as is
    import threading
    t = threading.Timer(0.1, lambda: fsio.rename(held, lay.job_path("failed", j)))
    t.start()                                                # the merge publishes
    assert store.locate_own(j, wait=5) == ("failed", lay.job_path("failed", j))
    t.join()
    fsio.rename(lay.job_path("failed", j), held)             # held again, for good
    from spoolbalsam.api.job import JobBusy
    monkeypatch.setattr(Store, "locate_own", lambda self, job_id, wait=5.0: Store.locate(self, job_id))
    with pytest.raises(JobBusy):
        _remove(lay, j)
    assert held.exists() and not (lay.site_dir / "removed" / f"{j}.json").exists()


def test_locate_finds_a_job_that_passes_through_a_limbo_during_its_look(tmp_path,
                                                                       monkeypatch):
    """A launcher that merges its verdicts moves a finished job running/L/ -> its limbo ->
    done/ within one batch (two syncs: milliseconds, and a look over a thousand launchers
    takes as long).  Both moves between any two of locate's looks never make the job look
    gone: the site would reject the children of a parent that just finished."""
    from spoolbalsam.spool.store import LIMBO_SEP
    lay = Layout(tmp_path / "S")
    lay.make()
    (lay.running / "L1").mkdir()
    limbo = lay.launchers / "L1" / "limbo"
    limbo.mkdir(parents=True)
    real_exists, real_list = os.path.exists, fsio.list_names
    tried = 0
    for j in range(1, 20):
        for k in range(j, 20):
            job_id = new_id()
            src = lay.job_path("running", job_id, "L1")
            held = limbo / f"{job_id}{LIMBO_SEP}done.json"
            fsio.write_json_atomic(src, {"id": job_id})
            looks = []

            def look(got, looks=looks, j=j, k=k, src=src, held=held, job_id=job_id):
                looks.append(1)
                if len(looks) == j:
                    fsio.rename(src, held)
                if len(looks) == k:
                    fsio.rename(held, lay.job_path("done", job_id))
                return got
            monkeypatch.setattr(os.path, "exists", lambda p: look(real_exists(p)))
            monkeypatch.setattr(fsio, "list_names",
                                lambda d, suffix=".json": look(real_list(d, suffix)))
            try:
                found = Store(lay).locate(job_id)
            finally:
                monkeypatch.setattr(os.path, "exists", real_exists)
                monkeypatch.setattr(fsio, "list_names", real_list)
            if len(looks) < k:
                continue                 # the look ended before the second move
            tried += 1
            assert found is not None, f"moves after looks {j} and {k} of {len(looks)}: lost"
            assert found[0] in ("running", "done")
    assert tried > 20
