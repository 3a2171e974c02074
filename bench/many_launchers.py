"""Many launchers on one site: claim collisions, empty passes, throughput against one.

    python bench/many_launchers.py [--launchers 1,32,64] [--n 50000] [--slots 2] [--dir D]

For each launcher count K, on a fresh site (``spool site init DIR --machine local --cpus
SLOTS``, app ``Bench`` running ``/bin/true``, every job ``node_packing_count: SLOTS``, so a
launcher has SLOTS slots): the site process is started, the ``--n`` jobs are submitted
(``submit.submit_jobs``: bulk drops) and taken in, and only then K launchers (``spool
launcher -j serial -t 60 --idle-ttl 3``) start together, as the workers of K allocations
would.  Timed: from their start until every job is in ``done/``.

Each launcher counts, and writes into its lease as it exits (``launchers/.retired/L/
lease.json`` once the site has retired it): ``launches``; ``claims_lost``, claims whose
rename found the job gone (another launcher took it between our listing and our rename);
``candidates_gone``, candidates that were gone already when read; ``empty_passes``, whole
passes over ``ready/`` that found nothing to claim; ``listings``, directory listings of
``ready/`` and its buckets.  Counting is a few integer additions on paths that already do
a system call.

Printed per K: wall time and jobs/s, the ratio to K = 1, the sums of the counters, their
rate per 1,000 jobs, and CPU seconds per job of the launchers with their starters and jobs
(reaped children of this process) and of the site.  This is a 2-core machine: 64 launchers
and their 64 starters share two cores with the site, so what it shows is the cost of the
contention per job, not a speed-up.  Asserts nothing; removes its temp dirs; stops only the
processes it started, by PID.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import throughput as T  # noqa: E402

from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.submit import submit_jobs  # noqa: E402

COUNTERS = ("launches", "claims_lost", "candidates_gone", "empty_passes", "listings")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(tmp: Path, k: int, n: int, slots: int, timeout: float, settings: dict) -> dict:
    root = tmp / "site"
    layout, raws = T.make_bench_site(root, n, 0.0, slots, settings)
    site = None
    procs = []
    res: dict = {"k": k, "n": n}
    try:
        site = C.start([sys.executable, "-m", "spoolbalsam.site.service", str(root)],
                       tmp / "site.out", cwd=root)
        T._wait_site_up(layout, site)
        t = time.perf_counter()
        recs = submit_jobs(layout, raws, source="bench")
        C.wait_for(lambda: not fsio.list_names(layout.created, suffix="")
                   and not fsio.list_names(layout.site_dir / "intake", suffix=""),
                   timeout, "the intake", "many_launchers")
        res["intake"] = time.perf_counter() - t
        watch = T.DoneWatcher(layout, [r["id"] for r in recs])
        site_cpu0, cpu0, t0 = T._cpu(T._site_pid(layout)), _children_cpu(), time.perf_counter()
        for i in range(k):
            procs.append(C.start(C.SPOOL + ["--site", str(root), "launcher", "-j", "serial",
                                            "-t", "60", "--idle-ttl", "3"],
                                 tmp / f"launcher{i}.out", cwd=root))
        end = t0 + timeout
        while watch.poll() and time.perf_counter() < end:
            time.sleep(0.05)
        res["done"] = time.perf_counter() - t0 if not watch.left else None
        res["not_done"] = watch.left
        site_cpu1 = T._cpu(T._site_pid(layout))
        for p in procs:
            try:
                p.wait(60)
            except Exception:  # noqa: BLE001 - stopped below
                pass
        res["cpu_launchers"] = _children_cpu() - cpu0      # with their starters and jobs
        if site_cpu0 and site_cpu1:
            res["cpu_site"] = site_cpu1[0] - site_cpu0[0]
        totals = dict.fromkeys(COUNTERS, 0)
        leases = list(layout.launchers.glob("*/lease.json")) + \
            list(layout.launchers.glob(".retired/*/lease.json"))
        for lease in leases:
            try:
                info = fsio.read_json(lease)
            except (FileNotFoundError, ValueError):
                continue
            for c in COUNTERS:
                totals[c] += info.get(c) or 0
        res.update(totals)
        res["leases"] = len(leases)
    finally:
        for p in procs:
            C.stop(p)
        C.stop(site)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launchers", default="1,32,64")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--slots", type=int, default=2, help="cores (slots) of each launcher")
    ap.add_argument("--dir", help="where to make temp dirs (default: system temp)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a settings.yml key, e.g. --set launcher.merge_verdicts=true")
    a = ap.parse_args(argv)
    settings = dict(kv.split("=", 1) for kv in a.set)
    counts = [int(x) for x in a.launchers.split(",") if x.strip()]
    print(f"# many_launchers: N={a.n}, {a.slots} slots per launcher, launchers {counts}, "
          f"settings {settings or 'default'}; {C.machine_line()}")
    C.byte_compile()
    results = []
    with C.scratch("spool-many-", a.dir, a.keep) as top:
        for k in counts:
            tmp = top / f"K{k}"
            tmp.mkdir()
            r = run(tmp, k, a.n, a.slots, a.timeout, settings)
            results.append(r)
            rate = f"{a.n / r['done']:.0f}" if r.get("done") else "-"
            print(f"[{k} launchers] done in {r['done'] or float('nan'):.1f} s = {rate} jobs/s; "
                  + ", ".join(f"{c} {r[c]}" for c in COUNTERS)
                  + f" ({r['leases']} leases); intake {r['intake']:.1f} s", flush=True)
            if not a.keep:
                C.rmtree(tmp)
    base = next((r for r in results if r["k"] == 1 and r.get("done")), None)
    print("\n# per K: jobs/s (ratio to 1 launcher); per 1,000 jobs: lost claims, gone "
          "candidates, empty passes, listings; CPU ms per job: launchers+starters+jobs, site")
    for r in results:
        if not r.get("done"):
            print(f"[{r['k']} launchers] incomplete: {r['not_done']} jobs not done")
            continue
        rate = a.n / r["done"]
        ratio = f"{rate / (a.n / base['done']):.2f}x" if base else "-"
        per = {c: 1e3 * r[c] / a.n for c in COUNTERS}
        site = f"{1e3 * r['cpu_site'] / a.n:.2f}" if r.get("cpu_site") is not None else "-"
        print(f"[{r['k']} launchers] {rate:.0f} jobs/s ({ratio}); lost {per['claims_lost']:.1f}, "
              f"gone {per['candidates_gone']:.1f}, empty passes {per['empty_passes']:.1f}, "
              f"listings {per['listings']:.0f}; CPU {1e3 * r['cpu_launchers'] / a.n:.2f} + "
              f"site {site} ms/job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
