"""Campaign 4: the disk fills up mid-campaign.

A site on its own 8 MB tmpfs (``mount -t tmpfs -o size=8m``; root only) runs ``jobs``
ledger jobs (the ledger lives outside the tmpfs).  Once a third of them are submitted and
the first ten are done, a filler file outside the site but on the same filesystem takes every free byte; for
``FULL_SEC`` seconds the soak keeps submitting (a refused submit is retried later, as a
user would), the site and the launcher keep working as well as they can, and every
``CHECK_EVERY`` seconds every visible record is read: none may be empty, torn or invalid.
Then the filler is removed and the campaign must finish with nothing lost: every job in
``done/``, merged, run exactly as the ledger allows (``ledger.check_job``), and
``check.check_site`` clean.  A site or launcher that died meanwhile is restarted as the
README says, and counted.  The logs must say what happened: the site's and the
launcher's logs must name the full disk ("No space left on device").

The soak unmounts what it mounted, whatever happens.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import check
import ledger
import procs
from kills import Result
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import read_job
from spoolbalsam.submit import SubmitError, submit_jobs

FULL_SEC = 15.0
CHECK_EVERY = 0.5
SIZE = "8m"


def _fill(path: Path, append: bool = False) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    n = 0
    chunk = b"\0" * (64 << 10)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC),
                 0o644)
    try:
        while True:
            try:
                n += os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    return n
    finally:
        os.close(fd)


def _visible_records_whole(root: Path) -> list[str]:
    """Every visible record readable as its own whole JSON object."""
    out = []
    for job_id, places in check.records(root).items():
        for state, path in places:
            try:
                if path.stat().st_size == 0:
                    out.append(f"{path.relative_to(root)} is empty")
                    continue
                rec = read_job(path, state)
                if rec.get("id") != job_id:
                    out.append(f"{path.relative_to(root)} holds another record")
            except FileNotFoundError:
                continue                        # moved on meanwhile
            except ValueError as e:
                out.append(f"{path.relative_to(root)} is not whole JSON: {e}")
    return out


def run(scratch: Path, jobs: int, seed: int = 1, budget_sec: float | None = None,
        log=print, merge_verdicts: bool = False) -> Result:
    """``merge_verdicts``: the launcher publishes its jobs' final records itself, in
    batches (``launcher.merge_verdicts``, the default on batch machines)."""
    res = Result(f"disk full (8 MB tmpfs, {jobs} jobs"
                 f"{', launchers merge verdicts' if merge_verdicts else ''})")
    t0 = time.monotonic()
    if os.geteuid() != 0:
        res.notes.append("not run: mounting a tmpfs needs root")
        return res
    mnt = scratch / "full-mnt"
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        res.notes.append(f"not run: mount -t tmpfs failed: {got.stderr.strip()}")
        return res
    ledger_dir = scratch / "full-ledger"
    ledger_dir.mkdir()
    root = mnt / "site"
    filler = mnt / "filler"
    sp = None
    try:
        procs.make_site(root, ledger.apps(ledger_dir), cpus=4,
                        settings={"lease_interval_sec": 1.0,
                                  "launcher": {"merge_verdicts": merge_verdicts}})
        sp = procs.SiteProcs(root, ("-j", "serial", "-t", "60", "--idle-ttl", "30"))
        sp.start_site()
        sp.start_launcher()
        lay = Layout(root)
        rng = random.Random(seed)
        all_jobs = [{"id": f"d{i:05d}", "app": "Ledger", "workdir": f"d/{i}",
                     "node_packing_count": 4, "parameters": {"secs": "0.1"}}
                    for i in range(jobs)]
        submitted: list[str] = []
        refused = 0
        chunk = 20
        filled_at = freed_at = None
        restarts = {"site": 0, "launcher": 0}
        next_check = 0.0
        deadline = t0 + (budget_sec or 1800)
        while time.monotonic() < deadline:
            now = time.monotonic()
            if len(submitted) < jobs and (filled_at or len(submitted) < jobs // 3):
                part = all_jobs[len(submitted): len(submitted) + chunk]
                try:
                    submit_jobs(lay, part, source="soak")
                    submitted += [j["id"] for j in part]
                except SubmitError as e:
                    refused += 1
                    # the message says which jobs are in: the first N of this chunk
                    got_in = _submitted_prefix(str(e), part)
                    submitted += got_in
                    time.sleep(0.1)
            # mid-campaign: the launcher is up and running jobs (a launcher that starts on
            # a full disk cannot even open its log, and the campaign would test nothing)
            if (filled_at is None and len(submitted) >= jobs // 3
                    and all(lay.job_path("done", j).exists() for j in submitted[:10])):
                filled_at = time.monotonic()
                n = _fill(filler)
                log(f"  filled the disk with {n / 1e6:.1f} MB after {len(submitted)} jobs")
            elif filled_at and freed_at is None:
                # hover at full: a few kB come free and are taken again, so that writes
                # fail at every point, also halfway through
                if rng.random() < 0.5:
                    size = filler.stat().st_size
                    os.truncate(filler, max(0, size - rng.randint(1, 64) * 1024))
                else:
                    _fill(filler, append=True)
            if filled_at and freed_at is None and now - filled_at > FULL_SEC:
                filler.unlink()
                freed_at = time.monotonic()
                log(f"  freed the disk after {freed_at - filled_at:.1f} s; {refused} submits "
                    "were refused meanwhile")
            if now >= next_check:
                next_check = now + CHECK_EVERY
                torn = _visible_records_whole(root)
                if torn:
                    res.problems += [f"while {'full' if filled_at and not freed_at else 'not full'}"
                                     f": {p}" for p in torn]
            if freed_at:
                if sp.site_pid() is None:
                    restarts["site"] += 1
                    sp.start_site()
                if not sp.live_launchers():
                    restarts["launcher"] += 1
                    sp.start_launcher()
                if len(submitted) >= jobs and check.all_finished(lay, submitted, rc_zero=True):
                    break
            time.sleep(0.02)
        else:
            res.problems.append("the campaign did not finish within the time budget")
        res.notes.append(f"restarted after the disk was freed: site {restarts['site']}, "
                         f"launcher {restarts['launcher']}; submits refused while full: "
                         f"{refused}")
        procs.wait_for(lambda: not sp.job_processes(), 10, 0.05)
        problems = check.check_site(root, set(submitted), final=True)
        early = check.ended_early(root)
        bad = {p.split()[1] for p in problems if p.startswith("job ")}
        for job_id in submitted:
            try:
                rec = read_job(lay.job_path("done", job_id), "done")
            except (FileNotFoundError, ValueError):
                continue
            got = ledger.check_job(ledger.read(ledger_dir, job_id), job_id, rec.get("attempt", 1),
                                   strict=False, ended_early=early.get(job_id, set()))
            if got:
                bad.add(job_id)
                problems += got
        res.problems += problems
        logs = "".join(p.read_text(errors="replace") for p in (root / "log").glob("*.log"))
        if "No space left on device" not in logs:
            res.problems.append("no log says the disk was full")
        res.notes.append(f"log lines naming the full disk: "
                         f"{logs.count('No space left on device')}")
        res.trials = len(submitted)
        res.failed = len(bad & set(submitted))
        if res.problems and not res.failed:
            res.failed = 1
        res.held = res.trials - res.failed
    finally:
        if sp is not None:
            sp.end_all()
        subprocess.run(["umount", str(mnt)], capture_output=True)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)
        shutil.rmtree(ledger_dir, ignore_errors=True)
    res.seconds = time.monotonic() - t0
    return res


def _submitted_prefix(message: str, part: list[dict]) -> list[str]:
    """The jobs of ``part`` that a SubmitError's message says are in ("jobs 0-2 are
    submitted")."""
    import re
    m = re.search(r"jobs 0-(\d+) are submitted", message)
    if not m:
        return []
    return [j["id"] for j in part[: int(m.group(1)) + 1]]
