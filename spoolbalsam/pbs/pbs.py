"""PBS Professional / OpenPBS backend (Aurora, Polaris): qsub, qstat -f -F json, qdel.

Build/parse pairs (pure: no subprocess, clock, user or environment):

=====================  ==========================================================
``qsub_argv``          ``qsub -A P -q Q -l select=N -l walltime=H:MM:SS [-l k=v] -N name script``
``parse_qsub_output``  ``"1008.aurora-pbs-0001\\n"`` -> ``"1008.aurora-pbs-0001"``
``qstat_argv``         ``qstat -f -F json [-x] IDS``
``parse_qstat_json``   JSON document -> ``{id: SchedStatus}``
``classify_qstat_error`` stderr lines -> ``{id: finished | unknown}`` or SchedulerError
``qdel_argv`` / ``classify_qdel_error``
=====================  ==========================================================

Facts this relies on (OpenPBS ``qstat.1B``/``qsub.1B``, PBS Professional Reference
Guide "Job Attributes", public qstat outputs from PBS 19.0 .. 2024.1):

* ``qsub`` prints ``<seq>.<server>``; a job array prints ``<seq>[].<server>``.
* ``qstat -f -F json`` prints ``{"timestamp", "pbs_version", "pbs_server", "Jobs": {...}}``;
  ``Jobs`` is absent when nothing matched. Several PBS releases emit invalid JSON
  for some job environments (``\\'`` and ``\\,`` escapes, digit strings with
  leading zeros: openpbs PR #2049, issue #1255, Balsam issue #324); the parser
  repairs exactly those defects and rejects anything else.
* Finished jobs are listed only with ``-x`` and only when the server has
  ``job_history_enable=True`` (default off). Without ``-x`` a finished job gives
  ``qstat: <id> Job has finished, use -x or -H ...`` (PBSE_HISTJOBID 15139, rc 35);
  a job the server forgot gives ``qstat: Unknown Job Id <id>`` (PBSE_UNKJOBID
  15001, rc 153). The process rc is the PBS error number modulo 256. When several
  ids are asked for, the known ones are still printed on stdout.
* ``Exit_status``: 0-255 the job script's exit value (128+N when the shell saw a
  child die of signal N); > 256 the top shell itself was killed by signal
  ``value - 256`` (271 = SIGTERM, what a walltime kill looks like); 254 execve()
  failure; negative = PBS could not run the job (table ``_EXEC_CODES``).
* ``qdel`` on a finished job says ``qdel: Job has finished <id>`` (rc 35), on an
  exiting one ``qdel: Request invalid for state of job <id>`` (rc 168), on a
  forgotten one ``qdel: Unknown Job Id <id>`` (rc 153). None of these is an
  error for a caller who wants the job gone.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from spoolbalsam.pbs import cmd
from spoolbalsam.pbs.base import (FINISHED, QUEUED, RUNNING, UNKNOWN, SchedStatus,
                                  SchedulerError, command_path, output_path,
                                  signal_exit_code, validate_submit_args)
from spoolbalsam.pbs.script import walltime_hms

log = logging.getLogger(__name__)

# job_state codes -> spoolbalsam states. Source: PBS Professional Reference Guide,
# "Job Attributes: job_state" and "Job States" table; OpenPBS doc/man1/qstat.1B.
PBS_STATES: dict[str, str] = {
    "B": RUNNING,   # Begun: job array with at least one subjob started (arrays are never R)
    "E": RUNNING,   # Exiting: script ended, PBS is cleaning up; the nodes are still held
    "F": FINISHED,  # Finished: completed, failed while running, or deleted (history only)
    "H": QUEUED,    # Held by user, operator or server; will not start until released
    "M": UNKNOWN,   # Moved to another server: this server no longer tracks it (history only)
    "Q": QUEUED,    # Queued, eligible to run or be routed
    "R": RUNNING,   # Running
    "S": RUNNING,   # Suspended by the server (preemption); allocation kept, will resume
    "T": QUEUED,    # Transiting to a new location (queue or server)
    "U": RUNNING,   # User-suspended (cycle-harvesting workstation busy); allocation kept
    "W": QUEUED,    # Waiting for its Execution_Time, or 30 min after a stage-in failure
    "X": FINISHED,  # eXpired: a subjob of an array that has finished
}

# Negative Exit_status: PBS could not run the job (PBS Reference Guide, "Job Exit Codes").
_EXEC_CODES: dict[int, str] = {
    -1: "JOB_EXEC_FAIL1: failed before files, no retry",
    -2: "JOB_EXEC_FAIL2: failed after files, no retry",
    -3: "JOB_EXEC_RETRY: failed, will be retried",
    -4: "JOB_EXEC_INITABT: job aborted on MoM initialization",
    -5: "JOB_EXEC_INITRST: aborted on MoM init, checkpoint, no migrate",
    -6: "JOB_EXEC_INITRMG: aborted on MoM init, checkpoint, ok migrate",
    -7: "JOB_EXEC_BADRESRT: restart failed",
    -10: "JOB_EXEC_FAILUID: invalid uid/gid for job",
    -11: "JOB_EXEC_RERUN: job was rerun",
    -12: "JOB_EXEC_CHKP: job was checkpointed and killed",
    -13: "JOB_EXEC_FAIL_PASSWORD: bad password",
    -14: "JOB_EXEC_RERUN_ON_SIS_FAIL: sister MoM failed",
    -15: "JOB_EXEC_QUERST: requeued for restart from checkpoint",
    -16: "JOB_EXEC_FAILHOOK_RERUN: hook rejected the job, requeued",
    -17: "JOB_EXEC_FAILHOOK_DELETE: hook rejected the job, deleted",
    -18: "JOB_EXEC_HOOK_RERUN: hook requested a rerun",
    -19: "JOB_EXEC_HOOK_DELETE: hook requested deletion",
    -20: "JOB_EXEC_RERUN_MS_FAIL: server lost the mother superior, requeued",
}

RC_JOB_FINISHED = 35     # PBSE_HISTJOBID 15139 % 256
RC_UNKNOWN_JOB = 153     # PBSE_UNKJOBID 15001 % 256
RC_BAD_STATE = 168       # PBSE_BADSTATE 15016 % 256 (qdel on an exiting job)
RC_HIST_NOT_SET = 36     # PBSE_JOBHISTNOTSET 15140 % 256

_JOB_ID = r"[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9_.-]+)?"
_QSUB_ID_RE = re.compile(rf"^{_JOB_ID}$")
_UNKNOWN_RE = re.compile(rf"^(?:qstat|qdel): Unknown Job Id ({_JOB_ID})\s*$")
_FINISHED_QSTAT_RE = re.compile(rf"^qstat: ({_JOB_ID}) Job has finished\b.*$")
_FINISHED_QDEL_RE = re.compile(rf"^qdel: Job has finished(?: ({_JOB_ID}))?\s*$")
_BADSTATE_QDEL_RE = re.compile(rf"^qdel: Request invalid for state of job(?: ({_JOB_ID}))?\s*$")
_NO_HISTORY_RE = re.compile(r"job_history_enable not SET|invalid option -- '?x'?|"
                            r"Unknown option:? -?x|illegal option -- x", re.I)


# ----------------------------------------------------------------------------- submit

def qsub_argv(script: Path | str, *, queue: str | None, project: str | None, num_nodes: int,
              wall_time_min: int, job_name: str, output: Path | str | None = None,
              extra: Mapping[str, str] = {}, qsub: str = "qsub") -> list[str]:
    """The ``qsub`` command line for one batch job.

    ``extra`` adds resources: ``{"filesystems": "home:flare"}`` -> ``-l filesystems=home:flare``;
    a key naming a resource already set (``select``, ``walltime``) replaces it; a key
    starting with ``-`` is passed as an option with its value (``{"-k": "doe"}`` -> ``-k doe``,
    an empty value gives the bare flag).
    """
    validate_submit_args(num_nodes, wall_time_min, job_name)
    argv = [qsub]
    if project:
        argv += ["-A", project]
    if queue:
        argv += ["-q", queue]
    resources: dict[str, str] = {"select": str(num_nodes), "walltime": walltime_hms(wall_time_min)}
    options: list[str] = []
    for key, value in extra.items():
        if key.startswith("-"):
            options += [key] + ([str(value)] if str(value) != "" else [])
        else:
            resources[key] = str(value)
    for key, value in resources.items():
        argv += ["-l", f"{key}={value}"]
    argv += ["-N", job_name]
    if output is not None:
        argv += ["-j", "oe", "-o", str(output)]
    return argv + options + [str(script)]


def select_from_script(text: str, num_nodes: int) -> str | None:
    """The script's own ``#PBS -l select=`` value when its node count is ``num_nodes``.

    ``qsub -l select=2`` on the command line replaces the whole ``select`` of the
    script (``2:system=aurora`` would lose ``system=aurora``), so the backend repeats
    the script's value instead of a bare count whenever the counts agree.
    """
    from spoolbalsam.pbs.script import split_directives

    directives, _ = split_directives(text, "#PBS")
    found = None
    for line in directives:
        words = line.split()
        for flag, value in zip(words[1:], words[2:]):
            if flag == "-l":
                for item in value.split(","):
                    if item.startswith("select="):
                        found = item[len("select="):]
    if not found:
        return None
    count = found.split(":", 1)[0]
    if "+" in found or not count.isdigit() or int(count) != num_nodes:
        return None
    return found


def parse_qsub_output(text: str) -> str:
    """The job id ``qsub`` printed (last non-empty stdout line), e.g. ``1008.aurora-pbs-0001``."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines or not _QSUB_ID_RE.match(lines[-1]):
        raise SchedulerError("qsub", None, text, reason="no job id in output")
    return lines[-1]


# ----------------------------------------------------------------------------- status

def qstat_argv(ids: Sequence[str], *, history: bool = True, qstat: str = "qstat") -> list[str]:
    """``qstat -f -F json [-x] IDS``: full JSON status; ``-x`` includes finished jobs."""
    return [qstat, "-f", "-F", "json"] + (["-x"] if history else []) + list(ids)


_BAD_ESCAPE_RE = re.compile(r'\\([^"\\/bfnrtu])')
_LEADING_ZERO_RE = re.compile(r'(:\s*)(-?0[0-9]+(?:\.[0-9]+)?)(\s*[,}\n])')


def _loads_qstat(text: str) -> Any:
    try:
        return json.loads(text, strict=False)
    except ValueError as first:
        # Known PBS defects only: \' and \, escapes, and numbers like 005.
        repaired = _BAD_ESCAPE_RE.sub(r"\1", text)
        repaired = _LEADING_ZERO_RE.sub(r'\1"\2"\3', repaired)
        try:
            data = json.loads(repaired, strict=False)
        except ValueError:
            raise SchedulerError("qstat -f -F json", None, text,
                                 reason=f"output is not JSON ({first})") from None
        log.warning("qstat -F json output needed repair (known PBS escaping bug): %s", first)
        return data


def _exit_fields(value: Any) -> tuple[int | None, int | None, str]:
    """(exit_code, signal, reason) from an Exit_status value."""
    if value is None:
        return None, None, ""
    try:
        code = int(value)
    except (TypeError, ValueError):
        raise SchedulerError("qstat -f -F json", None, repr(value),
                             reason="Exit_status is not an integer") from None
    if code > 256:
        sig = code - 256
        return signal_exit_code(sig), sig, f"killed by signal {sig} (Exit_status {code})"
    if code == 254:
        return code, None, "execve() of the job script failed (Exit_status 254)"
    if code < 0:
        return code, None, _EXEC_CODES.get(code, f"PBS could not run the job (Exit_status {code})")
    return code, None, ""


def _hosts(exec_host: Any) -> tuple[str, ...]:
    """``"x1001/0*104+x1002/0*104"`` -> ``("x1001", "x1002")`` (order kept, duplicates dropped)."""
    if not exec_host or not isinstance(exec_host, str):
        return ()
    seen: dict[str, None] = {}
    for chunk in exec_host.split("+"):
        host = chunk.split("/", 1)[0].split(":", 1)[0].strip()
        if host:
            seen.setdefault(host, None)
    return tuple(seen)


def job_status_from_attrs(attrs: Mapping[str, Any]) -> SchedStatus:
    """One job's attribute object from ``qstat -f -F json`` -> SchedStatus."""
    raw = attrs.get("job_state")
    if not isinstance(raw, str) or not raw:
        raise SchedulerError("qstat -f -F json", None, json.dumps(attrs)[:300],
                             reason="job without job_state")
    state = PBS_STATES.get(raw)
    reasons = []
    if state is None:
        log.warning("unknown PBS job_state %r: treating as unknown", raw)
        state = UNKNOWN
        reasons.append(f"unknown PBS job_state {raw!r}")
    elif raw == "M":
        reasons.append("moved to another server")
    exit_code, sig, why = _exit_fields(attrs.get("Exit_status"))
    if why:
        reasons.append(why)
    comment = attrs.get("comment")
    if isinstance(comment, str) and comment:
        reasons.append(comment)
    end = attrs.get("obittime") or (attrs.get("mtime") if state == FINISHED else None)
    return SchedStatus(state=state, raw_state=raw, exit_code=exit_code,
                       start_time=attrs.get("stime") or None, end_time=end or None,
                       nodes=_hosts(attrs.get("exec_host")), reason="; ".join(reasons),
                       signal=sig)


def parse_qstat_json(text: str) -> dict[str, SchedStatus]:
    """``qstat -f -F json [-x]`` stdout -> ``{job id as printed: SchedStatus}``.

    An empty ``Jobs`` (or none at all) gives ``{}``. Anything that is not a PBS
    JSON status document raises SchedulerError with the output head.
    """
    data = _loads_qstat(text)
    if not isinstance(data, dict) or not ({"pbs_version", "Jobs", "timestamp"} & set(data)):
        raise SchedulerError("qstat -f -F json", None, text, reason="not a qstat JSON document")
    jobs = data.get("Jobs", {})
    if not isinstance(jobs, dict):
        raise SchedulerError("qstat -f -F json", None, text, reason="'Jobs' is not an object")
    out: dict[str, SchedStatus] = {}
    for job_id, attrs in jobs.items():
        if not isinstance(attrs, dict):
            raise SchedulerError("qstat -f -F json", None, text, reason=f"job {job_id} is not an object")
        out[job_id] = job_status_from_attrs(attrs)
    return out


def classify_qstat_error(rc: int, stderr: str) -> dict[str, SchedStatus]:
    """Per-id verdicts from a failing ``qstat``'s stderr.

    ``qstat: <id> Job has finished, use -x or -H ...`` (rc 35) -> finished;
    ``qstat: Unknown Job Id <id>`` (rc 153) -> unknown. Any other line, or a
    non-zero rc with nothing recognised, raises SchedulerError (connection
    refused, bad option, ...). rc 0 with empty stderr gives ``{}``.
    """
    verdicts: dict[str, SchedStatus] = {}
    other: list[str] = []
    for line in (stderr or "").splitlines():
        line = line.strip()
        if not line:
            continue
        m = _FINISHED_QSTAT_RE.match(line)
        if m:
            verdicts[m.group(1)] = SchedStatus(FINISHED, "F", reason="finished (no history: use -x)")
            continue
        m = _UNKNOWN_RE.match(line)
        if m:
            verdicts[m.group(1)] = SchedStatus(UNKNOWN, "", reason="Unknown Job Id")
            continue
        other.append(line)
    if other or (rc != 0 and not verdicts) or rc not in (0, RC_JOB_FINISHED, RC_UNKNOWN_JOB):
        raise SchedulerError("qstat", rc, stderr)
    return verdicts


def history_unsupported(rc: int, stderr: str) -> bool:
    """True when ``qstat -x`` failed because this qstat/server cannot show history."""
    return rc != 0 and bool(_NO_HISTORY_RE.search(stderr or ""))


def match_ids(requested: Sequence[str], found: Mapping[str, SchedStatus]) -> dict[str, SchedStatus]:
    """Key results by the ids the caller used: ``"1008"`` matches ``"1008.aurora-pbs-0001"``."""
    def same_job(a: str, b: str) -> bool:
        seq_a, _, srv_a = a.partition(".")
        seq_b, _, srv_b = b.partition(".")
        # "1008" ~ "1008.srv"; "1008.srv" ~ "1008.srv.domain" (short vs full server name)
        return seq_a == seq_b and (not srv_a or not srv_b or srv_a.startswith(srv_b + ".")
                                   or srv_b.startswith(srv_a + ".") or srv_a == srv_b)

    out: dict[str, SchedStatus] = {}
    for rid in requested:
        if rid in found:
            out[rid] = found[rid]
            continue
        for fid, st in found.items():
            if same_job(rid, fid):
                out[rid] = st
                break
    return out


# ----------------------------------------------------------------------------- cancel

def qdel_argv(sched_id: str, *, qdel: str = "qdel") -> list[str]:
    """``qdel ID``."""
    return [qdel, sched_id]


def classify_qdel_error(rc: int, stderr: str) -> str:
    """Why ``qdel`` failed, when that is fine: ``"finished"``, ``"exiting"`` or ``"unknown"``.

    Anything else raises SchedulerError.
    """
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    if lines and all(_FINISHED_QDEL_RE.match(ln) for ln in lines):
        return "finished"
    if lines and all(_BADSTATE_QDEL_RE.match(ln) for ln in lines):
        return "exiting"
    if lines and all(_UNKNOWN_RE.match(ln) for ln in lines):
        return "unknown"
    raise SchedulerError("qdel", rc, stderr)


# ----------------------------------------------------------------------------- backend

class PbsBackend:
    """PBS Pro / OpenPBS through qsub, qstat and qdel (see the module docstring).

    ``bin_dir`` locates the commands when they are not on PATH (``/opt/pbs/bin``).
    ``history`` starts as True (``qstat -x``) and turns False for the life of the
    object the first time qstat says it cannot show history; from then on the
    rc 35/153 rules tell finished from unknown.
    """

    name = "pbs"

    def __init__(self, bin_dir: str | None = None, timeout: float = 60.0,
                 history: bool = True) -> None:
        self.bin_dir = bin_dir
        self.timeout = timeout
        self.history = history

    def _cmd(self, command: str) -> str:
        return command_path(self.bin_dir, command)

    def submit(self, script: Path, *, queue: str | None, project: str | None, num_nodes: int,
               wall_time_min: int, job_name: str, cwd: Path,
               extra: Mapping[str, str] = {}) -> str:
        script = Path(script).resolve()
        if "select" not in extra:
            try:
                select = select_from_script(script.read_text(), num_nodes)
            except (OSError, UnicodeDecodeError):
                select = None
            if select:
                extra = {"select": select, **extra}
        argv = qsub_argv(script, queue=queue, project=project, num_nodes=num_nodes,
                         wall_time_min=wall_time_min, job_name=job_name,
                         output=output_path(script), extra=extra, qsub=self._cmd("qsub"))
        return cmd.run_parsed(argv, self.timeout, parse_qsub_output, cwd=cwd)

    def _qstat(self, ids: Sequence[str], history: bool) -> tuple[int, str, str]:
        proc = cmd.run(qstat_argv(ids, history=history, qstat=self._cmd("qstat")),
                       self.timeout, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def status(self, ids: Sequence[str]) -> dict[str, SchedStatus]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        rc, out, err = self._qstat(ids, self.history)
        if self.history and history_unsupported(rc, err):
            log.warning("qstat cannot show job history here (%s); using plain qstat",
                        err.strip().splitlines()[0] if err.strip() else rc)
            self.history = False
            rc, out, err = self._qstat(ids, False)
        found: dict[str, SchedStatus] = {}
        if out.strip():
            found.update(parse_qstat_json(out))
        try:
            found.update(classify_qstat_error(rc, err))
        except SchedulerError as exc:
            argv = qstat_argv(ids, history=self.history, qstat=self._cmd("qstat"))
            raise SchedulerError(argv, rc, err or out, reason=exc.reason) from None
        result = match_ids(ids, found)
        for sid in ids:
            result.setdefault(sid, SchedStatus(UNKNOWN, "", reason="not reported by qstat"))
        return result

    def cancel(self, sched_id: str) -> None:
        argv = qdel_argv(sched_id, qdel=self._cmd("qdel"))
        why = cmd.run_cancel(argv, self.timeout, classify_qdel_error)
        if why is not None:
            log.debug("qdel %s: already %s", sched_id, why)
