"""Helpers for the batch-queue tests (``test_queue_*.py``, ``test_recovery_scheduler.py``).

Everything is driven the way a user drives it: ``python -m spoolbalsam.cli`` as a real
process, the site process started with ``spool site start`` (its environment -- PATH with
the PBS emulator first, for instance -- is the one given to that command), jobs published
through the Python API (the same files ``spool job create`` drops).

Waiting is only ``wait_until``: poll with a deadline; on timeout the failure carries the
last values seen and ``diagnostics(site)`` (site log, launcher logs, batch job outputs,
``queue ls -v --history``, job counts).

Cleanup touches only what a test made: scheduler ids recorded in *this* site's batch
records (``scancel``), the site process whose pid *this* test's ``spool site start`` wrote,
and leftover processes whose environment says ``SPOOL_SITE=<this site>``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from campaign_helpers import (_cmdline_has, _merge, _tail, reap_leftovers,  # noqa: F401
                              site_pid, submit, write_app)
from spoolbalsam.spool.lease import pid_alive as alive

PY = sys.executable
TESTS_DIR = Path(__file__).resolve().parent
PBS_EMULATOR_DIR = TESTS_DIR / "pbs_emulator"


# ----------------------------------------------------------------------------- the CLI

def cli(site: Path | None, *args: Any, timeout: float = 60, check: bool = True,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m spoolbalsam.cli [--site SITE] ARGS`` as a real process."""
    argv = [PY, "-m", "spoolbalsam.cli"] + (["--site", str(site)] if site else [])
    argv += [str(a) for a in args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"spool {' '.join(argv[3:])} -> rc {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def edit_settings(site: Path, changes: dict, replace: tuple[str, ...] = ()) -> dict:
    """Deep-merge ``changes`` into settings.yml (``replace``: dotted keys set, not merged)."""
    path = site / "settings.yml"
    data = yaml.safe_load(path.read_text())
    for dotted in replace:
        *parents, last = dotted.split(".")
        d = data
        for p in parents:
            d = d[p]
        src = changes
        for p in parents:
            src = src[p]
        d[last] = src[last]
    _merge(data, changes)
    tmp = path.with_name(".settings.yml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    from spoolbalsam import settings as settings_mod
    return settings_mod.load(path)       # a typo in a test's settings fails here, clearly


def init_site(path: Path, machine: str, *init_args: str, settings: dict | None = None,
              replace: tuple[str, ...] = ()) -> Path:
    cli(None, "site", "init", path, "--machine", machine, *init_args)
    if settings:
        edit_settings(path, settings, replace)
    return path


# ----------------------------------------------------------------------------- site process

def start_site(site: Path, env: dict | None = None) -> int:
    out = cli(site, "site", "start", env=env).stdout
    pid = site_pid(site)
    assert pid and f"pid {pid}" in out, f"site start said {out!r}, pid file {pid}"
    return pid


def stop_site(site: Path, pid: int | None) -> None:
    """``spool site stop``; if that fails, SIGKILL the pid our own start reported."""
    try:
        cli(site, "site", "stop", "--timeout", "20", timeout=40, check=False)
    except subprocess.TimeoutExpired:
        pass
    if pid and alive(pid) and _cmdline_has(pid, str(site)):
        os.kill(pid, signal.SIGKILL)


def slurm_id(sched_id: str) -> str:
    """``"42"`` or the PBS emulator's ``"42.pbs-emulator"`` -> the Slurm job id ``"42"``."""
    return str(sched_id).split(".", 1)[0]


def cancel_site_batch_jobs(site: Path) -> None:
    """scancel exactly the scheduler ids this site recorded that are not over yet."""
    for rec in batch_records(site):
        if rec.get("scheduler_id") and rec.get("state") not in ("finished", "submit_failed"):
            subprocess.run(["scancel", slurm_id(rec["scheduler_id"])], capture_output=True,
                           timeout=30)


# ----------------------------------------------------------------------------- reading

def batch_records(site: Path) -> list[dict]:
    from spoolbalsam.site import batch
    from spoolbalsam.spool.layout import Layout
    return batch.load_all(Layout(site))


def batch_record(site: Path, bid: str) -> dict | None:
    return next((r for r in batch_records(site) if r["id"] == bid), None)


def batch_state(site: Path, bid: str) -> str | None:
    rec = batch_record(site, bid)
    return rec["state"] if rec else None


def queue_rows(site: Path, *flags: str) -> dict[str, list[str]]:
    """``spool queue ls FLAGS`` table rows by batch id (split on whitespace)."""
    out = cli(site, "queue", "ls", *flags).stdout
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if words and words[0].isdigit():
            rows[words[0]] = words
    return rows


def queue_submit(site: Path, *args: Any, env: dict | None = None) -> str:
    out = cli(site, "queue", "submit", *args, env=env).stdout
    assert out.startswith("Batch job "), out
    return out.split()[2]


def locations(site: Path, ids) -> dict[str, str | None]:
    """Where each job is now: ``ready``, ``done``, ``running`` ... or None."""
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.store import Store
    store = Store(Layout(site))
    out = {}
    for j in ids:
        loc = store.locate(j)
        out[j] = loc[0] if loc else None
    return out


def tally(locs: dict[str, str | None]) -> dict[str, int]:
    t: dict[str, int] = {}
    for where in locs.values():
        t[str(where)] = t.get(str(where), 0) + 1
    return dict(sorted(t.items()))


def records(site: Path, ids=None) -> dict[str, dict]:
    """Records (with unmerged launcher events overlaid, as the CLI shows them) by id."""
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.query import Filter, select
    flt = Filter(ids=set(ids)) if ids is not None else Filter()
    return {r["id"]: r for r in select(Layout(site), flt)}


def running_dir_jobs(site: Path) -> dict[str, list[str]]:
    """``jobs/running/L/*.json`` names by launcher (only non-empty directories)."""
    out = {}
    rdir = site / "jobs" / "running"
    if rdir.is_dir():
        for d in sorted(rdir.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                names = sorted(p.name for p in d.iterdir() if p.suffix == ".json"
                               and not p.name.startswith("."))
                if names:
                    out[d.name] = names
    return out


def launcher_leases(site: Path, retired: bool = True) -> dict[str, dict]:
    out = {}
    dirs = list((site / "launchers").glob("*/lease.json"))
    if retired:
        dirs += list((site / "launchers" / ".retired").glob("*/lease.json"))
    for p in dirs:
        try:
            out[p.parent.name] = json.loads(p.read_text())
        except (OSError, ValueError):
            pass
    return out


# ----------------------------------------------------------------------------- waiting

def diagnostics(site: Path, lines: int = 30) -> str:
    """What a human needs to see when a queue test fails (never raises)."""
    parts = [f"==== diagnostics for {site}"]
    try:
        from spoolbalsam.spool.layout import Layout
        from spoolbalsam.spool.query import counts
        parts.append(f"job counts: {counts(Layout(site))}; site pid {site_pid(site)}; "
                     f"running/: {running_dir_jobs(site)}")
    except Exception as e:  # noqa: BLE001
        parts.append(f"job counts: ({e})")
    try:
        parts.append("---- spool queue ls -v --history\n"
                     + cli(site, "queue", "ls", "-v", "--history", check=False).stdout)
    except Exception as e:  # noqa: BLE001
        parts.append(f"(queue ls failed: {e})")
    for name in ("site.log", "site.out"):
        parts.append(f"---- log/{name}\n{_tail(site / 'log' / name, lines)}")
    logs = sorted((site / "log").glob("launcher-*.log"))
    logs += sorted((site / "log").glob("serial-*.log"))
    for p in logs:
        parts.append(f"---- log/{p.name}\n{_tail(p, lines)}")
    for p in sorted((site / "batch").glob("*/qlaunch*.out")):
        parts.append(f"---- {p.relative_to(site)}\n{_tail(p, lines)}")
    for p in sorted((site / "batch").glob("*/state.json")):
        parts.append(f"---- {p.relative_to(site)}: {_tail(p, 5)}")
    try:
        for r in list(failed_records(site).values())[:5]:
            hist = [f"{h.get('to')} by {h.get('by')}: {h.get('msg', '')}"
                    for h in (r.get("history") or [])[-4:]]
            parts.append(f"---- failed job {r['id']} rc={r.get('return_code')}: {hist}")
    except Exception as e:  # noqa: BLE001
        parts.append(f"(failed jobs unreadable: {e})")
    return "\n".join(parts)


def failed_records(site: Path) -> dict[str, dict]:
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.query import Filter, select
    return {r["id"]: r for r in select(Layout(site), Filter.from_states(["failed"]))}


# Known launcher race (reported): when an allocation is cancelled, the scheduler SIGTERMs the
# launcher and the jobs at about the same moment; if the launcher reaps a job killed by the
# scheduler before its own SIGTERM handler has run, the job ends RUN_ERROR (not RUN_TIMEOUT)
# and, with the default errors: 0 policy, FAILED.  Fixed in the launcher (KILLED); the
# deterministic reproduction is test_queue_slurm.py::test_scancel_mid_campaign_...[job-first-then-scancel].
SIGNAL_RCS = (-15, -9, 143, 137)


def killed_by_scheduler_race(site: Path, ids) -> list[str]:
    """Jobs of ``ids`` in failed/ because a scheduler's signal beat the launcher's handler."""
    out = []
    for j, r in failed_records(site).items():
        if j in ids and r.get("return_code") in SIGNAL_RCS and "RUN_ERROR" in \
                [h.get("to") for h in r.get("history") or ()]:
            out.append(j)
    return out


def xfail_on_scheduler_race(site: Path, ids) -> None:
    """Fail if a job killed by the scheduler's signal was judged an error (it is a timeout:
    the launcher classifies a job ended by an outside SIGTERM/SIGKILL as RUN_TIMEOUT)."""
    hit = killed_by_scheduler_race(site, ids)
    assert not hit, (f"job(s) {hit} killed by the scheduler's signal ended RUN_ERROR -> FAILED "
                     "instead of RUN_TIMEOUT -> ready/")


def wait_until(fn: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str,
               site: Path | None = None, interval: float = 0.2) -> Any:
    """``sched_fixtures.poll_until``; on timeout the failure also shows the site's logs."""
    from sched_fixtures import poll_until
    try:
        return poll_until(fn, done, timeout, interval, what)
    except AssertionError as e:
        if site is None:
            raise
        raise AssertionError(f"{e}\n{diagnostics(site)}") from None


def emulator_env(home: Path) -> dict:
    """The environment for a site process whose qsub/qstat/qdel are the PBS EMULATOR."""
    env = dict(os.environ)
    env["PATH"] = f"{PBS_EMULATOR_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["PBS_EMULATOR_HOME"] = str(home)
    env["PBS_EMULATOR_HISTORY"] = "1"
    return env


def job_pids(site: Path) -> dict[str, int]:
    """Job processes of ``site`` (``SPOOL_JOB_ID`` and ``SPOOL_SITE=<site>`` in their
    environment), by job id: what a launcher started, wherever it runs on this host."""
    key = f"SPOOL_SITE={site}".encode()
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_bytes().rsplit(b") ", 1)[1][:1]
        except (OSError, IndexError):
            continue
        if key in env and state not in (b"Z", b"X"):
            for item in env:
                if item.startswith(b"SPOOL_JOB_ID="):
                    out[item.split(b"=", 1)[1].decode()] = int(d.name)
    return out
