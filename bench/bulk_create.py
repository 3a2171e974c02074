"""Creating many jobs: ``Job.objects.bulk_create`` and ``spool job create --file``.

    python bench/bulk_create.py [--dir DIR] [--sizes 1000,10000,100000] [--million 0]
    python bench/compare.py --base REV bulk_create.py --million 0     # against older code

1. ``bulk_create`` of 1k, 10k and 100k new jobs (each size in a fresh site; the jobs are
   validated and written durably -- fsynced -- to ``jobs/created/`` before the call
   returns: one file per job up to ``submit.BULK_MIN`` jobs, bulk drops of up to 10,000
   lines beyond).  Printed: jobs/s of ``bulk_create`` alone, and the API's own cost per job
   (everything but ``submit.submit_jobs``, measured by timing the same call with it stubbed
   out).
2. ``spool job create --file jobs.jsonl`` of the same jobs as a command (interpreter start
   included), where this checkout has it.
3. With ``--million N`` (the old form of this benchmark; ``bench/million.py`` is the full
   one now): N finished records written straight into ``jobs/done/`` and
   ``Job.objects.filter(tags=...).count()`` over them.

Prints numbers only.  Everything lives under ``--dir`` (default: a new temp dir), removed
at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from spoolbalsam.api import Job  # noqa: E402
from spoolbalsam.api import job as job_mod  # noqa: E402
from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.spool.ids import SHARDS, shard  # noqa: E402
from spoolbalsam.spool.layout import Layout  # noqa: E402
from spoolbalsam.spool.record import normalize, transition  # noqa: E402


def make_site(root: Path, name: str) -> Layout:
    subprocess.run([sys.executable, "-m", "spoolbalsam.cli", "site", "init", str(root), "-n",
                    name, "--machine", "local"], check=True, stdout=subprocess.DEVNULL)
    (root / "apps" / "Echo.yml").write_text("command_template: echo {{ x }}\n")
    return Layout(root)


def new_jobs(n: int, site: str) -> list:
    return [Job(workdir=f"bench/{i}", app_id="Echo", site_name=site, parameters={"x": i},
                tags={"bench": "hit" if i % 10 == 0 else "miss"}) for i in range(n)]


def bench_bulk(base: Path, n: int) -> tuple[float, float]:
    """(jobs/s of bulk_create, API microseconds per job beside submit_jobs)."""
    layout = make_site(base / f"site{n}", f"bulk{n}")
    jobs = new_jobs(n, str(layout.root))
    t = time.perf_counter()
    Job.objects.bulk_create(jobs)
    rate = n / (time.perf_counter() - t)
    assert sum(_jobs_in(layout.created / name) for name in os.listdir(layout.created)) == n
    real = job_mod.submit_jobs
    job_mod.submit_jobs = lambda lay, raws, source="": [
        {**normalize(r, source), "id": f"stub{i}"} for i, r in enumerate(raws)]
    stub_norm = job_mod.submit_jobs
    try:
        jobs = new_jobs(n, str(layout.root))
        t = time.perf_counter()
        Job.objects.bulk_create(jobs)
        with_api = time.perf_counter() - t
        raws = [{"app": "Echo", "workdir": f"bench/{i}", "parameters": {"x": i}} for i in range(n)]
        paused = n > 1000                        # as bulk_create runs it
        if paused:
            gc.disable()
        t = time.perf_counter()
        stub_norm(layout, raws, "")
        stub_only = time.perf_counter() - t
        gc.enable()
    finally:
        job_mod.submit_jobs = real
    return rate, max(0.0, with_api - stub_only) / n * 1e6


def _jobs_in(path: Path) -> int:
    """Jobs in a drop: one, or a bulk drop's lines."""
    if path.name.endswith(".jsonl"):
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    return 1 if path.name.endswith(".json") else 0


def bench_cli_file(base: Path, n: int) -> float | None:
    """jobs/s of ``spool job create --file`` (None where the command has no --file)."""
    helptext = subprocess.run([sys.executable, "-m", "spoolbalsam.cli", "job", "create", "--help"],
                              capture_output=True, text=True).stdout
    if "--file" not in helptext:
        return None
    layout = make_site(base / f"cli{n}", f"cli{n}")
    src = base / f"jobs{n}.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"app": "Echo", "workdir": f"cli/{i}",
                                           "parameters": {"x": i},
                                           "tags": {"bench": "hit" if i % 10 == 0 else "miss"}})
                             + b"\n" for i in range(n)))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spoolbalsam.cli", "--site", str(layout.root), "job",
                    "create", "--file", str(src), "-q"], check=True, stdout=subprocess.DEVNULL)
    rate = n / (time.perf_counter() - t)
    assert sum(_jobs_in(layout.created / name) for name in os.listdir(layout.created)) == n
    return rate


def _write_part(root: str, n: int, part: int, parts: int) -> None:
    layout = Layout(Path(root))
    base = normalize({"app": "Echo", "workdir": "w", "parameters": {"x": 0}}, "bench")
    base = transition(transition(base, "READY", "site"), "JOB_FINISHED", "bench")
    done = layout.state_dir("done")
    buckets = {f"{b:02x}": done / f"{b:02x}" for b in range(SHARDS)}
    for d in buckets.values():
        d.mkdir(parents=True, exist_ok=True)
    batch = fsio.Batch(layout.jobs)
    for i in range(part, n, parts):
        job_id = f"j{i:07d}"
        rec = {**base, "id": job_id, "workdir": f"m/{i}", "parameters": {"x": i},
               "tags": {"bench": "hit" if i % 10 == 0 else "miss"}}
        batch.add(buckets[shard(job_id)] / f"{job_id}.json", fsio.dumps(rec))
        if len(batch.pending) >= 50_000:
            batch.commit()
    batch.commit()


def write_million(layout: Layout, n: int) -> float:
    """Seconds to write ``n`` finished records into done/ shards (one fsio.Batch per core)."""
    from concurrent.futures import ProcessPoolExecutor
    parts = max(1, min(8, os.cpu_count() or 1))
    t = time.perf_counter()
    with ProcessPoolExecutor(parts) as pool:
        for f in [pool.submit(_write_part, str(layout.root), n, p, parts) for p in range(parts)]:
            f.result()
    return time.perf_counter() - t


def breakdown(layout: Layout, sample: int = 16) -> tuple[float, float, float, int]:
    """Seconds to list, read and parse the records of ``sample`` of the 256 buckets of
    done/, and how many records that was (the rest scale with it)."""
    base = layout.state_dir("done")
    buckets = sorted(fsio.list_dirs(base))[:sample]
    t = time.perf_counter()
    paths = [base / b / name for b in buckets for name in fsio.list_names(base / b)]
    listing = time.perf_counter() - t
    t = time.perf_counter()
    blobs = [fsio.read_bytes(p) for p in paths]
    reading = time.perf_counter() - t
    t = time.perf_counter()
    for b in blobs:
        orjson.loads(b)
    parsing = time.perf_counter() - t
    return listing, reading, parsing, len(paths)


def _fast_dir(base: Path, n: int) -> Path:
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > n * 8192:
            return shm
    except OSError:
        pass
    return base


def _fstype(path: Path) -> str:
    from spoolbalsam.site.watch import filesystem_type
    return filesystem_type(path.resolve())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where to build the sites (default: a new temp dir)")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--million", type=int, default=0)
    ap.add_argument("--million-dir", help="where to build the million-job site (default: "
                    "/dev/shm if it has room, else --dir: on this project's ext4 with "
                    "`discard` each create or unlink costs ~0.1 ms, 4 minutes per million)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="spool-bulk-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    os.environ["SPOOL_REGISTRY"] = str(base / "registry.json")
    cleanup = [base]
    try:
        for n in (int(s) for s in args.sizes.split(",") if s):
            rate, overhead = bench_bulk(base, n)
            print(f"bulk_create {n:>7d} jobs: {rate:8.0f} jobs/s   API overhead {overhead:5.1f} us/job")
            cli = bench_cli_file(base, n)
            if cli is not None:
                print(f"spool job create --file {n:>7d} jobs: {cli:8.0f} jobs/s (the whole command)")
        if args.million:
            mdir = Path(args.million_dir) if args.million_dir else _fast_dir(base, args.million)
            mdir = Path(tempfile.mkdtemp(prefix="spool-million-", dir=mdir))
            cleanup.append(mdir)
            layout = make_site(mdir / "million", "million")
            secs = write_million(layout, args.million)
            print(f"write {args.million} done records (fsio.Batch, {_fstype(mdir)}): {secs:.1f} s")
            site = str(layout.root)
            t = time.perf_counter()
            hits = Job.objects.filter(tags={"bench": "hit"}, site_name=site).count()
            took = time.perf_counter() - t
            assert hits == (args.million + 9) // 10, hits
            print(f"filter(tags={{bench: hit}}).count() over {args.million} jobs: {took:.2f} s "
                  f"({hits} hits)")
            t = time.perf_counter()
            total = Job.objects.filter(site_name=site).count()
            print(f"filter().count() (names only) over {total} jobs: {time.perf_counter() - t:.2f} s")
            listing, reading, parsing, k = breakdown(layout)
            scale = total / k
            print(f"  where the time goes (16 of 256 buckets, {k} files, scaled to {total}): "
                  f"list names {listing * scale:.2f} s, open+read files {reading * scale:.2f} s, "
                  f"parse JSON {parsing * scale:.2f} s")
    finally:
        if not args.keep:
            for d in cleanup:
                shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
