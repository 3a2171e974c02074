"""``spool launcher``: from an allocation's environment to running launchers.

* MPI mode: one launcher on the head node over all the allocation's nodes; every job starts
  through the machine's mpiexec (PALS, hydra) or srun.
* Serial mode, one node: one launcher on this node, jobs started directly.
* Serial mode, several nodes: one worker per node, all started by a *single* mpiexec/srun
  with one rank per node (so it costs one launch of the machine's mpiexec budget).  Each
  worker is an independent launcher that claims jobs from the spool by rename and packs
  them on its own node's cores and gpus: no master, no sockets.  A worker finds its node
  from its rank (PMI_RANK, PALS_RANKID, SLURM_PROCID), which also works for emulated nodes
  that share one hostname.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

from .. import settings as settings_mod
from ..spool.layout import Layout
from .launcher import Launcher

RANK_VARS = ("PMI_RANK", "PALS_RANKID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")


def my_rank(environ=os.environ) -> int | None:
    for var in RANK_VARS:
        if environ.get(var, "").isdigit():
            return int(environ[var])
    return None


def worker_argv(machine, hosts: list[str], args: list[str]) -> list[str]:
    """One mpiexec/srun starting ``args`` once on each host."""
    from .mpi import mpi_argv
    return mpi_argv(machine.mpi_flavour, hosts=hosts, ranks_per_node=1, threads_per_rank=1,
                    cpu_bind="none" if machine.mpi_flavour == "pals" else None, env={},
                    launch_params=dict(machine.default_launch_params), command=args)


def run_launcher(layout: Layout, settings: dict, *, mode: str, wall_time_min: float,
                 filter_tags: dict, batch_job: str | None = None, idle_ttl: float | None = None,
                 max_jobs: int | None = None, worker: bool = False) -> str:
    from ..site.service import setup_logging
    machine = settings_mod.machine_from_settings(settings)
    nodes = machine.node_specs(os.environ)
    scheduler_id = os.environ.get("PBS_JOBID") or os.environ.get("SLURM_JOB_ID")
    layout.log.mkdir(exist_ok=True)
    if mode == "serial" and len(nodes) > 1 and not worker:
        setup_logging(layout.log / f"serial-{batch_job or 'local'}-{os.getpid()}.log")
        return _spawn_workers(layout, machine, nodes, wall_time_min, filter_tags, batch_job,
                              idle_ttl, max_jobs)
    if worker:
        rank = my_rank()
        if rank is None or rank >= len(nodes):
            raise RuntimeError(f"serial worker cannot tell its node: rank {rank}, "
                               f"{len(nodes)} nodes")
        nodes = [nodes[rank]]
    launcher = Launcher(layout, settings, machine, mode=mode, nodes=nodes,
                        wall_time_min=wall_time_min, filter_tags=filter_tags,
                        batch_job=batch_job, scheduler_id=scheduler_id, idle_ttl_sec=idle_ttl,
                        max_jobs=max_jobs)
    setup_logging(layout.log / f"launcher-{launcher.id}.log")
    return launcher.run()


def _spawn_workers(layout, machine, nodes, wall_time_min, filter_tags, batch_job, idle_ttl,
                   max_jobs) -> str:
    args = [sys.executable, "-m", "spoolbalsam.cli", "--site", str(layout.root), "launcher",
            "-j", "serial", "-t", str(wall_time_min), "--worker"]
    for k, v in filter_tags.items():
        args += ["--tag", f"{k}={v}"]
    if batch_job:
        args += ["--batch-job", batch_job]
    if idle_ttl is not None:
        args += ["--idle-ttl", str(idle_ttl)]
    if max_jobs is not None:
        args += ["--max-jobs", str(max_jobs)]
    argv = worker_argv(machine, [n.name for n in nodes], args)
    import logging
    log = logging.getLogger("spoolbalsam.launcher")
    log.info("starting %d serial workers: %s", len(nodes), shlex.join(argv))
    env = dict(os.environ)
    if machine.max_mpiexec_per_batch_job:
        # The batch job's mpiexec budget, less the one launch that starts the workers,
        # shared equally: workers never talk to each other.
        share = max((machine.max_mpiexec_per_batch_job - 1) // len(nodes), 0)
        env["SPOOL_MPIEXEC_BUDGET"] = str(share)
    proc = subprocess.Popen(argv, start_new_session=True, env=env)

    def forward(sig, _frame):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while proc.poll() is None:
        time.sleep(0.2)
    return f"{len(nodes)} serial workers exited with code {proc.returncode}"
