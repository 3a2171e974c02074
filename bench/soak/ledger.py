"""The ledger: what the soak's jobs themselves say about when they ran.

Every soak job appends to one file of its own, ``LEDGER/JOB_ID`` (outside the site, so a
full or remote site filesystem never costs a ledger line), one line per event::

    start ATTEMPT PID          first thing the job does
    end ATTEMPT PID            last thing it does, after its work
    overlap ATTEMPT PID OTHER  written before its start if OTHER, an earlier run of the
                               same job named in the file, is still alive (checked in
                               /proc/OTHER/environ: SPOOL_JOB_ID and SPOOL_SITE)

Why one file per job is sound: only runs of that job ever write it, each line is one
``write(2)`` of a few bytes on an O_APPEND descriptor, and every run is on this one host,
so lines never interleave and the file's order is the order in which they happened (the
kernel serialises appends to one inode).  Two runs of one job at the same time therefore
show in the file alone: either the later run saw the earlier one alive (an ``overlap``
line), or the earlier run's ``end`` comes after the later run's ``start``.  A run killed
with its launcher leaves a ``start`` without an ``end``; that is allowed, as long as it was
really dead before the next run began (the ``overlap`` check).

PIDs are reused (pid_max may be 32768), so a run is named by (attempt, pid) and an
``overlap`` is only claimed after the other process's environment shows the same job.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The job's whole command.  $LEDGER comes from the app's environment_variables.
_OVERLAP = ('L="$LEDGER/$SPOOL_JOB_ID"; '
            'if [ -f "$L" ]; then for p in $(sed -n "s/^start [0-9]* //p" "$L"); do '
            '[ "$p" != "$$" ] && [ -r /proc/$p/environ ] && '
            'tr "\\0" "\\n" < /proc/$p/environ 2>/dev/null | '
            'grep -qx "SPOOL_JOB_ID=$SPOOL_JOB_ID" && '
            'echo "overlap $SPOOL_ATTEMPT $$ $p" >> "$L"; done; fi; ')
START = 'echo "start $SPOOL_ATTEMPT $$" >> "$LEDGER/$SPOOL_JOB_ID"'
END = 'echo "end $SPOOL_ATTEMPT $$" >> "$LEDGER/$SPOOL_JOB_ID"'


def apps(ledger_dir: Path) -> dict[str, dict]:
    """The soak's app definitions (apps/NAME.yml contents)."""
    env = {"LEDGER": str(ledger_dir)}
    return {
        # kill trials: checks for a live earlier run, then works a little
        "Ledger": {"command_template": _OVERLAP + START + "; sleep {{ secs }}; " + END,
                   "parameters": {"secs": {"default": "0.05"}},
                   "environment_variables": env},
        # fails its first attempt (after its start line), succeeds on the next
        "LedgerFailOnce": {"command_template": _OVERLAP + START + '; if [ "$SPOOL_ATTEMPT" = 1 ]; '
                                               'then exit 3; fi; ' + END,
                           "retry": {"errors": 3, "timeouts": 50},
                           "environment_variables": env},
        # the racing launchers: as short as a job can be and still say when it ran
        "LedgerQuick": {"command_template": START + "; " + END, "environment_variables": env},
    }


@dataclass
class Runs:
    """What one job's ledger file says."""
    starts: list[tuple[int, int]] = field(default_factory=list)      # (attempt, pid)
    completed: list[tuple[int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse(text: str, job: str = "?") -> Runs:
    """Read one ledger file; overlaps and malformed lines go to ``problems``."""
    runs = Runs()
    open_runs: list[tuple[int, int]] = []
    started_after: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        try:
            kind, attempt, pid = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            runs.problems.append(f"job {job}: ledger line {n} malformed: {line!r}")
            continue
        run = (attempt, pid)
        if kind == "overlap":
            runs.problems.append(f"job {job}: attempt {attempt} (pid {pid}) started while an "
                                 f"earlier run (pid {parts[3] if len(parts) > 3 else '?'}) "
                                 "was still alive")
        elif kind == "start":
            if run in runs.starts:
                runs.problems.append(f"job {job}: attempt {attempt} pid {pid} started twice")
            for other in open_runs:
                started_after.setdefault(other, []).append(run)
            runs.starts.append(run)
            open_runs.append(run)
        elif kind == "end":
            if run not in open_runs:
                runs.problems.append(f"job {job}: end of attempt {attempt} pid {pid} without "
                                     "its start")
                continue
            open_runs.remove(run)
            runs.completed.append(run)
            for later in started_after.pop(run, ()):
                runs.problems.append(f"job {job}: attempt {later[0]} (pid {later[1]}) started "
                                     f"while attempt {attempt} (pid {pid}) was running")
        else:
            runs.problems.append(f"job {job}: ledger line {n} unknown: {line!r}")
    return runs


def read(ledger_dir: Path, job: str) -> Runs:
    try:
        text = (ledger_dir / job).read_text()
    except FileNotFoundError:
        text = ""
    return parse(text, job)


def check_job(runs: Runs, job: str, final_attempt: int, strict: bool,
              ended_early: set[int] = frozenset()) -> list[str]:
    """Problems with one finished job's runs.

    ``strict`` (nothing was killed): exactly one start and one end, of the final attempt.
    Otherwise: no overlap, exactly one completed run of the final attempt, and a completed
    run of an earlier attempt only if that attempt is one the spool ended without its
    verdict (``ended_early``: revoked from a dead launcher, stopped, failed by a hook), the
    one way a job that did its work runs again.
    """
    out = list(runs.problems)
    finals = [r for r in runs.completed if r[0] == final_attempt]
    if len(finals) != 1:
        out.append(f"job {job}: {len(finals)} completed runs of its final attempt "
                   f"{final_attempt} (ledger: starts {runs.starts}, completed {runs.completed})")
    if strict:
        if len(runs.starts) != 1 or len(runs.completed) != 1:
            out.append(f"job {job}: ran {len(runs.starts)} times, completed "
                       f"{len(runs.completed)} times; expected exactly once")
        return out
    for attempt, pid in runs.completed:
        if attempt != final_attempt and attempt not in ended_early:
            out.append(f"job {job}: attempt {attempt} (pid {pid}) completed, yet the job ran "
                       f"again (final attempt {final_attempt}) without that attempt being "
                       "revoked or stopped")
    counts: dict[int, int] = {}
    for attempt, _ in runs.completed:
        counts[attempt] = counts.get(attempt, 0) + 1
    out += [f"job {job}: attempt {a} completed {n} times" for a, n in counts.items() if n > 1]
    return out


def ledger_files(ledger_dir: Path) -> list[str]:
    try:
        return os.listdir(ledger_dir)
    except FileNotFoundError:
        return []
