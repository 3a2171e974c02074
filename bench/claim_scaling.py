"""How long a launcher takes to claim a job with 1k, 100k and 1M jobs waiting in ``ready/``.

The ready records are written straight into their shards ``jobs/ready/BB/ID.json`` (ids
from ``spool.ids.new_id``, bucket from ``ids.shard``) with ``fsio.Batch`` in chunks, as the
site's intake would publish them (one valid READY record each, about 1 KB of JSON).  The
sizes are built up in one site (1k, then 99k more, then 900k more).  At each size:

* ``first claim``: a fresh ``Launcher`` (new process state, warm page cache) claims its
  first job: ``Store.ready_buckets`` (list the 256 buckets) + ``Store.ready_names`` of one
  bucket + ``Store.claim`` (the rename into ``running/L/``); median of 5 fresh launchers;
* ``store path``: ``--claims`` claims through the launcher's own candidate listing
  (``Launcher._next_candidates``: a refill of up to ``prefetch`` names, from the last
  bucket listing or a new one) and ``Store.claim``, per claim (listing cost amortised);
* ``fill path``: the same number of claims through ``Launcher.fill`` -- it also reads and
  checks each candidate record and places it with ``placement.choose`` on 2 cpus, as the
  real launcher does -- with the process start replaced by an immediate release.

Claimed jobs are renamed back to ``ready/`` after every ``--chunk`` claims (not timed), so
each size stays within ``--chunk`` of its nominal value.  Prints µs per claim per size,
the time and disk use of the generation; removes everything at the end.  Asserts nothing.

    python bench/claim_scaling.py [--max 100000] [--claims 2000] [--dir DIR]
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (puts the checkout on sys.path)

from spoolbalsam import settings as settings_mod  # noqa: E402
from spoolbalsam.launch.launcher import Launcher  # noqa: E402
from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.spool import states as S  # noqa: E402
from spoolbalsam.spool.ids import new_id, shard  # noqa: E402
from spoolbalsam.spool.layout import Layout  # noqa: E402
from spoolbalsam.spool.record import normalize, transition  # noqa: E402

GEN_CHUNK = 20000


def make_site(tmp: Path) -> tuple[Layout, dict, object]:
    root = tmp / "site"
    subprocess.run(C.SPOOL + ["site", "init", str(root), "--machine", "local", "--cpus", "2"],
                   check=True, stdout=subprocess.DEVNULL, env=C.child_env())
    layout = Layout(root)
    (layout.apps / "Bench.yml").write_text("command_template: /bin/true\n")
    settings = settings_mod.load(layout.settings)
    return layout, settings, settings_mod.machine_from_settings(settings)


def _generate_part(root: str, count: int) -> None:
    layout = Layout(Path(root))
    template = transition(normalize({"app": "Bench", "workdir": "b/x"}, "bench"), S.READY, "site")
    ready = layout.state_dir("ready")
    done = 0
    while done < count:
        batch = fsio.Batch(layout.jobs)
        base_ms = int(time.time() * 1000)
        for _ in range(min(GEN_CHUNK, count - done)):
            job_id = new_id(base_ms)
            rec = dict(template, id=job_id, workdir=f"b/{job_id}")
            batch.add(ready / shard(job_id) / f"{job_id}.json", fsio.dumps(rec))
        done += len(batch.pending)
        batch.commit()


def generate(layout: Layout, count: int, procs: int) -> float:
    """Publish ``count`` READY records in ready/BB/ from ``procs`` processes; seconds."""
    t0 = time.perf_counter()
    if procs <= 1 or count < 10000:
        _generate_part(str(layout.root), count)
    else:
        ctx = multiprocessing.get_context("fork")
        parts = [count // procs + (i < count % procs) for i in range(procs)]
        ps = [ctx.Process(target=_generate_part, args=(str(layout.root), k)) for k in parts]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
    return time.perf_counter() - t0


def new_launcher(layout: Layout, settings: dict, machine) -> Launcher:
    nodes = machine.node_specs({})
    lc = Launcher(layout, settings, machine, mode="serial", nodes=nodes, wall_time_min=0,
                  idle_ttl_sec=3600)
    return lc


def give_back(layout: Layout, lc: Launcher) -> None:
    """Rename every claimed job back into ready/ (untimed)."""
    for name in fsio.list_names(lc.rdir):
        fsio.rename(lc.rdir / name, layout.job_path("ready", name[:-5]))


def retire(layout: Layout, lc: Launcher) -> None:
    give_back(layout, lc)
    lc.events.close()
    C.rmtree(lc.dir)
    try:
        lc.rdir.rmdir()
    except OSError:
        pass


def first_claims(layout: Layout, settings: dict, machine, tries: int = 5) -> list[float]:
    out = []
    for _ in range(tries):
        lc = new_launcher(layout, settings, machine)
        t0 = time.perf_counter()
        got = None
        while got is None:
            lc._next_candidates(time.monotonic())
            if not lc.cands:
                break
            got = lc.store.claim(lc.cands.pop(), lc.id)
        out.append(time.perf_counter() - t0)
        retire(layout, lc)
    return out


def store_path(layout: Layout, lc: Launcher, claims: int, chunk: int) -> dict:
    """Time spent in candidate listing and in Store.claim for ``claims`` claims."""
    t_list = t_claim = 0.0
    got = lists = 0
    while got < claims:
        k = 0
        while k < min(chunk, claims - got):
            if not lc.cands:
                t0 = time.perf_counter()
                lc.next_scan = 0.0
                lc._next_candidates(time.monotonic())
                t_list += time.perf_counter() - t0
                lists += 1
                if not lc.cands:
                    break
            t0 = time.perf_counter()
            ok = lc.store.claim(lc.cands.pop(), lc.id) is not None
            t_claim += time.perf_counter() - t0
            k += ok
        got += k
        give_back(layout, lc)
        if k == 0:
            break
    return {"n": got, "list_s": t_list, "claim_s": t_claim, "lists": lists}


def fill_path(layout: Layout, lc: Launcher, claims: int, chunk: int) -> tuple[float, int]:
    """Seconds spent in Launcher.fill (start replaced by an immediate release)."""
    started: list[Path] = []

    def fake_start(path: Path, placement, expected=None) -> None:
        lc.pool.release(placement)
        started.append(path)

    lc._start = fake_start
    spent = 0.0
    while len(started) < claims:
        before = len(started)
        t0 = time.perf_counter()
        target = min(before + chunk, claims)
        while len(started) < target:
            n = len(started)
            lc.next_scan = 0.0
            lc.fill(time.monotonic())
            if len(started) == n and not lc.cands:
                break
        spent += time.perf_counter() - t0
        give_back(layout, lc)
        if len(started) == before:
            break
    return spent, len(started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,100000,1000000", help="comma list of ready/ sizes")
    ap.add_argument("--max", type=int, help="skip sizes above this (e.g. 100000: no 1M case)")
    ap.add_argument("--claims", type=int, default=2000, help="claims timed per size and path")
    ap.add_argument("--chunk", type=int, default=100, help="claims between give-backs")
    ap.add_argument("--dir", help="where to make the temp site (default: system temp)")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                    help="processes writing the records (default: one per cpu)")
    ap.add_argument("--keep", action="store_true", help="keep the site (for inspection)")
    a = ap.parse_args(argv)
    sizes = sorted(int(x) for x in a.sizes.split(","))
    if a.max:
        sizes = [s for s in sizes if s <= a.max]
    print(f"# claim_scaling: sizes {sizes}, {a.claims} claims per size and path; "
          f"{C.machine_line()}")
    tmp = Path(tempfile.mkdtemp(prefix="spool-claims-", dir=a.dir))
    rows = []
    t_all = time.perf_counter()
    try:
        layout, settings, machine = make_site(tmp)
        disk0 = C.disk_usage(tmp)
        have = 0
        for size in sizes:
            gen = generate(layout, size - have, a.procs)
            made = size - have
            have = size
            disk = C.disk_usage(tmp)
            gc.collect()
            first = first_claims(layout, settings, machine)
            lc = new_launcher(layout, settings, machine)
            st = store_path(layout, lc, a.claims, a.chunk)
            sn = st["n"]
            sp = st["list_s"] + st["claim_s"]
            retire(layout, lc)
            lc = new_launcher(layout, settings, machine)
            fp, fn = fill_path(layout, lc, a.claims, a.chunk)
            retire(layout, lc)
            row = {"size": size, "gen_s": gen, "gen_rate": made / gen if gen else 0,
                   "bytes": disk[0] - disk0[0], "inodes": disk[1] - disk0[1],
                   "first_ms": statistics.median(first) * 1e3,
                   "first_range": (min(first) * 1e3, max(first) * 1e3),
                   "store_us": sp / max(sn, 1) * 1e6, "store_n": sn,
                   "rename_us": st["claim_s"] / max(sn, 1) * 1e6,
                   "list_ms": st["list_s"] / max(st["lists"], 1) * 1e3, "lists": st["lists"],
                   "fill_us": fp / max(fn, 1) * 1e6, "fill_n": fn}
            rows.append(row)
            print(f"size {size:>9,}: generated {made:,} in {gen:.1f} s ({row['gen_rate']:,.0f}/s), "
                  f"disk +{row['bytes'] / 2**20:,.0f} MiB, +{row['inodes']:,} inodes; "
                  f"first claim {row['first_ms']:.2f} ms "
                  f"({row['first_range'][0]:.2f}–{row['first_range'][1]:.2f}); "
                  f"store path {row['store_us']:.1f} µs/claim ({sn}; Store.claim "
                  f"{row['rename_us']:.1f} µs + {row['lists']} candidate refills of "
                  f"{row['list_ms']:.2f} ms); "
                  f"fill path {row['fill_us']:.1f} µs/claim ({fn})", flush=True)
    finally:
        t_rm = time.perf_counter()
        if a.keep:
            print(f"# kept {tmp}")
        else:
            C.rmtree_parallel(tmp / "site" / "jobs" / "ready")
            C.rmtree(tmp)
        t_rm = time.perf_counter() - t_rm

    print("\n# summary (µs per claim; first claim in ms, median of 5 fresh launchers)")
    print(f"{'ready jobs':>12s} {'first claim ms':>15s} {'store path µs':>14s} "
          f"{'(claim µs':>10s} {'refill ms)':>12s} {'fill path µs':>13s} {'bytes/job':>10s}")
    for r in rows:
        print(f"{r['size']:>12,} {r['first_ms']:>15.2f} {r['store_us']:>14.1f} "
              f"{r['rename_us']:>10.1f} {r['list_ms']:>12.2f} "
              f"{r['fill_us']:>13.1f} {r['bytes'] / r['size']:>10,.0f}")
    print(f"# total {time.perf_counter() - t_all:.0f} s (cleanup {t_rm:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
