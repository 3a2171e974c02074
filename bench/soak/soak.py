"""The reliability soak: kills, racing launchers, fuzzed drops, a full disk, NFS.

    python bench/soak/soak.py                       # all five campaigns, full size
    python bench/soak/soak.py --only kill --kills 200
    python bench/soak/soak.py --quick               # the sizes the test suite runs

Each campaign makes its own directories under one scratch directory (``--dir``, default
the system temp dir), starts its own site and launchers, checks the invariants from the
files alone, and removes everything it made (``--keep`` keeps the scratch directory).  It
stops only processes it started (see ``procs``), and unmounts what it mounted.  Every
campaign has a time budget (``--budget-min``, per campaign): the run is bounded even if
something hangs, and says so.  The last lines are the README's table: test | trials |
held | failed.  Exit status 1 if any trial failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import procs  # noqa: E402,F401  (puts bench/ and the checkout on sys.path)
import _common  # noqa: E402

CAMPAIGNS = ("kill", "race", "fuzz", "full", "nfs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(CAMPAIGNS),
                    help=f"comma-separated campaigns ({', '.join(CAMPAIGNS)})")
    ap.add_argument("--quick", action="store_true",
                    help="the test suite's sizes: 50 kills, 4 launchers x 5,000 jobs, "
                         "1,000 fuzzed files, a short disk-full run")
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--launchers", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--fuzz", type=int, default=10_000)
    ap.add_argument("--full-jobs", type=int, default=600)
    ap.add_argument("--nfs-dir", help="run the NFS campaign on this (already mounted) "
                                      "directory instead of trying to mount one")
    ap.add_argument("--budget-min", type=float, default=45.0,
                    help="time budget of each campaign, in minutes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default="site,launcher,starter,hook",
                    help="what the kill trials kill, in turn")
    ap.add_argument("--dir", help="scratch directory parent (default: the temp dir)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.kills, a.launchers, a.jobs, a.fuzz, a.full_jobs = 50, 4, 5000, 1000, 200
    only = [c.strip() for c in a.only.split(",") if c.strip()]
    bad = [c for c in only if c not in CAMPAIGNS]
    if bad:
        ap.error(f"unknown campaign(s) {bad}; choose from {', '.join(CAMPAIGNS)}")
    _common.byte_compile()
    os.environ.setdefault("SPOOL_REGISTRY", str(Path(tempfile.mkdtemp()) / "sites.json"))
    scratch = Path(tempfile.mkdtemp(prefix="spool-soak-", dir=a.dir)).resolve()
    budget = a.budget_min * 60
    print(f"soak: {_common.machine_line()}; scratch {scratch}", flush=True)
    results = []
    t0 = time.monotonic()
    try:
        for name in only:
            print(f"== {name}", flush=True)
            res = _run(name, a, scratch, budget)
            results.append(res)
            _report(res)
    finally:
        if not a.keep:
            _common.rmtree(scratch)
    print(f"\nsoak finished in {time.monotonic() - t0:.0f} s")
    print("| test | trials | held | failed |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.trials:,} | {r.held:,} | {r.failed:,} |")
    return 1 if any(r.failed for r in results) else 0


def _run(name: str, a, scratch: Path, budget: float):
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if name == "kill":
        import kills
        return kills.run(scratch, a.kills, seed=a.seed, budget_sec=budget, log=log,
                         targets=tuple(t.strip() for t in a.targets.split(",") if t.strip()))
    if name == "race":
        import race
        return race.run(scratch, a.launchers, a.jobs, budget_sec=budget, log=log)
    if name == "fuzz":
        import fuzz
        return fuzz.run(scratch, a.fuzz, seed=a.seed, budget_sec=budget, log=log)
    if name == "full":
        import diskfull
        return diskfull.run(scratch, a.full_jobs, seed=a.seed, budget_sec=budget, log=log)
    import nfs
    return nfs.run(scratch, a.nfs_dir, budget_sec=budget, log=log)


def _report(res) -> None:
    print(f"{res.name}: {res.trials:,} trials, {res.held:,} held, {res.failed:,} failed "
          f"in {res.seconds:.0f} s", flush=True)
    for k, v in sorted(getattr(res, "kills", {}).items()):
        print(f"  killed {k}: {v}")
    for n in res.notes:
        print(f"  note: {n}")
    for p in res.problems[:40]:
        print(f"  PROBLEM: {p}")
    if len(res.problems) > 40:
        print(f"  ... and {len(res.problems) - 40} more problems")


if __name__ == "__main__":
    sys.exit(main())
