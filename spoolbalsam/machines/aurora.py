"""ALCF Aurora: PBS Pro, 104 cores and 6 GPUs x 2 tiles per node, PALS mpiexec.

Facts (ALCF "Running Jobs on Aurora" user guide):
* Cores 0 and 52 (the first core of each socket) are reserved for system
  services since 2025-03-31; they are never given to jobs here.
* Logical cpus i and i + 104 are the two hyperthreads of core i.
* Tiles are ``gpu.tile`` in ``ZE_AFFINITY_MASK`` under
  ``ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE`` (the Aurora PE default, which the tile
  helper scripts require); ``tile_hierarchy: FLAT`` in settings switches the
  masks to tile ordinals 0..11. ``gpus_per_rank = 1`` is one tile, 2 a GPU.
* Queues: debug 1-2 nodes, debug-scaling 2-31, 1 job per user each, 1 h; prod
  up to 2048 nodes, 100 queued jobs per project, 18 h.
* For a time a batch job could start only ~1000 mpiexec ensembles; the limit
  is kept as ``max_mpiexec_per_batch_job`` and may be overridden in settings.
"""
from .base import Machine, QueueLimits

MACHINE = Machine(
    name="aurora",
    scheduler="pbs",
    cpus_per_node=104,
    gpu_ids=tuple(f"{gpu}.{tile}" for gpu in range(6) for tile in range(2)),
    mpi_flavour="pals",
    gpu_env="ZE_AFFINITY_MASK",
    queues={
        "debug": QueueLimits(max_nodes=2, max_walltime_min=60, max_queued_jobs=1),
        "debug-scaling": QueueLimits(max_nodes=31, max_walltime_min=60, max_queued_jobs=1),
        "prod": QueueLimits(max_nodes=2048, max_walltime_min=1080, max_queued_jobs=100),
    },
    job_template="job-aurora.sh.j2",
    max_mpiexec_per_batch_job=1000,
    max_concurrent_mpiruns=1000,
    tile_hierarchy="COMPOSITE",
    tiles_per_gpu=2,
    hw_threads_per_core=2,
    reserved_cpu_ids=(0, 52),
)
