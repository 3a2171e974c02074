"""Launcher liveness without clocks.

``launchers/L/lease.json`` is rewritten only by launcher L, every ``interval`` seconds,
with an increasing ``seq``::

    {"seq": 41, "host": "n1", "pid": 1234, "interval": 5, "mode": "serial",
     "batch_job": "12.pbs" | null, "scheduler_id": "12" | null, "state": "running" | "exited",
     "nodes": ["n1"], "gpus": 12, "started_at": 1764100000.1, "ended_at": 1764103600.2}

The site never compares the lease's mtime or wall time with its own clock: it remembers the
``seq`` it last saw and *its own* monotonic time when that changed (``LeaseJudge``).  A lease
unchanged for longer than ``stale_after`` is *stale*.  A launcher is *dead* only when something
certain says so: its process is gone (same host: ``kill(pid, 0)``, checked at once), or the
batch scheduler says its allocation ended.  A stale lease without such proof makes it only
*suspect*: it keeps its jobs.
A launcher that exits cleanly writes ``state: exited`` after it has returned its jobs.
``nodes``, ``gpus`` (GPU ids over its nodes), ``started_at`` and ``ended_at`` (the
launcher's wall clock, like its events) say what it held and when, for ``spool report``;
liveness never reads them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import fsio

ALIVE, SUSPECT, DEAD, EXITED = "alive", "suspect", "dead", "exited"


class LeaseWriter:
    def __init__(self, path: Path, interval: float, **info):
        self.path, self.interval, self.info = path, interval, info
        self.seq = 0
        self.next_at = 0.0

    def beat(self, now: float | None = None, force: bool = False, **update) -> bool:
        """Rewrite the lease if it is time (or ``force``/``update``); True if it was."""
        now = time.monotonic() if now is None else now
        self.info.update(update)
        if force or update or now >= self.next_at:
            self.seq += 1
            fsio.write_json_atomic(self.path, {"seq": self.seq, "interval": self.interval,
                                               **self.info}, durable=False)
            self.next_at = now + self.interval
            return True
        return False


def read_lease(path: Path) -> dict | None:
    try:
        return fsio.read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return data.rsplit(b") ", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    if start is not None and proc_start(pid) not in (None, start):
        return False  # the pid was reused by another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True


def job_processes(site_root: Path, job_ids: set[str]) -> list[int]:
    """Pids on this host whose environment says they run one of ``job_ids`` of this site."""
    want_site = f"SPOOL_SITE={site_root}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want_site not in env:
            continue
        for var in env:
            if var.startswith(b"SPOOL_JOB_ID=") and var[13:].decode(errors="replace") in job_ids:
                found.append(int(entry))
                break
    return found


@dataclass
class LeaseJudge:
    """The site's memory of every lease: (seq, monotonic time it last changed)."""

    stale_after: float
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)

    def judge(self, launcher: str, lease: dict | None, now: float,
              scheduler_ended: bool = False) -> str:
        if lease is None:
            # race: the launcher may be between mkdir and its first lease write; give it the
            # same grace as a stale lease before calling it anything but suspect.
            lease = {"seq": -1}
        if lease.get("state") == "exited":
            return EXITED
        seq = lease.get("seq", -1)
        last = self.seen.get(launcher)
        if last is None or last[0] != seq:
            self.seen[launcher] = (seq, now)
            last = self.seen[launcher]
        if scheduler_ended:
            return DEAD
        # A process on this host that no longer exists is certainly dead, stale or not.
        if lease.get("host") == fsio.HOST and lease.get("pid") and not pid_alive(lease["pid"], lease.get("pid_start")):
            return DEAD
        if now - last[1] <= self.stale_after:
            return ALIVE
        return SUSPECT

    def forget(self, launcher: str) -> None:
        self.seen.pop(launcher, None)
