"""Slurm backend: sbatch, squeue, scontrol, sacct (when it works), scancel.

Build/parse pairs (pure: no subprocess, clock, user or environment):

=========================  ===========================================================
``sbatch_argv``            ``sbatch --parsable -N n -t H:MM:SS -J name [-p Q] [-A P] [-o out] script``
``parse_sbatch_parsable``  ``"42\\n"`` or ``"42;cluster\\n"`` -> ``"42"``
``squeue_argv``            ``squeue -h -t all -j IDS -o %i|%T|%r|%N|%S|%e``
``parse_squeue``           one ``|``-separated line per job -> ``{id: SchedStatus}``
``scontrol_show_job_argv`` ``scontrol show job -o ID`` (one line per job: ExitCode, times)
``parse_scontrol_show_job``
``sacct_argv``/``parse_sacct``  ``sacct -n -P -X -j IDS -o JobID,State,ExitCode,NodeList,Start,End``
``scancel_argv``/``classify_scancel_error``
``expand_hostlist``        ``"n[1-3],gpu07"`` -> ``("n1", "n2", "n3", "gpu07")``
=========================  ===========================================================

Facts (Slurm 22.05 as shipped by Debian 12, checked against the real daemons in
``tests/infra/slurm-up.sh``; state codes from squeue(1) "JOB STATE CODES"):

* ``squeue -j`` with only unknown ids: rc 1, ``slurm_load_jobs error: Invalid job id
  specified``; with a mix, rc 0 and only the known ones listed. ``-t all`` keeps
  finished jobs for ``MinJobAge`` seconds (300 by default).
* ``ExitCode=a:b`` in scontrol/sacct: ``a`` the batch script's exit code, ``b`` the
  signal that killed it (``0:15`` after scancel of a running job).
* Without slurmdbd, ``sacct`` prints "Slurm accounting storage is disabled" and
  exits 1; the backend then stops asking for the life of the object.
* ``scancel`` of a finished or unknown id exits 0 silently (with ``-v`` it would
  say "Invalid job id specified"); both are treated as success.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

from spoolbalsam.pbs import cmd
from spoolbalsam.pbs.base import (FINISHED, QUEUED, RUNNING, UNKNOWN, SchedStatus,
                                  SchedulerError, command_path, output_path,
                                  signal_exit_code, validate_submit_args)
from spoolbalsam.pbs.script import walltime_hms

log = logging.getLogger(__name__)

# Job states -> spoolbalsam states. Source: squeue(1) "JOB STATE CODES" (Slurm 22.05).
SLURM_STATES: dict[str, str] = {
    "BOOT_FAIL": FINISHED,      # BF: launch failure (node would not boot), not requeued
    "CANCELLED": FINISHED,      # CA: cancelled by user or admin, started or not
    "COMPLETED": FINISHED,      # CD: all processes on all nodes ended with exit code 0
    "CONFIGURING": QUEUED,      # CF: resources allocated, waiting for them to be ready
    "COMPLETING": RUNNING,      # CG: ending; some processes may still run, nodes still held
    "DEADLINE": FINISHED,       # DL: terminated on its deadline
    "FAILED": FINISHED,         # F: non-zero exit code or other failure
    "NODE_FAIL": FINISHED,      # NF: an allocated node failed
    "OUT_OF_MEMORY": FINISHED,  # OOM: out of memory
    "PENDING": QUEUED,          # PD: waiting for an allocation
    "PREEMPTED": FINISHED,      # PR: terminated by preemption
    "RUNNING": RUNNING,         # R: has an allocation
    "RESV_DEL_HOLD": QUEUED,    # RD: held after its reservation was deleted
    "REQUEUE_FED": QUEUED,      # RF: being requeued by a federation
    "REQUEUE_HOLD": QUEUED,     # RH: held job being requeued
    "REQUEUED": QUEUED,         # RQ: completing job being requeued
    "RESIZING": RUNNING,        # RS: about to change size
    "REVOKED": FINISHED,        # RV: removed here because a sibling cluster started it
    "SIGNALING": RUNNING,       # SI: being signalled
    "SPECIAL_EXIT": QUEUED,     # SE: requeued in a special (held) state
    "STAGE_OUT": RUNNING,       # SO: staging out files
    "STOPPED": RUNNING,         # ST: SIGSTOPped, CPUs retained
    "SUSPENDED": RUNNING,       # S: suspended, CPUs released, allocation kept
    "TIMEOUT": FINISHED,        # TO: reached its time limit
}

_ID_RE = re.compile(r"^[0-9]+(?:_[0-9]+|_\[[0-9,\-%]+\])?(?:\+[0-9]+)?$")
_PARSABLE_RE = re.compile(r"^([0-9]+)(?:;[A-Za-z0-9_.-]+)?$")
_EXIT_RE = re.compile(r"^(-?[0-9]+):([0-9]+)$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_/:]*=")
_INVALID_ID = "Invalid job id specified"
_NO_TIME = {"", "N/A", "NONE", "None", "Unknown", "(null)"}


# ----------------------------------------------------------------------------- helpers

def expand_hostlist(text: str) -> tuple[str, ...]:
    """Expand a Slurm hostlist: ``"n[1-3,5],gpu[07-08],login1"`` -> n1 n2 n3 n5 gpu07 gpu08 login1."""
    text = (text or "").strip()
    if text in ("", "(null)", "None"):
        return ()
    out: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,]*)", text):
        prefix, ranges, suffix = m.group(1), m.group(2), m.group(3)
        if ranges is None:
            out.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise SchedulerError("hostlist", None, text, reason="bad node range")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{prefix}{i:0{width}d}{suffix}")
    return tuple(out)


def _base_state(raw: str) -> str:
    """``"CANCELLED by 0"`` (sacct) -> ``"CANCELLED"``; ``"RUNNING"`` -> ``"RUNNING"``."""
    return raw.split()[0].rstrip("+") if raw.strip() else ""


def _state(raw: str, source: str) -> tuple[str, str]:
    base = _base_state(raw)
    state = SLURM_STATES.get(base)
    if state is None:
        log.warning("%s: unknown Slurm job state %r: treating as unknown", source, raw)
        return UNKNOWN, f"unknown Slurm job state {raw!r}"
    return state, ""


def _exit(raw_state: str, exit_code: str, source: str) -> tuple[int | None, int | None]:
    """(exit_code, signal) from ``ExitCode=a:b``; None where Slurm does not say."""
    m = _EXIT_RE.match(exit_code.strip())
    if not m:
        raise SchedulerError(source, None, exit_code, reason="ExitCode is not 'code:signal'")
    code, sig = int(m.group(1)), int(m.group(2))
    if sig:
        return signal_exit_code(sig), sig
    if code or _base_state(raw_state) in ("COMPLETED", "FAILED", "OUT_OF_MEMORY"):
        return code, None
    return None, None  # e.g. TIMEOUT 0:0: the script did not report an exit code


def _time(value: str) -> str | None:
    return None if value.strip() in _NO_TIME else value.strip()


# ----------------------------------------------------------------------------- submit

def sbatch_argv(script: Path | str, *, queue: str | None, project: str | None, num_nodes: int,
                wall_time_min: int, job_name: str, output: Path | str | None = None,
                extra: Mapping[str, str] = {}, sbatch: str = "sbatch") -> list[str]:
    """The ``sbatch`` command line.

    ``queue`` is the partition (``-p``); ``extra`` adds long options:
    ``{"qos": "debug"}`` -> ``--qos=debug``; a single-dash key is passed as is
    (``{"-C": "gpu"}`` -> ``-C gpu``); an empty value gives the bare flag.
    """
    validate_submit_args(num_nodes, wall_time_min, job_name)
    argv = [sbatch, "--parsable", "-N", str(num_nodes), "-t", walltime_hms(wall_time_min),
            "-J", job_name]
    if queue:
        argv += ["-p", queue]
    if project:
        argv += ["-A", project]
    if output is not None:
        argv += ["-o", str(output)]
    for key, value in extra.items():
        val = str(value)
        if key.startswith("-") and not key.startswith("--"):
            argv += [key] + ([val] if val else [])
        else:
            name = key.lstrip("-")
            argv.append(f"--{name}={val}" if val else f"--{name}")
    return argv + [str(script)]


def parse_sbatch_parsable(text: str) -> str:
    """The job id from ``sbatch --parsable`` stdout (``"42"`` or ``"42;cluster"``)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    m = _PARSABLE_RE.match(lines[-1]) if lines else None
    if not m:
        raise SchedulerError("sbatch --parsable", None, text, reason="no job id in output")
    return m.group(1)


# ----------------------------------------------------------------------------- status

SQUEUE_FORMAT = "%i|%T|%r|%N|%S|%e"


def squeue_argv(ids: Sequence[str], *, squeue: str = "squeue") -> list[str]:
    """``squeue -h -t all -j IDS -o 'id|state|reason|nodes|start|end'``."""
    return [squeue, "-h", "-t", "all", "-j", ",".join(ids), "-o", SQUEUE_FORMAT]


def parse_squeue(text: str) -> dict[str, SchedStatus]:
    """``squeue -h -o '%i|%T|%r|%N|%S|%e'`` stdout -> ``{id: SchedStatus}`` (no exit codes)."""
    out: dict[str, SchedStatus] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 6 or not _ID_RE.match(fields[0]):
            raise SchedulerError("squeue", None, text, reason=f"unexpected line {line.strip()!r}")
        job_id, raw, reason, nodes, start, end = fields
        state, why = _state(raw, "squeue")
        reason = "" if reason in ("None", "(null)") else reason
        out[job_id] = SchedStatus(state=state, raw_state=raw, start_time=_time(start),
                                  end_time=_time(end) if state == FINISHED else None,
                                  nodes=expand_hostlist(nodes),
                                  reason="; ".join(r for r in (why, reason) if r))
    return out


def scontrol_show_job_argv(sched_id: str, *, scontrol: str = "scontrol") -> list[str]:
    """``scontrol show job -o ID`` (one line of Key=Value pairs per job)."""
    return [scontrol, "show", "job", "-o", sched_id]


def parse_key_values(line: str) -> dict[str, str]:
    """``"JobId=3 JobName=my job TRES=cpu=4,node=4"`` -> dict (a space-containing value
    continues until the next ``Key=``)."""
    fields: dict[str, str] = {}
    key = None
    for token in line.strip().split(" "):
        if _KEY_RE.match(token):
            key, _, value = token.partition("=")
            fields[key] = value
        elif key is not None:
            fields[key] += " " + token
        elif token:
            raise SchedulerError("scontrol show job -o", None, line, reason="not Key=Value pairs")
    return fields


def parse_scontrol_show_job(text: str) -> dict[str, SchedStatus]:
    """``scontrol show job -o`` stdout (one line per job) -> ``{id: SchedStatus}``."""
    out: dict[str, SchedStatus] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        f = parse_key_values(line)
        if "JobId" not in f or "JobState" not in f or not _ID_RE.match(f["JobId"]):
            raise SchedulerError("scontrol show job -o", None, text, reason="no JobId/JobState")
        job_id = f["JobId"]
        if f.get("ArrayTaskId") and f.get("ArrayJobId"):
            job_id = f"{f['ArrayJobId']}_{f['ArrayTaskId']}"
        raw = f["JobState"]
        state, why = _state(raw, "scontrol")
        code, sig = _exit(raw, f.get("ExitCode", "0:0"), "scontrol show job")
        reason = f.get("Reason", "")
        reason = "" if reason in ("None", "(null)") else reason
        out[job_id] = SchedStatus(
            state=state, raw_state=raw,
            exit_code=code if state == FINISHED else None,
            signal=sig if state == FINISHED else None,
            start_time=_time(f.get("StartTime", "")),
            end_time=_time(f.get("EndTime", "")) if state == FINISHED else None,
            nodes=expand_hostlist(f.get("NodeList", "")),
            reason="; ".join(r for r in (why, reason) if r))
    return out


SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Start,End"


def sacct_argv(ids: Sequence[str], *, sacct: str = "sacct") -> list[str]:
    """``sacct -n -P -X -j IDS -o JobID,State,ExitCode,NodeList,Start,End`` (allocations only)."""
    return [sacct, "-n", "-P", "-X", "-j", ",".join(ids), "-o", SACCT_FIELDS]


def sacct_disabled(rc: int, output: str) -> bool:
    """True when sacct says this cluster keeps no accounting (no slurmdbd)."""
    return rc != 0 and "accounting storage is disabled" in (output or "")


def parse_sacct(text: str) -> dict[str, SchedStatus]:
    """``sacct -n -P -X -o JobID,State,ExitCode,NodeList,Start,End`` stdout -> ``{id: SchedStatus}``.

    States may read ``CANCELLED by 0``. Step lines (``5.batch``), if present, are skipped.
    """
    out: dict[str, SchedStatus] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 6:
            raise SchedulerError("sacct", None, text, reason=f"unexpected line {line.strip()!r}")
        job_id, raw, exit_code, nodes, start, end = fields
        if "." in job_id:
            continue
        if not _ID_RE.match(job_id):
            raise SchedulerError("sacct", None, text, reason=f"bad job id {job_id!r}")
        state, why = _state(raw, "sacct")
        code, sig = _exit(raw, exit_code, "sacct")
        out[job_id] = SchedStatus(
            state=state, raw_state=raw,
            exit_code=code if state == FINISHED else None,
            signal=sig if state == FINISHED else None,
            start_time=_time(start), end_time=_time(end) if state == FINISHED else None,
            nodes=expand_hostlist(nodes) if nodes != "None assigned" else (), reason=why)
    return out


# ----------------------------------------------------------------------------- cancel

def scancel_argv(sched_id: str, *, scancel: str = "scancel") -> list[str]:
    """``scancel ID``."""
    return [scancel, sched_id]


def classify_scancel_error(rc: int, stderr: str) -> str:
    """``"unknown"``/``"finished"`` when scancel failed only because the job is gone;
    anything else raises SchedulerError."""
    text = stderr or ""
    if _INVALID_ID in text:
        return "unknown"
    if "already completing or completed" in text:
        return "finished"
    raise SchedulerError("scancel", rc, stderr)


# ----------------------------------------------------------------------------- backend

class SlurmBackend:
    """Slurm through sbatch/squeue/scontrol/sacct/scancel (see the module docstring).

    ``status`` asks ``squeue`` once for all ids, then ``scontrol`` for the exit code
    of each id squeue reports finished, then ``sacct`` (when accounting works) for
    ids the controller has forgotten; whatever is left is ``unknown``.
    """

    name = "slurm"

    def __init__(self, bin_dir: str | None = None, timeout: float = 60.0,
                 use_sacct: bool | None = None) -> None:
        self.bin_dir = bin_dir
        self.timeout = timeout
        self.use_sacct = use_sacct  # None: try once, then remember

    def _cmd(self, command: str) -> str:
        return command_path(self.bin_dir, command)

    def submit(self, script: Path, *, queue: str | None, project: str | None, num_nodes: int,
               wall_time_min: int, job_name: str, cwd: Path,
               extra: Mapping[str, str] = {}) -> str:
        script = Path(script).resolve()
        argv = sbatch_argv(script, queue=queue, project=project, num_nodes=num_nodes,
                           wall_time_min=wall_time_min, job_name=job_name,
                           output=output_path(script), extra=extra, sbatch=self._cmd("sbatch"))
        return cmd.run_parsed(argv, self.timeout, parse_sbatch_parsable, cwd=cwd)

    def _squeue(self, ids: list[str]) -> dict[str, SchedStatus]:
        argv = squeue_argv(ids, squeue=self._cmd("squeue"))
        proc = cmd.run(argv, self.timeout, check=False)
        if proc.returncode != 0:
            if _INVALID_ID in proc.stderr:
                return {}
            raise SchedulerError(argv, proc.returncode, proc.stderr + proc.stdout)
        try:
            return parse_squeue(proc.stdout)
        except SchedulerError as exc:
            raise SchedulerError(argv, 0, proc.stdout, reason=exc.reason) from None

    def _scontrol(self, sched_id: str) -> SchedStatus | None:
        argv = scontrol_show_job_argv(sched_id, scontrol=self._cmd("scontrol"))
        proc = cmd.run(argv, self.timeout, check=False)
        if proc.returncode != 0:
            if _INVALID_ID in proc.stderr:
                return None
            raise SchedulerError(argv, proc.returncode, proc.stderr + proc.stdout)
        return parse_scontrol_show_job(proc.stdout).get(sched_id)

    def _sacct(self, ids: list[str]) -> dict[str, SchedStatus]:
        if self.use_sacct is False:
            return {}
        argv = sacct_argv(ids, sacct=self._cmd("sacct"))
        try:
            proc = cmd.run(argv, self.timeout, check=False)
        except SchedulerError as exc:
            if exc.rc == 127 and self.use_sacct is None:
                self.use_sacct = False
                return {}
            raise
        if sacct_disabled(proc.returncode, proc.stdout + proc.stderr):
            log.info("sacct: accounting storage is disabled here; not asking again")
            self.use_sacct = False
            return {}
        if proc.returncode != 0:
            raise SchedulerError(argv, proc.returncode, proc.stderr + proc.stdout)
        self.use_sacct = True
        return parse_sacct(proc.stdout)

    def status(self, ids: Sequence[str]) -> dict[str, SchedStatus]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        for sid in ids:
            if not _ID_RE.match(sid):
                raise ValueError(f"not a Slurm job id: {sid!r}")
        result = {k: v for k, v in self._squeue(ids).items() if k in ids}
        for sid, st in list(result.items()):
            if st.state == FINISHED:
                detail = self._scontrol(sid)
                if detail is not None:
                    result[sid] = detail
        missing = [sid for sid in ids if sid not in result]
        if missing:
            result.update({k: v for k, v in self._sacct(missing).items() if k in missing})
        for sid in ids:
            result.setdefault(sid, SchedStatus(UNKNOWN, "", reason="not known to Slurm any more"))
        return result

    def cancel(self, sched_id: str) -> None:
        argv = scancel_argv(sched_id, scancel=self._cmd("scancel"))
        why = cmd.run_cancel(argv, self.timeout, classify_scancel_error)
        if why is not None:
            log.debug("scancel %s: already %s", sched_id, why)
