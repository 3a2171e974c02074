"""A million jobs: what questions about a campaign cost, with the site's query index.

    python bench/million.py                       # 1,000,000 jobs on tmpfs, then on the disk
    python bench/million.py --n 100000 --fs tmpfs # quick
    python bench/million.py --scan                # also the full scan the index replaces

For each filesystem (``tmpfs``: /dev/shm; ``disk``: the system temp dir, or ``--disk-dir``)
a site is made with ``spool site init`` and N records are written straight into its state
directories with ``fsio.Batch``, one process per core: 85% finished (``done/``), 5% failed,
10% ready; every tenth job tagged ``bench=hit`` (the rest ``miss``), and every job
``grp=0..99``.  Then, with the page cache warm (the files were just written):

* ``spool site reindex``: the index built from the records (every record read once: what a
  site pays once, when it first starts on an existing spool);
* ``spool site start``: the site's start, and its check of the whole index against the
  directories (``index: ... checked ... in S s`` in its log); its memory (VmRSS); stopped
  again;
* each question, three times (median, and the first time): as commands (a new process
  each, interpreter start included; ``python -c pass`` and ``spool --help`` are printed
  for scale), and in one Python process through the API (``Job.objects``);
* with ``--scan``, the same tag count through the records (``use_index=False``: what every
  count cost before the index).

Prints numbers only; removes everything it made (``--keep`` keeps it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (puts the checkout on sys.path)

from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.spool.ids import SHARDS, shard  # noqa: E402
from spoolbalsam.spool.layout import Layout  # noqa: E402
from spoolbalsam.spool.record import normalize, transition  # noqa: E402

SPOOL = C.SPOOL


def where(i: int) -> str:
    r = i % 20
    return "failed" if r == 0 else "ready" if r in (1, 2) else "done"


def _write_part(root: str, n: int, part: int, parts: int) -> None:
    layout = Layout(Path(root))
    base = normalize({"app": "Echo", "workdir": "w", "parameters": {"x": 0}}, "bench")
    ready = transition(base, "READY", "site")
    states = {"ready": ready, "done": transition(ready, "JOB_FINISHED", "bench"),
              "failed": transition(ready, "FAILED", "bench", "exit 1", error="exit 1")}
    for d in states:
        for b in range(SHARDS):
            (layout.state_dir(d) / f"{b:02x}").mkdir(parents=True, exist_ok=True)
    batch = fsio.Batch(layout.jobs)
    for i in range(part, n, parts):
        job_id = f"j{i:07d}"
        d = where(i)
        rec = {**states[d], "id": job_id, "workdir": f"m/{i}", "parameters": {"x": i},
               "created_at": states[d]["created_at"] + i * 1e-4,     # as if submitted in order
               "tags": {"bench": "hit" if i % 10 == 0 else "miss", "grp": str(i % 100)}}
        batch.add(layout.state_dir(d) / shard(job_id) / f"{job_id}.json", fsio.dumps(rec))
        if len(batch.pending) >= 50_000:
            batch.commit()
    batch.commit()


def write_jobs(layout: Layout, n: int) -> float:
    parts = max(1, min(8, os.cpu_count() or 1))
    t = time.perf_counter()
    with ProcessPoolExecutor(parts) as pool:
        for f in [pool.submit(_write_part, str(layout.root), n, p, parts) for p in range(parts)]:
            f.result()
    return time.perf_counter() - t


def timed(argv: list[str], reps: int = 3) -> tuple[float, float, str]:
    """(median, first) seconds of a command, and its output."""
    times, out = [], ""
    for _ in range(reps):
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=C.child_env())
        times.append(time.perf_counter() - t)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr}")
        out = proc.stdout
    return statistics.median(times), times[0], out


def timed_call(fn, reps: int = 3) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times[0], out


def row(what: str, med: float, first: float, note: str = "") -> None:
    print(f"  {what:58s} {med:7.3f} s  (first {first:6.3f} s)  {note}", flush=True)


def site_start(layout: Layout) -> tuple[float, float, int]:
    """(seconds to `spool site start`, the index check's seconds from the log, VmRSS KiB)."""
    t = time.perf_counter()
    subprocess.run(SPOOL + ["--site", str(layout.root), "site", "start"], check=True,
                   stdout=subprocess.DEVNULL, env=C.child_env())
    try:
        log = layout.log / "site.log"
        C.wait_for(lambda: "checked against the directories" in log.read_text(), 600,
                   "the site's index check", "million.py")
        started = time.perf_counter() - t
        line = [ln for ln in log.read_text().splitlines() if "checked against" in ln][-1]
        check = float(line.split(" in ")[1].split(" s")[0])
        pid = fsio.read_json(layout.site_dir / "site.pid")["pid"]
        rss = int(next(ln for ln in open(f"/proc/{pid}/status")
                       if ln.startswith("VmRSS")).split()[1])
    finally:                         # the site we started, stopped by its own command
        subprocess.run(SPOOL + ["--site", str(layout.root), "site", "stop"], check=True,
                       stdout=subprocess.DEVNULL, env=C.child_env())
    return started, check, rss


def bench_fs(label: str, base: Path, n: int, scan: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="spool-million-", dir=base))
    try:
        site = root / "site"
        subprocess.run(SPOOL + ["site", "init", str(site), "--machine", "local"], check=True,
                       stdout=subprocess.DEVNULL, env=C.child_env())
        (site / "apps" / "Echo.yml").write_text("command_template: echo {{ x }}\n")
        layout = Layout(site)
        from spoolbalsam.site.watch import filesystem_type
        print(f"\n# {label}: {n} jobs in {base} ({filesystem_type(base)})", flush=True)
        print(f"  write {n} records (fsio.Batch, {min(8, os.cpu_count() or 1)} processes): "
              f"{write_jobs(layout, n):.1f} s", flush=True)
        S = SPOOL + ["--site", str(site)]
        med, first, out = timed(S + ["site", "reindex"], reps=1)
        row("spool site reindex (index from every record)", med, first, out.strip())
        size = sum(p.stat().st_size for p in (site / "site" / "index").iterdir())
        print(f"  index size: {size / 1e6:.1f} MB", flush=True)
        started, check, rss = site_start(layout)
        print(f"  spool site start at {n} jobs: {started:.2f} s, of which the index check "
              f"against the directories {check:.2f} s; site RSS {rss / 1024:.0f} MiB",
              flush=True)
        med, first, _ = timed([sys.executable, "-c", "pass"])
        row("(python -c pass, for scale)", med, first)
        med, first, _ = timed(SPOOL + ["--help"])
        row("(spool --help, for scale)", med, first)
        med, first, out = timed(S + ["job", "ls", "--by-state"])
        row("spool job ls --by-state", med, first, " ".join(out.split()))
        med, first, out = timed(S + ["job", "ls", "--tag", "bench=hit", "--count"])
        row("spool job ls --tag bench=hit --count", med, first, out.strip())
        med, first, out = timed(S + ["job", "ls", "--tag", "bench=hit", "--state", "failed",
                                     "--by-state"])
        row("spool job ls --tag bench=hit --state failed --by-state", med, first,
            " ".join(out.split()))
        med, first, out = timed(S + ["job", "ls", "--tag", "bench=hit", "--limit", "100"])
        row("spool job ls --tag bench=hit --limit 100 (first page)", med, first,
            f"{len(out.splitlines()) - 1} rows")
        med, first, out = timed(S + ["job", "ls", "--tag", "grp=7", "--limit", "100",
                                     "--offset", "5000"])
        row("spool job ls --tag grp=7 --limit 100 --offset 5000", med, first,
            f"{len(out.splitlines()) - 1} rows")
        med, first, _ = timed(S + ["site", "status"])
        row("spool site status", med, first)
        from spoolbalsam.api import Job
        q = Job.objects
        med, first, got = timed_call(lambda: q.filter(tags={"bench": "hit"},
                                                      site_name=str(site)).count())
        row("Job.objects.filter(tags={bench: hit}).count()", med, first, f"{got}")
        med, first, got = timed_call(lambda: q.filter(state="JOB_FINISHED",
                                                      site_name=str(site)).count())
        row("Job.objects.filter(state=JOB_FINISHED).count()", med, first, f"{got}")
        med, first, got = timed_call(lambda: q.filter(site_name=str(site)).count())
        row("Job.objects.filter().count()", med, first, f"{got}")
        med, first, got = timed_call(lambda: q.filter(tags={"bench": "hit"},
                                                      site_name=str(site))[:100])
        row("Job.objects.filter(tags={bench: hit})[:100]", med, first, f"{len(got)} jobs")
        med, first, got = timed_call(lambda: q.filter(tags={"bench": "hit"}, state="FAILED",
                                                      site_name=str(site))[:100])
        row("Job.objects.filter(tags={bench: hit}, state=FAILED)[:100]", med, first,
            f"{len(got)} jobs")
        if scan:
            from spoolbalsam.spool.query import Filter, count
            med, first, got = timed_call(lambda: count(layout, Filter(tags={"bench": "hit"}),
                                                       use_index=False), reps=1)
            row("the same tag count through the records (no index)", med, first,
                f"{sum(got.values())}")
    finally:
        t = time.perf_counter()
        with ProcessPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for d in ("done", "failed", "ready"):
                for b in range(SHARDS):
                    pool.submit(shutil.rmtree, site / "jobs" / d / f"{b:02x}", True)
        shutil.rmtree(root, ignore_errors=True)
        print(f"  (removed in {time.perf_counter() - t:.0f} s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--fs", default="tmpfs,disk", help="tmpfs, disk, or both")
    ap.add_argument("--disk-dir", default=tempfile.gettempdir())
    ap.add_argument("--scan", action="store_true", help="also time the full scan")
    a = ap.parse_args()
    C.byte_compile()
    os.environ.setdefault("SPOOL_REGISTRY", str(Path(tempfile.mkdtemp()) / "sites.json"))
    print(f"# million: {a.n} jobs; {os.cpu_count()} cpus, Python {sys.version.split()[0]}, "
          f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}, code {C.code_version()}", flush=True)
    for fs in a.fs.split(","):
        bench_fs(fs, Path("/dev/shm") if fs == "tmpfs" else Path(a.disk_dir), a.n, a.scan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
