"""The demo campaign: the Aurora guide's seed ensemble on the local machine, start to end.

Creates ./demo-site (a fresh site named test_aurora, one local node with 12 cores and 12
"tiles"), runs demo/balsam_job_ensemble.py, starts the site, asks for a 1-node serial
batch job on the local machine, waits for every job to end, prints the counts by state and
where the outputs are, and stops the site.  Re-running starts from a fresh site.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def spool(*args: str, site: Path, check: bool = True) -> str:
    out = subprocess.run(["spool", "--site", str(site), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"demo: `spool {' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="demo-site", help="site directory to (re)create")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the jobs")
    args = ap.parse_args()
    site = Path(args.site).resolve()
    if (site / ".spool-site").exists():
        spool("site", "stop", site=site, check=False)
        shutil.rmtree(site)
    elif site.exists():
        sys.exit(f"demo: {site} exists and is not a spoolbalsam site; choose another --site")
    subprocess.run(["spool", "site", "init", str(site), "--name", "test_aurora", "--machine",
                    "local", "--gpus", "12", "--cpus", "12"], check=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(HERE / "balsam_job_ensemble.py")], check=True, cwd=site)
    print(f"\nCreated 25 jobs in {time.monotonic() - t0:.2f} s. Apps:")
    print(spool("app", "ls", site=site))
    print(spool("site", "start", site=site).strip())
    print(spool("queue", "submit", "-n", "1", "-t", "10", "-j", "serial", site=site).strip())
    deadline = time.monotonic() + args.timeout
    try:
        while True:
            counts = dict(line.split() for line in spool("job", "ls", "--by-state", site=site).splitlines())
            left = sum(int(counts[k]) for k in ("created", "waiting", "ready", "running"))
            if left == 0:
                break
            if time.monotonic() > deadline:
                print(f"demo: {left} job(s) still unfinished after {args.timeout:g} s; "
                      f"see {site}/log/", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"\nAll jobs ended after {time.monotonic() - t0:.1f} s.\n")
        spool("queue", "term", "1", site=site, check=False)     # the launcher need not idle on
        print(spool("job", "ls", "--by-state", site=site))
        for _ in range(100):        # the site sees the batch job end within a second or two
            hist = spool("queue", "ls", "--history", site=site)
            if " finished " in hist:
                break
            time.sleep(0.1)
        print(hist)
        print(f"Outputs:  ls {site}/data/demo/*/job.out")
        for name in ("echo_hello0", "echo_hello13", "hello_affinity"):
            out = site / "data" / "demo" / name / "job.out"
            text = out.read_text().strip().splitlines()
            print(f"  {out.relative_to(site)}: {text[0] if text else '(empty)'}"
                  + (f"  (+{len(text) - 1} more lines)" if len(text) > 1 else ""))
        print(f"\nTry: cd {site.name}; spool job ls; spool job show <ID>; cat data/demo/*/job.out")
    finally:
        spool("site", "stop", site=site, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
