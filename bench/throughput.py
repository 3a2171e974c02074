"""Many tiny tasks through the whole spoolbalsam path, side by side with xargs and GNU parallel.

W1 (default): N=2000 tasks of ``/bin/true`` on 2 slots.  W2 (``--sleep 0.05``, N defaults
to 200): ``sleep 0.05``; efficiency = ideal / actual with ideal = N x sleep / slots (as in
the peer benchmarks of the design reference).

spoolbalsam, per repetition, on a fresh site (``spool site init DIR --machine local --cpus 2``
and an app ``Bench`` whose command is the task; every job has ``node_packing_count: 2``,
which is what lets two share the node -- with Balsam's default of 1 a job takes the whole
node and the launcher runs one at a time):

* set-up, not timed: the site process (``python -m spoolbalsam.site.service SITE``) is started
  and has reported in;
* t0: in this process the N jobs are created with the Python API
  ``spoolbalsam.submit.submit_jobs`` (validated, written to ``jobs/created/`` under one
  grouped sync); ``create`` is the time of that call alone;
* right after creation the launcher process is started (``spool launcher -j serial -t 30
  --idle-ttl 2``), as in an allocation whose launcher is already running; its interpreter
  start-up is inside the timed window, and it waits while the site still takes drops in.
  The site takes them in (created/ -> ready/BB/) meanwhile.  ``--launcher-start intake``
  starts the launcher only once created/ is empty (``intake``: t0 until then) instead, and
  ``--launcher-start submit`` at t0, while the jobs are being written (as ``seq N |
  parallel`` starts both ends of its pipe at once);
* the launcher claims each by rename into
  ``running/L/``, runs it with stdout+stderr in ``data/b/NNNNN/job.out`` and renames it
  into ``done/BB/``;
* ``done``: t0 until every job's name has been seen in ``jobs/done/`` (the buckets that
  still miss a job are listed every 0.1 s, every ``--poll`` s for the last 5%; a name
  counts once seen, since the site's merge briefly takes a record out of ``done/`` while
  it rewrites it);
* ``merged``: t0 until every record in ``done/`` reads ``state: JOB_FINISHED`` with the
  launcher's details merged in by the site (records read only after ``done``).

xargs: ``seq N | xargs -P2 -I{} sh -c 'TASK > out/{}.out 2>&1'``.
GNU parallel: ``seq N | parallel -j2 --joblog JOBLOG --results OUT/{#} -N0 TASK`` (skipped
with a message if ``parallel`` is not installed).  Both are timed from start to exit.

Prints tasks/s per repetition, then medians (min–max) and the ratios spoolbalsam/parallel
and spoolbalsam/xargs, the CPU time per task, and ``busy``: the share of all cores the
whole machine kept busy from t0 to ``done`` (/proc/stat; an idle core is time lost).  Asserts nothing; removes its temp dirs; stops only the processes it
started, by PID.

    python bench/throughput.py [--reps 3] [--n 2000] [--slots 2] [--sleep 0.05]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (puts the checkout on sys.path)

from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.spool.ids import shard  # noqa: E402
from spoolbalsam.spool.layout import Layout  # noqa: E402
from spoolbalsam.submit import submit_jobs  # noqa: E402


def task_command(sleep: float) -> str:
    return f"sleep {sleep:g}" if sleep else "/bin/true"


# ---- spoolbalsam ------------------------------------------------------------------------
def _wait_site_up(layout: Layout, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    log = layout.log / "site.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"site process exited with {proc.returncode}; see {log}")
        try:
            info = fsio.read_json(layout.site_dir / "site.pid")
            # (under a profiler, proc is the profiler and the site is its child)
            if info.get("pid") and " started " in log.read_text():
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"site process {proc.pid} did not start in {timeout:g} s; see {log}")


class DoneWatcher:
    """Which of the expected jobs have been seen in ``done/``, listing only the buckets that
    still miss some (a full listing of 256 buckets costs ~3 ms of a 2-core machine)."""

    def __init__(self, layout: Layout, ids: list[str]):
        self.done = layout.state_dir("done")
        self.missing: dict[str, set[str]] = {}
        for job_id in ids:
            self.missing.setdefault(shard(job_id), set()).add(f"{job_id}.json")
        self.left = len(ids)

    def poll(self) -> int:
        """Jobs not seen yet."""
        for bucket in list(self.missing):
            want = self.missing[bucket]
            got = want.intersection(fsio.list_names(self.done / bucket))
            if got:
                want -= got
                self.left -= len(got)
                if not want:
                    del self.missing[bucket]
        return self.left


def _profiled(argv: list[str], profile: str | None, out: Path | None, name: str) -> list[str]:
    """``argv`` (a ``python -m MODULE ...`` command) under cProfile or py-spy."""
    if not profile:
        return argv
    if profile == "cprofile":
        assert argv[1] == "-m"
        return [argv[0], "-m", "cProfile", "-o", str(out / f"{name}.prof"), *argv[1:]]
    return ["py-spy", "record", "-r", "200", "-f", "raw", "-o", str(out / f"{name}.txt"),
            "--", *argv]


def _cpu(pid: int | None) -> tuple[float, float] | None:
    """(own CPU s, CPU s of its reaped children) of a live process, from /proc."""
    if not pid:
        return None
    try:
        f = open(f"/proc/{pid}/stat", "rb").read().rsplit(b") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / hz, (int(f[13]) + int(f[14])) / hz


def _jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)          # idle and iowait are not busy


def _busy_since(j0: tuple[int, int]) -> float:
    """Share of all cores the machine kept busy since ``j0 = _jiffies()``."""
    b, t = _jiffies()
    return (b - j0[0]) / max(t - j0[1], 1)


def _child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (the launcher's job starter)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat", "rb").read().rsplit(b") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(stat[1]) == pid:
                out.append(int(entry))
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _site_pid(layout: Layout) -> int | None:
    try:
        return fsio.read_json(layout.site_dir / "site.pid")["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _launcher_pid(layout: Layout) -> int | None:
    for lease in layout.launchers.glob("*/lease.json"):
        try:
            return fsio.read_json(lease)["pid"]
        except (FileNotFoundError, ValueError, KeyError):
            pass
    return None


def make_bench_site(root: Path, n: int, sleep: float, slots: int,
                    site_settings: dict | None = None) -> tuple[Layout, list[dict]]:
    """The benchmark's site (``spool site init ROOT --machine local --cpus SLOTS``, settings
    overridden by ``site_settings``, app ``Bench``) and its ``n`` jobs, not yet submitted."""
    subprocess.run(C.SPOOL + ["site", "init", str(root), "--machine", "local", "--cpus",
                              str(slots)], check=True, stdout=subprocess.DEVNULL, env=C.child_env())
    layout = Layout(root)
    if site_settings:
        import yaml
        doc = yaml.safe_load(layout.settings.read_text())
        for key, value in site_settings.items():
            *parents, last = key.split(".")
            node = doc
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = yaml.safe_load(value)
        layout.settings.write_text(yaml.safe_dump(doc, sort_keys=False))
    (layout.apps / "Bench.yml").write_text(
        f"description: benchmark task\ncommand_template: {task_command(sleep)}\n")
    # node_packing_count = slots: as in Balsam, a job with the default 1 takes a whole node
    raws = [{"app": "Bench", "workdir": f"b/{i:05d}", "node_packing_count": slots}
            for i in range(n)]
    return layout, raws


def wait_merged(layout: Layout, ids: list[str], poll: float, end: float,
                merge_wait: float) -> tuple[set[str], float]:
    """Wait until every record of ``ids`` in ``done/`` reads ``state: JOB_FINISHED`` with
    ``return_code: 0`` (merged in by the site), giving up at ``end`` (perf_counter) or after
    ``merge_wait`` s without progress.  Returns (names still unmerged, perf_counter time of
    the last progress)."""
    pending = {f"{job_id}.json" for job_id in ids}
    last = time.perf_counter()
    while pending and time.perf_counter() < min(end, last + merge_wait):
        before = len(pending)
        for name in list(pending):
            try:
                rec = fsio.read_json(layout.job_path("done", name[:-5]))
            except (FileNotFoundError, ValueError):
                continue           # being rewritten by the site's merge right now
            if rec.get("state") == "JOB_FINISHED" and rec.get("return_code") == 0:
                pending.discard(name)
        if len(pending) < before:
            last = time.perf_counter()
        if pending:
            time.sleep(poll)
    return pending, last


def run_spool(n: int, sleep: float, slots: int, tmp: Path, poll: float, timeout: float,
              merge_wait: float, profile: str | None = None,
              profile_dir: Path | None = None, launcher_start: str = "create",
              site_settings: dict | None = None) -> dict:
    root = tmp / "site"
    layout, raws = make_bench_site(root, n, sleep, slots, site_settings)
    site = launcher = None
    res: dict = {"n": n}
    cpu: dict = {"launcher": None, "site": None}
    try:
        site = C.start(_profiled([sys.executable, "-m", "spoolbalsam.site.service", str(root)],
                                 profile, profile_dir, "site"), tmp / "site.out", cwd=root)
        _wait_site_up(layout, site)
        largv = _profiled(C.SPOOL + ["--site", str(root), "launcher", "-j", "serial",
                                     "-t", "30", "--idle-ttl", "2"],
                          profile, profile_dir, "launcher")
        j0, c0, t0 = _jiffies(), time.process_time(), time.perf_counter()
        if launcher_start == "submit":
            # Both ends at once, as `seq N | parallel` starts both ends of its pipe.
            launcher = C.start(largv, tmp / "launcher.out", cwd=root)
        recs = submit_jobs(layout, raws, source="bench")
        res["create"] = time.perf_counter() - t0
        res["cpu_create"] = time.process_time() - c0
        end = t0 + timeout
        if launcher_start == "intake":
            # Intake first, then the launcher: the two phases timed apart.
            while fsio.list_names(layout.created) and time.perf_counter() < end:
                time.sleep(poll)
            res["intake"] = time.perf_counter() - t0
        if launcher is None:
            launcher = C.start(largv, tmp / "launcher.out", cwd=root)
        watch = DoneWatcher(layout, [r["id"] for r in recs])
        # 0.1 s polls while many jobs are left, --poll ones for the last 5%
        while watch.poll() and time.perf_counter() < end:
            time.sleep(poll if watch.left <= max(50, n // 20) else 0.1)
        if not watch.left:
            res["done"] = time.perf_counter() - t0
            res["busy"] = _busy_since(j0)
        lpid = _launcher_pid(layout)
        cpu = {"launcher": _cpu(lpid), "site": _cpu(_site_pid(layout)),
               "starter": [_cpu(p) for p in _child_pids(lpid)] if lpid else []}
        # merged: every record in done/ carries state JOB_FINISHED and return code 0.  Give
        # up after ``merge_wait`` s without progress (a record the site never merges).
        pending, last = wait_merged(layout, [r["id"] for r in recs] if not watch.left else [],
                                    poll, end, merge_wait)
        if "done" in res:
            res["merged" if not pending else "merged_but_stuck"] = last - t0
        res["not_done"] = watch.left
        res["unmerged"] = len(pending)
        if pending:
            res["unmerged_ids"] = sorted(p[:-5] for p in pending)[:3]
        # the launcher exits on its own after --idle-ttl 2 s (this lets a profiler write)
        try:
            launcher.wait(15)
        except subprocess.TimeoutExpired:
            pass
    finally:
        C.stop(launcher)
        if profile == "py-spy" and site is not None:
            # SIGTERM the site itself (our grandchild under py-spy) so py-spy writes its file
            try:
                pid = _site_pid(layout)
                if pid and pid > 1:
                    os.kill(pid, 15)
                    site.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        C.stop(site)
    if cpu["launcher"]:
        # the launcher's starter (its child) starts and reaps the jobs: its own CPU is
        # "starter", that of the jobs it reaped "jobs" (with any the launcher reaped itself)
        res["cpu_launcher"], res["cpu_jobs"] = cpu["launcher"]
        res["cpu_starter"] = sum(c[0] for c in cpu["starter"] if c)
        res["cpu_jobs"] += sum(c[1] for c in cpu["starter"] if c)
    if cpu["site"]:
        res["cpu_site"] = cpu["site"][0]
    if cpu["launcher"] and cpu["site"]:
        res["cpu"] = (res["cpu_create"] + res["cpu_launcher"] + res["cpu_starter"]
                      + res["cpu_jobs"] + res["cpu_site"])
    res["job_out"] = sum(1 for i in range(n) if (layout.data / f"b/{i:05d}/job.out").exists())
    res["failed"] = sum(1 for _ in layout.state_dir("failed").glob("*/*.json"))
    return res


# ---- peers ------------------------------------------------------------------------------
def run_xargs(n: int, sleep: float, slots: int, tmp: Path) -> dict:
    (tmp / "out").mkdir()
    cmd = f"seq {n} | xargs -P{slots} -I{{}} sh -c '{task_command(sleep)} > out/{{}}.out 2>&1'"
    j0, c0, t0 = _jiffies(), _children_cpu(), time.perf_counter()
    rc = subprocess.run(cmd, shell=True, cwd=tmp).returncode
    dt, cpu, busy = time.perf_counter() - t0, _children_cpu() - c0, _busy_since(j0)
    outs = sum(1 for _ in (tmp / "out").iterdir())
    return {"n": n, "done": dt, "rc": rc, "outputs": outs, "cpu": cpu, "busy": busy}


def run_parallel(n: int, sleep: float, slots: int, tmp: Path) -> dict:
    (tmp / "out").mkdir()
    cmd = (f"seq {n} | parallel --will-cite -j{slots} --joblog joblog --results out/{{#}} "
           f"-N0 {task_command(sleep)}")
    j0, c0, t0 = _jiffies(), _children_cpu(), time.perf_counter()
    rc = subprocess.run(cmd, shell=True, cwd=tmp).returncode
    dt, cpu, busy = time.perf_counter() - t0, _children_cpu() - c0, _busy_since(j0)
    ok = bad = 0
    for line in (tmp / "joblog").read_text().splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) > 6 and cols[6] == "0":
            ok += 1
        else:
            bad += 1
    return {"n": n, "done": dt, "rc": rc, "ok": ok, "bad": bad, "cpu": cpu, "busy": busy}


def _report(rep: int, peer: str, n: int, r: dict) -> None:
    extra = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in r.items() if k not in ("n", "done"))
    d = r.get("done")
    rate = f"{n / d:7.1f} tasks/s" if d else "INCOMPLETE"
    print(f"rep {rep + 1} {peer:8s} done={'-' if d is None else f'{d:.3f}'} s  {rate}  {extra}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, help="tasks (default 2000; 200 with --sleep)")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.0,
                    help="W2: each task is `sleep S` instead of /bin/true")
    ap.add_argument("--poll", type=float, default=0.01, help="done/ listing period (s)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per spoolbalsam run (s)")
    ap.add_argument("--peers", default="spool,xargs,parallel",
                    help="comma list of spool, xargs, parallel")
    ap.add_argument("--dir", help="where to make temp dirs (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories (sites, outputs)")
    ap.add_argument("--merge-wait", type=float, default=10.0,
                    help="give up on `merged` after this long without progress (s)")
    ap.add_argument("--launcher-start", choices=("submit", "create", "intake"), default="create",
                    help="start the launcher right after creation (default), at t0 with the "
                         "creation, or once the site has taken every job in")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a settings.yml key of the benchmark site, e.g. "
                         "--set watch=poll --set launcher.delay_sec=0.001 (repeat)")
    ap.add_argument("--profile", choices=("cprofile", "py-spy"),
                    help="run the site and the launcher under a profiler")
    ap.add_argument("--profile-dir", default=".", help="where profiles go (one per rep)")
    a = ap.parse_args(argv)
    n = a.n or (200 if a.sleep else 2000)
    settings = dict(kv.split("=", 1) for kv in a.set)
    peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    if "parallel" in peers and shutil.which("parallel") is None:
        print("# GNU parallel is not installed (apt-get install -y parallel): skipping it")
        peers.remove("parallel")
    wl = f"W2 sleep {a.sleep:g}" if a.sleep else "W1 /bin/true"
    ideal = n * a.sleep / a.slots if a.sleep else None
    print(f"# throughput: {wl}, N={n}, slots={a.slots}, reps={a.reps}; {C.machine_line()}")
    if settings:
        print(f"# site settings: {settings}")
    if "parallel" in peers:
        v = subprocess.run(["parallel", "--version"], capture_output=True, text=True).stdout
        print(f"# {v.splitlines()[0] if v else 'parallel (version unknown)'}")
    C.byte_compile()                    # set-up: spoolbalsam's processes start as installed
    results: dict[str, list[dict]] = {p: [] for p in peers}
    # One parent temp dir, removed only at the end: deleting thousands of files between
    # runs would slow the next run's file creation on some filesystems (see README).
    top = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=a.dir))
    try:
        for rep in range(a.reps):
            order = peers[rep % len(peers):] + peers[:rep % len(peers)]   # spread drift
            for peer in order:
                tmp = top / f"rep{rep + 1}-{peer}"
                tmp.mkdir()
                if peer == "spool":
                    pdir = None
                    if a.profile:
                        pdir = Path(a.profile_dir).resolve() / f"rep{rep + 1}"
                        pdir.mkdir(parents=True, exist_ok=True)
                    r = run_spool(n, a.sleep, a.slots, tmp, a.poll, a.timeout, a.merge_wait,
                                  a.profile, pdir, a.launcher_start, settings)
                elif peer == "xargs":
                    r = run_xargs(n, a.sleep, a.slots, tmp)
                else:
                    r = run_parallel(n, a.sleep, a.slots, tmp)
                _report(rep, peer, n, r)
                results[peer].append(r)
    finally:
        if a.keep:
            print(f"# kept {top}")
        else:
            C.rmtree(top)

    print(f"\n# summary: {wl}, N={n}, slots={a.slots}, median (min–max) of {a.reps}")
    rates: dict[str, float] = {}

    def row(label: str, secs: list[float]) -> None:
        if not secs:
            print(f"{label:28s} no complete run")
            return
        line = (f"{label:28s} {C.spread(secs):24s} s  "
                f"{C.spread([n / s for s in secs], '{:.1f}'):26s} tasks/s")
        if ideal:
            line += f"  efficiency {C.spread([ideal / s for s in secs])}"
        print(line)
        rates[label] = n / C.med(secs)

    for peer in peers:
        rs = results[peer]
        if peer == "spool":
            creates = [r["create"] for r in rs if "create" in r]
            if creates:
                print(f"{'spoolbalsam create (API)':28s} {C.spread(creates, '{:.3f}'):24s} s  "
                      f"{C.spread([n / s for s in creates], '{:.0f}'):26s} jobs/s")
            row("spoolbalsam -> all in done/", [r["done"] for r in rs if "done" in r])
            row("spoolbalsam -> all merged", [r["merged"] for r in rs if "merged" in r])
            stuck = [r for r in rs if "merged_but_stuck" in r]
            if stuck:
                row("spoolbalsam -> merged, stuck", [r["merged_but_stuck"] for r in stuck])
                print(f"  ({len(stuck)} of {len(rs)} runs left records the site never merged: "
                      f"{', '.join(str(r['unmerged']) for r in stuck)} records; time is to the "
                      "last merge)")
        else:
            row({"xargs": f"xargs -P{a.slots}", "parallel": f"GNU parallel -j{a.slots}"}[peer],
                [r["done"] for r in rs if "done" in r])
    for sp in ("spoolbalsam -> all in done/", "spoolbalsam -> all merged"):
        for peer in (f"GNU parallel -j{a.slots}", f"xargs -P{a.slots}"):
            if sp in rates and peer in rates:
                name = "xargs" if "xargs" in peer else "parallel"
                print(f"ratio {sp[15:]:13s} spoolbalsam/{name}: {rates[sp] / rates[peer]:.2f}x")
    # CPU time per task (all processes of the run, any core): less sensitive to other load
    print("# CPU ms per task, median (min–max)")
    for peer in peers:
        rs = [r for r in results[peer] if "cpu" in r]
        if not rs:
            continue
        line = f"{peer:8s} {C.spread([r['cpu'] / n * 1e3 for r in rs])}"
        if peer == "spool":
            parts = [(k[4:], [r[k] / n * 1e3 for r in rs])
                     for k in ("cpu_create", "cpu_site", "cpu_launcher", "cpu_starter",
                               "cpu_jobs")]
            line += "  = " + " + ".join(f"{k} {C.med(v):.2f}" for k, v in parts)
        print(line)
    # How much of the machine each runner kept busy while it ran: idle cores are time lost
    print(f"# share of all {os.cpu_count()} cores busy while running, median (min–max)")
    for peer in peers:
        busy = [r["busy"] for r in results[peer] if "busy" in r]
        if busy:
            print(f"{peer:8s} {C.spread(busy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
