"""The ready bell: every way into ready/ rings it, and an idle launcher lists ready/ only
when it rang (or when its full pass is due)."""
from __future__ import annotations

import os

import pytest

from spoolbalsam import settings as settings_mod
from spoolbalsam.launch.launcher import IDLE_SCAN_SEC, Launcher
from spoolbalsam.spool import bell, fsio
from spoolbalsam.spool.ids import new_id
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import LIMBO_SEP, Store


def _rings(store: Store) -> int:
    try:
        return os.stat(store.bell).st_size
    except FileNotFoundError:
        return 0


def _record(job_id: str) -> dict:
    return {"id": job_id, "app": "EchoHello", "workdir": f"w/{job_id}", "state": "READY",
            "attempt": 1, "parameters": {"say_hello_to": "x"}}


def _put(lay: Layout, state: str, job_id: str | None = None) -> str:
    """A record written straight into ``state`` (no store, so no ring)."""
    job_id = job_id or new_id()
    fsio.write_json_atomic(lay.job_path(state, job_id), _record(job_id))
    return job_id


def test_every_move_into_ready_rings_once_and_no_other_move_does(site):
    lay = Layout(site)
    store = Store(lay)
    a = _put(lay, "waiting")
    store.move(lay.job_path("waiting", a), lay.job_path("done", a))
    assert _rings(store) == 0
    store.move(lay.job_path("done", a), lay.job_path("ready", a))
    assert _rings(store) == 1
    store.move_rewrite(lay.job_path("ready", a), lay.job_path("failed", a), _record(a),
                       lay.site_dir / "limbo")
    assert _rings(store) == 1
    store.move_rewrite(lay.job_path("failed", a), lay.job_path("ready", a), _record(a),
                       lay.site_dir / "limbo")
    assert _rings(store) == 2
    # a batch of rewrites into ready/ rings once, after its renames
    ids = [_put(lay, "waiting") for _ in range(3)]
    batch = fsio.Batch(lay.jobs)
    for j in ids:
        store.move_rewrite(lay.job_path("waiting", j), lay.job_path("ready", j), _record(j),
                           lay.site_dir / "limbo", batch)
    assert _rings(store) == 2
    batch.commit()
    assert _rings(store) == 3
    # a crash left a job in a limbo on its way to ready/: finishing it rings
    b = new_id()
    fsio.write_json_atomic(lay.site_dir / "limbo" / f"{b}{LIMBO_SEP}ready.json", _record(b))
    assert store.finish_limbo(lay.site_dir / "limbo") == [b]
    assert lay.job_path("ready", b).exists() and _rings(store) == 4


def test_a_failed_move_does_not_ring(site):
    lay = Layout(site)
    store = Store(lay)
    j = new_id()
    assert not store.move(lay.job_path("waiting", j), lay.job_path("ready", j))
    assert _rings(store) == 0


def test_trim_empties_only_a_long_bell(site):
    store = Store(Layout(site))
    store.ring()
    bell.trim(store.bell)
    assert _rings(store) == 1
    with open(store.bell, "ab") as f:
        f.write(b"." * bell.TRIM_BYTES)
    before = bell.signature(store.bell)
    bell.trim(store.bell)
    assert _rings(store) == 0 and bell.signature(store.bell) != before


@pytest.fixture
def idle_launcher(site):
    lay = Layout(site)
    settings = settings_mod.load(lay.settings)
    machine = settings_mod.machine_from_settings(settings)
    lc = Launcher(lay, settings, machine, mode="serial", nodes=machine.node_specs({}),
                  wall_time_min=0, idle_ttl_sec=3600)
    listings: list[float] = []
    real = lc.store.ready_buckets

    def counted():
        listings.append(1)
        return real()
    lc.store.ready_buckets = counted
    try:
        yield lay, lc, listings
    finally:
        lc.events.close()


def test_an_idle_launcher_lists_ready_only_after_a_ring_or_its_full_pass(idle_launcher):
    lay, lc, listings = idle_launcher
    t = 1000.0
    lc._next_candidates(t)                       # first pass: nothing there
    assert len(listings) == 1 and lc.cands == [] and lc.empty_round_at == t
    step = IDLE_SCAN_SEC + 0.01
    for k in range(1, 5):                        # quiet bell: one stat, no listing
        lc._next_candidates(t + k * step)
        assert len(listings) == 1 and lc.empty_round_at == t + k * step

    # A job put into ready/ without a ring (a publisher that died before ringing) is
    # found by the full pass, not before.
    silent = _put(lay, "ready")
    lc._next_candidates(t + 1.0)
    assert len(listings) == 1 and lc.cands == []
    lc._next_candidates(t + bell.FULL_PASS_SEC + 0.1)
    assert len(listings) == 2 and [p.name for p in lc.cands] == [f"{silent}.json"]

    # Taken away again, then a pass that finds nothing makes the bell quiet once more.
    os.unlink(lc.cands.pop())
    t2 = t + bell.FULL_PASS_SEC + 1.0
    lc._next_candidates(t2)
    assert len(listings) == 3 and lc.cands == []
    lc._next_candidates(t2 + step)
    assert len(listings) == 3

    # A job moved in through the store rings: the next look lists and finds it.
    rung = _put(lay, "waiting")
    lc.store.move(lay.job_path("waiting", rung), lay.job_path("ready", rung))
    lc._next_candidates(t2 + 2 * step)
    assert len(listings) == 4 and [p.name for p in lc.cands] == [f"{rung}.json"]


def test_a_ring_during_a_pass_brings_the_next_pass(idle_launcher):
    """The bell is read before the listing: a job published, and rung, while the pass
    runs is not lost even when the pass missed it."""
    lay, lc, listings = idle_launcher
    real = lc.store.ready_buckets
    late: list[str] = []

    def publish_after_listing():
        got = real()                              # the pass sees ready/ as it was ...
        job_id = _put(lay, "waiting")             # ... then a job comes in and rings
        lc.store.move(lay.job_path("waiting", job_id), lay.job_path("ready", job_id))
        late.append(job_id)
        return got
    lc.store.ready_buckets = publish_after_listing
    t = 1000.0
    lc._next_candidates(t)
    assert late and lc.cands == []               # missed by the pass that was under way
    lc.store.ready_buckets = real
    lc._next_candidates(t + IDLE_SCAN_SEC + 0.01)
    assert [p.name for p in lc.cands] == [f"{late[0]}.json"]


def test_the_site_rings_after_its_recovery_and_when_it_retires_a_launcher(site):
    """A publisher killed between its rename and its ring: the site's start, or its
    retiring of the dead launcher, rings for it."""
    from helpers import site_obj
    s = site_obj(site)
    store = Store(Layout(site))
    s.recover()
    assert _rings(store) == 1
    (Layout(site).launcher_dir("L-dead")).mkdir(parents=True)
    s.revoke_launcher("L-dead", "dead")
    assert _rings(store) == 2
