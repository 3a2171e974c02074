"""Local backend: no batch scheduler; the job script runs as a detached process here.

``submit`` starts ``bash SCRIPT`` in a new session (its own process group, no
controlling terminal), stdout+stderr to ``<script-stem>.out``, and returns its
pid as the scheduler id. A small record ``STATE_DIR/<pid>.json`` keeps the
script path and the process start time (field 22 of ``/proc/PID/stat``), so a
later status or cancel -- from this process or another one on the same host --
never mistakes a recycled pid for the job.

``status`` reads ``/proc/PID/stat``: alive with the recorded start time ->
``running`` (raw state = the kernel's state letter); gone, a zombie, or a
different process -> ``finished``, with the exit code the script wrote to its
``.ec`` file (or the wait status, when this process is the parent). No record
-> ``unknown``. There is never a ``queued`` state.

``cancel`` sends SIGTERM to the job's process group (the script forwards it to
the launcher and still records an exit code). A job that is gone is not an error.

Assumptions: Linux ``/proc``; status and cancel run on the host that submitted
(``STATE_DIR`` defaults to a per-user directory under the node-local temp dir,
``$SPOOL_LOCAL_STATE`` overrides it). ``queue``, ``project`` and ``num_nodes``
are recorded but mean nothing here; the wall time is the launcher's own timer.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from spoolbalsam.pbs.base import (FINISHED, RUNNING, UNKNOWN, SchedStatus, SchedulerError,
                                  exit_code_path, output_path, read_exit_code,
                                  signal_exit_code, validate_submit_args)

log = logging.getLogger(__name__)

# Children this process started, so their exit is reaped (no zombies) and their
# wait status is available even when the script could not write its .ec file.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def default_state_dir() -> Path:
    """``$SPOOL_LOCAL_STATE`` or ``<tmp>/spoolbalsam-local-<uid>``: processes are host-local, so is this."""
    env = os.environ.get("SPOOL_LOCAL_STATE")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"spoolbalsam-local-{os.getuid()}"


def parse_proc_stat(text: str) -> tuple[str, int]:
    """``/proc/PID/stat`` -> (state letter, start time in clock ticks since boot).

    The command name (field 2) may hold spaces and parentheses, so fields are
    counted from the last ``)``.
    """
    try:
        rest = text[text.rindex(")") + 2:].split()
        return rest[0], int(rest[19])
    except (ValueError, IndexError):
        raise SchedulerError("/proc/PID/stat", None, text, reason="unexpected format") from None


def local_status(record: Mapping[str, Any] | None, proc_stat: str | None,
                 exit_code: int | None, wait_status: int | None = None) -> SchedStatus:
    """Decide one job's status from what was read (pure).

    ``record`` is the submit record (None if missing), ``proc_stat`` the text of
    ``/proc/PID/stat`` (None if the pid does not exist), ``exit_code`` what the
    script wrote to its ``.ec`` file, ``wait_status`` the Popen returncode when
    this process reaped it (negative = killed by that signal).
    """
    if record is None:
        return SchedStatus(UNKNOWN, "", reason="no local submit record for this id")
    alive = False
    letter = ""
    if proc_stat is not None:
        letter, ticks = parse_proc_stat(proc_stat)
        alive = ticks == record.get("start_ticks") and letter not in ("Z", "X", "x")
    if alive:
        return SchedStatus(RUNNING, letter, start_time=record.get("submitted"),
                           nodes=(record.get("host", "localhost"),))
    sig = None
    reason = ""
    if exit_code is None and wait_status is not None:
        if wait_status < 0:
            sig = -wait_status
            exit_code = signal_exit_code(sig)
            reason = f"killed by signal {sig} before recording its exit code"
        else:
            exit_code = wait_status
            reason = "exit code from wait(); the script wrote no .ec file"
    elif exit_code is None:
        reason = "process ended without writing its .ec file"
    elif exit_code >= 128 and exit_code - 128 in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
        sig = exit_code - 128
    return SchedStatus(FINISHED, letter or "gone", exit_code=exit_code,
                       start_time=record.get("submitted"),
                       nodes=(record.get("host", "localhost"),), reason=reason, signal=sig)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


class LocalBackend:
    """Run batch scripts as detached local processes (see the module docstring)."""

    name = "local"

    def __init__(self, state_dir: str | os.PathLike[str] | None = None,
                 proc_root: str = "/proc") -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.proc_root = Path(proc_root)

    def _record_path(self, pid: int) -> Path:
        return self.state_dir / f"{pid}.json"

    def _load(self, pid: int) -> dict[str, Any] | None:
        text = _read(self._record_path(pid))
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) and data.get("pid") == pid else None

    def _write_record(self, pid: int, record: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._record_path(pid)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def submit(self, script: Path, *, queue: str | None, project: str | None, num_nodes: int,
               wall_time_min: int, job_name: str, cwd: Path,
               extra: Mapping[str, str] = {}) -> str:
        validate_submit_args(num_nodes, wall_time_min, job_name)
        script = Path(script).resolve()
        if not script.is_file():
            raise SchedulerError(["bash", str(script)], None, "", reason="script not found")
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in extra.items()})
        env["SPOOL_LOCAL_JOB_NAME"] = job_name
        with open(output_path(script), "ab") as out:
            try:
                proc = subprocess.Popen(["/bin/bash", str(script)], cwd=cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        close_fds=True)
            except OSError as exc:
                raise SchedulerError(["bash", str(script)], None, str(exc),
                                     reason="could not start") from None
        _CHILDREN[proc.pid] = proc
        stat = _read(self.proc_root / str(proc.pid) / "stat")
        ticks = parse_proc_stat(stat)[1] if stat else None
        self._write_record(proc.pid, {
            "pid": proc.pid, "start_ticks": ticks, "script": str(script),
            "ec": str(exit_code_path(script)), "job_name": job_name,
            "num_nodes": num_nodes, "wall_time_min": wall_time_min,
            "queue": queue, "project": project, "host": os.uname().nodename,
            "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        return str(proc.pid)

    def _one(self, sched_id: str) -> SchedStatus:
        if not sched_id.isdigit():
            return SchedStatus(UNKNOWN, "", reason=f"not a local job id: {sched_id!r}")
        pid = int(sched_id)
        child = _CHILDREN.get(pid)
        wait_status = child.poll() if child is not None else None
        record = self._load(pid)
        if record is None:
            return local_status(None, None, None)
        stat = _read(self.proc_root / str(pid) / "stat")
        ec = read_exit_code(record["ec"]) if record.get("ec") else None
        st = local_status(record, stat, ec, wait_status)
        if st.state == FINISHED and child is not None:
            if wait_status is None:
                # It died between poll() and reading /proc: it is a zombie now, reap it.
                try:
                    wait_status = child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    return st
                st = local_status(record, None, ec, wait_status)
            _CHILDREN.pop(pid, None)
        return st

    def status(self, ids: Sequence[str]) -> dict[str, SchedStatus]:
        return {sid: self._one(sid) for sid in dict.fromkeys(ids)}

    def cancel(self, sched_id: str) -> None:
        if not sched_id.isdigit():
            return
        pid = int(sched_id)
        record = self._load(pid)
        if record is None:
            log.warning("local cancel %s: no submit record; not signalling an unknown process", pid)
            return
        stat = _read(self.proc_root / str(pid) / "stat")
        if stat is None or local_status(record, stat, None).state != RUNNING:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise SchedulerError(["kill", "-TERM", f"-{pid}"], None, str(exc),
                                 reason="not permitted") from None
