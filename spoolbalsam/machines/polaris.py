"""ALCF Polaris: PBS Pro, 32 cores and 4 NVIDIA A100 per node, PALS mpiexec.

Facts (ALCF Polaris guides): logical cpus i and i + 32 are the hyperthreads of
core i; GPUs are bound in reverse order (GPU 3 is nearest the lowest cores), so
gpu ids are listed 3, 2, 1, 0 and handed out in that order; masks use
``CUDA_VISIBLE_DEVICES`` with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
Queues: debug (2 nodes, 1 h), prod (496 nodes, 24 h), preemptable (10 nodes,
20 queued, 72 h).
"""
from .base import Machine, QueueLimits

MACHINE = Machine(
    name="polaris",
    scheduler="pbs",
    cpus_per_node=32,
    gpu_ids=("3", "2", "1", "0"),
    mpi_flavour="pals",
    gpu_env="CUDA_VISIBLE_DEVICES",
    queues={
        "debug": QueueLimits(max_nodes=2, max_walltime_min=60, max_queued_jobs=100),
        "prod": QueueLimits(max_nodes=496, max_walltime_min=1440, max_queued_jobs=100),
        "preemptable": QueueLimits(max_nodes=10, max_walltime_min=4320, max_queued_jobs=20),
    },
    job_template="job-polaris.sh.j2",
    max_mpiexec_per_batch_job=None,
    max_concurrent_mpiruns=1000,
    hw_threads_per_core=2,
)
