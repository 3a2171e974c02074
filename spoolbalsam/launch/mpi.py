"""Pure argv builders for MPI launchers (PALS mpiexec, MPICH hydra mpiexec, Slurm srun).

Guarantees
----------
* Every builder returns an argv list; nothing is joined into a shell string and
  no value is ever shell-parsed, so spaces, quotes, ``;`` and ``,`` in values
  and in the command reach the program unchanged.
* Pure: no processes, no environment reads, no clock.
* ``job_argv`` gives each rank its own slice of the job's gpus on any number of
  nodes (Balsam only did this for single-node jobs) through ``gpu_bind.sh``, a
  POSIX sh wrapper that reads the launcher's node-local rank variable.

Flag spellings (checked against the launchers' documentation)
-------------------------------------------------------------
PALS (Aurora, Polaris; ALCF guides and the PALS mpiexec CLI)::

    mpiexec -n N -ppn P --hosts h1,h2 [--cpu-bind X] -d T --env K=V ... [--key value] cmd

  ``-d`` is ``--depth`` (cpus per rank); the local rank is ``PALS_LOCAL_RANKID``.

MPICH hydra (mpiexec(1); run here with MPICH 4.0.2)::

    mpiexec -n N -ppn P -hosts h1,h2 [-bind-to X] -genv K V ... [-key value] cmd

  Hydra has no depth flag; threads come from ``OMP_NUM_THREADS``. The local rank
  is ``MPI_LOCALRANKID`` (hydra 4.0.2 does not set ``PMI_LOCAL_RANK``). Outside
  Slurm, host names that do not resolve (or no ssh) need ``-launcher fork``:
  pass ``launch_params={"launcher": "fork"}`` (the ``local`` machine's default).
  Inside a Slurm allocation hydra starts its proxies with srun by itself.

Slurm srun (srun(1))::

    srun -n N --ntasks-per-node P --nodes K --nodelist h1,h2 --cpus-per-task T
         [--cpu-bind=X] --export=ALL [--key=value] env K=V ... cmd

  Variables go through ``env(1)`` rather than ``--export=ALL,K=V``: srun splits
  ``--export`` at commas (gpu lists contain commas) and, with ``ALL``, lets the
  caller's existing variables win over the explicit ones. The local rank is
  ``SLURM_LOCALID``. Packed steps on one node may need ``launch_params
  {"overlap": ""}``.

``launch_params`` keys are launcher options without dashes; ``_`` becomes ``-``;
an empty value gives a bare flag.
"""
from __future__ import annotations

from importlib import resources as _resources
from typing import TYPE_CHECKING, Mapping, Sequence

from .resources import Placement, Request, rank_cpu_lists

if TYPE_CHECKING:  # pragma: no cover
    from spoolbalsam.machines.base import Machine

LOCAL_RANK_VAR = {
    "pals": "PALS_LOCAL_RANKID",
    "hydra": "MPI_LOCALRANKID",
    "srun": "SLURM_LOCALID",
}
"""The node-local rank variable each launcher sets in every rank's environment."""

RANK_GPUS_VAR = "SPOOL_RANK_GPUS"
GPU_ENV_VAR = "SPOOL_GPU_ENV"
RANK_VAR_VAR = "SPOOL_LOCAL_RANK_VAR"
SHELL = "/bin/sh"


def gpu_bind_script() -> str:
    """Absolute path of ``gpu_bind.sh`` inside the installed package."""
    return str(_resources.files("spoolbalsam.launch").joinpath("gpu_bind.sh"))


def _option_name(key: str) -> str:
    return key.lstrip("-").replace("_", "-")


def _bare(value: object) -> bool:
    """A launch param with no value is a bare flag."""
    return value is None or value == ""


def mpi_argv(flavour: str, *, hosts: Sequence[str], ranks_per_node: int, threads_per_rank: int,
             cpu_bind: str | None, env: Mapping[str, str], launch_params: Mapping[str, str],
             command: Sequence[str]) -> list[str]:
    """The launcher command line that runs ``command`` on ``hosts``.

    Parameters
    ----------
    flavour
        ``"pals"``, ``"hydra"`` or ``"srun"``.
    cpu_bind
        Launcher binding spec (PALS ``--cpu-bind``, hydra ``-bind-to``, srun
        ``--cpu-bind``), or ``None`` to leave the launcher's default.
    env
        Variables set in every rank, in this order.
    launch_params
        Extra launcher options (see the module docstring).

    Raises ``ValueError`` on an unknown flavour, no hosts, or an empty command.
    """
    if not hosts:
        raise ValueError("no hosts to run on")
    if not command:
        raise ValueError("empty command")
    if ranks_per_node < 1 or threads_per_rank < 1:
        raise ValueError("ranks_per_node and threads_per_rank must be >= 1")
    ranks = str(len(hosts) * ranks_per_node)
    host_list = ",".join(hosts)
    argv: list[str]
    if flavour == "pals":
        argv = ["mpiexec", "-n", ranks, "-ppn", str(ranks_per_node), "--hosts", host_list]
        if cpu_bind:
            argv += ["--cpu-bind", cpu_bind]
        argv += ["-d", str(threads_per_rank)]
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        for k, v in launch_params.items():
            argv += [f"--{_option_name(k)}"] + ([] if _bare(v) else [str(v)])
        return argv + list(command)
    if flavour == "hydra":
        argv = ["mpiexec", "-n", ranks, "-ppn", str(ranks_per_node), "-hosts", host_list]
        if cpu_bind:
            argv += ["-bind-to", cpu_bind]
        for k, v in env.items():
            argv += ["-genv", k, str(v)]
        for k, v in launch_params.items():
            argv += [f"-{_option_name(k)}"] + ([] if _bare(v) else [str(v)])
        return argv + list(command)
    if flavour == "srun":
        argv = ["srun", "-n", ranks, "--ntasks-per-node", str(ranks_per_node),
                "--nodes", str(len(hosts)), "--nodelist", host_list,
                "--cpus-per-task", str(threads_per_rank)]
        if cpu_bind:
            argv.append(f"--cpu-bind={cpu_bind}")
        argv.append("--export=ALL")
        for k, v in launch_params.items():
            argv.append(f"--{_option_name(k)}" + ("" if _bare(v) else f"={v}"))
        if env:
            argv += ["env"] + [f"{k}={v}" for k, v in env.items()]
        return argv + list(command)
    raise ValueError(f"unknown MPI flavour {flavour!r}; known: {', '.join(LOCAL_RANK_VAR)}")


def rank_gpu_binding(flavour: str, gpu_env: str,
                     rank_masks: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Environment and command prefix that give local rank ``r`` the mask ``rank_masks[r]``.

    Returns ``({}, [])`` when every rank gets the same mask: then the caller sets
    ``gpu_env`` directly and no wrapper runs.
    """
    if not rank_masks:
        return {}, []
    if len(set(rank_masks)) == 1:
        return {gpu_env: rank_masks[0]}, []
    if any(";" in m or not m for m in rank_masks):
        raise ValueError(f"gpu masks may not be empty or contain ';': {list(rank_masks)}")
    env = {GPU_ENV_VAR: gpu_env, RANK_VAR_VAR: LOCAL_RANK_VAR[flavour],
           RANK_GPUS_VAR: ";".join(rank_masks)}
    return env, [SHELL, gpu_bind_script()]


def cpu_bind_list(placement: Placement, request: Request, sibling_stride: int) -> str | None:
    """PALS ``list:`` binding of each local rank to its own cores of ``placement``.

    ``None`` when the hosts were given different cores (PALS applies one list to
    every node) or a rank would get no core.
    """
    if any(c != placement.cpus[0] for c in placement.cpus[1:]):
        return None
    per_rank = rank_cpu_lists(placement.cpus[0], request.ranks_per_node,
                              request.threads_per_rank, request.threads_per_core,
                              sibling_stride)
    if any(not cpus for cpus in per_rank):
        return None
    return "list:" + ":".join(",".join(str(c) for c in cpus) for cpus in per_rank)


def job_argv(machine: "Machine", placement: Placement, request: Request,
             command: Sequence[str], *, env: Mapping[str, str] | None = None,
             launch_params: Mapping[str, str] | None = None) -> list[str]:
    """The full MPI command line for one placed job on ``machine``.

    Environment, in order: ``OMP_NUM_THREADS``, the machine's gpu constants
    (e.g. ``ZE_FLAT_DEVICE_HIERARCHY``), the gpu mask (one mask for all ranks) or
    the per-rank wrapper's variables, then the job's own ``env`` (which wins).
    ``launch_params`` (over the machine's ``default_launch_params``) may hold
    ``cpu_bind``; otherwise PALS binds each rank to its own placed cores with
    ``--cpu-bind list:...`` and the other launchers keep their default.
    """
    params = {**machine.default_launch_params, **(launch_params or {})}
    cpu_bind = params.pop("cpu_bind", None)
    if cpu_bind is None and machine.mpi_flavour == "pals":
        stride = machine.cpus_per_node if machine.hw_threads_per_core > 1 else 0
        cpu_bind = cpu_bind_list(placement, request, stride)
    full_env: dict[str, str] = {"OMP_NUM_THREADS": str(request.threads_per_rank)}
    prefix: list[str] = []
    gpus = placement.gpus[0]
    if gpus and request.gpus_per_rank > 0:
        if any(g != gpus for g in placement.gpus[1:]):
            raise ValueError("per-rank gpu binding needs the same gpu ids on every host")
        full_env.update(machine.gpu_env_constants())
        masks = [machine.gpu_mask(placement.rank_gpus(r, request.gpus_per_rank_exact))
                 for r in range(request.ranks_per_node)]
        bind_env, prefix = rank_gpu_binding(machine.mpi_flavour, machine.gpu_env, masks)
        full_env.update(bind_env)
    full_env.update(env or {})
    return mpi_argv(machine.mpi_flavour, hosts=placement.hosts,
                    ranks_per_node=request.ranks_per_node,
                    threads_per_rank=request.threads_per_rank, cpu_bind=cpu_bind,
                    env=full_env, launch_params=params, command=prefix + list(command))
