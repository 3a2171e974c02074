"""The one place where spoolbalsam runs a scheduler command.

``run(argv, timeout)`` takes an argv list (never a shell string), runs it with
no stdin, captures stdout and stderr as text, logs argv and the output head at
DEBUG, and raises :class:`~spoolbalsam.pbs.base.SchedulerError` when the command
is missing, times out, or (with ``check=True``) exits non-zero. Backends that
must read the stderr of a failing command (``qstat`` says "Unknown Job Id" with
rc 153) pass ``check=False`` and classify the result themselves.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Mapping, Sequence

from spoolbalsam.pbs.base import SchedulerError, output_head

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0


def run(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT, *, check: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return the finished process (see the module docstring)."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("run() takes an argv list, not a shell string")
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("run() needs a command")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd,
                              env=dict(env) if env is not None else None, check=False)
    except FileNotFoundError as exc:
        raise SchedulerError(argv, 127, str(exc), reason="command not found") from None
    except PermissionError as exc:
        raise SchedulerError(argv, 126, str(exc), reason="not executable") from None
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise SchedulerError(argv, None, out, reason=f"timed out after {timeout:g}s") from None
    elapsed = time.monotonic() - t0
    log.debug("%s -> rc=%s in %.3fs out=%r err=%r", argv, proc.returncode, elapsed,
              output_head(proc.stdout, 200), output_head(proc.stderr, 200))
    if check and proc.returncode != 0:
        raise SchedulerError(argv, proc.returncode, (proc.stderr or "") + (proc.stdout or ""))
    return proc


def run_cancel(argv: Sequence[str], timeout: float, classify) -> str | None:
    """Run a cancel command (qdel, scancel).  None on success; else ``classify(rc, stderr)``
    says why the job is already gone ("finished", "unknown"), or raises ``SchedulerError``
    for a real failure, which is re-raised naming the command and its whole output."""
    proc = run(argv, timeout, check=False)
    if proc.returncode == 0:
        return None
    try:
        return classify(proc.returncode, proc.stderr)
    except SchedulerError:
        raise SchedulerError(argv, proc.returncode, proc.stderr + proc.stdout) from None


def run_parsed(argv: Sequence[str], timeout: float, parse, cwd=None):
    """Run a command and return ``parse(stdout)``; output the parser refuses becomes a
    ``SchedulerError`` naming the command and showing what it printed."""
    proc = run(argv, timeout, cwd=cwd)
    try:
        return parse(proc.stdout)
    except SchedulerError as exc:
        raise SchedulerError(argv, proc.returncode, proc.stdout + proc.stderr,
                             reason=exc.reason) from None
