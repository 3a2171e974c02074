"""A generic Slurm cluster (Perlmutter-, Frontier-like, or the test cluster).

Node names come from ``$SLURM_JOB_NODELIST``. Cores default to this host's
count and gpus to none; set ``cpus_per_node``, ``gpu_ids`` and ``mpi_flavour``
(``srun``, the default, or ``hydra``: MPICH's mpiexec, which starts its proxies
through srun inside an allocation) in settings.
"""
import os

from .base import Machine, QueueLimits

MACHINE = Machine(
    name="slurm",
    scheduler="slurm",
    cpus_per_node=os.cpu_count() or 1,
    gpu_ids=(),
    mpi_flavour="srun",
    gpu_env="CUDA_VISIBLE_DEVICES",
    queues={"debug": QueueLimits(max_nodes=100_000, max_walltime_min=7 * 24 * 60,
                                 max_queued_jobs=1000)},
    job_template="job-slurm.sh.j2",
    max_mpiexec_per_batch_job=None,
    max_concurrent_mpiruns=1000,
)
