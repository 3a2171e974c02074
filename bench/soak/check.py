"""Invariants of a site, checked from its files alone (no process is asked anything).

``check_site`` walks the whole tree and returns one line per problem:

* every job (by id) has exactly one visible record, in one state directory; the ids the
  caller expects are all there (and, with ``final``, all in ``done/``, merged:
  ``JOB_FINISHED`` with return code 0);
* every record is a whole JSON object named after its id (``store.read_job``), and no
  record file is empty;
* no limbo holds anything for long (a quiescent site has finished every move; a merge
  in flight holds a record there for a moment);
* no dot-temp is left in ``jobs/``, ``site/``, ``launchers/`` (retired ones included) or
  ``batch/``, and no hook file (``.spool-hook.*``) in ``data/``; a temp whose writer (its
  name says host and pid) still runs on this host is looked at again a moment later,
  since it may be mid-write;
* every complete line of every event log is valid JSON (a torn last line is allowed: its
  writer was killed mid-write and never appends again);
* every file in ``rejected/`` has a one-line ``.reason``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.lease import pid_alive
from spoolbalsam.spool.store import Store, read_job

STATE_DIRS = ("created", "waiting", "ready", "running", "done", "failed")


def records(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """id -> [(directory, path)] of every visible record."""
    store = Store(Layout(root))
    out: dict[str, list[tuple[str, Path]]] = {}
    for state in STATE_DIRS:
        for _, path in store.iter_dir(state):
            out.setdefault(path.name[:-5], []).append((state, path))
    return out


def temps(root: Path) -> list[Path]:
    """Dot-temps in the spool's own directories and hook files in data/ (not the
    directories ``.retired`` and the marker ``.spool-site``, which are no temps)."""
    found = []
    flat = {str(root / "jobs" / "created"), str(root / "jobs" / "rejected")}
    for top in ("jobs", "site", "launchers", "batch"):
        for d, dirs, files in os.walk(root / top):
            found += [Path(d) / f for f in files if f.startswith(".")]
            if d in flat:              # a dropped directory is kept as it came
                dirs[:] = [x for x in dirs if x.startswith(".")]
                continue
            dirs[:] = [x for x in dirs if x != ".retired" or d == str(root / "launchers")]
            found += [Path(d) / x for x in dirs if x.startswith(".") and x != ".retired"]
    for d, _, files in os.walk(root / "data"):
        found += [Path(d) / f for f in files if f.startswith(".spool-hook.")]
    return found


def lasting_temps(root: Path, looks: int = 5, gap: float = 0.05) -> list[Path]:
    """``temps`` that are still there after ``looks`` looks ``gap`` s apart, or whose
    writer is gone."""
    left = temps(root)
    for _ in range(looks - 1):
        if not left:
            break
        time.sleep(gap)
        left = [p for p in left if p.exists()]
        live = [p for p in left if (w := fsio.temp_writer(p.name)) and w[0] == fsio.HOST
                and pid_alive(w[1])]
        if not live:
            break
    return left


def bad_log_lines(root: Path) -> list[str]:
    out = []
    logs = list((root / "launchers").glob("*/events.jsonl"))
    logs += list((root / "launchers" / ".retired").glob("*/events.jsonl"))
    logs.append(root / "site" / "events.jsonl")
    for log in logs:
        try:
            data = log.read_bytes()
        except FileNotFoundError:
            continue
        lines = data.split(b"\n")[:-1]           # the last piece has no newline yet
        for n, line in enumerate(lines, 1):
            try:
                ev = orjson.loads(line)
                if not isinstance(ev, dict):
                    raise ValueError("not an object")
            except ValueError:
                out.append(f"{log.relative_to(root)} line {n} is not a JSON object: {line[:80]!r}")
    return out


def check_site(root: Path, expect: set[str] | dict[str, str] = (), final: bool = False,
               allow_failed: set[str] = frozenset()) -> list[str]:
    """Problems found in the site at ``root`` (see the module docstring).  ``expect``:
    ids that must exist (or a dict id -> the directory each must be in)."""
    root = Path(root)
    problems: list[str] = []
    recs = records(root)
    for job_id, places in recs.items():
        if len(places) > 1:
            problems.append(f"job {job_id} has {len(places)} visible records: "
                            + ", ".join(str(p.relative_to(root)) for _, p in places))
        for state, path in places:
            try:
                if path.stat().st_size == 0:
                    problems.append(f"{path.relative_to(root)} is empty")
                    continue
                rec = read_job(path, state, retry=True)
                if not isinstance(rec, dict) or rec.get("id") != job_id:
                    problems.append(f"{path.relative_to(root)} is not job {job_id}'s record")
            except FileNotFoundError:
                problems.append(f"{path.relative_to(root)} vanished while the site was quiet")
            except ValueError as e:
                problems.append(f"{path.relative_to(root)} is not valid JSON: {e}")
    for job_id in expect:
        places = recs.get(job_id)
        want = expect[job_id] if isinstance(expect, dict) else None
        if not places:
            problems.append(f"job {job_id} is lost: no visible record")
            continue
        state, path = places[0]
        if final and state != "done" and not (state == "failed" and job_id in allow_failed):
            problems.append(f"job {job_id} ended in {state}/, not done/")
        if want and state != want:
            problems.append(f"job {job_id} is in {state}/, expected {want}/")
        if final and state == "done":
            try:
                rec = read_job(path, state)
                if rec.get("state") != "JOB_FINISHED" or rec.get("return_code") != 0:
                    problems.append(f"job {job_id} in done/ is not merged: state "
                                    f"{rec.get('state')}, return code {rec.get('return_code')}")
            except (FileNotFoundError, ValueError):
                pass                                       # reported above
    store = Store(Layout(root))
    held = [d / n for d in store.limbo_dirs() for n in fsio.list_names(d)]
    for _ in range(10):              # a merge in flight holds a record there for a moment
        if not held:
            break
        time.sleep(0.05)
        held = [p for p in held if p.exists()]
    for p in held:
        problems.append(f"{p.relative_to(root)} is still held in a limbo")
    for p in lasting_temps(root):
        problems.append(f"temp file left: {p.relative_to(root)}")
    problems += bad_log_lines(root)
    rdir = root / "jobs" / "rejected"
    for name in os.listdir(rdir) if rdir.is_dir() else ():
        if name.startswith(".") or name.endswith(".reason"):
            continue
        try:
            reason = (rdir / (name + ".reason")).read_text()
        except FileNotFoundError:
            problems.append(f"jobs/rejected/{name} has no .reason")
            continue
        if not reason.endswith("\n") or reason.count("\n") != 1:
            problems.append(f"jobs/rejected/{name}.reason is not one line: {reason[:120]!r}")
    return problems


def ended_early(root: Path) -> dict[str, set[int]]:
    """job -> the attempts that the spool ended without their own verdict, from every event
    log (site, live and retired launchers): a RUN_TIMEOUT (revoked from a dead launcher,
    stopped by its launcher, killed from outside) or sent back after its run (RESTART_READY:
    its postprocess hook was killed)."""
    out: dict[str, set[int]] = {}
    logs = list((root / "launchers").glob("*/events.jsonl"))
    logs += list((root / "launchers" / ".retired").glob("*/events.jsonl"))
    logs.append(root / "site" / "events.jsonl")
    for log in logs:
        events, _ = fsio.read_lines_from(log, 0)
        for ev in events:
            if "job" not in ev:
                continue
            if ev.get("to") == "RUN_TIMEOUT":
                out.setdefault(ev["job"], set()).add(ev.get("attempt", 1))
            elif ev.get("to") == "RESTART_READY" and ev.get("by") != "spool job retry":
                # sent back after its run (a killed hook): the event names the new attempt
                out.setdefault(ev["job"], set()).add(ev.get("attempt", 2) - 1)
    return out


def all_finished(lay: Layout, ids, rc_zero: bool = False) -> bool:
    """Every job of ``ids`` in ``done/`` as JOB_FINISHED (with return code 0 if
    ``rc_zero``): merged, not only renamed there."""
    for j in ids:
        try:
            rec = read_job(lay.job_path("done", j), "done", retry=False)
        except (FileNotFoundError, ValueError):
            return False
        if rec.get("state") != "JOB_FINISHED" or (rc_zero and rec.get("return_code") != 0):
            return False
    return True
