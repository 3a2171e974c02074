"""NodePool placement and the choose() policy: invariants, Aurora packing, starvation."""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolbalsam.launch.placement import NodePool, choose
from spoolbalsam.launch.resources import NODE_UNITS, NodeSpec, Placement, Request

AURORA_TILES = tuple(f"{g}.{t}" for g in range(6) for t in range(2))


def aurora_pool(n: int = 1) -> NodePool:
    return NodePool([NodeSpec(f"x4102c5s{i}b0n0", tuple(range(104)), AURORA_TILES)
                     for i in range(n)])


def small_pool(n: int, cpus: int = 4, gpus: int = 2) -> NodePool:
    return NodePool([NodeSpec(f"n{i}", tuple(range(cpus)), tuple(str(g) for g in range(gpus)))
                     for i in range(n)])


# -- Request ------------------------------------------------------------------
def test_request_derived_quantities_are_integers():
    r = Request(ranks_per_node=3, threads_per_rank=2, threads_per_core=4, gpus_per_rank=0.5,
                node_packing_count=7)
    assert r.cpus_per_node == 2          # ceil(3*2/4)
    assert r.gpus_per_node == 2          # ceil(3*0.5)
    assert r.units_per_node == NODE_UNITS // 7
    assert Request(num_nodes=2, node_packing_count=4).units_per_node == NODE_UNITS


@pytest.mark.parametrize("k", [1, 2, 3, 7, 12, 16, 17, 100, 720])
def test_exactly_k_jobs_share_a_node_at_packing_k(k):
    per = NODE_UNITS // k
    assert k * per <= NODE_UNITS < (k + 1) * per


def test_gpus_per_rank_tenth_is_exact():
    assert Request(ranks_per_node=10, gpus_per_rank=0.1).gpus_per_node == 1
    assert Request(ranks_per_node=3, gpus_per_rank=0.1).gpus_per_rank_exact == Fraction(1, 10)


def test_from_job_defaults_and_coercion():
    assert Request.from_job({}) == Request()
    r = Request.from_job({"num_nodes": 2, "ranks_per_node": "4", "gpus_per_rank": "0.5",
                          "node_packing_count": None, "threads_per_rank": 2.0, "other": 1})
    assert r == Request(num_nodes=2, ranks_per_node=4, gpus_per_rank=0.5, threads_per_rank=2)


@pytest.mark.parametrize("bad", [{"num_nodes": 0}, {"ranks_per_node": "x"},
                                 {"gpus_per_rank": -1}, {"gpus_per_rank": "nan"},
                                 {"node_packing_count": 10_000}, {"threads_per_core": True}])
def test_from_job_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        Request.from_job(bad)


def test_placement_json_round_trip_and_rank_gpus():
    p = Placement(("a", "b"), ((1, 2), (1, 2)), (("0.0", "0.1", "1.0", "1.1"),) * 2, NODE_UNITS)
    assert Placement.from_json(p.to_json()) == p
    assert p.rank_gpus(1, 1) == ("0.1",)
    assert p.rank_gpus(1, 2) == ("1.0", "1.1")
    assert p.rank_gpus(3, 0.5) == ("0.1",) and p.rank_gpus(2, 0.5) == ("0.1",)
    assert p.rank_gpus(0, 0) == ()
    with pytest.raises(IndexError):
        p.rank_gpus(4, 1)


# -- the Aurora seed case -----------------------------------------------------------
def test_aurora_seed_24_single_tile_jobs_on_one_node():
    pool = aurora_pool(1)
    req = Request(node_packing_count=12, gpus_per_rank=1)
    placed = []
    for _ in range(24):
        p = pool.place(req)
        if p is None:
            break
        placed.append(p)
        pool.validate()
    assert len(placed) == 12
    assert sorted(p.gpus[0][0] for p in placed) == sorted(AURORA_TILES)
    assert [p.gpus[0][0] for p in placed] == list(AURORA_TILES)      # lowest ids first
    assert len({p.cpus[0] for p in placed}) == 12
    assert pool.place(req) is None                                      # the 13th
    pool.release(placed[4])
    again = pool.place(req)
    assert again is not None and again.gpus == (("2.0",),)              # the freed tile
    pool.validate()


def test_multi_node_jobs_take_whole_idle_nodes_only():
    pool = small_pool(3)
    single = pool.place(Request(node_packing_count=4))
    assert single is not None and pool.idle_node_count() == 2
    big = pool.place(Request(num_nodes=2))
    assert big is not None and set(big.hosts) == {"n1", "n2"} and big.units == NODE_UNITS
    assert pool.place(Request(num_nodes=2)) is None
    assert pool.place(Request(node_packing_count=4)).hosts == ("n0",)   # not on n1/n2
    pool.release(big)
    assert pool.idle_node_count() == 2
    pool.validate()


def test_best_fit_fills_used_node_before_opening_idle_one():
    pool = small_pool(2, cpus=4, gpus=0)
    a = pool.place(Request(node_packing_count=2))
    b = pool.place(Request(node_packing_count=4))
    assert a.hosts == b.hosts                  # packed onto the node already in use
    assert pool.idle_node_count() == 1


def test_cpu_and_gpu_limits_each_stop_packing():
    pool = small_pool(1, cpus=4, gpus=2)
    assert pool.place(Request(ranks_per_node=3, node_packing_count=4)) is not None
    assert pool.place(Request(ranks_per_node=2, node_packing_count=4)) is None   # cpus
    pool2 = small_pool(1, cpus=8, gpus=2)
    assert pool2.place(Request(gpus_per_rank=1.5, node_packing_count=4)) is not None
    assert pool2.place(Request(gpus_per_rank=1, node_packing_count=4)) is None   # gpus


def test_release_of_unknown_placement_raises():
    pool = small_pool(1)
    p = pool.place(Request())
    pool.release(p)
    with pytest.raises(ValueError):
        pool.release(p)


def test_fits_ever_reasons():
    pool = aurora_pool(2)
    assert pool.fits_ever(Request(gpus_per_rank=1, node_packing_count=12)) is None
    assert pool.fits_ever(Request(num_nodes=3)) == "asks 3 nodes, the allocation has 2"
    assert pool.fits_ever(Request(ranks_per_node=16, gpus_per_rank=1)) == \
        "asks 16 gpus per node, nodes have 12"
    assert pool.fits_ever(Request(ranks_per_node=105)) == "asks 105 cpus per node, nodes have 104"
    mixed = NodePool([NodeSpec("big", tuple(range(8)), ()), NodeSpec("gpu", (0,), ("0",))])
    assert "no node has both" in mixed.fits_ever(Request(ranks_per_node=2, gpus_per_rank=0.5))
    assert "only 1 nodes" in mixed.fits_ever(Request(num_nodes=2, ranks_per_node=2))


def test_validate_detects_corruption():
    pool = small_pool(1)
    p = pool.place(Request(node_packing_count=2))
    pool._nodes[0].cpu_mask |= 1          # mark the used cpu free again
    with pytest.raises(AssertionError):
        pool.validate()
    pool._nodes[0].cpu_mask &= ~1
    pool.validate()
    pool._live.add(Placement(p.hosts, p.cpus, p.gpus, p.units + 1))   # same cpu twice
    with pytest.raises(AssertionError):
        pool.validate()


# -- property test: random place/release sequences ---------------------------------
requests = st.builds(
    Request,
    num_nodes=st.integers(1, 3),
    ranks_per_node=st.integers(1, 6),
    threads_per_rank=st.integers(1, 3),
    threads_per_core=st.integers(1, 2),
    gpus_per_rank=st.sampled_from([0, 0.5, 1, 1.5, 2]),
    node_packing_count=st.integers(1, 8),
)
node_shapes = st.lists(st.tuples(st.integers(1, 12), st.integers(0, 6)), min_size=1, max_size=5)
steps = st.lists(st.one_of(st.tuples(st.just("place"), requests),
                           st.tuples(st.just("release"), st.integers(0, 1000))),
                 max_size=60)


def _holders_disjoint(live: list[tuple[Request, Placement]]) -> None:
    seen_cpu, seen_gpu = set(), set()
    for _, p in live:
        for host, cpus, gpus in zip(p.hosts, p.cpus, p.gpus):
            for c in cpus:
                assert (host, c) not in seen_cpu
                seen_cpu.add((host, c))
            for g in gpus:
                assert (host, g) not in seen_gpu
                seen_gpu.add((host, g))


@settings(max_examples=300, deadline=None)
@given(shapes=node_shapes, ops=steps)
def test_random_place_release_keeps_invariants(shapes, ops):
    specs = [NodeSpec(f"n{i}", tuple(range(c)), tuple(str(g) for g in range(gpus)))
             for i, (c, gpus) in enumerate(shapes)]
    pool = NodePool(specs)
    live: list[tuple[Request, Placement]] = []
    for op, arg in ops:
        if op == "place":
            p = pool.place(arg)
            if p is not None:
                assert len(p.hosts) == arg.num_nodes
                assert all(len(c) == arg.cpus_per_node for c in p.cpus)
                assert all(len(g) == arg.gpus_per_node for g in p.gpus)
                if arg.num_nodes > 1:
                    assert all(h not in {x for _, q in live for x in q.hosts} for h in p.hosts)
                live.append((arg, p))
            elif pool.fits_ever(arg) is None and not live:
                raise AssertionError(f"{arg} fits an empty pool but was refused")
        elif live:
            _, p = live.pop(arg % len(live))
            pool.release(p)
        pool.validate()
        _holders_disjoint(live)
        units: dict[str, int] = {}
        for _, p in live:
            for h in p.hosts:
                units[h] = units.get(h, 0) + p.units
        assert all(u <= NODE_UNITS for u in units.values())
        assert pool.busy() == bool(live)
    for _, p in live:
        pool.release(p)
    pool.validate()
    assert pool.idle_node_count() == len(specs) and not pool.busy()
    # release restored everything: the pool behaves like a fresh one
    fresh = NodePool(specs)
    probe = Request(ranks_per_node=1)
    assert (pool.place(probe) is None) == (fresh.place(probe) is None)


# -- choose(): no head-of-line blocking, no starvation ------------------------------
def test_choose_does_not_let_a_big_job_block_small_ones():
    pool = small_pool(2)
    pool.place(Request())                              # one node busy
    got = choose(pool, [("big", Request(num_nodes=2)), ("small", Request())])
    assert [k for k, _ in got] == ["small"]


def test_choose_skips_jobs_that_never_fit_and_respects_max_jobs():
    pool = small_pool(4)
    cands = [("huge", Request(num_nodes=9))] + [(i, Request()) for i in range(6)]
    got = choose(pool, cands, max_jobs=3)
    assert [k for k, _ in got] == [0, 1, 2]
    pool.validate()


def _run_stream(patience, ticks=40):
    """A 4-node job waits behind a stream of 1-node jobs; one node frees per tick."""
    pool = small_pool(4, cpus=2, gpus=0)
    counts: dict = {}
    running = [(f"s{i}", pool.place(Request())) for i in range(4)]   # the pool starts full
    next_small = 4
    for tick in range(ticks):
        if running:
            _, p = running.pop(0)                       # the oldest finishes
            pool.release(p)
        waiting = [("big", Request(num_nodes=4))]
        waiting += [(f"s{next_small + i}", Request()) for i in range(4)]
        got = choose(pool, waiting, passed_over=counts, patience=patience)
        pool.validate()
        for key, p in got:
            if key == "big":
                return tick
            running.append((key, p))
        next_small += len(got)
    return None


def test_choose_starts_the_big_job_eventually():
    started = _run_stream(patience=3)
    assert started is not None and started <= 12


def test_without_reservations_the_big_job_starves():
    assert _run_stream(patience=None) is None


def test_reserved_nodes_drain_and_counter_is_dropped_on_start():
    pool = small_pool(2, cpus=2, gpus=0)
    a = pool.place(Request())
    counts = {"big": 3}
    got = choose(pool, [("big", Request(num_nodes=2)), ("s", Request())], passed_over=counts)
    assert got == []                           # "s" may not take the reserved idle node
    assert counts["big"] == 3 and "s" not in counts
    pool.validate()
    assert pool.idle_node_count() == 1         # holds were lifted after the call
    pool.release(a)
    got = choose(pool, [("big", Request(num_nodes=2)), ("s", Request())], passed_over=counts)
    assert [k for k, _ in got] == ["big"] and "big" not in counts


def test_passed_over_counts_only_when_someone_behind_started():
    pool = small_pool(1, cpus=2, gpus=0)
    counts: dict = {}
    choose(pool, [("wide", Request(ranks_per_node=2, node_packing_count=2)),
                  ("a", Request(node_packing_count=2))], passed_over=counts, patience=None)
    assert counts == {}                         # wide fit first: nothing passed
    counts.clear()
    pool2 = small_pool(1, cpus=2, gpus=0)
    pool2.place(Request(node_packing_count=2))
    choose(pool2, [("wide", Request(ranks_per_node=2, node_packing_count=2)),
                   ("a", Request(node_packing_count=2))], passed_over=counts, patience=None)
    assert counts == {"wide": 1}


@settings(max_examples=150, deadline=None)
@given(shapes=node_shapes, busy=st.lists(requests, max_size=6),
       waiting=st.lists(requests, max_size=12))
def test_choose_leaves_nothing_placeable_behind(shapes, busy, waiting):
    """Without reservations, choose() is maximal: every candidate it left out still cannot fit."""
    pool = NodePool([NodeSpec(f"n{i}", tuple(range(c)), tuple(str(g) for g in range(gpus)))
                     for i, (c, gpus) in enumerate(shapes)])
    for req in busy:
        pool.place(req)
    before = len(pool.live)
    got = choose(pool, list(enumerate(waiting)), patience=None)
    pool.validate()
    assert len(pool.live) == before + len(got)
    placed = {k for k, _ in got}
    for key, req in enumerate(waiting):
        if key not in placed:
            assert pool.place(req) is None


@settings(max_examples=150, deadline=None)
@given(shapes=node_shapes, busy=st.lists(requests, max_size=6),
       waiting=st.lists(requests, max_size=12),
       counts=st.lists(st.integers(0, 5), min_size=12, max_size=12),
       max_jobs=st.one_of(st.none(), st.integers(0, 5)))
def test_choose_with_reservations_keeps_pool_consistent(shapes, busy, waiting, counts, max_jobs):
    pool = NodePool([NodeSpec(f"n{i}", tuple(range(c)), tuple(str(g) for g in range(gpus)))
                     for i, (c, gpus) in enumerate(shapes)])
    for req in busy:
        pool.place(req)
    passed = {k: counts[k] for k in range(len(waiting)) if counts[k]}
    idle_before = pool.idle_node_count()
    got = choose(pool, list(enumerate(waiting)), passed_over=passed, patience=3,
                 max_jobs=max_jobs)
    pool.validate()                                   # holds are lifted, indexes intact
    assert max_jobs is None or len(got) <= max_jobs
    assert len({k for k, _ in got}) == len(got)
    assert all(p in pool.live for _, p in got)
    assert all(k not in passed for k, _ in got)
    assert set(passed) <= set(range(len(waiting)))
    assert pool.idle_node_count() <= idle_before
