"""Pure placement of jobs on the nodes of one allocation, and the MPI-mode scheduling policy.

Guarantees
----------
* ``NodePool`` never gives a cpu or gpu id to two live placements, never lets a
  node's occupancy exceed ``NODE_UNITS``, and ``release`` restores exactly what
  ``place`` took. ``validate()`` checks all of this from scratch.
* Multi-node jobs (``num_nodes > 1``) get whole idle nodes, exclusively.
  Single-node jobs are packed by occupancy (``node_packing_count``), free cores
  (``ceil(ranks * threads / threads_per_core)``) and free gpus
  (``ceil(ranks * gpus_per_rank)``); within a node the lowest free ids (in the
  node's id order) are given first.
* Node choice for single-node jobs is *best fit*: the node with the fewest free
  gpus, then cores, then occupancy that still fits. Partly used nodes fill up
  before idle ones are opened, which keeps whole nodes free for multi-node jobs.
* Cost scales with the work, not with nodes x jobs: nodes are indexed by their
  free-capacity signature ``(units, cores, gpus)``, so a placement looks at one
  entry per distinct signature (a handful on a homogeneous machine), and idle
  nodes are kept in their own ordered index for multi-node jobs.
* Pure: no processes, no clock, no randomness; the same calls give the same result.

``choose`` is the pure policy the MPI-mode launcher calls each cycle; its
docstring states the policy.
"""
from __future__ import annotations

import heapq
from contextlib import contextmanager
from typing import Hashable, Iterator, MutableMapping, Sequence, TypeVar

from .resources import NODE_UNITS, NodeSpec, Placement, Request

__all__ = ["NodePool", "choose", "DEFAULT_PATIENCE"]

DEFAULT_PATIENCE = 3
"""Pass-overs after which a waiting job reserves nodes (see ``choose``)."""

K = TypeVar("K", bound=Hashable)


class _Layout:
    """Id tables shared by all nodes with the same cpu and gpu ids."""

    __slots__ = ("cpu_ids", "gpu_ids", "cpu_pos", "gpu_pos", "ncpus", "ngpus")

    def __init__(self, cpu_ids: tuple[int, ...], gpu_ids: tuple[str, ...]):
        self.cpu_ids = cpu_ids
        self.gpu_ids = gpu_ids
        self.cpu_pos = {c: i for i, c in enumerate(cpu_ids)}
        self.gpu_pos = {g: i for i, g in enumerate(gpu_ids)}
        self.ncpus = len(cpu_ids)
        self.ngpus = len(gpu_ids)


class _Node:
    """Mutable free state of one node. Bit i of a mask set = the i-th id is free."""

    __slots__ = ("index", "name", "layout", "cpu_mask", "gpu_mask", "ncpu", "ngpu",
                 "units", "live", "held")

    def __init__(self, index: int, name: str, layout: _Layout):
        self.index = index
        self.name = name
        self.layout = layout
        self.cpu_mask = (1 << layout.ncpus) - 1
        self.gpu_mask = (1 << layout.ngpus) - 1
        self.ncpu = layout.ncpus
        self.ngpu = layout.ngpus
        self.units = NODE_UNITS
        self.live = 0
        self.held = False

    @property
    def signature(self) -> tuple[int, int, int]:
        return (self.units, self.ncpu, self.ngpu)


def _take_lowest(mask: int, count: int) -> tuple[int, list[int]]:
    """Clear the ``count`` lowest set bits of ``mask``; return the new mask and their positions."""
    positions = []
    for _ in range(count):
        low = mask & -mask
        positions.append(low.bit_length() - 1)
        mask ^= low
    return mask, positions


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


class NodePool:
    """Free cores / gpus / occupancy of the nodes of one allocation.

    Parameters
    ----------
    nodes
        The allocation's nodes, in the order hosts should be preferred. Names
        must be distinct.
    """

    def __init__(self, nodes: Sequence[NodeSpec]):
        layouts: dict[tuple[tuple[int, ...], tuple[str, ...]], _Layout] = {}
        self._nodes: list[_Node] = []
        self._by_name: dict[str, int] = {}
        self._layout_counts: dict[_Layout, int] = {}
        for spec in nodes:
            if spec.name in self._by_name:
                raise ValueError(f"node {spec.name} is listed twice")
            key = (tuple(spec.cpu_ids), tuple(spec.gpu_ids))
            layout = layouts.get(key)
            if layout is None:
                layout = layouts[key] = _Layout(*key)
            self._layout_counts[layout] = self._layout_counts.get(layout, 0) + 1
            self._by_name[spec.name] = len(self._nodes)
            self._nodes.append(_Node(len(self._nodes), spec.name, layout))
        # signature -> ordered set of node indexes (dict keys); held nodes are in none.
        self._buckets: dict[tuple[int, int, int], dict[int, None]] = {}
        # idle (nothing running) and not held, in the order they became idle.
        self._idle: dict[int, None] = {}
        self._live: set[Placement] = set()
        self._held_count = 0
        for node in self._nodes:
            self._index(node)

    # -- index maintenance -------------------------------------------------
    def _index(self, node: _Node) -> None:
        if node.held:
            return
        self._buckets.setdefault(node.signature, {})[node.index] = None
        if node.live == 0:
            self._idle[node.index] = None

    def _unindex(self, node: _Node) -> None:
        if node.held:
            return
        sig = node.signature
        bucket = self._buckets[sig]
        del bucket[node.index]
        if not bucket:
            del self._buckets[sig]
        self._idle.pop(node.index, None)

    def _hold(self, node: _Node) -> None:
        """Take a node out of the indexes: ``place`` will not use it until ``_unhold``."""
        if not node.held:
            self._unindex(node)
            node.held = True
            self._held_count += 1

    def _unhold(self, node: _Node) -> None:
        if node.held:
            node.held = False
            self._held_count -= 1
            self._index(node)

    @contextmanager
    def _holding(self) -> Iterator[list[_Node]]:
        """Nodes appended to the yielded list are held until the block ends."""
        held: list[_Node] = []
        try:
            yield held
        finally:
            for node in held:
                self._unhold(node)

    # -- public API ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self._nodes)

    @property
    def live(self) -> frozenset[Placement]:
        """The placements given out and not yet released."""
        return frozenset(self._live)

    def idle_node_count(self) -> int:
        """Nodes with nothing placed on them."""
        if self._held_count:
            return sum(1 for n in self._nodes if n.live == 0)
        return len(self._idle)

    def busy(self) -> bool:
        """True while any placement is live."""
        return bool(self._live)

    def has_room(self) -> bool:
        """True if some unheld node has a free core and free occupancy (every job needs both)."""
        return any(sig[0] > 0 and sig[1] > 0 for sig in self._buckets)

    def place(self, req: Request) -> Placement | None:
        """Allocate resources for ``req`` now, or return ``None``; never blocks."""
        if req.exclusive:
            return self._place_exclusive(req)
        units, ncpu, ngpu = req.units_per_node, req.cpus_per_node, req.gpus_per_node
        best: tuple[int, int, int] | None = None
        for sig in self._buckets:
            if sig[0] >= units and sig[1] >= ncpu and sig[2] >= ngpu:
                if best is None or (sig[2], sig[1], sig[0]) < (best[2], best[1], best[0]):
                    best = sig
        if best is None:
            return None
        node = self._nodes[next(iter(self._buckets[best]))]
        cpus, gpus = self._take(node, ncpu, ngpu, units)
        placement = Placement((node.name,), (cpus,), (gpus,), units)
        self._live.add(placement)
        return placement

    def _place_exclusive(self, req: Request) -> Placement | None:
        count, ncpu, ngpu = req.num_nodes, req.cpus_per_node, req.gpus_per_node
        if len(self._idle) < count:
            return None
        chosen: list[_Node] = []
        for index in self._idle:
            node = self._nodes[index]
            if node.layout.ncpus >= ncpu and node.layout.ngpus >= ngpu:
                chosen.append(node)
                if len(chosen) == count:
                    break
        if len(chosen) < count:
            return None
        chosen.sort(key=lambda n: n.index)
        taken = [self._take(node, ncpu, ngpu, NODE_UNITS) for node in chosen]
        placement = Placement(tuple(n.name for n in chosen), tuple(t[0] for t in taken),
                              tuple(t[1] for t in taken), NODE_UNITS)
        self._live.add(placement)
        return placement

    def _take(self, node: _Node, ncpu: int, ngpu: int,
              units: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
        self._unindex(node)
        layout = node.layout
        node.cpu_mask, cpu_pos = _take_lowest(node.cpu_mask, ncpu)
        node.gpu_mask, gpu_pos = _take_lowest(node.gpu_mask, ngpu)
        node.ncpu -= ncpu
        node.ngpu -= ngpu
        node.units -= units
        node.live += 1
        self._index(node)
        return (tuple(layout.cpu_ids[i] for i in cpu_pos),
                tuple(layout.gpu_ids[i] for i in gpu_pos))

    def release(self, p: Placement) -> None:
        """Give back everything ``p`` holds. Raises ``ValueError`` if ``p`` is not live here."""
        if p not in self._live:
            raise ValueError(f"placement on {','.join(p.hosts)} is not live in this pool")
        self._live.remove(p)
        for host, cpus, gpus in zip(p.hosts, p.cpus, p.gpus):
            node = self._nodes[self._by_name[host]]
            self._unindex(node)
            layout = node.layout
            for c in cpus:
                node.cpu_mask |= 1 << layout.cpu_pos[c]
            for g in gpus:
                node.gpu_mask |= 1 << layout.gpu_pos[g]
            node.ncpu += len(cpus)
            node.ngpu += len(gpus)
            node.units += p.units
            node.live -= 1
            self._index(node)

    def fits_ever(self, req: Request) -> str | None:
        """``None`` if ``req`` could be placed on this pool when empty, else a one-line reason."""
        total = len(self._nodes)
        if req.num_nodes > total:
            return f"asks {req.num_nodes} nodes, the allocation has {total}"
        ncpu, ngpu = req.cpus_per_node, req.gpus_per_node
        fitting = sum(count for layout, count in self._layout_counts.items()
                      if layout.ncpus >= ncpu and layout.ngpus >= ngpu)
        if fitting >= req.num_nodes:
            return None
        max_cpus = max((l.ncpus for l in self._layout_counts), default=0)
        max_gpus = max((l.ngpus for l in self._layout_counts), default=0)
        if ncpu > max_cpus:
            return f"asks {ncpu} cpus per node, nodes have {max_cpus}"
        if ngpu > max_gpus:
            return f"asks {ngpu} gpus per node, nodes have {max_gpus}"
        if fitting == 0:
            return f"asks {ncpu} cpus and {ngpu} gpus per node, no node has both"
        return (f"asks {req.num_nodes} nodes with {ncpu} cpus and {ngpu} gpus, "
                f"only {fitting} nodes have that")

    def validate(self) -> None:
        """Raise ``AssertionError`` unless every invariant holds (recomputed from scratch).

        No cpu or gpu id is held by two live placements; free masks and counts are
        exactly the complement of what live placements hold; occupancy is within
        ``[0, NODE_UNITS]``; the indexes list every unheld node once, under its
        current signature, and the idle index holds exactly the unheld idle nodes.
        """
        used_cpus: list[set[int]] = [set() for _ in self._nodes]
        used_gpus: list[set[str]] = [set() for _ in self._nodes]
        used_units = [0] * len(self._nodes)
        live_count = [0] * len(self._nodes)
        for p in self._live:
            for host, cpus, gpus in zip(p.hosts, p.cpus, p.gpus):
                _check(host in self._by_name, f"live placement names unknown host {host}")
                i = self._by_name[host]
                for c in cpus:
                    _check(c not in used_cpus[i], f"cpu {c} of {host} given twice")
                    used_cpus[i].add(c)
                for g in gpus:
                    _check(g not in used_gpus[i], f"gpu {g} of {host} given twice")
                    used_gpus[i].add(g)
                used_units[i] += p.units
                live_count[i] += 1
                if p.num_nodes > 1:
                    _check(p.units == NODE_UNITS, f"multi-node placement on {host} not exclusive")
        indexed = 0
        for node in self._nodes:
            i, layout = node.index, node.layout
            free_cpus = {layout.cpu_ids[b] for b in range(layout.ncpus) if node.cpu_mask >> b & 1}
            free_gpus = {layout.gpu_ids[b] for b in range(layout.ngpus) if node.gpu_mask >> b & 1}
            _check(node.cpu_mask >> layout.ncpus == 0 and node.gpu_mask >> layout.ngpus == 0,
                   f"{node.name}: mask has bits beyond its ids")
            _check(not free_cpus & used_cpus[i], f"{node.name}: a used cpu is marked free")
            _check(not free_gpus & used_gpus[i], f"{node.name}: a used gpu is marked free")
            _check(len(free_cpus) + len(used_cpus[i]) == layout.ncpus,
                   f"{node.name}: cpus leaked or invented")
            _check(len(free_gpus) + len(used_gpus[i]) == layout.ngpus,
                   f"{node.name}: gpus leaked or invented")
            _check(node.ncpu == len(free_cpus) and node.ngpu == len(free_gpus),
                   f"{node.name}: free counts disagree with masks")
            _check(0 <= used_units[i] <= NODE_UNITS, f"{node.name}: occupancy exceeded")
            _check(node.units == NODE_UNITS - used_units[i], f"{node.name}: occupancy drifted")
            _check(node.live == live_count[i], f"{node.name}: live count drifted")
            in_bucket = node.index in self._buckets.get(node.signature, {})
            if node.held:
                _check(not in_bucket and node.index not in self._idle,
                       f"{node.name}: held node is indexed")
            else:
                indexed += 1
                _check(in_bucket, f"{node.name}: missing from its signature index")
                _check((node.index in self._idle) == (node.live == 0),
                       f"{node.name}: idle index wrong")
        _check(sum(len(b) for b in self._buckets.values()) == indexed,
               "signature index holds stale entries")
        _check(all(self._buckets.values()), "empty signature bucket kept")


def choose(pool: NodePool, candidates: Sequence[tuple[K, Request]], *,
           passed_over: MutableMapping[K, int] | None = None,
           patience: int | None = DEFAULT_PATIENCE,
           max_jobs: int | None = None) -> list[tuple[K, Placement]]:
    """Place as many waiting jobs as fit, in order, without head-of-line blocking or starvation.

    Policy
    ------
    1. Candidates are considered in the order given (the caller's priority).
       A candidate that could not fit even on the empty pool (``fits_ever``) is
       skipped; the caller reports it.
    2. A candidate that fits now is placed; one that does not is passed and the
       ones behind it still get their turn, so a job that does not fit never
       blocks those that do.
    3. A candidate is *passed over* in a call when it is not placed but some
       candidate behind it is; ``passed_over[key]`` counts such calls. Keep the
       same mapping between calls; entries of keys no longer among the
       candidates, and of keys that start, are dropped.
    4. A candidate passed over ``patience`` times *reserves*: before anything
       else is placed it is placed if it fits; otherwise it claims the
       ``num_nodes`` least-loaded nodes (fewest live jobs, then most free
       occupancy, then node order) that could hold it, and nothing else is placed
       on those nodes in this call. Claimed nodes only drain, so the job starts
       once they are idle. Reservations are made in candidate order on disjoint
       nodes. ``patience=None`` turns reservations off.
    5. At most ``max_jobs`` placements are made (e.g. the free mpiexec slots).

    Keys must be distinct. Returns the ``(key, placement)`` pairs in the order
    they were placed; the pool holds them until the caller releases them.
    """
    counts: MutableMapping[K, int] = passed_over if passed_over is not None else {}
    reserve_at = float("inf") if patience is None else patience
    limit = len(candidates) if max_jobs is None else max(0, max_jobs)
    placed: list[tuple[K, Placement]] = []
    placed_at: set[int] = set()
    never: dict[Request, bool] = {}

    def can_ever(req: Request) -> bool:
        if req not in never:
            never[req] = pool.fits_ever(req) is None
        return never[req]

    starving = any(v >= reserve_at for v in counts.values())
    with pool._holding() as held:
        # Phase 1: starving candidates go first and reserve what they cannot get yet.
        if starving:
            for pos, (key, req) in enumerate(candidates):
                if len(placed) >= limit:
                    break
                if counts.get(key, 0) < reserve_at or not can_ever(req):
                    continue
                p = pool.place(req)
                if p is not None:
                    placed.append((key, p))
                    placed_at.add(pos)
                    continue
                for node in _least_loaded(pool, req):
                    pool._hold(node)
                    held.append(node)
        # Phase 2: everyone else, in order; a shape that failed once fails again.
        failed: set[Request] = set()
        for pos, (key, req) in enumerate(candidates):
            if len(placed) >= limit:
                break
            if starving and (pos in placed_at or counts.get(key, 0) >= reserve_at):
                continue  # phase 1 already placed it or tried it
            if (failed and req in failed) or not can_ever(req):
                continue
            p = pool.place(req)
            if p is None:
                failed.add(req)
                if not pool.has_room():
                    break  # every unheld node is full: nothing behind can fit either
                continue
            placed.append((key, p))
            placed_at.add(pos)

    last = max(placed_at, default=-1)
    for pos in range(last):
        key, req = candidates[pos]
        if pos not in placed_at and can_ever(req):
            counts[key] = counts.get(key, 0) + 1
    if counts:
        waiting = {key for pos, (key, _) in enumerate(candidates) if pos not in placed_at}
        for key in [k for k in counts if k not in waiting]:
            del counts[key]
    return placed


def _least_loaded(pool: NodePool, req: Request) -> list[_Node]:
    """The ``req.num_nodes`` unheld nodes that would drain soonest and could hold ``req``."""
    ncpu, ngpu = req.cpus_per_node, req.gpus_per_node
    eligible = (n for n in pool._nodes
                if not n.held and n.layout.ncpus >= ncpu and n.layout.ngpus >= ngpu)
    return heapq.nsmallest(req.num_nodes, eligible,
                           key=lambda n: (n.live, -n.units, n.index))
