"""The site's data staging: the jobs in ``jobs/stagein/`` and ``jobs/stageout/`` and their
transfer items (Balsam's transfers, without a database).

States and directories (``spool.states``)
-----------------------------------------
* A job whose app has stage-in items goes, once its parents are done, to ``stagein/`` in
  state READY (Balsam's "waiting for stage-in"; shown STAGING_IN, the directory's state)
  instead of ``ready/``.  Launchers never
  list ``stagein/``.  When every stage-in item is ``done`` the site moves it to ``ready/``
  as STAGED_IN (and rings the ready bell); from there it runs like any job.
* A run job with stage-out items is renamed by its launcher into ``stageout/`` (not
  ``done/``) after the event ``POSTPROCESSED`` marked ``stage_out``; the site merges that
  verdict like any other.  When every stage-out item is ``done`` the site removes the app's
  ``cleanup_files`` and moves the job to ``done/`` as STAGED_OUT then JOB_FINISHED, and
  only then releases its children.  A job in ``stageout/`` is never in ``done/``, so no
  child starts before the outputs have left.
* An item that cannot succeed (a missing source: ``PERMANENT``), or that failed
  ``max_attempts`` times, fails its job: ``failed/`` with ``error`` naming the slot, the
  path and the reason; its children fail too.  A ``TRANSIENT`` failure is retried after
  ``retry_backoff_sec`` (doubling, at most ``BACKOFF_MAX``).  A ``BLOCKED`` one (Globus
  consent, credentials) waits ``BLOCKED_RETRY_SEC`` per try without using attempts, and
  the item's ``error`` says what to do.

Who writes what
---------------
The site is the only writer of the records in both directories (launchers only rename into
``stageout/``).  Every change of an item (submitted to a task, done, failed, retried) is
one line in the site's event log (``{"job", "transfer": SLOT, "state", "task_id", ...}``) and
is written into the record's ``transfer_items``; a state change is a transition event that
carries the items (``transfer_items`` is an event detail), written and synced *before* the
move.  Records are rewritten through the site's limbo: the record is renamed into
``site/limbo/`` (the commit point), the held copy is read back -- so a change another
process made just before (``job.save()`` of a tag) is kept -- and the new record is
published with the batch's two syncs.  After a crash, ``Store.finish_limbo`` publishes a
held record with the site's events applied, items included.

Crash safety (``kill -9`` of the site at any point)
---------------------------------------------------
Nothing that matters lives only in memory.  On start (``recover``) every record in the two
directories is read again: an item recorded ``active`` whose task died with the old process
(a local copy) is ``pending`` again and is copied anew; the local backend writes into a
dot-temp and renames it into place, removing an earlier attempt's temps first, so a file is
never seen half-copied and never staged twice into the job's view.  A Globus task recorded
with its Globus id is polled again.  A job whose stage-in finished just before the crash
is moved at the next tick.  The cost of a crash is at most one repeated copy per item in
flight, and one ``attempts`` of each.

Order within a tick: finished tasks are collected, new tasks are planned (their items marked
``active`` with the task's id), every changed record is written (events first), and only
then are the planned tasks handed to their backends.  So no copy ever runs for an item
whose record does not say ``active`` in that task.

The loop never waits on a copy: backends work on their own threads (``transfer.base``) and
wake the site when a task ends.  ``tick`` costs nothing while no job is staging, and looks at
the two directories in full only at start and every ``RESCAN_SEC`` (the backstop for jobs
moved there by hand or by the API, e.g. ``job.state = "POSTPROCESSED"``).
"""
from __future__ import annotations

import logging
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..spool import fsio
from ..spool import states as S
from ..spool.events import apply_event
from ..spool.ids import SHARDS
from ..spool.store import LIMBO_SEP, read_job
from ..transfer import items as T
from ..transfer.base import BLOCKED, PERMANENT, Move, TaskStatus, new_task_id

log = logging.getLogger("spoolbalsam.site")
RESCAN_SEC = 30.0
BACKOFF_MAX = 600.0
BLOCKED_RETRY_SEC = 60.0


def verdict_dir(ev: dict) -> str | None:
    """The directory a launcher's final event sends its job to; None if not final."""
    to = ev.get("to")
    if to == S.JOB_FINISHED:
        return "done"
    if to in (S.FAILED, S.KILLED):
        return "failed"
    if to == S.POSTPROCESSED and ev.get("stage_out"):
        return "stageout"
    return None


@dataclass
class Staged:
    """What the site keeps in memory of one job in stagein/ or stageout/."""
    where: str                  # stagein | stageout
    items: list[dict]           # the record's transfer_items as the site last set them
    workdir: str
    app: str
    attempt: int
    dirty: bool = False         # items changed since the record was written


@dataclass
class Task:
    scheme: str
    keys: list[tuple[str, str]]             # (job id, slot) of each move


class Staging:
    def __init__(self, site):
        from ..settings import DEFAULTS
        self.site = site
        self.layout, self.store = site.layout, site.store
        self.conf = {**DEFAULTS["transfers"], **(site.settings.get("transfers") or {})}
        try:
            self.locations = T.check_locations(self.conf["transfer_locations"])
        except ValueError as e:               # settings.validate reports it at load
            log.error("transfers.transfer_locations: %s", e)
            self.locations = {}
        self.jobs: dict[str, Staged] = {}
        self.pending: dict[tuple[str, str], float] = {}    # (job, slot) -> not before (mono)
        self.tasks: dict[str, Task] = {}
        self.backends: dict = {}
        self.next_pass: dict[str, float] = defaultdict(float)
        self.incoming: dict[str, str] = {}      # job id -> dir, published or merged just now
        self.next_scan = 0.0
        self.wake = None                        # the site loop's wake-up (set by run)
        self._backend_error: dict[str, str] = {}  # scheme -> why it could not be made
        self.planned: list[tuple] = []          # tasks to start once their records are out

    # ---- what the rest of the site tells us ------------------------------------------------
    def noticed(self, job_id: str, where: str) -> None:
        """The site just put ``job_id`` into ``where`` (stagein/stageout, or another dir: then
        nothing to do).  Read at the next tick."""
        if where in S.STAGING_DIRS:
            self.incoming[job_id] = where

    # ---- start and stop -------------------------------------------------------------------
    def recover(self) -> None:
        """Adopt every job in the two directories (after a start, or a crash).  A site made
        before stageout/ existed gets its buckets now, so no launcher makes one."""
        out = self.layout.state_dir("stageout")
        if not out.exists():
            for n in range(SHARDS):
                (out / f"{n:02x}").mkdir(parents=True, exist_ok=True)
        self.scan(time.monotonic())

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends.clear()

    def scan(self, now: float) -> None:
        """Look at stagein/ and stageout/ in full: adopt jobs we do not know, forget jobs
        that are gone (removed or moved by hand or by the API)."""
        self.next_scan = now + RESCAN_SEC
        seen = set()
        for where in S.STAGING_DIRS:
            for _, path in self.store.iter_dir(where):
                job_id = path.name[:-5]
                seen.add(job_id)
                if job_id not in self.jobs:
                    self._adopt(job_id, where, path, now)
        for job_id in [j for j in self.jobs if j not in seen]:
            if not self.layout.job_path(self.jobs[job_id].where, job_id).exists():
                self._forget(job_id)

    def _adopt(self, job_id: str, where: str, path: Path | None, now: float) -> None:
        path = path or self.layout.job_path(where, job_id)
        try:
            rec = read_job(path, where)
        except (FileNotFoundError, ValueError):
            return
        if where == "stageout" and rec.get("state") != S.POSTPROCESSED:
            return      # a launcher's verdict not merged yet: the merge tells us (noticed)
        items = [dict(i) for i in T.items_of(rec)]
        job = Staged(where, items, rec["workdir"], rec["app"], rec.get("attempt", 1))
        self.jobs[job_id] = job
        direction = T.IN if where == "stagein" else T.OUT
        resumed: dict[str, list] = defaultdict(list)
        for item in items:
            if item["direction"] != direction or item["state"] == T.DONE:
                continue
            key = (job_id, item["name"])
            if item["state"] in (T.ACTIVE, T.INACTIVE) and item.get("task_id"):
                resumed[item["task_id"]].append(key)
                continue
            if item["state"] in (T.AWAITING, T.ACTIVE, T.INACTIVE, T.ERROR):
                self._set(job_id, item, T.PENDING, task_id=None)
            self.pending.setdefault(key, now)
        for task_id, keys in resumed.items():
            if task_id in self.tasks:
                self.tasks[task_id].keys += keys
                continue
            scheme = task_id.split(":", 1)[0] if ":" in task_id else task_id.split("-", 1)[0]
            backend = self._backend(scheme)
            external = task_id.split(":", 1)[1] if ":" in task_id else None
            if backend is not None and backend.resume(task_id, external):
                self.tasks[task_id] = Task(scheme, keys)
                continue
            for jid, slot in keys:          # died with the previous site process: again
                item = self._item(jid, slot)
                self._set(jid, item, T.PENDING, task_id=None,
                          error="its task was lost when the site stopped; submitted again")
                self.pending.setdefault((jid, slot), now)
        if self._outcome(job_id, job) is not None:
            job.dirty = True            # nothing (left) to move: it moves on at once

    def _forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        for key in [k for k in self.pending if k[0] == job_id]:
            del self.pending[key]

    # ---- one pass ----------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> int:
        """Collect finished tasks, move finished jobs, submit new tasks; returns how many
        jobs moved.  Cheap when nothing is staging."""
        now = time.monotonic() if now is None else now
        for job_id, where in list(self.incoming.items()):
            del self.incoming[job_id]
            known = self.jobs.get(job_id)
            if known is not None and known.where == where:
                continue                  # already ours: its items' progress is in memory
            self._forget(job_id)
            self._adopt(job_id, where, None, now)
        if now >= self.next_scan:
            self.scan(now)
        if not self.jobs and not self.tasks:
            return 0
        for scheme, backend in list(self.backends.items()):
            if backend.period and now < self.next_pass[scheme]:
                continue
            for st in backend.poll():
                self._apply(st, now)
        self._submit(now)
        for scheme, backend in self.backends.items():
            if backend.period and now >= self.next_pass[scheme]:
                self.next_pass[scheme] = now + backend.period
        moved = self._write()
        self._start_planned()
        return moved

    def _apply(self, st: TaskStatus, now: float) -> None:
        task = self.tasks.get(st.task_id)
        if task is None:
            return
        if st.state in ("active", "inactive"):
            for job_id, slot in task.keys:
                item = self._item(job_id, slot)
                if item is None:
                    continue
                changes = {}
                if st.external_id and item.get("task_id") != f"{task.scheme}:{st.external_id}":
                    changes["task_id"] = f"{task.scheme}:{st.external_id}"
                state = T.INACTIVE if st.state == "inactive" else T.ACTIVE
                if state != item["state"] or changes:
                    self._set(job_id, item, state, error=st.error, **changes)
            return
        del self.tasks[st.task_id]
        outcomes = {o.key: o for o in st.outcomes}
        for job_id, slot in task.keys:
            item = self._item(job_id, slot)
            if item is None or item["state"] not in (T.ACTIVE, T.INACTIVE):
                continue              # the job was failed, removed or moved meanwhile
            o = outcomes.get(f"{job_id}/{slot}")
            ok = o.ok if o is not None else st.state == "done"
            if ok:
                self._set(job_id, item, T.DONE, error=None)
            else:
                error = (o.error if o is not None else None) or st.error or "transfer failed"
                kind = o.kind if o is not None else st.kind
                self._failed(job_id, item, error, kind, now)

    def _failed(self, job_id: str, item: dict, error: str, kind: str, now: float) -> None:
        attempts = item.get("attempts", 0)
        if kind == BLOCKED:
            self._set(job_id, item, T.PENDING, task_id=None, error=error,
                      attempts=max(attempts - 1, 0))
            self.pending[(job_id, item["name"])] = now + BLOCKED_RETRY_SEC
            log.warning("job %s: transfer %s waits for you: %s", job_id, item["name"], error)
        elif kind == PERMANENT or attempts >= self.conf["max_attempts"]:
            why = error if kind == PERMANENT else f"{error} (gave up after {attempts} attempts)"
            self._set(job_id, item, T.ERROR, error=why)
        else:
            delay = min(self.conf["retry_backoff_sec"] * 2 ** max(attempts - 1, 0), BACKOFF_MAX)
            self._set(job_id, item, T.PENDING, task_id=None, error=error)
            self.pending[(job_id, item["name"])] = now + delay
            log.info("job %s: transfer %s failed (%s); retry %d in %.0f s", job_id,
                     item["name"], error, attempts + 1, delay)

    # ---- submitting -------------------------------------------------------------------------
    def _submit(self, now: float) -> None:
        room = self.conf["max_concurrent_transfers"] - len(self.tasks)
        if room <= 0 or not self.pending:
            return
        groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        looked = 0
        for key, not_before in list(self.pending.items()):
            if looked >= self.conf["num_items_query_limit"]:
                break
            job = self.jobs.get(key[0])
            item = self._item(*key)
            if job is None or item is None or item["state"] != T.PENDING:
                del self.pending[key]
                continue
            looked += 1
            if not_before > now:
                continue
            loc = self.locations.get(item["location"])
            scheme = loc.scheme if loc else None
            backend = self._backend(scheme) if scheme else None
            if backend is None:
                why = (f"location {item['location']!r} is no longer in transfers."
                       "transfer_locations" if loc is None else
                       f"location {item['location']}: the {scheme} backend is unavailable "
                       f"({self._backend_error.get(scheme, 'see the site log')})")
                del self.pending[key]
                self._set(key[0], item, T.ERROR, error=why)
                continue
            if backend.period and now < self.next_pass[scheme]:
                continue
            groups[(item["direction"], item["location"])].append(key)
        size = self.conf["transfer_batch_size"]
        for (direction, alias), keys in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            loc = self.locations[alias]
            for start in range(0, len(keys), size):
                if room <= 0:
                    return
                batch = keys[start:start + size]
                self._start_task(loc, direction, batch)
                room -= 1

    def _start_task(self, loc, direction: str, keys: list[tuple[str, str]]) -> None:
        backend = self._backend(loc.scheme)
        task_id = new_task_id(loc.scheme)
        moves = []
        for job_id, slot in keys:
            item = self._item(job_id, slot)
            here, there = self._paths(self.jobs[job_id], item, loc)
            src, dst = (there, here) if direction == T.IN else (here, there)
            moves.append(Move(f"{job_id}/{slot}", src, dst, item["recursive"]))
            self._set(job_id, item, T.ACTIVE, task_id=task_id, error=None,
                      attempts=item.get("attempts", 0) + 1)
            self.pending.pop((job_id, slot), None)
        self.tasks[task_id] = Task(loc.scheme, list(keys))
        self.planned.append((backend, task_id, loc, direction, moves))

    def _start_planned(self) -> None:
        """Hand the tasks planned this tick to their backends, now that the records say
        their items are ``active`` in them: a copy never runs for an item whose record does
        not say so, so after a crash every temp beside a destination belongs to an item the
        records show active (and that is submitted again)."""
        planned, self.planned = self.planned, []
        for backend, task_id, loc, direction, moves in planned:
            moves = [m for m in moves if m.key.split("/", 1)[0] in self.jobs]
            if not moves:                 # its jobs were moved by someone else meanwhile
                self.tasks.pop(task_id, None)
                continue
            backend.submit(task_id, loc, direction, moves)
            log.info("transfer task %s: %d item(s) %s %s", task_id, len(moves),
                     "from" if direction == T.IN else "to", loc.alias)

    def _paths(self, job: Staged, item: dict, loc) -> tuple[str, str]:
        """(path at the site, path at the location) of an item, as ``loc``'s backend sees
        them."""
        rel = f"data/{job.workdir}/{item['local']}"
        root = str(self.layout.root)
        if loc.scheme == "globus" and self.conf.get("globus_endpoint_site_path"):
            root = self.conf["globus_endpoint_site_path"]
        return posixpath.normpath(f"{root}/{rel}"), item["remote"]

    def _backend(self, scheme: str):
        if scheme in self.backends:
            return self.backends[scheme]
        if scheme in self._backend_error:
            return None
        try:
            backend = make_backend(scheme, self.conf)
        except Exception as e:  # noqa: BLE001 - a missing extra or bad credentials
            self._backend_error[scheme] = str(e)
            log.error("transfer backend %s unavailable: %s", scheme, e)
            return None
        backend.notify = self._notify
        self.backends[scheme] = backend
        return backend

    def _notify(self) -> None:
        if self.wake is not None:
            self.wake.set()

    # ---- items and records --------------------------------------------------------------------
    def _item(self, job_id: str, slot: str) -> dict | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        return next((i for i in job.items if i["name"] == slot), None)

    def _set(self, job_id: str, item: dict, state: str, **changes) -> None:
        """Change one item (in memory) and log it in the site's event log."""
        item.update(changes)
        item["state"] = state
        job = self.jobs[job_id]
        job.dirty = True
        ev = {"t": time.time(), "job": job_id, "transfer": item["name"], "state": state,
              "task_id": item.get("task_id"), "attempts": item.get("attempts", 0)}
        if item.get("error"):
            ev["error"] = item["error"]
        self.site.events.append(ev)

    def _outcome(self, job_id: str, job: Staged) -> tuple[str, list[tuple[str, str | None]],
                                                         str | None] | None:
        """(destination dir, transitions, error) for a job whose items decide its move."""
        direction = T.IN if job.where == "stagein" else T.OUT
        mine = [i for i in job.items if i["direction"] == direction]
        failed = [i for i in mine if i["state"] == T.ERROR]
        if failed:
            i = failed[0]
            what = "stage-in" if direction == T.IN else "stage-out"
            error = (f"{what} of {i['name']} ({i['source']} -> {i['destination']}) failed: "
                     f"{i['error']}")
            return "failed", [(S.FAILED, error)], error
        if any(i["state"] != T.DONE for i in mine):
            return None
        if job.where == "stagein":
            return "ready", [(S.STAGED_IN, f"{len(mine)} item(s) staged in")], None
        return "done", [(S.STAGED_OUT, f"{len(mine)} item(s) staged out"),
                        (S.JOB_FINISHED, None)], None

    def _write(self) -> int:
        """Publish every changed record: moved where its items send it, or rewritten in
        place.  Events first (synced), then the renames into limbo and one batch."""
        dirty = [(j, job) for j, job in self.jobs.items() if job.dirty]
        if not dirty:
            return 0
        plan = []
        for job_id, job in dirty:
            job.dirty = False
            out = self._outcome(job_id, job)
            dest, steps, error = out if out else (job.where, [], None)
            evs = []
            for n, (to, msg) in enumerate(steps, 1):
                ev = {"t": time.time(), "job": job_id, "attempt": job.attempt, "to": to,
                      "by": "site"}
                if n == len(steps):       # the items as they are after the move
                    ev["transfer_items"] = [dict(i) for i in job.items]
                if msg:
                    ev["msg"] = msg
                if to == S.FAILED:
                    ev["error"] = error
                self.site.events.append(ev)
                evs.append(ev)
            plan.append((job_id, job, dest, evs))
        self.site.events.flush()      # a crash mid-move is finished from these events
        limbo = self.site.limbo
        batch = fsio.Batch(self.layout.jobs, self.site.spares)
        moved: list[tuple[str, str, str, int]] = []      # (job, dest, state, attempt)
        for job_id, job, dest, evs in plan:
            src = self.layout.job_path(job.where, job_id)
            dst = self.layout.job_path(dest, job_id)
            held = limbo / f"{job_id}{LIMBO_SEP}{dest}.json"
            # race: a CLI or API process may move or rewrite the record at any moment (job
            # rm, job.save()).  Our rename into the limbo is the commit point: if it fails,
            # the job is no longer ours to change; if it succeeds, the copy we read back is
            # the latest, and nobody else can change it before we publish.
            if not fsio.rename_quiet(src, held):
                self._forget(job_id)         # moved or removed by someone else meanwhile
                continue
            try:
                rec = read_job(held, "limbo")
            except (FileNotFoundError, ValueError) as e:
                log.error("job %s: its record cannot be read while staging (%s); left in %s",
                          job_id, e, held)
                self._forget(job_id)
                continue
            rec = {**rec, "transfer_items": [dict(i) for i in job.items]}
            for ev in evs:
                if rec.get("attempt", 1) != ev["attempt"]:   # changed by someone meanwhile
                    ev = {**ev, "attempt": rec.get("attempt", 1)}
                    self.site.events.append(ev)
                rec = apply_event(rec, ev)
            batch.add_json(dst, rec)
            batch.retire(held)
            if dest != job.where:
                moved.append((job_id, dest, rec["state"], rec.get("attempt", 1)))
        if any(m[1] == "ready" for m in moved):
            batch.after_commit(self.store.ring, once="bell")
        self.site.events.flush()
        batch.commit()
        for job_id, dest, state, attempt in moved:
            self.site.index.moved(job_id, state, attempt)
            job = self.jobs.pop(job_id)
            self._forget(job_id)
            if dest == "done":
                self._cleanup(job)
                self.site._release_children(job_id)
            elif dest == "failed":
                self.site._fail_children(job_id)
            log.info("job %s: %s -> %s", job_id, job.where, dest)
        return len(moved)

    def _cleanup(self, job: Staged) -> None:
        """The app's ``cleanup_files``, after the stage-out (as Balsam: once JOB_FINISHED)."""
        app = self.site.apps.get(job.app)
        if app is not None and app.cleanup_files:
            from ..launch.launcher import _cleanup
            _cleanup(self.layout.workdir(job.workdir), app.cleanup_files)


def make_backend(scheme: str, conf: dict):
    """The backend for a location scheme, from the ``transfers`` settings."""
    if scheme == "file":
        from ..transfer.local import LocalBackend
        return LocalBackend(workers=conf["max_concurrent_transfers"],
                            method=conf["local_method"], bwlimit_mb=conf["local_bwlimit_mb"])
    if scheme == "globus":
        from ..transfer.globus import GlobusBackend
        return GlobusBackend.from_settings(conf)
    raise ValueError(f"no transfer backend for scheme {scheme!r}")
