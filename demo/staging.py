"""The demo campaign with data staging: the Aurora guide's ensemble, each echo job's input
staged in from "Flare" and its output staged out to "home", on the local machine.

Creates ./demo-staging (a fresh site named test_aurora, one local node with 12 cores and
12 "tiles") and, beside it, demo-staging-data/flare (24 greeting files) and
demo-staging-data/home (where the outputs go).  The site's settings map the aliases
``flare`` and ``home`` onto those directories as file:// locations (on Aurora they would be
file:///lus/flare/projects/PROJECT and file:///home/USER).  Runs
demo/balsam_job_ensemble_staged.py, starts the site, asks for a 1-node serial batch job,
waits for every job to end and prints the states, a staged-in greeting and a staged-out
output.  Re-running starts afresh.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
UNFINISHED = ("created", "waiting", "stagein", "ready", "running", "stageout")


def spool(*args: str, site: Path, check: bool = True) -> str:
    out = subprocess.run(["spool", "--site", str(site), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"demo: `spool {' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="demo-staging", help="site directory to (re)create")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the jobs")
    args = ap.parse_args()
    site = Path(args.site).resolve()
    data = site.with_name(site.name + "-data")
    if (site / ".spool-site").exists():
        spool("site", "stop", site=site, check=False)
        shutil.rmtree(site)
    elif site.exists():
        sys.exit(f"demo: {site} exists and is not a spoolbalsam site; choose another --site")
    shutil.rmtree(data, ignore_errors=True)
    flare, home = data / "flare" / "greetings", data / "home" / "results"
    flare.mkdir(parents=True)
    for n in range(24):
        (flare / f"greeting{n}.txt").write_text(f"(greeting {n}, staged in from Flare)\n")
    subprocess.run(["spool", "site", "init", str(site), "--name", "test_aurora", "--machine",
                    "local", "--gpus", "12", "--cpus", "12"], check=True)
    settings = yaml.safe_load((site / "settings.yml").read_text())
    settings["transfers"]["transfer_locations"] = {"flare": f"file://{data / 'flare'}",
                                                   "home": f"file://{data / 'home'}"}
    (site / "settings.yml").write_text(yaml.safe_dump(settings, sort_keys=False))
    env = {**os.environ, "FLARE": str(flare), "HOME_OUT": str(home)}
    subprocess.run([sys.executable, str(HERE / "balsam_job_ensemble_staged.py")], check=True,
                   cwd=site, env=env)
    print("Created 25 jobs (24 of them with a greeting to stage in and an output to stage out). Apps:")
    print(spool("app", "ls", "-v", site=site))
    t0 = time.monotonic()
    print(spool("site", "start", site=site).strip())
    print(spool("queue", "submit", "-n", "1", "-t", "10", "-j", "serial", site=site).strip())
    deadline = time.monotonic() + args.timeout
    try:
        while True:
            counts = dict(line.split() for line in spool("job", "ls", "--by-state", site=site).splitlines())
            left = sum(int(counts.get(k, 0)) for k in UNFINISHED)
            if left == 0:
                break
            if time.monotonic() > deadline:
                print(f"demo: {left} job(s) still unfinished after {args.timeout:g} s; "
                      f"see {site}/log/", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"\nAll jobs ended after {time.monotonic() - t0:.1f} s.\n")
        spool("queue", "term", "1", site=site, check=False)
        print(spool("job", "ls", "--by-state", site=site))
        staged = site / "data" / "demo" / "echo_hello3" / "greeting.txt"
        print(f"staged in:  {staged.relative_to(site)}: {staged.read_text().strip()}")
        out = home / "echo_hello3.out"
        print(f"staged out: {out}: {out.read_text().strip()}")
        print(f"\nTry: cd {site.name}; spool job ls --state JOB_FINISHED; spool job show <ID>"
              " (see transfer_items and the STAGED_IN / STAGED_OUT steps)")
    finally:
        spool("site", "stop", site=site, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
