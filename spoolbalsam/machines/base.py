"""What a machine is: scheduler, node resources, MPI launcher flavour, GPU variables, queues.

Guarantees
----------
* A ``Machine`` is frozen data, checked when built (``validate``); one module per
  machine defines one ``MACHINE`` and nothing else needs to change but the
  registry line in ``machines/__init__.py``.
* ``node_names`` reads only the mapping it is given (plus ``PBS_NODEFILE``'s
  file, or the host name for the local machine); Slurm host lists are expanded
  here, purely, without ``scontrol``.
* ``gpu_env_for`` is the one place that turns gpu ids into environment
  variables; the per-rank wrapper receives strings made by ``gpu_mask``.

Node list sources, first match wins: ``SPOOL_NODES="a,b"`` (explicit override, any
machine), then the scheduler's own: PBS ``$PBS_NODEFILE`` (one host per line,
repeats dropped, order kept), Slurm ``$SLURM_JOB_NODELIST`` (or
``$SLURM_NODELIST``), local: this host's name.
"""
from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping

from spoolbalsam.launch.resources import NodeSpec

SCHEDULERS = ("local", "pbs", "slurm")
MPI_FLAVOURS = ("pals", "hydra", "srun")
TILE_HIERARCHIES = (None, "COMPOSITE", "FLAT")

OVERRIDABLE = ("cpus_per_node", "gpu_ids", "tile_hierarchy", "max_mpiexec_per_batch_job",
               "max_concurrent_mpiruns", "mpi_flavour", "reserved_cpu_ids",
               "default_launch_params")
"""Fields that ``settings.yml`` may override through ``Machine.with_overrides``."""


@dataclass(frozen=True)
class QueueLimits:
    """Per-queue limits of the batch scheduler (per user / project, as the site states them)."""

    max_nodes: int
    max_walltime_min: int
    max_queued_jobs: int


@dataclass(frozen=True)
class Machine:
    """One machine description. See the module docstring for node discovery.

    Attributes beyond the obvious
    -----------------------------
    gpu_env
        Variable that restricts a process to its gpus: ``ZE_AFFINITY_MASK``
        (Intel Level Zero) or ``CUDA_VISIBLE_DEVICES``; ``""`` without gpus.
    tile_hierarchy
        Aurora's ``ZE_FLAT_DEVICE_HIERARCHY``. Under ``COMPOSITE`` a GPU is one
        device with tiles as sub-devices, and ``ZE_AFFINITY_MASK`` takes
        ``gpu.tile`` ids (``0.1``); under ``FLAT`` each tile is its own device
        and the mask takes plain ordinals (tile ``g.t`` is
        ``g * tiles_per_gpu + t``). Gpu ids inside spoolbalsam stay ``g.t``
        either way; only the mask string changes.
    reserved_cpu_ids
        Cores the site keeps for system services; never given to jobs.
    default_launch_params
        Extra launcher options for every MPI run on this machine (merged under
        a job's own ``launch_params``).
    max_mpiexec_per_batch_job
        Total MPI launches one batch job may make (``None``: no limit).
    """

    name: str
    scheduler: str
    cpus_per_node: int
    gpu_ids: tuple[str, ...]
    mpi_flavour: str
    gpu_env: str
    queues: dict[str, QueueLimits]
    job_template: str
    max_mpiexec_per_batch_job: int | None = None
    max_concurrent_mpiruns: int = 1000
    tile_hierarchy: str | None = None
    tiles_per_gpu: int = 1
    hw_threads_per_core: int = 1
    reserved_cpu_ids: tuple[int, ...] = ()
    default_launch_params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is not consistent."""
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"{self.name}: scheduler {self.scheduler!r} not in {SCHEDULERS}")
        if self.mpi_flavour not in MPI_FLAVOURS:
            raise ValueError(f"{self.name}: mpi_flavour {self.mpi_flavour!r} "
                             f"not in {MPI_FLAVOURS}")
        if self.tile_hierarchy not in TILE_HIERARCHIES:
            raise ValueError(f"{self.name}: tile_hierarchy {self.tile_hierarchy!r} "
                             f"not in {TILE_HIERARCHIES}")
        if not isinstance(self.cpus_per_node, int) or self.cpus_per_node < 1:
            raise ValueError(f"{self.name}: cpus_per_node must be >= 1")
        if len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ValueError(f"{self.name}: repeated gpu ids")
        if self.gpu_ids and not self.gpu_env:
            raise ValueError(f"{self.name}: gpus without a gpu_env variable")
        if any(not 0 <= c < self.cpus_per_node for c in self.reserved_cpu_ids):
            raise ValueError(f"{self.name}: reserved_cpu_ids outside 0..{self.cpus_per_node - 1}")
        if len(self.reserved_cpu_ids) >= self.cpus_per_node:
            raise ValueError(f"{self.name}: every cpu is reserved")
        if not self.queues:
            raise ValueError(f"{self.name}: at least one queue is needed")
        if self.max_concurrent_mpiruns < 1:
            raise ValueError(f"{self.name}: max_concurrent_mpiruns must be >= 1")
        if self.max_mpiexec_per_batch_job is not None and self.max_mpiexec_per_batch_job < 1:
            raise ValueError(f"{self.name}: max_mpiexec_per_batch_job must be >= 1 or None")
        if self.tile_hierarchy == "FLAT":
            for g in self.gpu_ids:
                self._flat_ordinal(g)

    # -- nodes -------------------------------------------------------------------
    @property
    def cpu_ids(self) -> tuple[int, ...]:
        """Cores jobs may use: 0..cpus_per_node-1 without the reserved ones."""
        reserved = set(self.reserved_cpu_ids)
        return tuple(c for c in range(self.cpus_per_node) if c not in reserved)

    def node_names(self, environ: Mapping[str, str]) -> list[str]:
        """Host names of the current allocation, in scheduler order, without repeats.

        Raises ``ValueError`` when the scheduler's variable is missing (not inside
        a batch job) and ``SPOOL_NODES`` does not name the nodes either.
        """
        explicit = environ.get("SPOOL_NODES", "").strip()
        if explicit:
            return _unique(h.strip() for h in explicit.split(","))
        if self.scheduler == "pbs":
            path = environ.get("PBS_NODEFILE")
            if not path:
                raise ValueError(f"{self.name}: PBS_NODEFILE is not set (not inside a PBS job?); "
                                 "set SPOOL_NODES=host1,host2 to name nodes")
            with open(path, encoding="utf-8") as f:
                return parse_nodefile(f.read())
        if self.scheduler == "slurm":
            nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
            if not nodelist:
                raise ValueError(f"{self.name}: SLURM_JOB_NODELIST is not set (not inside a "
                                 "Slurm job?); set SPOOL_NODES=host1,host2 to name nodes")
            return expand_slurm_nodelist(nodelist)
        return [socket.gethostname()]

    def node_specs(self, environ: Mapping[str, str]) -> list[NodeSpec]:
        """One ``NodeSpec`` per allocated node, all with this machine's cpu and gpu ids."""
        cpus, gpus = self.cpu_ids, tuple(self.gpu_ids)
        return [NodeSpec(name, cpus, gpus) for name in self.node_names(environ)]

    # -- gpus --------------------------------------------------------------------
    def _flat_ordinal(self, gpu_id: str) -> str:
        device, dot, tile = gpu_id.partition(".")
        if not dot:
            return gpu_id
        if not (device.isdigit() and tile.isdigit() and int(tile) < self.tiles_per_gpu):
            raise ValueError(f"{self.name}: gpu id {gpu_id!r} is not GPU.TILE "
                             f"with tile < {self.tiles_per_gpu}")
        return str(int(device) * self.tiles_per_gpu + int(tile))

    def gpu_mask(self, gpus: tuple[str, ...] | list[str]) -> str:
        """The value of ``gpu_env`` that shows exactly ``gpus`` (comma-separated)."""
        if self.tile_hierarchy == "FLAT":
            return ",".join(self._flat_ordinal(g) for g in gpus)
        return ",".join(gpus)

    def gpu_env_constants(self) -> dict[str, str]:
        """Variables that go with every gpu mask on this machine (same for all ranks)."""
        if self.gpu_env == "ZE_AFFINITY_MASK":
            env = {}
            if self.tile_hierarchy:
                env["ZE_FLAT_DEVICE_HIERARCHY"] = self.tile_hierarchy
            env["ZE_ENABLE_PCI_ID_DEVICE_ORDER"] = "1"
            return env
        if self.gpu_env == "CUDA_VISIBLE_DEVICES":
            return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        return {}

    def gpu_env_for(self, gpus: tuple[str, ...] | list[str]) -> dict[str, str]:
        """Environment that restricts a process to ``gpus``; ``{}`` for no gpus (no restriction)."""
        if not gpus:
            return {}
        return {self.gpu_env: self.gpu_mask(gpus), **self.gpu_env_constants()}

    # -- settings ----------------------------------------------------------------
    def with_overrides(self, **kw: Any) -> "Machine":
        """A copy with site settings applied; only fields in ``OVERRIDABLE`` may change.

        Values are coerced: ``gpu_ids`` to a tuple of strings, ``reserved_cpu_ids``
        to a tuple of ints, counts to ints. Raises ``ValueError`` on unknown keys
        or inconsistent results.
        """
        unknown = sorted(set(kw) - set(OVERRIDABLE))
        if unknown:
            raise ValueError(f"{self.name}: cannot override {', '.join(unknown)}; "
                             f"allowed: {', '.join(OVERRIDABLE)}")
        changes: dict[str, Any] = {}
        for key, value in kw.items():
            if key == "gpu_ids":
                value = tuple(str(g) for g in (value or ()))
            elif key == "reserved_cpu_ids":
                value = tuple(int(c) for c in (value or ()))
            elif key == "default_launch_params":
                value = {str(k): "" if v is None else str(v) for k, v in (value or {}).items()}
            elif key in ("cpus_per_node", "max_concurrent_mpiruns"):
                value = int(value)
            elif key == "max_mpiexec_per_batch_job":
                value = None if value is None else int(value)
            changes[key] = value
        if "gpu_ids" in changes and changes["gpu_ids"] and not self.gpu_env:
            raise ValueError(f"{self.name}: gpu_ids given but the machine has no gpu_env")
        if "cpus_per_node" in changes and "reserved_cpu_ids" not in changes:
            n = changes["cpus_per_node"]
            changes["reserved_cpu_ids"] = tuple(c for c in self.reserved_cpu_ids if c < n)
        return dataclasses.replace(self, **changes)


def _unique(names: Any) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def parse_nodefile(text: str) -> list[str]:
    """Host names of a ``$PBS_NODEFILE``: one per line, blank lines and repeats dropped."""
    return _unique(line.strip() for line in text.splitlines())


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in Slurm node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in Slurm node list {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_ranges(body: str, whole: str) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.match(item.strip())
        if not m:
            raise ValueError(f"bad range {item!r} in Slurm node list {whole!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in Slurm node list {whole!r}")
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def _expand_name(name: str, whole: str) -> list[str]:
    """Expand one host pattern; several bracket groups give their product, left one slowest."""
    open_at = name.find("[")
    if open_at < 0:
        if "]" in name:
            raise ValueError(f"unbalanced ']' in Slurm node list {whole!r}")
        return [name]
    close_at = name.find("]", open_at)
    if close_at < 0:
        raise ValueError(f"unbalanced '[' in Slurm node list {whole!r}")
    prefix, body, suffix = name[:open_at], name[open_at + 1:close_at], name[close_at + 1:]
    tails = _expand_name(suffix, whole) if suffix else [""]
    return [prefix + value + tail for value in _expand_ranges(body, whole) for tail in tails]


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list (``n[1-4]``, ``a[01-03,7],b5``, ``r[1-2]-n[1-2]``), order kept.

    Zero padding follows the width of the range's first number (``a[08-10]`` is
    a08 a09 a10). Repeats are dropped. Raises ``ValueError`` on malformed input.
    """
    names: list[str] = []
    for part in _split_top(nodelist.strip()):
        names.extend(_expand_name(part, nodelist))
    return _unique(names)
