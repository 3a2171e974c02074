"""How long a launcher takes from its exec to its first running job.

Per repetition, on a fresh site (``spool site init DIR --machine local --cpus 2``, app
``Bench`` running ``/bin/true``): the site process is started, 20 jobs are submitted with
``submit_jobs`` and taken in by the site, and then, timed, ``spool launcher -j serial``
is started.  The figure is the first ``started_at`` among the 20 done records minus the
wall-clock time just before the launcher's ``Popen``: interpreter start-up, imports,
settings, the first listing and claim, and the start through the launcher's starter.

Prints one line per repetition and the median (min–max).  Asserts nothing; removes its
temp dirs; stops only the processes it started, by PID.

    python bench/launcher_start.py [--reps 5] [--dir D]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import read_job
from spoolbalsam.submit import submit_jobs

JOBS = 20
NAME = "launcher_start"


def one(tmp: Path) -> float:
    root = tmp / "site"
    subprocess.run(C.SPOOL + ["site", "init", str(root), "--machine", "local", "--cpus", "2"],
                   check=True, stdout=subprocess.DEVNULL, env=C.child_env())
    layout = Layout(root)
    (layout.apps / "Bench.yml").write_text("command_template: /bin/true\n")
    site = launcher = None
    try:
        site = C.start([sys.executable, "-m", "spoolbalsam.site.service", str(root)], tmp / "site.out",
                       cwd=root)
        recs = submit_jobs(layout, [{"app": "Bench", "workdir": f"b/{i}", "node_packing_count": 2}
                                    for i in range(JOBS)], source="bench")
        C.wait_for(lambda: not fsio.list_names(layout.created), 30, "the site's intake", NAME)
        argv = C.SPOOL + ["--site", str(root), "launcher", "-j", "serial", "-t", "5",
                          "--idle-ttl", "0.5"]
        t0 = time.time()
        launcher = C.start(argv, tmp / "launcher.out", cwd=root)
        paths = [layout.job_path("done", r["id"]) for r in recs]
        C.wait_for(lambda: all(p.exists() for p in paths), 30, "the jobs", NAME)
        # started_at arrives with the site's merge of the launcher's events
        started = []
        for p in paths:
            C.wait_for(lambda: _merged(p), 10, "the site's merge", NAME)
            started.append(read_job(p, "done")["started_at"])
        return min(started) - t0
    finally:
        C.stop(launcher)
        C.stop(site)


def _merged(path: Path) -> bool:
    try:
        return read_job(path, "done").get("state") == "JOB_FINISHED"
    except (FileNotFoundError, ValueError):      # being rewritten by the merge right now
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", help="where to make temp dirs (default: system temp)")
    a = ap.parse_args()
    C.byte_compile()
    print(f"# launcher exec -> first job running; {C.machine_line()}")
    got = []
    for rep in range(a.reps):
        top = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=a.dir))
        try:
            got.append(one(top) * 1e3)
        finally:
            C.rmtree(top)
        print(f"rep {rep + 1}: {got[-1]:.0f} ms")
    print(f"launcher exec -> first job running: {C.spread(got, '{:.0f}')} ms")


if __name__ == "__main__":
    main()
