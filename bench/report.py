"""``spool report`` over a 100k-job site: wall time, and where it goes.

    python bench/report.py [--jobs 100000] [--launchers 16] [--reps 3] [--dir DIR] [--keep]
    python bench/report.py --launchers 1      # every event in one log (an MPI-mode launcher)

The site is written synthetically, as a finished campaign looks on disk: ``spool site init
--machine local --gpus 12 --cpus 104`` (an Aurora-like node), then a simulated campaign of
``--jobs`` single-tile jobs (``node_packing_count: 12``, 8 cores each) on ``--launchers``
serial launchers of one node each, every slot taking the next job as soon as its last one
ended (run times: app ``Sim`` ~ lognormal around 60 s, ``Analyze`` around 20 s; 2% of jobs
are ``Flaky``: they fail three times, exit code 1, and end FAILED).  Written the way the
launchers and the site write them:

* each launcher's ``launchers/.retired/L/events.jsonl``: per job RUNNING (placement,
  affinity, pid ...), RUN_DONE, JOB_FINISHED -- or RUNNING, RUN_ERROR, RESTART_READY ...
  FAILED -- in time order; its ``lease.json`` (nodes, gpus, started_at, ended_at, exited);
  the site's retire line in ``site/events.jsonl``;
* each job's merged record in ``jobs/done/BB/`` or ``jobs/failed/BB/`` (``fsio.Batch``),
  with its history (READY, RUNNING, RUN_DONE, JOB_FINISHED: the same instants as the logs);
* the site's query index (``spool site reindex``), as a site that ran has one
  (``--no-index``: none, readers scan the directories).

Then, ``--reps`` times: ``spool report --out report.png`` as a process (what a user types;
page cache warm; wall time, CPU time and peak RSS), and the same work in this process with each phase timed: reading the
records (``spool.query.select``), counting states, reading the logs, merging, computing,
the text, the JSON and the PNG.  Also timed: the Balsam-style path the report does not take
(``EventLog.objects.all()`` -> ``throughput_report`` + ``utilization_report``), and
``import matplotlib`` in a fresh interpreter.

Prints numbers only; everything lives under ``--dir`` (default: a new temp dir under the
system temp dir), removed at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import heapq
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: E402  (puts the checkout on sys.path)

import orjson  # noqa: E402

from spoolbalsam.launch.resources import NODE_UNITS  # noqa: E402
from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.spool.ids import new_id  # noqa: E402
from spoolbalsam.spool.layout import Layout  # noqa: E402

TILES = [f"{g}.{t}" for g in range(6) for t in range(2)]
CORES = 8
APPS = {"Sim": "command_template: ./sim --seed {{ seed }}\n",
        "Analyze": "command_template: ./analyze {{ seed }}\n",
        "Flaky": "command_template: ./flaky {{ seed }}\nretry: {errors: 2}\n"}


MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(u.ru_utime + u.ru_stime, u.ru_maxrss, file=sys.stderr); sys.exit(rc)")


def make_site(root: Path) -> Layout:
    subprocess.run([*C.SPOOL, "site", "init", str(root), "-n", "bench-report", "--machine",
                    "local", "--gpus", "12", "--cpus", "104"], check=True,
                   stdout=subprocess.DEVNULL, env=C.child_env())
    for name, text in APPS.items():
        fsio.write_atomic(root / "apps" / f"{name}.yml", text.encode())
    return Layout(root)


def _duration(rng: random.Random, app: str) -> float:
    if app == "Flaky":
        return rng.uniform(0.5, 3.0)
    mean = 60.0 if app == "Sim" else 20.0
    return min(rng.lognormvariate(0, 0.5) * mean, 6 * mean)


def simulate(n: int, launchers: int, seed: int = 7):
    """(records, events per launcher, launcher spans) of a finished campaign of ``n`` jobs."""
    rng = random.Random(seed)
    names = [f"serial-x{i:04d}-{new_id(seed=bytes([i % 256] * 10))[-8:]}" for i in range(launchers)]
    slots = len(TILES)
    campaign_sec = n * 45.0 / (launchers * slots)
    t_begin = time.time() - campaign_sec - 3600
    started = {L: t_begin + rng.uniform(0, 30) for L in names}
    heap = [(started[L] + rng.uniform(0.5, 2), L, s) for L in names for s in range(slots)]
    heapq.heapify(heap)
    events: dict[str, list[dict]] = {L: [] for L in names}
    records = []
    created = t_begin - 60
    for i in range(n):
        app = "Flaky" if i % 50 == 7 else ("Sim" if i % 3 else "Analyze")
        job = new_id(now_ms=int((created + i * 1e-4) * 1000), seed=rng.randbytes(10))
        attempts = 3 if app == "Flaky" else 1
        hist = [{"t": created + i * 1e-4, "from": "CREATED", "to": "READY", "by": "site"}]
        retries = {"errors": 0, "timeouts": 0}
        end = 0.0
        for attempt in range(1, attempts + 1):
            free_at, L, slot = heapq.heappop(heap)
            start = max(free_at, end) + rng.uniform(0.005, 0.05)   # a retry after its failure
            end = start + _duration(rng, app)
            heapq.heappush(heap, (end, L, slot))
            host = L.split("-")[1]
            placement = {"hosts": [host], "cpus": [list(range(1 + slot * CORES, 1 + (slot + 1) * CORES))],
                         "gpus": [[TILES[slot]]], "units": NODE_UNITS // slots}
            affinity = {"variable": "ZE_AFFINITY_MASK", "rank_masks": [TILES[slot]]}
            base = {"job": job, "attempt": attempt, "by": L, "launcher": L}
            evs = events[L]
            evs.append({"t": start, **base, "to": "RUNNING", "host": host, "placement": placement,
                        "pid": 100000 + i, "host_name": host, "pid_start": str(i),
                        "affinity": affinity, "started_at": start})
            hist.append({"t": start, "from": hist[-1]["to"], "to": "RUNNING", "by": L})
            if app != "Flaky":
                evs.append({"t": end, **base, "to": "RUN_DONE", "return_code": 0, "ended_at": end,
                            "started_at": start, "host": host, "placement": placement,
                            "affinity": affinity})
                evs.append({"t": end + 0.001, **base, "to": "JOB_FINISHED"})
                hist += [{"t": end, "from": "RUNNING", "to": "RUN_DONE", "by": L},
                         {"t": end + 0.001, "from": "RUN_DONE", "to": "JOB_FINISHED", "by": L}]
                state, where, error, rc = "JOB_FINISHED", "done", None, 0
                continue
            retries = {"errors": attempt, "timeouts": 0}
            tail = f"flaky attempt {attempt}\nTraceback (most recent call last):\n  ...\nRuntimeError: flaky"
            evs.append({"t": end, **base, "to": "RUN_ERROR", "msg": "exit code 1", "error": tail,
                        "return_code": 1, "ended_at": end, "started_at": start, "host": host,
                        "placement": placement, "affinity": affinity})
            hist.append({"t": end, "from": "RUNNING", "to": "RUN_ERROR", "by": L, "msg": "exit code 1"})
            if attempt < attempts:
                evs.append({"t": end + 0.001, **base, "to": "RESTART_READY", "msg": "exit code 1",
                            "retries": retries, "attempt": attempt + 1})
                hist.append({"t": end + 0.001, "from": "RUN_ERROR", "to": "RESTART_READY", "by": L,
                             "msg": "exit code 1"})
            else:
                why = "exit code 1; retry policy spent (errors: 2 allowed)"
                evs.append({"t": end + 0.001, **base, "to": "FAILED", "msg": why,
                            "error": f"{why}\n{tail}", "retries": retries})
                hist.append({"t": end + 0.001, "from": "RUN_ERROR", "to": "FAILED", "by": L, "msg": why})
                state, where, error, rc = "FAILED", "failed", f"{why}\n{tail}", 1
        rec = {"id": job, "app": app, "workdir": f"bench/{app}/{i}", "parameters": {"seed": str(i)},
               "tags": {"campaign": "bench", "batch": str(i % 10)}, "num_nodes": 1,
               "ranks_per_node": 1, "threads_per_rank": CORES, "threads_per_core": 1,
               "gpus_per_rank": 1, "node_packing_count": slots, "launch_params": {},
               "wall_time_min": 0, "parent_ids": [], "data": {}, "state": state,
               "attempt": attempts, "return_code": rc, "launcher": L, "batch_job": None,
               "host": host, "created_at": hist[0]["t"], "state_timestamp": hist[-1]["t"],
               "started_at": start, "ended_at": end, "error": error, "retries": retries,
               "placement": placement, "affinity": affinity, "history": hist[-16:]}
        records.append((where, rec))
    ends = {L: max(e["t"] for e in evs) + 30 if evs else started[L] for L, evs in events.items()}
    return records, events, {L: (started[L], ends[L]) for L in names}


def write_site(layout: Layout, records, events, spans) -> tuple[int, int]:
    """Write the simulated campaign; (log lines, bytes of logs)."""
    batch = fsio.Batch(layout.jobs)
    for where, rec in records:
        batch.add(layout.job_path(where, rec["id"]), fsio.dumps(rec))
        if len(batch.pending) >= 20_000:
            batch.commit()
    batch.commit()
    lines = size = 0
    site_log = []
    for L, evs in events.items():
        d = layout.launchers / ".retired" / L
        d.mkdir(parents=True)
        evs.sort(key=lambda e: e["t"])
        data = b"".join(orjson.dumps(e) + b"\n" for e in evs)
        fsio.write_atomic(d / "events.jsonl", data)
        lines += len(evs)
        size += len(data)
        start, end = spans[L]
        fsio.write_json_atomic(d / "lease.json", {
            "seq": 1000, "interval": 5, "host": L.split("-")[1], "pid": 1, "pid_start": "1",
            "mode": "serial", "batch_job": None, "scheduler_id": None,
            "nodes": [L.split("-")[1]], "gpus": len(TILES), "started_at": start,
            "ended_at": end, "state": "exited", "exit_reason": "idle for 30 s"})
        site_log.append({"t": end + 1, "launcher": L, "retired": "exited", "revoked": 0})
    fsio.write_atomic(layout.site_dir / "events.jsonl",
                      b"".join(orjson.dumps(e) + b"\n" for e in site_log))
    return lines, size


def phases(layout: Layout, png: Path) -> dict[str, float]:
    """One report in this process, each phase timed (the GC paused as ``spool report`` does)."""
    from spoolbalsam.report import plot
    from spoolbalsam.gcpause import paused
    from spoolbalsam.report.gather import gather
    from spoolbalsam.report.numbers import report
    from spoolbalsam.report.text import summary
    with paused():
        t = time.perf_counter()
        c = gather(layout)
        took = dict(c.timings)
        took["gather (total)"] = time.perf_counter() - t
        t = time.perf_counter()
        doc = report(c)
        took["compute"] = time.perf_counter() - t
        del c
    t = time.perf_counter()
    summary(doc)
    took["text"] = time.perf_counter() - t
    t = time.perf_counter()
    orjson.dumps(doc)
    took["json"] = time.perf_counter() - t
    t = time.perf_counter()
    plot.write_png(doc, png)
    took["plot (render + write PNG)"] = time.perf_counter() - t
    return took


def api_path(layout: Layout) -> tuple[float, int]:
    """Seconds of the Balsam-style path over the API's EventLog objects; how many events."""
    from spoolbalsam.api import EventLog
    from spoolbalsam.api.analytics import throughput_report, utilization_report
    t = time.perf_counter()
    events = list(EventLog.objects.filter(site_id=str(layout.root)))
    throughput_report(events)
    utilization_report(events)
    return time.perf_counter() - t, len(events)


def import_matplotlib() -> float:
    code = ("import time; t = time.perf_counter(); import matplotlib; matplotlib.use('Agg'); "
            "from matplotlib.figure import Figure; print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--launchers", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", help="where to build the site (default: a new temp dir)")
    ap.add_argument("--no-api", action="store_true", help="skip the EventLog-object path")
    ap.add_argument("--no-index", action="store_true",
                    help="no query index: every reader scans the directories")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="spool-report-", dir=args.dir)).resolve()
    os.environ["SPOOL_REGISTRY"] = str(base / "registry.json")
    print(C.machine_line())
    try:
        layout = make_site(base / "site")
        t = time.perf_counter()
        records, events, spans = simulate(args.jobs, args.launchers)
        sim = time.perf_counter() - t
        t = time.perf_counter()
        lines, size = write_site(layout, records, events, spans)
        failed = sum(1 for w, _ in records if w == "failed")
        del records, events
        from spoolbalsam.site.watch import filesystem_type
        print(f"site: {args.jobs} jobs ({failed} failed) on {args.launchers} launchers, "
              f"{lines} log lines ({size / 1e6:.0f} MB), {filesystem_type(base)}; simulated in "
              f"{sim:.1f} s, written in {time.perf_counter() - t:.1f} s")
        if not args.no_index:
            t = time.perf_counter()
            subprocess.run([*C.SPOOL, "--site", str(layout.root), "site", "reindex"], check=True,
                           stdout=subprocess.DEVNULL, env=C.child_env())
            print(f"query index built (spool site reindex, as a site that ran has one): "
                  f"{time.perf_counter() - t:.1f} s")
        png = base / "report.png"
        walls, cpus, rss, split = [], [], [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            # through a small parent, so the peak RSS is the report's and not this big
            # process's image copied by fork
            res = subprocess.run([sys.executable, "-c", MEASURE, *C.SPOOL, "--site",
                                  str(layout.root), "report", "--out", str(png)],
                                 capture_output=True, text=True, env=C.child_env(), cwd=base)
            walls.append(time.perf_counter() - t)
            if res.returncode != 0:
                raise SystemExit(f"spool report failed: {res.stderr}")
            cpu, peak = res.stderr.strip().splitlines()[-1].split()
            cpus.append(float(cpu))
            rss.append(float(peak) / 1024)
            split.append(phases(layout, base / "phases.png"))
        print(f"spool report --out report.png (a process, {args.reps} runs): "
              f"{C.spread(walls)} s wall, {C.spread(cpus)} s CPU, peak RSS "
              f"{C.spread(rss, '{:.0f}')} MiB  [median (min-max)]; load avg now "
              f"{os.getloadavg()[0]:.2f}")
        print("  in-process phases, median of the runs (s):")
        for key in split[0]:
            vals = [s[key] for s in split]
            print(f"    {key:28s} {C.spread(vals, '{:.3f}')}")
        print(f"  import matplotlib (fresh interpreter): {import_matplotlib():.2f} s")
        print(f"  PNG: {png.stat().st_size / 1e3:.0f} kB")
        print("  summary printed by the last run:")
        for line in res.stdout.splitlines():
            print(f"    | {line}")
        if not args.no_api:
            secs, n = api_path(layout)
            print(f"EventLog.objects.filter(site) -> throughput_report + utilization_report: "
                  f"{secs:.2f} s ({n} EventLog objects)")
        if args.keep:
            print(f"kept: {base}")
    finally:
        if not args.keep:
            C.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
