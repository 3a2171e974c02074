"""Start one job's process and collect its end.

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
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..apps import App, argv_for
from .resources import Placement, Request


@dataclass
class Running:
    job_id: str
    record: dict
    path: Path                  # running/L/ID.json
    placement: Placement
    proc: subprocess.Popen
    out: Path
    started_at: float
    started_mono: float
    kill_at: float | None = None          # monotonic: SIGKILL after this
    timed_out: bool = False
    used_mpi: bool = False                # started through mpiexec/srun (counts in the budget)
    pidfd: int | None = None              # readable when the process exits (Linux >= 5.3)
    app: App | None = None                # the definition it was started with
    extra: dict = field(default_factory=dict)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


_BASE_ENV: dict[int, tuple[App, dict]] = {}


def _base_environment(app: App) -> dict:
    """This process's environment with the app's variables, built once per app object."""
    got = _BASE_ENV.get(id(app))
    if got is None or got[0] is not app:
        got = _BASE_ENV[id(app)] = (app, {**os.environ, **app.environment_variables})
    return got[1]


def job_environment(rec: dict, app: App, site_root: Path, workdir: Path, machine,
                    gpus: tuple[str, ...]) -> dict:
    env = dict(_base_environment(app))
    env.update(SPOOL_JOB_ID=rec["id"], SPOOL_SITE=str(site_root),
               SPOOL_ATTEMPT=str(rec.get("attempt", 1)), SPOOL_WORKDIR=str(workdir),
               OMP_NUM_THREADS=str(rec.get("threads_per_rank", 1)))
    if gpus:
        env["SPOOL_GPU_IDS"] = ",".join(gpus)
        env.update(machine.gpu_env_for(tuple(gpus)))
    return env


def command_for(rec: dict, app: App) -> str:
    cmd = app.render(rec.get("parameters") or {})
    if app.shell_preamble:
        cmd = f"{app.shell_preamble}\n{cmd}"
    return cmd


def start(rec: dict, app: App, placement: Placement, *, site_root: Path, workdir: Path,
          machine, mode: str, path: Path, argv: list[str] | None = None) -> Running:
    """Start ``rec``.  ``argv`` overrides the rendered command (Python run() apps)."""
    out = workdir / "job.out"
    command = argv or argv_for(command_for(rec, app))
    req = Request.from_job(rec)
    use_mpi = needs_mpi(mode, req)
    if use_mpi:
        # mpiexec carries the job's own variables and binds each rank to its own gpus.
        from .mpi import job_argv
        env = job_environment(rec, app, site_root, workdir, machine, ())
        own = {k: env[k] for k in env if k.startswith("SPOOL_") or k in app.environment_variables}
        command = job_argv(machine, placement, req, command, env=own,
                           launch_params=rec.get("launch_params") or {})
    else:
        env = job_environment(rec, app, site_root, workdir, machine, placement.gpus[0])
    try:
        fh = open(out, "wb")
    except FileNotFoundError:            # the site makes it when the job becomes ready
        workdir.mkdir(parents=True, exist_ok=True)
        fh = open(out, "wb")
    with fh:
        proc = subprocess.Popen(command, cwd=workdir, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    return Running(rec["id"], rec, path, placement, proc, out, time.time(), time.monotonic(),
                   used_mpi=use_mpi, pidfd=pidfd, app=app)


def needs_mpi(mode: str, req: Request) -> bool:
    """MPI mode starts every job with mpiexec; serial mode only multi-rank jobs."""
    return mode == "mpi" or req.num_nodes * req.ranks_per_node > 1


def terminate(run: Running, grace: float) -> None:
    """SIGTERM the job's process group now; SIGKILL it after ``grace`` seconds."""
    if run.kill_at is None:
        _signal_group(run.proc, signal.SIGTERM)
        run.kill_at = time.monotonic() + grace


def kill_if_due(run: Running, now: float) -> None:
    if run.kill_at is not None and now >= run.kill_at and run.proc.poll() is None:
        _signal_group(run.proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


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
