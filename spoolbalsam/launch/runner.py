"""Start one job's process (through the launcher's ``starter``) and collect its end.

A job runs in ``data/<workdir>/`` with stdout and stderr in ``job.out`` (truncated at each
launch), in a new session (so a timeout kills the whole process group), with::

    SPOOL_JOB_ID  SPOOL_SITE  SPOOL_ATTEMPT  SPOOL_WORKDIR  OMP_NUM_THREADS
    the app's environment_variables, and the gpu variables of the ids it was given
    (ZE_AFFINITY_MASK on Aurora, CUDA_VISIBLE_DEVICES on Polaris, SPOOL_GPU_IDS always)

In serial mode a single-rank job runs directly on this node; every job in MPI mode, and a
multi-rank job in either mode, is wrapped in the machine's mpiexec/srun for the placement's
hosts, with each rank bound to its own gpus.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..apps import App, argv_for
from .resources import Placement, Request
from .starter import Child, Starter


@dataclass
class Running:
    job_id: str
    record: dict
    path: Path                  # running/L/ID.json
    placement: Placement
    proc: Child                 # pid, start time and return code, as the starter reports them
    out: Path
    kill_at: float | None = None          # monotonic: SIGKILL after this
    timed_out: bool = False               # the launcher stops it (walltime, SIGTERM, stop)
    used_mpi: bool = False                # started through mpiexec/srun (counts in the budget)
    app: App | None = None                # the definition it was started with
    announced: bool = False               # its RUNNING event is written
    req: Request | None = None            # its shape: a standby must have the same
    after: str | None = None              # a standby: starts when this job is reaped
    standby: str | None = None            # the job that starts when this one is reaped
    holds: bool = True                    # releases the placement when it leaves (a
                                          # standby holds it once its predecessor left)
    kill: object = None                   # the kill request stopping it (spool.kills)
    extra: dict = field(default_factory=dict)

    @property
    def started_at(self) -> float | None:
        return self.proc.started_at


_BASE_ENV: dict[int, tuple[App, dict]] = {}


def _base_environment(app: App) -> dict:
    """This process's environment with the app's variables, built once per app object."""
    got = _BASE_ENV.get(id(app))
    if got is None or got[0] is not app:
        got = _BASE_ENV[id(app)] = (app, {**os.environ, **app.environment_variables})
    return got[1]


def job_environment(rec: dict, app: App, site_root: Path, workdir: Path, machine,
                    gpus: tuple[str, ...]) -> tuple[dict, dict]:
    """(this process's environment with the app's variables, the job's own variables)."""
    own = dict(SPOOL_JOB_ID=rec["id"], SPOOL_SITE=str(site_root),
               SPOOL_ATTEMPT=str(rec.get("attempt", 1)), SPOOL_WORKDIR=str(workdir),
               OMP_NUM_THREADS=str(rec.get("threads_per_rank", 1)))
    if gpus:
        own["SPOOL_GPU_IDS"] = ",".join(gpus)
        own.update(machine.gpu_env_for(tuple(gpus)))
    return _base_environment(app), own


def command_for(rec: dict, app: App) -> str:
    cmd = app.render(rec.get("parameters") or {})
    if app.shell_preamble:
        cmd = f"{app.shell_preamble}\n{cmd}"
    return cmd


def start(rec: dict, app: App, placement: Placement, req: Request, *, site_root: Path,
          workdir: Path, machine, mode: str, path: Path, starter: Starter,
          argv: list[str] | None = None, after: str | None = None,
          by: float | None = None) -> Running:
    """Have ``starter`` start ``rec``, of shape ``req`` (as the standby of job ``after``,
    see ``starter``).  ``argv`` overrides the rendered command (Python run() apps).  The
    process exists once the starter says so (``Running.proc.pid``)."""
    command = argv or argv_for(command_for(rec, app))
    use_mpi = needs_mpi(mode, req)
    if use_mpi:
        # mpiexec carries the job's own variables and binds each rank to its own gpus.
        from .mpi import job_argv
        base, own = job_environment(rec, app, site_root, workdir, machine, ())
        carried = {k: v for k, v in {**base, **own}.items()
                   if k.startswith("SPOOL_") or k in app.environment_variables}
        command = job_argv(machine, placement, req, command, env=carried,
                           launch_params=rec.get("launch_params") or {})
    else:
        base, own = job_environment(rec, app, site_root, workdir, machine, placement.gpus[0])
    out = workdir / "job.out"
    child = starter.start(rec["id"], command, str(workdir), str(out), base, own, after, by)
    return Running(rec["id"], rec, path, placement, child, out, used_mpi=use_mpi, app=app,
                   req=req, after=after, holds=after is None)


def needs_mpi(mode: str, req: Request) -> bool:
    """MPI mode starts every job with mpiexec; serial mode only multi-rank jobs."""
    return mode == "mpi" or req.num_nodes * req.ranks_per_node > 1


def terminate(run: Running, grace: float) -> None:
    """SIGTERM the job's process group now; SIGKILL it after ``grace`` seconds."""
    if run.kill_at is None:
        run.proc.signal(signal.SIGTERM)
        run.kill_at = time.monotonic() + grace


def kill_if_due(run: Running, now: float) -> None:
    if run.kill_at is not None and now >= run.kill_at and run.proc.poll() is None:
        run.proc.signal(signal.SIGKILL)
        run.kill_at = now + 1.0          # again each second until it is reaped


def tail(path: Path, lines: int, max_bytes: int = 8192) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
