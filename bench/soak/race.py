"""Campaign 2: racing launchers.

``launchers`` local launchers (``spool launcher -j serial``) start at once on one site and
race for ``jobs`` short jobs (each appends its start and end to the ledger and exits),
which the soak submits through the Python API while the launchers already look.  Nothing
is killed.  Checked from the files alone, once every launcher has exited:

* 0 lost: every job is in ``done/``, merged, and nowhere else (``check.check_site``);
* 0 duplicate claims: no (job, attempt) has two RUNNING events in the launchers' logs;
* each job ran exactly once: one ``start`` and one ``end`` line in its ledger file, of
  attempt 1 (``ledger.check_job`` strict).

A trial here is a job: ``held`` counts the jobs that passed all three.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import check
import ledger
import procs
from kills import Result
from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.submit import submit_jobs


def running_events(root: Path) -> dict[tuple[str, int], list[str]]:
    """(job, attempt) -> the launchers whose logs say they started it."""
    out: dict[tuple[str, int], list[str]] = {}
    logs = list((root / "launchers").glob("*/events.jsonl"))
    logs += list((root / "launchers" / ".retired").glob("*/events.jsonl"))
    for log in logs:
        events, _ = fsio.read_lines_from(log, 0)
        for ev in events:
            if ev.get("to") == "RUNNING":
                out.setdefault((ev["job"], ev.get("attempt", 1)), []).append(ev.get("by", "?"))
    return out


def run(scratch: Path, launchers: int, jobs: int, budget_sec: float | None = None,
        log=print, site_root: Path | None = None, cpus: int = 2,
        settings: dict | None = None, name: str = "racing launchers") -> Result:
    res = Result(f"{name}: {launchers} launchers, {jobs:,} jobs")
    t0 = time.monotonic()
    root = site_root or scratch / "race-site"
    ledger_dir = scratch / "race-ledger"
    ledger_dir.mkdir(parents=True)
    procs.make_site(root, ledger.apps(ledger_dir), cpus=cpus, settings=settings)
    sp = procs.SiteProcs(root, ("-j", "serial", "-t", "120", "--idle-ttl", "5"))
    ids = [f"r{i:06d}" for i in range(jobs)]
    try:
        sp.start_site()
        for _ in range(launchers):
            sp.start_launcher()
        t_submit = time.monotonic()
        step = 5000
        for a in range(0, jobs, step):
            submit_jobs(Layout(root), [{"id": j, "app": "LedgerQuick", "workdir": f"r/{j}",
                                        "node_packing_count": cpus} for j in ids[a:a + step]],
                        source="soak")
        log(f"  submitted {jobs:,} jobs in {time.monotonic() - t_submit:.1f} s")
        budget = budget_sec if budget_sec is not None else 3600
        done_dir = root / "jobs" / "done"

        def finished():
            return sum(len(fsio.list_names(done_dir / b)) for b in fsio.list_dirs(done_dir))
        last = -1
        while time.monotonic() - t0 < budget:
            live = sp.live_launchers()
            if not live:
                break
            n = finished()
            if n != last and n // 10000 != last // 10000:
                log(f"  {n:,} done, {time.monotonic() - t_submit:.0f} s")
            last = n
            time.sleep(0.5)
        else:
            res.notes.append(f"stopped by the time budget with {finished():,} jobs done")
        took = time.monotonic() - t_submit
        res.notes.append(f"submit to the last launcher's exit: {took:.0f} s "
                         f"({jobs / took:.0f} jobs/s)")
        rcs = [p.returncode for p in sp.launchers]
        if any(rc not in (0, None) for rc in rcs):
            res.problems.append(f"launcher exit codes {rcs}")
        # the site merges the last verdicts (the last jobs are the last merged)
        procs.wait_for(lambda: not check.check_site(root, {}, final=False)
                       and check.all_finished(Layout(root), ids[-200:]), 60, 0.5)
        problems = check.check_site(root, set(ids), final=True)
        bad_jobs = {p.split()[1] for p in problems if p.startswith("job ")}
        res.problems += problems
        starts = running_events(root)
        for (job_id, attempt), by in starts.items():
            if len(by) > 1:
                bad_jobs.add(job_id)
                res.problems.append(f"job {job_id} attempt {attempt} started by {by}")
        for job_id in ids:
            got = ledger.check_job(ledger.read(ledger_dir, job_id), job_id, 1, strict=True)
            if (job_id, 1) not in starts:
                got.append(f"job {job_id}: no RUNNING event in any launcher's log")
            if got:
                bad_jobs.add(job_id)
                res.problems += got
        res.trials = jobs
        res.failed = len(bad_jobs & set(ids)) + (1 if bad_jobs - set(ids) else 0)
        res.held = jobs - len(bad_jobs & set(ids))
        dup = sum(1 for by in starts.values() if len(by) > 1)
        res.notes.append(f"duplicate claims: {dup}; RUNNING events: {len(starts):,}")
    finally:
        sp.end_all()
        if site_root is None:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ledger_dir, ignore_errors=True)
    res.seconds = time.monotonic() - t0
    return res
