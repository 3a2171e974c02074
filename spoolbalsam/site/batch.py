"""Batch jobs (Balsam's BatchJob): allocations the site asks the scheduler for.

::

    batch/N/request.json     what was asked (submitter writes it once; N from an O_EXCL mkdir)
    batch/N/state.json       what happened (only the site writes it)
    batch/N/term             a deletion request (`spool queue term`)
    batch/N/qlaunchNNNNN.sh  the rendered job script, kept beside the record
    batch/N/qlaunchNNNNN.out its output; qlaunchNNNNN.sh.ec the launcher's exit code

States: ``pending_submission -> queued -> running -> finished``; ``submit_failed`` when the
scheduler refused (the error is kept); ``pending_deletion`` after ``queue term`` until the
scheduler lets go.  Requests are validated against settings.yml before anything is submitted
(queue in ``allowed_queues`` with its node, walltime and queued-job limits, project in
``allowed_projects``, extra parameters known), and each error says which limit and where to
change it.  When a batch job ends, the site revokes whatever its launchers still held.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path

from ..spool import fsio
from ..spool.layout import Layout

log = logging.getLogger("spoolbalsam.batch")
ACTIVE = ("pending_submission", "queued", "running", "pending_deletion")
UNKNOWN_LIMIT = 3
FINAL = ("finished", "submit_failed")


class BatchRequestError(ValueError):
    pass


def validate_request(req: dict, settings: dict, machine, settings_path: str = "settings.yml",
                     active: list[dict] | None = None) -> None:
    """Raise BatchRequestError naming the limit and where to change it."""
    sched = settings["scheduler"]
    queues = sched["allowed_queues"] or {q: {"max_nodes": l.max_nodes,
                                             "max_walltime": l.max_walltime_min,
                                             "max_queued_jobs": l.max_queued_jobs}
                                         for q, l in machine.queues.items()}
    q = req.get("queue")
    if q not in queues:
        raise BatchRequestError(
            f"queue {q!r} is not in scheduler.allowed_queues of {settings_path} "
            f"(allowed: {', '.join(queues) or 'none'}); add it there and restart the site")
    lim = queues[q]
    n, w = req["num_nodes"], req["wall_time_min"]
    if not isinstance(n, int) or n < 1:
        raise BatchRequestError(f"num_nodes must be a whole number >= 1, got {n!r}")
    if not isinstance(w, (int, float)) or w <= 0:
        raise BatchRequestError(f"wall_time_min must be > 0, got {w!r}")
    if lim.get("max_nodes") and n > lim["max_nodes"]:
        raise BatchRequestError(f"{n} nodes exceeds max_nodes {lim['max_nodes']} of queue {q} "
                                f"(scheduler.allowed_queues.{q} in {settings_path})")
    if lim.get("max_walltime") and w > lim["max_walltime"]:
        raise BatchRequestError(f"{w} minutes exceeds max_walltime {lim['max_walltime']} of "
                                f"queue {q} (scheduler.allowed_queues.{q} in {settings_path})")
    if active is not None and lim.get("max_queued_jobs"):
        same = [b for b in active if b.get("queue") == q and b.get("state") in ACTIVE]
        if len(same) >= lim["max_queued_jobs"]:
            raise BatchRequestError(f"queue {q} already has {len(same)} batch job(s), its "
                                    f"max_queued_jobs (scheduler.allowed_queues.{q} in "
                                    f"{settings_path})")
    projects = sched["allowed_projects"]
    if machine.scheduler != "local" and req.get("project") not in projects:
        raise BatchRequestError(f"project {req.get('project')!r} is not in "
                                f"scheduler.allowed_projects of {settings_path} "
                                f"(allowed: {', '.join(projects) or 'none'})")
    if req.get("job_mode") not in ("mpi", "serial"):
        raise BatchRequestError(f"job_mode must be mpi or serial, got {req.get('job_mode')!r}")
    known = sched["optional_batch_job_params"]
    unknown = sorted(set(req.get("optional_params") or {}) - set(known))
    if unknown:
        raise BatchRequestError(f"unknown extra parameter(s) {', '.join(unknown)}; declare them "
                                f"in scheduler.optional_batch_job_params of {settings_path}")


def create_request(layout: Layout, req: dict) -> str:
    """Publish a new batch request; returns its id (1, 2, 3 … via exclusive mkdir)."""
    layout.batch.mkdir(parents=True, exist_ok=True)
    n = max([int(d) for d in fsio.list_dirs(layout.batch) if d.isdigit()] + [0]) + 1
    while True:
        try:
            (layout.batch / str(n)).mkdir()
            break
        except FileExistsError:   # race: another submitter took n; try the next
            n += 1
    rec = {"id": str(n), "created_at": time.time(), **req}
    fsio.write_json_atomic(layout.batch / str(n) / "request.json", rec)
    return str(n)


def load(layout: Layout, bid: str) -> dict | None:
    d = layout.batch / bid
    try:
        rec = fsio.read_json(d / "request.json")
    except (FileNotFoundError, ValueError):
        return None
    try:
        rec.update(fsio.read_json(d / "state.json"))
    except (FileNotFoundError, ValueError):
        rec.setdefault("state", "pending_submission")
    if (d / "term").exists() and rec["state"] in ("pending_submission", "queued", "running"):
        rec["state"] = "pending_deletion"
    return rec


def load_all(layout: Layout) -> list[dict]:
    ids = sorted((d for d in fsio.list_dirs(layout.batch) if d.isdigit()), key=int)
    return [r for r in (load(layout, b) for b in ids) if r is not None]


def job_name(bid: str) -> str:
    return f"qlaunch{int(bid):05d}"


class BatchManager:
    """The site's side: submit pending requests, follow the scheduler, notice ended jobs."""

    def __init__(self, layout: Layout, settings: dict, machine, backend=None):
        self.layout, self.settings, self.machine = layout, settings, machine
        self._backend = backend
        self.period = settings["scheduler"]["sync_period_sec"]
        self.backoff = settings["scheduler"]["submit_backoff_sec"]
        self.next_sync = 0.0
        self.failed_until = 0.0
        self.ended: set[str] = set()
        self.next_elastic = 0.0
        self.seen: set[str] = set()
        self.unknowns: dict[str, int] = {}      # batch id -> consecutive "unknown" answers
        self.live: set[str] = set()             # submitted, not cancelled, not ended

    @property
    def backend(self):
        if self._backend is None:
            from ..pbs.base import get_backend
            self._backend = get_backend(self.machine.scheduler)
        return self._backend

    def allocation_ended(self, lease: dict) -> bool:
        bid = lease.get("batch_job")
        return bool(bid) and bid in self.ended

    def _save(self, bid: str, rec: dict) -> None:
        state = {k: rec.get(k) for k in ("state", "scheduler_id", "submit_script", "errors",
                                          "submit_time", "start_time", "end_time", "exit_code",
                                          "raw_state", "nodes", "cancel_sent")}
        fsio.write_json_atomic(self.layout.batch / bid / "state.json", state)

    def tick(self, now: float, force: bool = False) -> None:
        # A new request (a directory we have not seen) is served at once; the rest of the
        # work waits for the sync period.  One listdir of batch/ per tick, no stats.
        dirs = set(fsio.list_dirs(self.layout.batch))
        termed = any((self.layout.batch / b / "term").exists() for b in self.live)
        if not force and now < self.next_sync and dirs <= self.seen and not termed:
            return
        self.seen = dirs
        self.next_sync = now + self.period
        records = load_all(self.layout)
        for rec in records:
            if rec["state"] == "pending_submission" and now >= self.failed_until:
                self.submit(rec, [r for r in records if r is not rec], now)
        active = [r for r in records if r["state"] in ("queued", "running", "pending_deletion")
                  and r.get("scheduler_id")]
        for rec in records:
            if rec["state"] == "pending_deletion" and not rec.get("scheduler_id"):
                rec["state"] = "finished"          # deleted before it was ever submitted
                self._save(rec["id"], rec)
        for rec in active:
            if rec["state"] == "pending_deletion" and not rec.get("cancel_sent"):
                try:
                    self.backend.cancel(rec["scheduler_id"])
                    rec["cancel_sent"] = True
                    self._save(rec["id"], rec)
                    self.next_sync = now + 0.5      # look again soon: it should end now
                except Exception as e:
                    self._error(rec, f"cancel failed: {e}")
        if active:
            try:
                statuses = self.backend.status([r["scheduler_id"] for r in active])
            except Exception as e:
                log.warning("scheduler status failed: %s", e)
                statuses = None
        if active and statuses is not None:
            for rec in active:
                st = statuses.get(rec["scheduler_id"])
                self.update(rec, st)
        for rec in records:
            if rec["state"] in FINAL:
                self.ended.add(rec["id"])
        self.live = {r["id"] for r in records if r["state"] in ("queued", "running")}
        self.elastic(now, records)

    def elastic(self, now: float, records: list[dict]) -> None:
        cfg = self.settings["elastic"]
        if not cfg["enabled"] or now < self.next_elastic or now < self.failed_until:
            return
        from .elastic import service
        self.next_elastic = now + cfg["service_period_sec"]
        d = service(self.layout, self.settings, records,
                    create=lambda req: create_request(self.layout, req),
                    terminate=lambda bid: fsio.write_atomic(
                        self.layout.batch / bid / "term", b"elastic: queued too long\n"))
        if d.submit_nodes or d.delete:
            log.info("elastic queue: %s -> submit %d node(s), delete %s", d.why, d.submit_nodes,
                     list(d.delete) or "none")
            self.next_sync = 0.0

    def update(self, rec: dict, st) -> None:
        """Follow the scheduler's word.  "finished" ends the batch job at once; "unknown" (or
        no answer about it) only after ``UNKNOWN_LIMIT`` consecutive polls, or sooner if the
        script recorded its exit code: a passing glitch must not revoke live launchers."""
        bid = rec["id"]
        if st is None or st.state == "unknown":
            n = self.unknowns.get(bid, 0) + 1
            self.unknowns[bid] = n
            ec = Path(rec.get("submit_script") or "").with_suffix(".ec")
            if n < UNKNOWN_LIMIT and not (rec.get("submit_script") and ec.exists()):
                return
        else:
            self.unknowns.pop(bid, None)
        if st is None or st.state in ("finished", "unknown"):
            rec["state"] = "finished"
            rec["end_time"] = rec.get("end_time") or time.time()
            if st is not None:
                rec["exit_code"] = st.exit_code
                rec["raw_state"] = st.raw_state
            self.ended.add(bid)
            self._save(bid, rec)
            log.info("batch job %s (%s) finished", bid, rec.get("scheduler_id"))
        elif st.state == "running" and rec["state"] != "running":
            if rec["state"] != "pending_deletion":
                rec["state"] = "running"
            rec["start_time"] = rec.get("start_time") or time.time()
            rec["nodes"] = list(st.nodes)
            rec["raw_state"] = st.raw_state
            self._save(bid, rec)

    def _error(self, rec: dict, msg: str) -> None:
        rec["errors"] = (rec.get("errors") or []) + [{"t": time.time(), "error": msg}]
        self._save(rec["id"], rec)

    def submit(self, rec: dict, others: list[dict], now: float | None = None) -> None:
        bid = rec["id"]
        try:
            validate_request(rec, self.settings, self.machine, str(self.layout.settings), others)
            script = self.render(rec)
            sched_id = self.backend.submit(
                script, queue=rec.get("queue"), project=rec.get("project"),
                num_nodes=rec["num_nodes"], wall_time_min=int(rec["wall_time_min"]),
                job_name=job_name(bid), cwd=self.layout.batch / bid,
                extra=rec.get("optional_params") or {})
        except Exception as e:
            rec["state"] = "submit_failed"
            rec["errors"] = (rec.get("errors") or []) + [{"t": time.time(), "error": str(e)}]
            # Back off after any refusal, the scheduler's or our own validation's: a broken
            # queue or project must not turn into a request per period.
            self.failed_until = (time.monotonic() if now is None else now) + self.backoff
            self._save(bid, rec)
            log.warning("batch job %s: submit failed: %s", bid, e)
            return
        rec.update(state="queued", scheduler_id=sched_id, submit_time=time.time(),
                   submit_script=str(script))
        self._save(bid, rec)
        log.info("batch job %s submitted as %s", bid, sched_id)

    def render(self, rec: dict) -> Path:
        from ..pbs.script import render_job_script, write_job_script
        bid = rec["id"]
        argv = [sys.executable, "-m", "spoolbalsam.cli", "launcher", "-j", rec["job_mode"],
                "-t", str(rec["wall_time_min"]), "--batch-job", bid]
        for k, v in (rec.get("filter_tags") or {}).items():
            argv += ["--tag", f"{k}={v}"]
        params = {**self.settings["scheduler"]["optional_batch_job_params"],
                  **(rec.get("optional_params") or {})}
        name = job_name(bid)
        path = self.layout.batch / bid / f"{name}.sh"
        text = render_job_script(
            self.machine.job_template, job_name=name, project=rec.get("project") or None,
            queue=rec.get("queue") or None, num_nodes=rec["num_nodes"],
            wall_time_min=int(rec["wall_time_min"]), job_mode=rec["job_mode"],
            site_path=str(self.layout.root), launcher_cmd=shlex.join(argv),
            optional_params=params, script_path=str(path),
            python_env_activate=_activate_line())
        return write_job_script(path, text)


def _activate_line() -> str | None:
    venv = os.environ.get("VIRTUAL_ENV")
    return f". {shlex.quote(venv)}/bin/activate" if venv else None
