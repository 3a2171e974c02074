"""How long ``spool job kill`` takes to stop a running job, through its launcher.

On a fresh site (``spool site init DIR --machine local --cpus 2``, app ``Hold`` running
``sleep 600``, ``node_packing_count`` from ``--packing``), the site process and one
``spool launcher -j serial`` run.  ``--reps``
times, one ``Hold`` job is submitted; once its process runs, ``spool job kill ID`` is
started as a new process (what a user types, interpreter start-up included), and two
times are taken from just before that start:

* ``failed``: until the job's record is in ``jobs/failed/`` (polled every 5 ms);
* ``command``: until the command has exited (it waits for the job to be settled).

The launcher is idle between repetitions, so each kill also measures a launcher that has
just started holding a job (its first look at its kill bell).  Prints the figures; asserts
nothing; removes its temp dirs; stops only the processes it started, by PID.

    python bench/kill_latency.py [--reps 7] [--packing 1|2] [--dir D]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.lease import job_processes
from spoolbalsam.submit import submit_jobs

NAME = "kill_latency"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--packing", type=int, default=1,
                    help="the job's node_packing_count (1: it fills the node, the launcher "
                         "has no room and naps up to 1 s between ticks; 2: half of it)")
    ap.add_argument("--dir", help="where to make temp dirs (default: system temp)")
    a = ap.parse_args()
    C.byte_compile()
    print(f"# spool job kill of a running sleep 600, node_packing_count {a.packing}; "
          f"{C.machine_line()}")
    top = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=a.dir))
    site = launcher = None
    try:
        root = top / "site"
        subprocess.run(C.SPOOL + ["site", "init", str(root), "--machine", "local", "--cpus", "2"],
                       check=True, stdout=subprocess.DEVNULL, env=C.child_env())
        layout = Layout(root)
        (layout.apps / "Hold.yml").write_text("command_template: sleep 600\n")
        site = C.start([sys.executable, "-m", "spoolbalsam.site.service", str(root)],
                       top / "site.out", cwd=root)
        launcher = C.start(C.SPOOL + ["--site", str(root), "launcher", "-j", "serial",
                                      "-t", "30", "--idle-ttl", "600"], top / "launcher.out",
                           cwd=root)
        failed, command = [], []
        for i in range(a.reps):
            rec, = submit_jobs(layout, [{"app": "Hold", "workdir": f"h/{i}",
                                         "node_packing_count": a.packing}], source="bench")
            job_id = rec["id"]
            C.wait_for(lambda: job_processes(layout.root, {job_id}), 30, "the job running", NAME)
            t0 = time.monotonic()
            proc = subprocess.Popen(C.SPOOL + ["--site", str(root), "job", "kill", job_id],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=C.child_env())
            C.wait_for(lambda: os.path.exists(layout.job_file("failed", job_id)), 30,
                       "the job in failed/", NAME)
            failed.append(time.monotonic() - t0)
            out = proc.communicate(timeout=60)[0].decode().strip()
            command.append(time.monotonic() - t0)
            if proc.returncode != 0 or " killed " not in out:
                raise SystemExit(f"{NAME}: unexpected: rc {proc.returncode}: {out}")
            C.wait_for(lambda: not job_processes(layout.root, {job_id}), 10,
                       "no process left", NAME)
        print(f"failed     command -> job in failed/: {C.spread(failed, '{:.2f}')} s "
              f"(median (min–max) of {a.reps})")
        print(f"command    command -> command exited: {C.spread(command, '{:.2f}')} s")
        print("leftovers  none: after every kill, no process carried the job's SPOOL_JOB_ID")
    finally:
        C.stop(launcher)
        C.stop(site)
        C.rmtree(top)


if __name__ == "__main__":
    main()
