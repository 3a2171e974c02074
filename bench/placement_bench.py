"""Placement throughput on a simulated Aurora allocation (dry run: no processes).

For pool sizes of 100, 1,000 and 10,624 nodes (104 cores, 12 tiles each), fill
every tile from 1,000,000 waiting single-tile job Requests with ``choose`` (the
MPI-mode policy) and report jobs placed per second, then measure steady state:
release and re-place single jobs on the full pool. Prints numbers, asserts
nothing.

    python bench/placement_bench.py [--waiting 1000000] [--nodes 100,1000,10624]
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from spoolbalsam.launch.placement import NodePool, choose
from spoolbalsam.launch.resources import NodeSpec, Request

TILES = tuple(f"{g}.{t}" for g in range(6) for t in range(2))
CPUS = tuple(range(104))


def aurora_specs(n: int) -> list[NodeSpec]:
    return [NodeSpec(f"x{4000 + i // 64}c{i // 8 % 8}s{i % 8}b0n0", CPUS, TILES)
            for i in range(n)]


def bench_pool(nodes: int, waiting: list[tuple[int, Request]], churn: int) -> dict:
    t0 = time.perf_counter()
    pool = NodePool(aurora_specs(nodes))
    t_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    placed = choose(pool, waiting, passed_over={})
    t_fill = time.perf_counter() - t0

    # the same fill with bare place() calls, no policy around them
    direct = NodePool(aurora_specs(nodes))
    req = waiting[0][1]
    chunks: list[float] = []  # us per job for each run of 1,200 placements
    n_direct, t_direct = 0, 0.0
    while True:
        t0 = time.perf_counter()
        k = 0
        while k < 1200 and direct.place(req) is not None:
            k += 1
        dt = time.perf_counter() - t0
        if k == 0:
            break
        n_direct, t_direct = n_direct + k, t_direct + dt
        chunks.append(1e6 * dt / k)

    # steady state: one job ends, the next one is placed (what a busy launcher does)
    live = [p for _, p in placed]
    t0 = time.perf_counter()
    for i in range(churn):
        pool.release(live[i])
        live[i] = pool.place(req)
    t_churn = time.perf_counter() - t0
    pool.validate()
    return dict(nodes=nodes, placed=len(placed), build=t_build, fill=t_fill,
                direct=t_direct, n_direct=n_direct, first=chunks[0], last=chunks[-1],
                churn=churn, t_churn=t_churn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiting", type=int, default=1_000_000)
    ap.add_argument("--nodes", default="100,1000,10624")
    ap.add_argument("--churn", type=int, default=100_000)
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after building the waiting list")
    args = ap.parse_args()

    t0 = time.perf_counter()
    waiting = [(i, Request(gpus_per_rank=1, node_packing_count=12)) for i in range(args.waiting)]
    print(f"built {args.waiting:,} waiting Requests in {time.perf_counter() - t0:.2f} s")
    if args.gc_freeze:
        gc.freeze()  # the waiting list is long-lived: keep it out of every full collection
    print(f"{'nodes':>6} {'tiles placed':>12} {'pool build s':>12} {'choose() s':>10} "
          f"{'placed/s':>10} {'us/job':>7} {'place() us/job':>14} {'churn us/job':>12}")
    rows = []
    for n in (int(x) for x in args.nodes.split(",")):
        r = bench_pool(n, waiting, min(args.churn, n * 12))
        rows.append(r)
        print(f"{r['nodes']:>6} {r['placed']:>12,} {r['build']:>12.3f} {r['fill']:>10.3f} "
              f"{r['placed'] / r['fill']:>10,.0f} {1e6 * r['fill'] / r['placed']:>7.2f} "
              f"{1e6 * r['direct'] / r['n_direct']:>14.2f} "
              f"{1e6 * r['t_churn'] / max(1, r['churn']):>12.2f}")
    per = [1e6 * r["direct"] / r["n_direct"] for r in rows]
    print(f"scaling: place() costs {per[0]:.2f} -> {per[-1]:.2f} us per job from "
          f"{rows[0]['nodes']:,} to {rows[-1]['nodes']:,} nodes "
          f"(x{rows[-1]['nodes'] / rows[0]['nodes']:.0f} nodes, "
          f"x{per[-1] / per[0]:.2f} cost per job); "
          f"on {rows[-1]['nodes']:,} nodes the first 1,200 placements cost {rows[-1]['first']:.2f} "
          f"us/job, the last 1,200 {rows[-1]['last']:.2f} us/job")


if __name__ == "__main__":
    main()
