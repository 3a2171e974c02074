"""This computer, no batch scheduler: one node (or the ``SPOOL_NODES`` it is told).

Runs MPI with MPICH hydra and ``-launcher fork``: every rank starts on this
host even when ``SPOOL_NODES`` names pretend nodes, with no ssh needed. Gpus
default to none; set ``gpu_ids`` (CUDA_VISIBLE_DEVICES ids) in settings.
"""
import os

from .base import Machine, QueueLimits

MACHINE = Machine(
    name="local",
    scheduler="local",
    cpus_per_node=os.cpu_count() or 1,
    gpu_ids=(),
    mpi_flavour="hydra",
    gpu_env="CUDA_VISIBLE_DEVICES",
    queues={"local": QueueLimits(max_nodes=1024, max_walltime_min=7 * 24 * 60,
                                 max_queued_jobs=1000)},
    job_template="job-local.sh.j2",
    max_mpiexec_per_batch_job=None,
    max_concurrent_mpiruns=1000,
    default_launch_params={"launcher": "fork"},
)
