"""The scheduler-backend protocol: what every batch-system interface promises.

spoolbalsam talks to a batch system through three verbs and nothing else::

    backend = get_backend("pbs")            # "pbs" | "slurm" | "local"
    sched_id = backend.submit(script, queue=..., project=..., num_nodes=...,
                              wall_time_min=..., job_name=..., cwd=site)
    backend.status([sched_id, ...])         # -> {sched_id: SchedStatus}
    backend.cancel(sched_id)

Contract
--------
submit
    Hands a rendered, executable job script (see ``spoolbalsam.pbs.script``)
    to the scheduler and returns the scheduler's own id for it (``"1008.aurora-pbs-0001"``,
    ``"42"``, a pid). Options given on the command line repeat what the script's
    directives say; where they differ the command line wins, as in PBS and Slurm.
    Failure raises :class:`SchedulerError`; nothing is retried here.
status
    One call answers for many ids (one ``qstat``/``squeue`` for all of them).
    Every requested id gets an entry, keyed exactly as requested. ``state`` is
    one of :data:`STATES`:

    ``queued``   not started yet (held, waiting, in transit included);
    ``running``  the allocation exists (exiting, suspended included);
    ``finished`` the scheduler says it is over (success or not: read
                 ``exit_code``, ``reason`` and the script's own ``.ec`` file);
    ``unknown``  the scheduler no longer knows the id and keeps no history to
                 say how it ended (PBS with history off, Slurm after MinJobAge
                 without accounting). Callers decide after N consecutive
                 ``unknown`` answers, using the ``.ec`` file the script wrote.

    ``exit_code`` follows the shell convention: 0-255, and 128+N when the job
    script was killed by signal N (``signal`` then holds N). It is ``None`` when
    the scheduler does not say. ``raw_state`` is the scheduler's own code.
    Unknown native codes map to ``unknown`` with a logged warning -- never a
    KeyError. Transport failures (command missing, timed out, unparseable
    output) raise :class:`SchedulerError` for the whole call.
cancel
    Asks the scheduler to end the job. A job that already finished or is no
    longer known is not an error. Cancel does not wait.

The script reports its own exit
-------------------------------
Every template writes the launcher's exit code to ``<script-stem>.ec`` beside the
script (see :func:`exit_code_path`), written to a dot-temp and renamed, so it is
either absent or whole. The scheduler only needs to answer "queued, running or
gone"; "gone" plus the ``.ec`` file decides success. This is the PSI/J design
and keeps spoolbalsam correct on sites whose scheduler keeps no history.

Implementation shape
--------------------
Each backend module (``pbs.py``, ``slurm.py``, ``local.py``) is a set of pure
module-level build/parse pairs -- ``qsub_argv``/``parse_qsub_output``,
``sbatch_argv``/``parse_sbatch_parsable`` ... -- which read no clock, user or
environment and run no process, so recorded outputs test them directly; plus
one small class that wires them to :func:`spoolbalsam.pbs.cmd.run`, the single
place where a scheduler command is executed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

QUEUED = "queued"
RUNNING = "running"
FINISHED = "finished"
UNKNOWN = "unknown"
STATES = (QUEUED, RUNNING, FINISHED, UNKNOWN)

_HEAD_CHARS = 300


@dataclass(frozen=True)
class SchedStatus:
    """What a scheduler says about one of its jobs (see the module docstring)."""

    state: str
    raw_state: str
    exit_code: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    nodes: tuple[str, ...] = ()
    reason: str = ""
    signal: int | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"SchedStatus.state must be one of {STATES}, not {self.state!r}")

    @property
    def is_final(self) -> bool:
        """True once the scheduler says the job is over."""
        return self.state == FINISHED


def output_head(text: str | bytes | None, limit: int = _HEAD_CHARS) -> str:
    """The first ``limit`` characters of a command's output, on one line."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class SchedulerError(Exception):
    """A scheduler command failed or said something we cannot parse.

    The message is one line naming the command, its return code (or what
    went wrong) and the head of its output, e.g.
    ``qstat -f -F json -x 7.pbs: rc=2: qstat: invalid option -- 'F'``.
    """

    def __init__(self, argv: Sequence[str] | str, rc: int | None = None,
                 output: str | bytes | None = "", reason: str = "") -> None:
        self.argv = [argv] if isinstance(argv, str) else list(argv)
        self.rc = rc
        if isinstance(output, bytes):
            output = output.decode("utf-8", "replace")
        self.output = output or ""
        self.reason = reason
        cmd = " ".join(self.argv[:8]) + (" ..." if len(self.argv) > 8 else "")
        what = reason or (f"rc={rc}" if rc is not None else "failed")
        if reason and rc is not None:
            what = f"rc={rc}: {reason}"
        head = output_head(self.output)
        super().__init__(f"{cmd}: {what}: {head}" if head else f"{cmd}: {what}")


@runtime_checkable
class Backend(Protocol):
    """A batch-system interface: see the module docstring for the contract."""

    name: str

    def submit(self, script: Path, *, queue: str | None, project: str | None, num_nodes: int,
               wall_time_min: int, job_name: str, cwd: Path,
               extra: Mapping[str, str] = {}) -> str:
        ...

    def status(self, ids: Sequence[str]) -> dict[str, SchedStatus]:
        ...

    def cancel(self, sched_id: str) -> None:
        ...


def exit_code_path(script: Path | str) -> Path:
    """Where the job script records its own exit code: ``batch/qlaunch00042.sh`` -> ``.ec``."""
    return Path(script).with_suffix(".ec")


def output_path(script: Path | str) -> Path:
    """Where a backend sends the batch job's stdout+stderr: ``<script-stem>.out``."""
    return Path(script).with_suffix(".out")


def read_exit_code(path: Path | str) -> int | None:
    """The integer a job script wrote to its ``.ec`` file, or None if absent/garbled."""
    try:
        text = Path(path).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def signal_exit_code(sig: int) -> int:
    """Shell convention for "killed by signal ``sig``": 128 + sig."""
    return 128 + sig


def validate_submit_args(num_nodes: int, wall_time_min: int, job_name: str) -> None:
    """Reject values no scheduler accepts before any command runs (ValueError)."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive int, not {num_nodes!r}")
    if isinstance(wall_time_min, bool) or not isinstance(wall_time_min, int) or wall_time_min < 1:
        raise ValueError(f"wall_time_min must be a positive int, not {wall_time_min!r}")
    if not job_name or any(c.isspace() for c in job_name):
        raise ValueError(f"job_name must be non-empty without whitespace, not {job_name!r}")


def get_backend(name: str, **options: object) -> Backend:
    """The backend for a scheduler name: ``"pbs"``, ``"slurm"`` or ``"local"``.

    ``options`` go to the backend's constructor (e.g. ``bin_dir=`` for PBS or
    Slurm commands outside PATH, ``state_dir=`` for the local backend).
    """
    key = name.strip().lower()
    if key in ("pbs", "pbspro", "openpbs"):
        from spoolbalsam.pbs.pbs import PbsBackend
        return PbsBackend(**options)  # type: ignore[arg-type]
    if key == "slurm":
        from spoolbalsam.pbs.slurm import SlurmBackend
        return SlurmBackend(**options)  # type: ignore[arg-type]
    if key == "local":
        from spoolbalsam.pbs.local import LocalBackend
        return LocalBackend(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown scheduler backend {name!r}: expected 'pbs', 'slurm' or 'local'")


def command_path(bin_dir: str | os.PathLike[str] | None, command: str) -> str:
    """``command`` itself, or ``bin_dir/command`` when a site keeps it outside PATH."""
    return str(Path(bin_dir) / command) if bin_dir else command
