"""Data staging through the site: jobs/s from drop to STAGED_IN, and what it adds per job.

Per repetition, two fresh sites (``spool site init --machine local``), each with its own
site process (``python -m spoolbalsam.site.service SITE``), no launcher:

* **plain**: N jobs of an app without transfers are submitted (``submit_jobs``); timed from
  the submit until all N names are in ``jobs/ready/`` (intake alone);
* **staged**: the same N jobs, each filling a stage-in slot with its own file of ``--size``
  bytes from a ``file://`` location (``--method`` copy/link/rsync, ``--batch`` items per
  task, ``--slots`` tasks at once); timed the same way, so the time includes the intake,
  the copies (on the local backend's threads), the record rewrites and the moves from
  ``stagein/`` to ``ready/``.

Prints both times, jobs/s, the site's CPU per job, and the difference per job.  Asserts
nothing; removes its temp directories (``--keep`` keeps them); stops only its own site
processes, by PID.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: E402  (puts the checkout on sys.path)

import yaml

from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.submit import submit_jobs


def _cpu(pid: int) -> float:
    f = open(f"/proc/{pid}/stat", "rb").read().rsplit(b") ", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def ready_count(layout: Layout) -> int:
    base = layout.state_dir("ready")
    return sum(len(fsio.list_names(base / b)) for b in fsio.list_dirs(base))


def one_site(tmp: Path, name: str, n: int, staged: bool, args) -> dict:
    root = tmp / name
    import subprocess
    subprocess.run(C.SPOOL + ["site", "init", str(root), "--machine", "local", "--cpus", "2"],
                   check=True, capture_output=True, env=C.child_env())
    layout = Layout(root)
    remote = tmp / f"{name}-remote"
    app = "description: staging benchmark\ncommand_template: /bin/true\n"
    raws = [{"app": "Stage", "workdir": f"s/{i:05d}"} for i in range(n)]
    if staged:
        remote.mkdir()
        blob = os.urandom(args.size)
        for i in range(n):
            (remote / f"{i:05d}.dat").write_bytes(blob)
        app += "transfers:\n  input: {required: true, direction: in, local_path: input.dat}\n"
        doc = yaml.safe_load(layout.settings.read_text())
        doc["transfers"].update(
            transfer_locations={"remote": f"file://{remote}?method={args.method}"},
            transfer_batch_size=args.batch, max_concurrent_transfers=args.slots)
        layout.settings.write_text(yaml.safe_dump(doc, sort_keys=False))
        for i, raw in enumerate(raws):
            raw["transfers"] = {"input": f"remote:{remote}/{i:05d}.dat"}
    (layout.apps / "Stage.yml").write_text(app)
    site = C.start([sys.executable, "-m", "spoolbalsam.site.service", str(root)],
                   tmp / f"{name}.out", cwd=root)
    try:
        C.wait_for(lambda: (root / "site" / "site.pid").exists(), 30, "the site", "staging")
        time.sleep(0.3)                       # let it settle into its idle wait
        c0, t0 = _cpu(site.pid), time.perf_counter()
        submit_jobs(layout, raws, source="bench")
        C.wait_for(lambda: ready_count(layout) == n, args.timeout, f"{n} jobs in ready/",
                   "staging")
        took = time.perf_counter() - t0
        cpu = _cpu(site.pid) - c0
    finally:
        C.stop(site)
    return {"sec": took, "cpu": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--jobs", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096, help="bytes per staged file")
    ap.add_argument("--method", default="copy", choices=("copy", "link", "rsync"))
    ap.add_argument("--batch", type=int, default=100, help="transfer_batch_size")
    ap.add_argument("--slots", type=int, default=5, help="max_concurrent_transfers")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--dir", help="where to make the sites (default: the temp dir)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    C.byte_compile()
    print(f"staging.py: {args.jobs} jobs, {args.size} B each, method {args.method}, batch "
          f"{args.batch}, {args.slots} tasks at once; {C.machine_line()}")
    plain, staged = [], []
    for rep in range(args.reps):
        tmp = Path(tempfile.mkdtemp(prefix="spool-staging-", dir=args.dir))
        try:
            p = one_site(tmp, "plain", args.jobs, False, args)
            s = one_site(tmp, "staged", args.jobs, True, args)
        finally:
            if not args.keep:
                C.rmtree(tmp)
        plain.append(p)
        staged.append(s)
        n = args.jobs
        print(f"  rep {rep + 1}: plain {p['sec']:.2f} s ({n / p['sec']:.0f} jobs/s, site CPU "
              f"{1e3 * p['cpu'] / n:.2f} ms/job); staged {s['sec']:.2f} s ({n / s['sec']:.0f} "
              f"jobs/s, site CPU {1e3 * s['cpu'] / n:.2f} ms/job)")
    n = args.jobs
    ps, ss = [x["sec"] for x in plain], [x["sec"] for x in staged]
    print(f"plain  (intake only):    {C.spread([n / x for x in ps], '{:.0f}')} jobs/s")
    print(f"staged (intake + stage): {C.spread([n / x for x in ss], '{:.0f}')} jobs/s")
    print(f"staging adds {1e3 * (C.med(ss) - C.med(ps)) / n:.2f} ms of wall time and "
          f"{1e3 * (C.med([x['cpu'] for x in staged]) - C.med([x['cpu'] for x in plain])) / n:.2f}"
          " ms of site CPU per job (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
