"""Campaign 1: kill -9 trials.

A trial is a small campaign on a running site: seven jobs that log to the ledger (four
plain ones of random lengths, a child of the first, one that fails its first attempt, one
of a Python app with a postprocess hook), dropped through the Python API.  At a random
moment (uniform over the first ``window`` seconds) one process is killed with SIGKILL: the
site, a launcher, a launcher's starter (its forked child) or a hook child, chosen in turn.
Recovery is what the README says: ``spool site start`` for a dead site, a new
``spool launcher`` when none runs; nothing else is touched.  Once every job of the trial
is in ``done/`` and merged, the site is checked from its files alone (``check.check_site``
over every job of the site so far, ``ledger.check_job`` for the trial's jobs) and no job
or hook process may still be alive.

A site serves ``per_site`` trials; then it is stopped, started once more (its recovery
sweeps) and checked again, its processes are ended and it is removed.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import check
import ledger
import procs
import pyapps
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import Store, read_job
from spoolbalsam.submit import submit_jobs

TARGETS = ("site", "launcher", "starter", "hook")


@dataclass
class Result:
    name: str
    trials: int = 0
    held: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kills: dict[str, int] = field(default_factory=dict)


def trial_jobs(trial: int, rng: random.Random) -> list[dict]:
    p = f"t{trial:05d}"
    jobs = [{"id": f"{p}-{k}", "app": "Ledger", "workdir": f"{p}/{k}", "node_packing_count": 4,
             "parameters": {"secs": rng.choice(["0", "0.02", "0.1", "0.3"])}}
            for k in range(4)]
    jobs.append({"id": f"{p}-kid", "app": "Ledger", "workdir": f"{p}/kid", "node_packing_count": 4,
                 "parameters": {"secs": "0.02"}, "parent_ids": [f"{p}-0"]})
    jobs.append({"id": f"{p}-f1", "app": "LedgerFailOnce", "workdir": f"{p}/f1",
                 "node_packing_count": 4})
    jobs.append({"id": f"{p}-py", "app": "LedgerPost", "workdir": f"{p}/py",
                 "node_packing_count": 4})
    return jobs


def _find_target(sp: procs.SiteProcs, kind: str) -> int | None:
    if kind == "site":
        return sp.site_pid()
    if kind == "launcher":
        live = sp.live_launchers()
        return live[0].pid if live else None
    if kind == "starter":
        got = sp.starters()
        return got[0] if got else None
    got = sp.hook_children()
    return got[0] if got else None


def _supervise(sp: procs.SiteProcs, ids: list[str], timeout: float) -> list[str]:
    """Keep a site and a launcher running, as an operator following the README would,
    until every job of ``ids`` is done and merged; problems if that does not happen."""
    lay = Layout(sp.root)
    store = Store(lay)
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while time.monotonic() < deadline:
        if sp.site_pid() is None:
            sp.start_site()
        if not sp.live_launchers():
            sp.start_launcher()
        left = []
        for job_id in pending:
            path = lay.job_path("done", job_id)
            try:
                rec = read_job(path, "done", retry=False)
            except (FileNotFoundError, ValueError):
                left.append(job_id)
                continue
            if rec.get("state") != "JOB_FINISHED" or rec.get("return_code") != 0:
                left.append(job_id)
        pending = left
        if not pending:
            return []
        failed = [j for j in pending if lay.job_path("failed", j).exists()]
        if failed:
            return [f"job {j} failed: {_error(lay, j)}" for j in failed]
        time.sleep(0.02)
    where = {j: (store.locate(j) or ("nowhere",))[0] for j in pending}
    return [f"jobs not finished within {timeout:g} s: {where}"] + _evidence(sp)


def _evidence(sp: procs.SiteProcs, lines: int = 12) -> list[str]:
    """What a human needs to see of a stuck trial: the tails of the site's and launchers'
    logs, and where each live launcher's Python is (py-spy, if it is installed)."""
    out = []
    for log in sorted((sp.root / "log").glob("*.log"))[-4:]:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"---- {log.name}:\n" + "\n".join(tail))
    spy = shutil.which("py-spy")
    for p in sp.live_launchers() if spy else ():
        got = subprocess.run([spy, "dump", "--pid", str(p.pid)], capture_output=True,
                             text=True, timeout=30)
        out.append(f"---- py-spy dump of launcher {p.pid}:\n{got.stdout[-3000:]}")
    return out


def _error(lay: Layout, job_id: str) -> str:
    try:
        return str(read_job(lay.job_path("failed", job_id), "failed").get("error"))[:300]
    except (FileNotFoundError, ValueError) as e:
        return f"(unreadable: {e})"


def _quiet(sp: procs.SiteProcs, timeout: float = 10.0) -> list[str]:
    """No job or hook process may outlive its job."""
    left = procs.wait_for(lambda: not sp.job_processes(), timeout, 0.05)
    if left:
        return []
    return [f"job processes still alive after their jobs finished: {sp.job_processes()}"]


def run(scratch: Path, trials: int, per_site: int = 50, window: float = 1.0,
        seed: int = 1, budget_sec: float | None = None, log=print,
        targets: tuple[str, ...] = TARGETS) -> Result:
    res = Result("kill -9 trials")
    rng = random.Random(seed)
    t_start = time.monotonic()
    trial = 0
    site_no = 0
    while trial < trials:
        if budget_sec is not None and time.monotonic() - t_start > budget_sec:
            res.notes.append(f"stopped by the time budget after {trial} trials")
            break
        site_no += 1
        root = scratch / f"kill-site-{site_no}"
        ledger_dir = scratch / f"kill-ledger-{site_no}"
        ledger_dir.mkdir(parents=True)
        procs.make_site(root, ledger.apps(ledger_dir), cpus=4,
                        settings={"lease_interval_sec": 1.0})
        pyapps.sync(root, ledger_dir)
        sp = procs.SiteProcs(root, ("-j", "serial", "-t", "60", "--idle-ttl", "60"))
        all_ids: list[str] = []
        try:
            sp.start_site()
            sp.start_launcher()
            for _ in range(per_site):
                if trial >= trials or (budget_sec is not None
                                       and time.monotonic() - t_start > budget_sec):
                    break
                kind = targets[trial % len(targets)]
                problems = _one_trial(sp, trial, kind, rng, window, ledger_dir, all_ids, res)
                res.trials += 1
                trial += 1
                if problems:
                    res.failed += 1
                    res.problems += [f"trial {trial - 1} (kill {kind}): {p}" for p in problems]
                    log(f"  trial {trial - 1} (kill {kind}) FAILED: {problems[0]}")
                    for p in problems[1:]:
                        log(p)
                    all_ids.clear()          # a failed trial ends its site: the next
                    break                    # trials start clean
                res.held += 1
                if trial % 25 == 0:
                    took = time.monotonic() - t_start
                    log(f"  {trial} trials, {res.failed} failed, {took:.0f} s")
            # the end of this site: a clean stop, a start (its recovery sweeps), a last check
            sp.stop_site()
            sp.start_site()
            procs.wait_for(lambda: False, 0.5)
            final = check.check_site(root, set(all_ids), final=True)
            if final:
                res.problems += [f"site {site_no} after its last restart: {p}" for p in final]
                res.notes.append(f"site {site_no}: {len(final)} problems at its final check")
        finally:
            sp.end_all()
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(ledger_dir, ignore_errors=True)
    res.seconds = time.monotonic() - t_start
    return res


def _one_trial(sp: procs.SiteProcs, trial: int, kind: str, rng: random.Random, window: float,
               ledger_dir: Path, all_ids: list[str], res: Result) -> list[str]:
    jobs = trial_jobs(trial, rng)
    ids = [j["id"] for j in jobs]
    all_ids += ids
    submit_jobs(Layout(sp.root), jobs, source="soak")
    time.sleep(rng.uniform(0, window))
    # the hook child exists only while a hook runs: look for it a while
    pid = procs.wait_for(lambda: _find_target(sp, kind), 5.0, 0.005)
    if pid:
        procs.kill9(pid)
        res.kills[kind] = res.kills.get(kind, 0) + 1
    else:
        res.kills[f"{kind} (not found)"] = res.kills.get(f"{kind} (not found)", 0) + 1
    problems = _supervise(sp, ids, 90.0)
    problems += _quiet(sp)
    if problems:
        return problems
    problems = check.check_site(sp.root, set(all_ids), final=True)
    early = check.ended_early(sp.root)
    lay = Layout(sp.root)
    for job_id in ids:
        rec = read_job(lay.job_path("done", job_id), "done")
        problems += ledger.check_job(ledger.read(ledger_dir, job_id), job_id,
                                     rec.get("attempt", 1), strict=False,
                                     ended_early=early.get(job_id, set()))
    return problems
