"""The site's ceiling: jobs/s of intake + merge (+ release) one site process sustains,
fed by synthetic launchers.

    python bench/site_ceiling.py [--launchers 1,64,1024] [--n 20000] [--deps] [--dir D]
    python bench/site_ceiling.py --launchers 1024 --profile cprofile --profile-dir prof/

A real site process (``python -m spoolbalsam.site.service SITE``) on a fresh site; this
process plays the submitters and ``--launchers`` launchers, with no job process anywhere:

* **submitting**: jobs are dropped into ``jobs/created/`` as ``spool job create`` writes
  them (one file per job, the canonical user view, ``--chunk`` files under one grouped
  sync; ``--drops bulk``: one ``.jsonl`` bulk drop per chunk), keeping at most ``--window``
  jobs between submission and their verdict, so intake runs all along;
* **launchers**: each synthetic launcher has its own ``launchers/L/`` with a lease
  (rewritten every 5 s, naming this process, so the site judges it alive) and an event log,
  and its ``jobs/running/L/``.  In each round every launcher first *finishes* the jobs it
  claimed in the round before, as ``launch/launcher.py`` does: it appends ``RUN_DONE`` and
  ``JOB_FINISHED`` for each (the same fields as a real launcher's events), the round syncs
  the logs (one ``syncfs`` for all of them, where real launchers each ``fsync`` their
  own), and only then renames each job from ``running/L/`` into ``done/BB/``; then it
  *claims* up to ``--inflight / launchers`` ready jobs (the round lists ``ready/`` and
  deals the names out) by rename into ``running/L/`` and appends their ``RUNNING`` events.
* **launchers that merge their verdicts** (``--merged``, what ``launcher.merge_verdicts``
  does, the default on machines with a batch scheduler): a launcher reads each record it
  claims, and finishes a job by moving it into its limbo and publishing the record with its
  events merged in (``Store.move_rewrite``, the round's records under one ``fsio.Batch``
  written into spare files); its ``JOB_FINISHED`` says ``merged``, and the site only looks
  that the record is there.
* **dependent jobs** (``--deps``): every second job is the child of the one before it; the
  site holds it in ``waiting/`` and releases it to ``ready/`` when its parent's verdict is
  merged.

Measured per launcher count, from the first drop until the site has merged every verdict
(``site/merged.json`` says its offsets cover every log and nothing is pending): wall time
and jobs/s overall and in the steady part (10 % to 90 % merged), and CPU seconds per job
of the site process (from /proc) and of this harness.  CPU time is the robust figure on a
shared machine: ``1 / (site CPU per job)`` is the rate one core would sustain.  With
``--profile cprofile|py-spy`` the site runs under the profiler (slower: profile runs are
not timing runs) and the top of the profile is printed.

Asserts nothing; removes its temp dirs; stops only the processes it started, by PID.
"""
from __future__ import annotations

import argparse
import bisect
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import throughput as T  # noqa: E402

import orjson  # noqa: E402

from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.spool.ids import new_id  # noqa: E402
from spoolbalsam.spool.layout import Layout  # noqa: E402
from spoolbalsam.spool.lease import proc_start  # noqa: E402
from spoolbalsam.spool.events import apply_event  # noqa: E402
try:
    from spoolbalsam.spool.events import MERGED  # noqa: E402
except ImportError:          # older code (bench/compare.py --head-scripts): the field's name
    MERGED = "merged"
from spoolbalsam.spool.record import normalize, user_view  # noqa: E402
from spoolbalsam.spool.store import Store, read_job  # noqa: E402

LEASE_SEC = 5.0
ROUND_SEC = 0.005         # the synthetic launchers act at most this often
HOST_NAME = "x4102c5s0b0n0"


# ---- the submitters ------------------------------------------------------------------------
def job_views(n: int, deps: bool) -> list[dict]:
    """``n`` jobs as ``spool job create`` drops them (parents before their children)."""
    out = []
    for i in range(n):
        raw = {"app": "Bench", "workdir": f"c/{i:06d}", "node_packing_count": 2}
        if deps and i % 2:
            raw["parent_ids"] = [out[-1]["id"]]
        out.append(user_view(normalize(raw, "bench")))
    return out


def drop(layout: Layout, views: list[dict], bulk: bool) -> None:
    if bulk:
        data = b"".join(orjson.dumps(v) + b"\n" for v in views)
        fsio.write_atomic(layout.created / f"{new_id()}.jsonl", data)
        return
    batch = fsio.Batch(layout.jobs)
    for v in views:
        batch.add_json(layout.created / f"{v['id']}.json", v)
    batch.commit()


# ---- the launchers -------------------------------------------------------------------------
class Synthetic:
    """One synthetic launcher: its directories, lease, event log and claimed jobs."""

    def __init__(self, layout: Layout, name: str, pid_start: str | None, merged: bool):
        self.id = name
        self.merged = merged                         # publish records with verdicts merged
        self.limbo = layout.launcher_dir(name) / "limbo"
        self.dir = layout.launcher_dir(name)
        self.rdir = layout.running / name
        for d in (self.dir, self.rdir, self.dir / "limbo"):
            d.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.dir / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lease = {"seq": 0, "interval": LEASE_SEC, "host": fsio.HOST, "pid": os.getpid(),
                      "pid_start": pid_start, "mode": "serial", "batch_job": None,
                      "scheduler_id": None, "nodes": [HOST_NAME], "state": "running"}
        self.held: list[tuple[str, float, dict | None]] = []   # (job id, started_at, record)
        self.offsets = [0]                           # log size after each verdict write ...
        self.finished = [0]                          # ... and verdicts written by then
        self.size = 0
        self.beat()

    def beat(self) -> None:
        self.lease["seq"] += 1
        fsio.write_json_atomic(self.dir / "lease.json", self.lease, durable=False)

    def _event(self, job: str, to: str, t: float, **extra) -> dict:
        return {"t": t, "job": job, "attempt": 1, "to": to, "by": self.id, "launcher": self.id,
                **extra}

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(data)

    def write_verdicts(self) -> list[tuple[str, dict | None]]:
        """RUN_DONE + JOB_FINISHED of every held job, in one write (not yet synced); the ids
        and, for a launcher that merges its verdicts, the records to publish."""
        if not self.held:
            return []
        now, parts, out = time.time(), [], []
        for job, started, rec in self.held:
            place = {"hosts": [HOST_NAME], "cpus": [[1]], "gpus": [["0.0"]], "units": 360360}
            evs = [self._event(job, "RUN_DONE", now, return_code=0, ended_at=now,
                               started_at=started, host=HOST_NAME, placement=place,
                               affinity={"variable": "ZE_AFFINITY_MASK", "rank_masks": ["0.0"]}),
                   self._event(job, "JOB_FINISHED", now, **({MERGED: True} if rec else {}))]
            parts += [orjson.dumps(ev) + b"\n" for ev in evs]
            if rec is not None:
                for ev in evs:
                    rec = apply_event(rec, ev)
            out.append((job, rec))
        self._write(b"".join(parts))
        self.offsets.append(self.size)
        self.finished.append(self.finished[-1] + len(out))
        self.held = []
        return out

    def claim(self, layout: Layout, names: list[tuple[str, str]]) -> int:
        """Claim the ready jobs ``names`` ([(bucket, file name)]) by rename; RUNNING events."""
        now, parts = time.time(), []
        for bucket, name in names:
            try:
                os.rename(layout.state_dir("ready") / bucket / name, self.rdir / name)
            except FileNotFoundError:
                continue
            job = name[:-5]
            place = {"hosts": [HOST_NAME], "cpus": [[1]], "gpus": [["0.0"]], "units": 360360}
            ev = self._event(job, "RUNNING", now, host=HOST_NAME, placement=place, pid=4242,
                             host_name=HOST_NAME, pid_start="1", started_at=now,
                             affinity={"variable": "ZE_AFFINITY_MASK", "rank_masks": ["0.0"]})
            rec = None
            if self.merged:       # a launcher reads what it claims; it merges into that
                rec = apply_event(read_job(self.rdir / name, "running"), ev)
            self.held.append((job, now, rec))
            parts.append(orjson.dumps(ev) + b"\n")
        if parts:
            self._write(b"".join(parts))
        return len(parts)

    def verdicts_below(self, offset: int) -> int:
        """Verdicts written below ``offset`` of the log (what the site has read)."""
        return self.finished[bisect.bisect_right(self.offsets, offset) - 1]

    def close(self) -> None:
        os.close(self.fd)


def list_ready(layout: Layout) -> list[tuple[str, str]]:
    out = []
    base = layout.state_dir("ready")
    for bucket in fsio.list_dirs(base):
        out.extend((bucket, n) for n in fsio.list_names(base / bucket))
    random.shuffle(out)
    return out


def site_merged(layout: Layout, syn: dict[str, Synthetic]) -> int:
    """Verdicts the site has merged: read from each log (its offsets) and not pending."""
    try:
        state = fsio.read_json(layout.site_dir / "merged.json", retry=False)
    except (FileNotFoundError, ValueError):
        return 0
    offsets = state.get("offsets", {})
    read = sum(s.verdicts_below(offsets.get(name, 0)) for name, s in syn.items())
    return read - len(state.get("pending", {}))


# ---- one measurement ---------------------------------------------------------------------
def _site_argv(root: Path, profile: str | None, out: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "spoolbalsam.site.service", str(root)]
    if profile == "cprofile":
        return [sys.executable, "-m", "cProfile", "-o", str(out), *argv[1:]]
    if profile == "py-spy":
        return ["py-spy", "record", "-r", "100", "-f", "raw", "-o", str(out), "--", *argv]
    return argv


def run(tmp: Path, launchers: int, n: int, deps: bool, bulk: bool, chunk: int, window: int,
        inflight: int, merged: bool, settings: dict, timeout: float, profile: str | None,
        profile_out: Path | None) -> dict:
    root = tmp / "site"
    layout, _ = T.make_bench_site(root, 0, 0.0, 2, settings)
    views = job_views(n, deps)
    syn: dict[str, Synthetic] = {}
    me = proc_start(os.getpid())
    for i in range(launchers):
        name = f"syn{i:05d}-{new_id()[-6:]}"
        syn[name] = Synthetic(layout, name, me, merged)
    store = Store(layout)
    spares = fsio.Spares(layout.launchers / ".bench-spare")   # as each launcher's own
    res: dict = {"launchers": launchers, "n": n}
    site = None
    try:
        site = C.start(_site_argv(root, profile, profile_out), tmp / "site.out", cwd=root)
        T._wait_site_up(layout, site, timeout=60)
        C.wait_for(lambda: "checked against the directories" in (layout.log / "site.log")
                   .read_text(), 60, "the site's recovery", "site_ceiling")
        pid = T._site_pid(layout)
        cpu0, hc0, t0 = T._cpu(pid), time.process_time(), time.perf_counter()
        fed = finished = merged = 0
        per = max(1, -(-inflight // launchers))             # jobs one launcher holds
        samples: list[tuple[float, int]] = []
        next_beat = time.monotonic() + LEASE_SEC
        deadline = t0 + timeout
        while merged < n and time.perf_counter() < deadline:
            round_start = time.perf_counter()
            if fed < n and fed - finished < window:
                take = views[fed:fed + chunk]
                drop(layout, take, bulk)
                fed += len(take)
            # finish what was claimed in the round before: events, one sync, renames
            ended = [(s, s.write_verdicts()) for s in syn.values()]
            ended = [(s, jobs) for s, jobs in ended if jobs]
            if ended:
                fsio.sync_filesystem(layout.jobs)
                batch = fsio.Batch(layout.jobs, spares)
                for s, jobs in ended:
                    for job, rec in jobs:
                        src, dst = s.rdir / f"{job}.json", layout.job_path("done", job)
                        if rec is None:
                            os.rename(src, dst)
                        else:
                            store.move_rewrite(src, dst, rec, s.limbo, batch)
                    finished += len(jobs)
                batch.commit()
            names = list_ready(layout)
            if names:
                pos = 0
                for s in syn.values():
                    if pos >= len(names):
                        break
                    s.claim(layout, names[pos:pos + per])
                    pos += per
            if time.monotonic() >= next_beat:
                for s in syn.values():
                    s.beat()
                next_beat = time.monotonic() + LEASE_SEC
            merged = site_merged(layout, syn)
            samples.append((time.perf_counter() - t0, merged))
            if fed == n and not fsio.list_names(layout.created, suffix=""):
                rejected = len(fsio.list_names(layout.rejected, suffix=".reason"))
                if rejected and merged + rejected >= n:
                    break                   # the rest were refused: report, do not wait
            # rounds at most every ROUND_SEC: a busy loop would take a core from the site
            pause = ROUND_SEC - (time.perf_counter() - round_start)
            if pause > 0:
                time.sleep(pause)
        wall = time.perf_counter() - t0
        cpu1, hc1 = T._cpu(pid), time.process_time()
        res.update(wall=wall, merged=merged, finished=finished, fed=fed,
                   site_cpu=(cpu1[0] - cpu0[0]) if cpu0 and cpu1 else None,
                   harness_cpu=hc1 - hc0, steady=_steady(samples, n),
                   left_created=len(fsio.list_names(layout.created, suffix="")),
                   rejected=len(fsio.list_names(layout.rejected, suffix=".reason")))
    finally:
        for s in syn.values():
            s.close()
        pid = T._site_pid(layout)
        if site is not None and site.poll() is None and pid:
            os.kill(pid, signal.SIGTERM)      # the site itself (a profiler's child): it writes
            try:
                site.wait(60)
            except subprocess.TimeoutExpired:
                pass
        C.stop(site)
    return res


def _steady(samples: list[tuple[float, int]], n: int) -> float | None:
    """jobs/s between 10 % and 90 % merged."""
    lo = next((t for t, m in samples if m >= 0.1 * n), None)
    hi = next((t for t, m in samples if m >= 0.9 * n), None)
    if lo is None or hi is None or hi <= lo:
        return None
    return 0.8 * n / (hi - lo)


# ---- profiles ------------------------------------------------------------------------------
def print_profile(path: Path, kind: str, top: int = 25) -> None:
    if not path.exists():
        print(f"# no profile at {path}")
        return
    if kind == "cprofile":
        import pstats
        st = pstats.Stats(str(path))
        total = st.total_tt
        print(f"# cProfile of the site: {total:.2f} s in all; top {top} by own time")
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
        for (file, line, fn), (cc, nc, tt, ct, _) in rows:
            print(f"{tt:8.3f} s own {ct:8.3f} s cum {nc:9d} calls  {Path(file).name}:{line} {fn}")
        print(f"# top {top} of the site's own functions by cumulative time")
        own = [(k, v) for k, v in st.stats.items() if "spoolbalsam" in k[0]]
        for (file, line, fn), (cc, nc, tt, ct, _) in sorted(own, key=lambda kv: -kv[1][3])[:top]:
            print(f"{ct:8.3f} s cum {100 * ct / total:5.1f} %  {nc:9d} calls  "
                  f"{Path(file).parent.name}/{Path(file).name}:{line} {fn}")
        return
    # py-spy raw: "frame;frame;... count" -- inclusive samples per spoolbalsam function
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            if "spoolbalsam" in frame and frame not in seen:
                seen.add(frame)
                key = frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].rstrip(")")
                incl[key] = incl.get(key, 0) + int(count)
    print(f"# py-spy of the site: {total} samples; top {top} functions, inclusive")
    for key, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * c / max(total, 1):5.1f} %  {key}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launchers", default="1,64,1024", help="comma list of launcher counts")
    ap.add_argument("--n", type=int, default=20000, help="jobs per measurement")
    ap.add_argument("--deps", action="store_true", help="every second job a child")
    ap.add_argument("--merged", action="store_true",
                    help="launchers publish finished records with their verdicts merged "
                         "(launcher.merge_verdicts: true, the default with a batch scheduler)")
    ap.add_argument("--drops", choices=("single", "bulk"), default="single")
    ap.add_argument("--chunk", type=int, default=500, help="jobs per submission")
    ap.add_argument("--window", type=int, default=4000,
                    help="most jobs between submission and verdict")
    ap.add_argument("--inflight", type=int, default=2048,
                    help="jobs held by all launchers together (1 launcher holds them all)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--dir", help="where to make temp dirs (default: system temp)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a settings.yml key of the site, e.g. --set watch=poll")
    ap.add_argument("--profile", choices=("cprofile", "py-spy"))
    ap.add_argument("--profile-dir", default=".")
    a = ap.parse_args(argv)
    settings = dict(kv.split("=", 1) for kv in a.set)
    counts = [int(x) for x in a.launchers.split(",") if x.strip()]
    print(f"# site_ceiling: N={a.n}, deps={a.deps}, merged={a.merged}, drops={a.drops}, "
          f"chunk={a.chunk}, window={a.window}, inflight={a.inflight}, "
          f"settings={settings or 'default'}; "
          f"{C.machine_line()}")
    C.byte_compile()
    results: dict[int, list[dict]] = {k: [] for k in counts}
    with C.scratch("spool-ceiling-", a.dir, a.keep) as top:
        for rep in range(a.reps):
            for k in counts:
                tmp = top / f"rep{rep + 1}-L{k}"
                tmp.mkdir()
                prof = None
                if a.profile:
                    pdir = Path(a.profile_dir).resolve()
                    pdir.mkdir(parents=True, exist_ok=True)
                    ext = "prof" if a.profile == "cprofile" else "txt"
                    prof = pdir / f"site-L{k}-rep{rep + 1}.{ext}"
                r = run(tmp, k, a.n, a.deps, a.drops == "bulk", a.chunk, a.window, a.inflight,
                        a.merged, settings, a.timeout, a.profile, prof)
                results[k].append(r)
                rate = r["merged"] / r["wall"] if r.get("wall") else 0
                steady = f"{r['steady']:.0f}" if r.get("steady") else "-"
                sc = (f"{1e3 * r['site_cpu'] / r['merged']:.3f}" if r.get("site_cpu")
                      and r["merged"] else "-")
                print(f"rep {rep + 1} [{k} launchers]: merged {r['merged']}/{a.n} in "
                      f"{r['wall']:.2f} s = {rate:7.0f} jobs/s (steady {steady} jobs/s); site "
                      f"CPU {sc} ms/job; harness CPU "
                      f"{1e3 * r['harness_cpu'] / max(r['merged'], 1):.3f} ms/job; "
                      f"left in created/ {r['left_created']}, rejected {r['rejected']}",
                      flush=True)
                if prof is not None:
                    print_profile(prof, a.profile)
                if not a.keep:
                    C.rmtree(tmp)
    print(f"\n# summary: median (min–max) of {a.reps}; N={a.n}, deps={a.deps}, "
          f"merged={a.merged}, drops={a.drops}")
    for k in counts:
        rs = [r for r in results[k] if r.get("merged") == a.n]
        label = f"[{k} launchers{', deps' if a.deps else ''}{', merged' if a.merged else ''}]"
        if not rs:
            print(f"{label} no complete run")
            continue
        rate = [r["n"] / r["wall"] for r in rs]
        steady = [r["steady"] for r in rs if r.get("steady")]
        cpu = [1e3 * r["site_cpu"] / r["n"] for r in rs if r.get("site_cpu")]
        hcpu = [1e3 * r["harness_cpu"] / r["n"] for r in rs]
        lo, hi = min(rate), max(rate)
        print(f"{label} wall {C.med(rate):.0f} jobs/s (min–max {lo:.0f}–{hi:.0f}), "
              f"steady {C.spread(steady, '{:.0f}')}; harness CPU {C.spread(hcpu, '{:.3f}')} "
              "ms/job")
        if cpu:
            print(f"{label} site CPU {C.spread(cpu, '{:.3f}')} ms/job: one core sustains "
                  f"{1e3 / C.med(cpu):.0f} jobs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
