"""Elastic queue: keep allocations matched to the ready work (settings ``elastic:``).

``decide`` is pure.  Each service period the site measures the work and the allocations and
asks it what to do:

* **demand** — node-equivalents of ready work: Σ num_nodes / node_packing_count over ready
  jobs (estimated from a sample of records when ``ready/`` is large; names are counted
  exactly).
* **supply** — nodes of this queue's batch jobs that are queued or running, minus the
  node-equivalents already busy with running jobs.
* If demand exceeds supply and fewer than ``max_queued_jobs`` batch jobs are active in the
  queue, ask for one more: ``clamp(demand - supply, min_num_nodes, max_num_nodes)`` nodes
  (and never above the queue's ``max_nodes``) for ``max_wall_time_min`` (capped by the
  queue's ``max_walltime``) — never more than one new request per period, so a burst of
  work can't flood the scheduler.
* Batch jobs of this queue queued for longer than ``max_queue_wait_time_min`` are deleted
  (the work goes back to the pool; a fresh, possibly smaller, request follows).
* After a submission failure the site backs off (``scheduler.submit_backoff_sec``) and the
  error is kept in the batch record, so a broken queue or project is not retried in a loop.
Scale-down is the launcher's ``idle_ttl_sec``: an allocation with nothing to do ends itself.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from ..spool import fsio
from ..spool.layout import Layout
from ..spool.store import Store

SAMPLE = 500


@dataclass(frozen=True)
class Decision:
    submit_nodes: int = 0
    submit_wall_min: int = 0
    delete: tuple[str, ...] = ()
    why: str = ""


def decide(cfg: dict, queue_limits: dict, batch_jobs: list[dict], demand: float,
           busy: float, now: float) -> Decision:
    """What the elastic queue should do now (no I/O, no clock: ``now`` is wall time)."""
    q = cfg["queue"]
    mine = [b for b in batch_jobs if b.get("queue") == q and b.get("elastic")]
    active = [b for b in mine if b["state"] in ("pending_submission", "queued", "running")]
    delete = tuple(b["id"] for b in mine if b["state"] == "queued" and b.get("submit_time") is not None
                   and now - b["submit_time"] > cfg["max_queue_wait_time_min"] * 60)
    supply = sum(b["num_nodes"] for b in active if b["id"] not in delete) - busy
    if demand <= max(supply, 0) + 1e-9:
        return Decision(delete=delete, why=f"demand {demand:.2f} <= supply {supply:.2f} nodes")
    if len(active) - len(delete) >= cfg["max_queued_jobs"]:
        return Decision(delete=delete, why=f"{len(active)} active batch jobs = max_queued_jobs")
    want = demand - max(supply, 0)
    nodes = int(min(max(cfg["min_num_nodes"], -(-want // 1)), cfg["max_num_nodes"]))
    if queue_limits.get("max_nodes"):
        nodes = min(nodes, queue_limits["max_nodes"])
    wall = int(cfg["max_wall_time_min"])
    if queue_limits.get("max_walltime"):
        wall = min(wall, int(queue_limits["max_walltime"]))
    if wall < cfg["min_wall_time_min"]:
        return Decision(delete=delete, why=f"queue {q} allows only {wall} min < min_wall_time_min")
    return Decision(submit_nodes=max(nodes, 1), submit_wall_min=wall, delete=delete,
                    why=f"demand {demand:.2f} > supply {supply:.2f} nodes")


def measure(layout: Layout) -> tuple[float, float]:
    """(demand, busy) in node-equivalents, from ``ready/`` and ``running/``."""
    store = Store(layout)
    return _footprint(store, "ready"), _footprint(store, "running")


def _footprint(store: Store, state: str) -> float:
    paths = [p for _, p in store.iter_dir(state)]
    if not paths:
        return 0.0
    sample = paths if len(paths) <= SAMPLE else random.sample(paths, SAMPLE)
    total, n = 0.0, 0
    for p in sample:
        try:
            rec = fsio.read_json(p)
        except (FileNotFoundError, ValueError):
            continue
        nodes = rec.get("num_nodes", 1)
        total += nodes if nodes > 1 else 1 / max(rec.get("node_packing_count", 1), 1)
        n += 1
    return total / n * len(paths) if n else 0.0


def service(layout: Layout, settings: dict, batch_jobs: list[dict], create, terminate,
            now: float | None = None) -> Decision:
    """Measure, decide, act: ``create(request) -> id`` and ``terminate(id)`` do the I/O."""
    cfg = settings["elastic"]
    queues = settings["scheduler"]["allowed_queues"]
    demand, busy = measure(layout)
    d = decide(cfg, queues.get(cfg["queue"], {}), batch_jobs, demand, busy,
               time.time() if now is None else now)
    for bid in d.delete:
        terminate(bid)
    if d.submit_nodes:
        create({"num_nodes": d.submit_nodes, "wall_time_min": d.submit_wall_min,
                "queue": cfg["queue"], "project": cfg["project"], "job_mode": cfg["job_mode"],
                "filter_tags": dict(settings.get("filter_tags") or {}), "optional_params": {},
                "elastic": True})
    return d
