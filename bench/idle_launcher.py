"""What a launcher with nothing to claim costs the filesystem, and how fast it still reacts.

On a fresh site (``spool site init DIR --machine local --cpus 2``, app ``Bench`` running
``/bin/true``) whose ``ready/`` has all 256 buckets, empty (as after a campaign that used
them all), the site process and one launcher (``spool launcher -j serial --idle-ttl 600``)
are started; no job exists.  Then:

* ``cpu``: the launcher's CPU time over ``--sec`` seconds, from /proc, as a share of one
  core;
* ``syscalls``: ``strace -c -f -p`` on the launcher for another ``--sec`` seconds (skipped
  if strace is not installed): directory reads (``getdents64``), opens, stats per second;
* ``reaction``: ``--jobs`` times, one job is submitted with ``submit_jobs`` at a random
  moment; the figure is its ``started_at`` (merged into its done record) minus the time of
  the ``submit_jobs`` call: intake, the ring, the launcher's next look and its start.

With ``--holding`` the launcher first starts one long job (``sleep 3600`` on one of its two
cores) and is measured while it holds it: the state of a launcher waiting for long jobs,
which also looks at its kill bell (``spool.kills``: one ``stat`` at most every 0.2 s while
it holds a job; an idle launcher does not look).

Prints the figures.  Asserts nothing; removes its temp dirs; stops only the processes it
started, by PID.

    python bench/idle_launcher.py [--sec 10] [--jobs 5] [--holding] [--dir D]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

from spoolbalsam.spool import fsio
from spoolbalsam.spool.ids import SHARDS
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import read_job
from spoolbalsam.submit import submit_jobs

NAME = "idle_launcher"


def _cpu_sec(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _launcher_pid(layout: Layout) -> int | None:
    for name in fsio.list_dirs(layout.launchers):
        try:
            return fsio.read_json(layout.launcher_dir(name) / "lease.json")["pid"]
        except (OSError, ValueError, KeyError):
            return None
    return None


def _strace(pid: int, sec: float, out: Path) -> dict[str, int]:
    """syscall -> calls, over ``sec`` seconds of the running process ``pid``."""
    tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(sec)            # the measurement window itself, not a synchronisation
    tracer.terminate()
    tracer.wait(10)
    calls = {}
    for line in out.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":      # strace's summary line is not a call
            calls[m.group(2)] = int(m.group(1))
    return calls


def _merged_start(path: Path) -> float | None:
    try:
        rec = read_job(path, "done")
    except (FileNotFoundError, ValueError):
        return None
    return rec.get("started_at") if rec.get("state") == "JOB_FINISHED" else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sec", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--holding", action="store_true",
                    help="measure while the launcher holds one running job (sleep 3600)")
    ap.add_argument("--dir", help="where to make temp dirs (default: system temp)")
    a = ap.parse_args()
    C.byte_compile()
    what = "holding one running job" if a.holding else "idle"
    print(f"# a launcher {what}, ready/ with {SHARDS} empty buckets; {C.machine_line()}")
    top = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=a.dir))
    site = launcher = None
    try:
        root = top / "site"
        subprocess.run(C.SPOOL + ["site", "init", str(root), "--machine", "local", "--cpus", "2"],
                       check=True, stdout=subprocess.DEVNULL, env=C.child_env())
        layout = Layout(root)
        (layout.apps / "Bench.yml").write_text("command_template: /bin/true\n")
        for n in range(SHARDS):
            (layout.state_dir("ready") / f"{n:02x}").mkdir(exist_ok=True)
        site = C.start([sys.executable, "-m", "spoolbalsam.site.service", str(root)],
                       top / "site.out", cwd=root)
        launcher = C.start(C.SPOOL + ["--site", str(root), "launcher", "-j", "serial",
                                      "-t", "30", "--idle-ttl", "600"], top / "launcher.out",
                           cwd=root)
        pid = C.wait_for(lambda: _launcher_pid(layout), 30, "the launcher's lease", NAME)
        if a.holding:
            (layout.apps / "Hold.yml").write_text("command_template: sleep 3600\n")
            submit_jobs(layout, [{"app": "Hold", "workdir": "hold", "node_packing_count": 2}],
                        source="bench")
            C.wait_for(lambda: any(fsio.list_names(layout.running / d)
                                   for d in fsio.list_dirs(layout.running)),
                       30, "the long job claimed", NAME)
        time.sleep(1.0)        # past its start-up and first passes
        c0 = _cpu_sec(pid)
        time.sleep(a.sec)      # the measurement window
        share = (_cpu_sec(pid) - c0) / a.sec
        print(f"cpu        {100 * share:.2f} % of one core ({1e3 * share:.1f} ms per second)")
        if shutil.which("strace"):
            calls = _strace(pid, a.sec, top / "strace.txt")
            stats = sum(v for k, v in calls.items() if "stat" in k)
            print(f"syscalls   per second: getdents64 {calls.get('getdents64', 0) / a.sec:.1f}"
                  f", openat {calls.get('openat', 0) / a.sec:.1f}, stat* {stats / a.sec:.1f}"
                  f", all {sum(calls.values()) / a.sec:.1f}")
        else:
            print("# strace is not installed (apt-get install -y strace): no syscall counts")
        delays = []
        for i in range(a.jobs):
            time.sleep(random.uniform(0.3, 0.7))    # a random phase of the launcher's loop
            t0 = time.time()
            rec, = submit_jobs(layout, [{"app": "Bench", "workdir": f"b/{i}",
                                         "node_packing_count": 2}], source="bench")
            started = C.wait_for(lambda: _merged_start(layout.job_path("done", rec["id"])),
                                 30, "the job", NAME)
            delays.append(1e3 * (started - t0))
        print(f"reaction   submit -> started: {C.spread(delays, '{:.0f}')} ms "
              f"(median (min–max) of {a.jobs})")
    finally:
        C.stop(launcher)
        C.stop(site)
        C.rmtree(top)


if __name__ == "__main__":
    main()
