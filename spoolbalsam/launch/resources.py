"""What a job asks for, what a node has, and what a job was given.

Guarantees
----------
* Every quantity the placer compares is an integer. Node packing is counted in
  occupancy *units*: a node holds ``NODE_UNITS`` (720720, divisible by every
  integer 1..16) and a job with ``node_packing_count = k`` takes
  ``NODE_UNITS // k``, so exactly ``k`` such jobs share a node for every
  ``k <= MAX_NODE_PACKING`` (no 0.999/1.001 fudges as in Balsam).
* Fractional ``gpus_per_rank`` (0.5: two ranks share a GPU) is exact: it is read
  as a fraction with denominator at most 10,000.
* ``Request``, ``NodeSpec`` and ``Placement`` are frozen and hashable; a
  ``Placement`` survives a JSON round trip unchanged.

GPU ids are strings: ``"0.0" .. "5.1"`` (GPU.tile) on Aurora, ``"0" .. "3"``
elsewhere. A node's ``gpu_ids`` order is its allocation order ("lowest first").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from fractions import Fraction
from typing import Any, Mapping, Sequence

NODE_UNITS = 720720
"""Occupancy units of one node: lcm(1..16), so 1/k of a node is exact for k <= 16."""

MAX_NODE_PACKING = 720
"""Largest node_packing_count for which exactly k jobs share a node."""

_GPU_DENOMINATOR = 10_000

_INT_FIELDS = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core",
               "node_packing_count")


def _as_fraction(value: float | int | str | Fraction) -> Fraction:
    """An exact fraction for a gpus_per_rank value (0.1 is 1/10, not a binary float)."""
    return Fraction(value).limit_denominator(_GPU_DENOMINATOR)


def share_slice(index: int, per_item: Fraction) -> range:
    """Positions given to item ``index`` when each item needs ``per_item`` slots.

    Item ``i`` covers ``[floor(i * per_item), ceil((i + 1) * per_item))``: whole
    slots are its own, a fractional slot is shared with its neighbour
    (``per_item = 1/2``: items 0 and 1 share slot 0).
    """
    start = math.floor(index * per_item)
    stop = max(math.ceil((index + 1) * per_item), start + 1)
    return range(start, stop)


@dataclass(frozen=True)
class Request:
    """What one job asks for (Balsam's resource fields, same meanings).

    Multi-node jobs (``num_nodes > 1``) get whole nodes; ``node_packing_count``
    only matters for single-node jobs. ``gpus_per_rank`` counts the machine's GPU
    ids: on Aurora 1 is one tile and 2 a whole GPU.
    """

    num_nodes: int = 1
    ranks_per_node: int = 1
    threads_per_rank: int = 1
    threads_per_core: int = 1
    gpus_per_rank: float = 0
    node_packing_count: int = 1

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.node_packing_count > MAX_NODE_PACKING:
            raise ValueError(f"node_packing_count must be <= {MAX_NODE_PACKING}, "
                             f"got {self.node_packing_count}")
        gpr = self.gpus_per_rank
        if isinstance(gpr, bool) or not isinstance(gpr, (int, float)) or not gpr >= 0 \
                or math.isinf(gpr):
            raise ValueError(f"gpus_per_rank must be a number >= 0, got {gpr!r}")

    @classmethod
    def from_job(cls, rec: Mapping[str, Any]) -> "Request":
        """Read the resource fields of a job record; missing or null keys take defaults.

        Raises ``ValueError`` on values that are not numbers or are out of range.
        """
        kw: dict[str, Any] = {}
        for name in _INT_FIELDS:
            value = rec.get(name)
            if value is not None:
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                if isinstance(value, str):
                    try:
                        value = int(value)
                    except ValueError:
                        raise ValueError(f"{name} must be an integer, got {value!r}") from None
                kw[name] = value
        gpr = rec.get("gpus_per_rank")
        if gpr is not None:
            try:
                kw["gpus_per_rank"] = float(gpr) if not isinstance(gpr, int) else gpr
            except (TypeError, ValueError):
                raise ValueError(f"gpus_per_rank must be a number, got {gpr!r}") from None
        return cls(**kw)

    @property
    def exclusive(self) -> bool:
        """True when the job takes whole idle nodes (multi-node jobs)."""
        return self.num_nodes > 1

    @cached_property
    def gpus_per_rank_exact(self) -> Fraction:
        return _as_fraction(self.gpus_per_rank)

    @cached_property
    def cpus_per_node(self) -> int:
        """Cores this job needs on each node: ceil(ranks * threads / threads_per_core)."""
        return -(-self.ranks_per_node * self.threads_per_rank // self.threads_per_core)

    @cached_property
    def gpus_per_node(self) -> int:
        """GPU ids this job needs on each node: ceil(ranks * gpus_per_rank)."""
        if isinstance(self.gpus_per_rank, int) or self.gpus_per_rank.is_integer():
            return self.ranks_per_node * int(self.gpus_per_rank)
        return math.ceil(self.ranks_per_node * self.gpus_per_rank_exact)

    @cached_property
    def units_per_node(self) -> int:
        """Occupancy units taken on each node (all of it for multi-node jobs)."""
        if self.exclusive:
            return NODE_UNITS
        return NODE_UNITS // self.node_packing_count


@dataclass(frozen=True)
class NodeSpec:
    """One node of an allocation: its name and the cpu (core) and gpu ids usable by jobs."""

    name: str
    cpu_ids: tuple[int, ...]
    gpu_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a node needs a name")
        if len(set(self.cpu_ids)) != len(self.cpu_ids):
            raise ValueError(f"node {self.name}: repeated cpu ids")
        if len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ValueError(f"node {self.name}: repeated gpu ids")


@dataclass(frozen=True)
class Placement:
    """Where one job runs: per host, the cpu and gpu ids given to it.

    ``units`` is the occupancy taken on each host (``NODE_UNITS`` for a node
    held exclusively). Hosts of one placement are distinct.
    """

    hosts: tuple[str, ...]
    cpus: tuple[tuple[int, ...], ...]
    gpus: tuple[tuple[str, ...], ...]
    units: int = NODE_UNITS

    def __post_init__(self) -> None:
        if not (len(self.hosts) == len(self.cpus) == len(self.gpus)) or not self.hosts:
            raise ValueError("a placement needs one cpu and one gpu tuple per host")
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError("a placement names each host once")

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    def rank_gpus(self, local_rank: int, gpus_per_rank: float | Fraction,
                  host: int = 0) -> tuple[str, ...]:
        """The gpu ids of one local rank: its own slice of this host's gpus.

        Rank ``r`` gets positions ``share_slice(r, gpus_per_rank)``: with 1 gpu per
        rank, rank 3 gets the 4th id; with 2, ids 6 and 7; with 0.5, ranks 2 and 3
        share the 2nd id. Returns ``()`` when ``gpus_per_rank`` is 0.

        Raises ``IndexError`` if the slice lies beyond the gpus of the placement.
        """
        per_rank = _as_fraction(gpus_per_rank)
        if per_rank == 0:
            return ()
        ids = self.gpus[host]
        positions = share_slice(local_rank, per_rank)
        if local_rank < 0 or positions.stop > len(ids):
            raise IndexError(f"local rank {local_rank} with {gpus_per_rank} gpus per rank "
                             f"needs gpu positions up to {positions.stop}, "
                             f"placement has {len(ids)}")
        return tuple(ids[i] for i in positions)

    def to_json(self) -> dict[str, Any]:
        return {"hosts": list(self.hosts), "cpus": [list(c) for c in self.cpus],
                "gpus": [list(g) for g in self.gpus], "units": self.units}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Placement":
        return cls(hosts=tuple(str(h) for h in data["hosts"]),
                   cpus=tuple(tuple(int(c) for c in cs) for cs in data["cpus"]),
                   gpus=tuple(tuple(str(g) for g in gs) for gs in data["gpus"]),
                   units=int(data.get("units", NODE_UNITS)))


def rank_cpu_lists(cpus: Sequence[int], ranks_per_node: int, threads_per_rank: int,
                   threads_per_core: int = 1, sibling_stride: int = 0) -> list[list[int]]:
    """Logical cpu ids for each local rank, from the cores a job was given.

    Rank ``r`` gets ``share_slice(r, threads_per_rank / threads_per_core)`` of
    ``cpus`` (ranks that need half a core share one). When ``threads_per_core > 1``
    each core also contributes its hyperthread siblings ``core + k * sibling_stride``
    for ``k = 1 .. threads_per_core - 1`` (Aurora: logical cpus i and i + 104 share
    core i; Polaris: i and i + 32).
    """
    per_rank = Fraction(threads_per_rank, threads_per_core)
    out: list[list[int]] = []
    for r in range(ranks_per_node):
        cores = [cpus[i] for i in share_slice(r, per_rank) if i < len(cpus)]
        logical = list(cores)
        if threads_per_core > 1 and sibling_stride:
            for k in range(1, threads_per_core):
                logical.extend(c + k * sibling_stride for c in cores)
        out.append(logical)
    return out
