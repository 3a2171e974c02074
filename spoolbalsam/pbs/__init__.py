"""Batch-scheduler interfaces: PBS Pro (Aurora, Polaris), Slurm, and a local no-scheduler backend.

    from spoolbalsam.pbs import get_backend, render_job_script
    text = render_job_script("aurora", job_name="qlaunch00042", project="P", queue="debug",
                             num_nodes=2, wall_time_min=90, site_path=str(site),
                             launcher_cmd=cmdline, script_path=str(script))
    write_job_script(script, text)
    sched_id = get_backend("pbs").submit(script, queue="debug", project="P", num_nodes=2,
                                         wall_time_min=90, job_name="qlaunch00042", cwd=site,
                                         extra={"filesystems": "home:flare"})

``base`` states the contract; ``pbs``, ``slurm`` and ``local`` implement it as pure
build/parse functions plus one small class each; ``cmd.run`` is the only place a
scheduler command is executed; ``script`` renders the job-script templates.
"""
from spoolbalsam.pbs.base import (FINISHED, QUEUED, RUNNING, STATES, UNKNOWN, Backend,
                                  SchedStatus, SchedulerError, exit_code_path, get_backend,
                                  output_path, read_exit_code)
from spoolbalsam.pbs.script import render_job_script, walltime_hms, write_job_script

__all__ = [
    "Backend", "SchedStatus", "SchedulerError", "get_backend", "render_job_script",
    "write_job_script", "walltime_hms", "exit_code_path", "output_path", "read_exit_code",
    "STATES", "QUEUED", "RUNNING", "FINISHED", "UNKNOWN",
]
