"""The site process: the writer of waiting/ records, and of the done/ and failed/ records it
merges verdicts into.

One ``tick()`` does, in order:

1. **intake** — every file dropped in ``jobs/created/`` is validated (JSON, known app,
   parameters, resources, workdir inside ``data/``, unique id, existing parents) and published
   to ``waiting/`` or ``ready/`` (or ``failed/`` if a parent already failed); a job that
   becomes ready gets its ``data/<workdir>/``.  A file that is not a valid job is renamed,
   byte for byte, to ``jobs/rejected/`` beside a one-line ``.reason``.  Bad input never
   stops the site.
2. **merge** — the new lines of each launcher's event log are merged into the records in
   ``done/`` and ``failed/`` (grouped under two syncs), and children whose parents are all
   done move to ``ready/``, all of a merge's under one more batch (their READY synced to
   the site's event log first, so a crash mid-batch is finished from the limbo as READY);
   children of a failed parent fail, naming it.  A log is opened
   only when it has grown past what was read (one ``stat`` per launcher and tick).  A final
   event marked ``merged`` (``events.MERGED``: its launcher published the record with the
   verdict in it, ``launcher.merge_verdicts``) needs no rewrite: one look that the record is
   there, and its children may go.
3. **liveness** — every launcher's lease is judged (``spool.lease``) once per
   ``JUDGE_PERIOD``, and read again only when its launcher has rewritten it.  The jobs of a
   dead launcher are revoked: renamed out of ``running/L/`` (the commit point) and
   republished in ``ready/`` with ``attempt + 1`` (or ``failed/`` when the retry policy is
   spent).  The launcher's kill mailbox is closed first (``spool.kills``): a job it was
   asked to kill goes to ``failed/`` as KILLED instead.
4. **batch jobs** — pending submissions go to the scheduler; ended allocations are noticed.

Between merge and liveness, **staging** (``site.transfers``) collects finished transfer
tasks, moves jobs out of ``stagein/`` and ``stageout/`` and submits new tasks, never waiting
on a copy.  A job with stage-in items is published to ``stagein/`` instead of ``ready/``;
a launcher's verdict ``POSTPROCESSED`` + ``stage_out`` is merged into ``stageout/`` and
releases no children.

Whatever steps 1-3 put into ``ready/`` is announced on the ready bell (``spool.bell``).
Every move the site makes or learns of (its own, the launchers' events, the hints CLI and
API processes leave) goes into the query index (``spool.index``), one log line per tick; a
slice of the index is checked against the directories every few seconds.

Finding a job (an id the intake must check is new, a parent, a verdict waiting for its
rename) goes through the query index (``Site.locate``; ``Site.where`` when only the state
matters): a few looks, however many launchers there are, where ``Store.locate`` looks
into every launcher's ``running/``.  So
the index must know every job in a state directory before the first intake: ``recover()``
checks it against the directories first.

Crash safety: ``recover()`` runs at start.  It finishes half-done moves left in the limbo
directories, rebuilds the parent→children index from ``waiting/`` and re-checks every
waiting job, so a ``kill -9`` of the site at any point loses nothing; ``spool site start``
resumes.  Intake is idempotent: a record carries the digest of the file it came from, so a
file whose record was published before a crash is recognised and just removed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from pathlib import Path

import orjson

from ..spool import states as S
from ..apps import AppRegistry
from ..spool import bell, fsio, kills
from ..spool.events import (MERGED, apply_event, awaits_outcome, event_logs, merge_state,
                            save_merge_state)
from ..spool.index import CODE, COMPACT_MIN, DIR_OF, REMOVED, Keeper
from ..spool.ids import new_id, valid_id
from ..spool.layout import MARKER, Layout
from ..spool.lease import DEAD, EXITED, LeaseJudge, job_processes, read_lease
from .bulk import BulkIntake
from .intake import check_job, first_dir, parents_first
from .transfers import Staging, verdict_dir
from ..launch.pyapp import clear_hook_files
from ..spool.policy import after_failure, policy_for
from ..spool.record import InvalidJob, normalize, transition, user_view
from ..spool.store import BULK, Store, read_job

log = logging.getLogger("spoolbalsam.site")
INTAKE_BATCH = 500       # drops published per commit: launchers start on the first batch
INTAKE_BURST = 64        # a tick that took in this many looks again at once, unthrottled
MAX_DROP_BYTES = 4 << 20  # a bigger dropped file is refused unread (records are read whole)
INTAKE_BUDGET = 1.0      # seconds of intake per tick before merges and liveness get a turn
SETTLE_PERIOD = 30.0     # seconds between backstop checks of every waiting job's parents
INDEX_CHECK_PERIOD = 600.0   # seconds for the background check to cover every bucket once
JUDGE_PERIOD = 1.0       # seconds between two judgements of each launcher's lease


def _alive(pid: int) -> bool:
    from ..spool.lease import pid_alive
    return pid_alive(pid)


class Site:
    def __init__(self, layout: Layout, settings: dict, machine=None):
        self.layout = layout
        self.settings = settings
        self.store = Store(layout, settings.get("claim_mode", "rename"), see_intake=False)
        self.apps = AppRegistry(layout.apps)
        self.limbo = layout.site_dir / "limbo"
        self.spares = fsio.Spares(layout.site_dir / "spare")   # files kept for rewrites
        self.judge = LeaseJudge(settings.get("lease_stale_sec", 60.0))
        self.offsets, self.unsettled, self.held = merge_state(layout)
        self.children: dict[str, set[str]] = {}
        self.events = fsio.AppendLog(layout.site_dir / "events.jsonl")
        self.machine = machine
        self.batch = None                        # BatchManager, attached by the runner
        self.on_launchers = None                 # called with the live launcher dirs
        self.next_settle = 0.0
        self._index: Keeper | None = None        # opened by recover() or at first use
        self.bulk = BulkIntake(self)
        self.next_check = 0.0
        self.watched: list[str] | None = None    # ... as last handed to on_launchers
        self.leases: dict[str, tuple[tuple, dict | None]] = {}   # name -> (stat key, lease)
        self.next_judge = 0.0
        self.running_at: dict[str, str] = {}     # job -> launcher, from RUNNING events
        self.index_checked = False               # rows checked against the directories
        index_settings = settings.get("index") or {}
        self.check_every = index_settings.get("check_period_sec", INDEX_CHECK_PERIOD) / 256
        self.compact_min = int(index_settings.get("compact_min", COMPACT_MIN))
        self.staging = Staging(self)             # stagein/ and stageout/ (site.transfers)

    # ---- start-up -------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish what a crash left half-done; rebuild in-memory indexes from disk."""
        self._open_index()
        for job_id in self.store.finish_limbo(self.limbo, self.layout.site_dir / "events.jsonl"):
            log.info("recovered half-done move of job %s", job_id)
            self.index.refresh(self.layout, [job_id], self.store)
        self.children.clear()
        waiting = []
        for _, path in self.store.iter_dir("waiting"):
            try:
                rec = fsio.read_json(path)
            except (FileNotFoundError, ValueError):
                continue
            waiting.append(rec)
            for p in rec.get("parent_ids", ()):
                self.children.setdefault(p, set()).add(rec["id"])
        for rec in waiting:
            self._settle_waiting(rec["id"])
        self._finish_other_limbos()
        self._sweep_temps()
        self.staging.recover()
        self.store.ring()       # for a publish whose ring a crash of ours cut off
        t = time.monotonic()
        fixed = self.index.reconcile()
        self.index_checked = True
        self.index.flush(self.offsets)
        log.info("index: %d jobs, checked against the directories in %.2f s (%d corrected)",
                 len(self.index), time.monotonic() - t, fixed)

    @property
    def index(self) -> Keeper:
        if self._index is None:
            self._open_index()
        return self._index

    def _open_index(self) -> None:
        """Open the query index and replay into it the launcher events the merge consumed
        after the index's last line (a crash between the two)."""
        if self._index is not None:
            self._index.close()
        self._index = Keeper.open(self.layout, self.compact_min)
        for launcher, path in event_logs(self.layout).items():
            start, end = self.index.offsets.get(launcher, 0), self.offsets.get(launcher, 0)
            if start < end:
                lines, _ = fsio.read_lines_at(path, start)
                self.index.note_events([ev for ev, off in lines if off <= end])

    def _finish_other_limbos(self, older_than: float = 60.0) -> None:
        """Finish moves that a CLI or API process left half-done in its limbo under site/.

        Only files older than ``older_than`` seconds: a live process finishes its own move
        within milliseconds, so an old file belongs to a process that died mid-move.
        """
        cutoff = time.time() - older_than
        for limbo in self.store.limbo_dirs():
            if not limbo.parent.name.startswith("limbo-") and not limbo.name.startswith("limbo-"):
                continue
            for name in fsio.list_names(limbo):
                try:
                    # ctime: a rename keeps a file's mtime but sets its ctime, so this is
                    # when the file entered the limbo.
                    if (limbo / name).stat().st_ctime < cutoff:
                        self.index.refresh(self.layout, self.store.finish_limbo(limbo),
                                           self.store)
                        break
                except FileNotFoundError:
                    continue

    def settle_all_waiting(self) -> None:
        """Backstop: re-check the parents of every waiting job.  A parent moved by hand or by
        the API (``job rm``, ``job.state = ...``) produces no launcher event to react to."""
        for parent in list(self.children):
            loc = self.locate(parent)
            if loc is None or loc[0] in ("done", "failed"):
                for child in self.children.pop(parent, ()):
                    self._settle_waiting(child)

    def _sweep_temps(self, older_than: float = 3600.0) -> int:
        """Remove the dot-temps that crashed writers left behind; how many.

        A temp's name says who writes it (``fsio.temp_writer``: host and pid).  One whose
        writer was a process of this host that no longer exists is removed at once (a
        site, launcher or submitter killed mid-write); any other only when it is older
        than ``older_than`` seconds, since its writer may be alive on another node.  The
        spool's own directories are swept (``created/``, the state directories, ``site/``,
        ``launchers/`` with the retired ones), never ``data/``, which belongs to the jobs.
        """
        cutoff = time.time() - older_than
        # created/ and rejected/ only at their top: a directory dropped there is a user's
        # drop, kept as it came, dot-files and all
        flat = (self.layout.created, self.layout.rejected)
        tops = (*flat, self.layout.site_dir, self.layout.launchers,
                *(self.layout.state_dir(s) for s in S.SHARDED_DIRS))
        n = 0
        for d in tops:
            for root, dirs, files in os.walk(d):
                if d in flat:
                    dirs.clear()
                for f in files:
                    if not f.startswith("."):
                        continue
                    p = Path(root) / f
                    writer = fsio.temp_writer(f)
                    try:
                        dead = (writer is not None and writer[0] == fsio.HOST
                                and writer[1] != os.getpid() and not _alive(writer[1]))
                        if dead or p.stat().st_mtime < cutoff:
                            p.unlink()
                            n += 1
                    except FileNotFoundError:
                        pass
        return n

    # ---- finding jobs ---------------------------------------------------------------------
    def locate(self, job_id: str, held: dict | None = None) -> tuple[str, Path] | None:
        """``Store.locate`` in one or two looks: where a job of this site is, or None.

        ``Store.locate`` looks into every state directory and every launcher's running/
        directory, so at a thousand launchers it costs a thousand lookups: for each job the
        intake takes in (its id must be new) and each parent it checks.  The site's query
        index names a job's directory, and the job's RUNNING event its launcher, so that
        path is looked at first.  Only when the disk disagrees with them (a verdict logged
        before its rename, a move the site has not heard of yet) does ``Store.locate``
        decide, looking everywhere.

        A job the index has no row for is in no state directory: the index was checked
        against every directory at start (``recover``; until then this is
        ``Store.locate``), every job the site publishes gets its row at once, and jobs only
        enter the state directories through the site's intake.  Such a job can only be a
        drop not taken in yet: a file in ``created/`` (one look), or a job without a file
        of its own, in ``held`` (``Store.held_index``: jobs of bulk drops not yet
        published; the limbos hold only indexed jobs).

        # race: a job may move between our looks.  A hit is a place it was in; a miss of
        # both paths falls back to ``Store.locate``, whose order of looks sees forward moves.
        """
        if not self.index_checked:
            return self.store.locate(job_id, held)
        index = self.index
        r = index.row.get(job_id)
        if r is None:
            path = self.layout.job_file("created", job_id)
            if os.path.exists(path):
                return "created", Path(path)
            return (self.store.held_index(launchers=False) if held is None else held).get(job_id)
        code = index.state[r]
        if code == CODE[REMOVED]:
            return self.store.locate(job_id, held)     # deleted, or back by hand
        lay, exists = self.layout, os.path.exists
        where = DIR_OF[code]
        if where != "running":
            path = lay.job_file(where, job_id)
            if exists(path):
                return where, Path(path)
        launcher = self.running_at.get(job_id)
        if launcher is not None:
            path = lay.job_file("running", job_id, launcher)
            if exists(path):
                return "running", Path(path)
        return self.store.locate(job_id, drops=False)   # taken in: not a new drop of its id

    def where(self, job_id: str, held: dict | None = None) -> str | None:
        """The state a job of this site is in, or None: ``locate`` without the path, in at
        most seven looks however many launchers there are.

        What the intake's parent checks and the merge ask is only whether a job is done,
        failed, somewhere before that, or gone.  A job the index knows (not removed) that
        is in none of the shared state directories is in a launcher's ``running/L/`` or in
        a limbo on its way between two directories: "running" here.  Finding which
        launcher holds it would take one look per launcher, and no caller needs it.

        # race: the looks follow the order jobs move forward (waiting, stagein, ready,
        # stageout, done, failed); a job that finished meanwhile is seen by a later look,
        # one that went back to ready/ (a retry) may be called running, which only makes
        # the caller wait for its verdict.  A job removed by hand is in the index as
        # removed once its hint is read; until then it is called running, and the backstop
        # (``settle_all_waiting``, an exact ``locate``) settles what waits on it.
        """
        if not self.index_checked:
            return self.store.where(job_id, held)
        r = self.index.row.get(job_id)
        if r is None or self.index.state[r] == CODE[REMOVED]:
            loc = self.locate(job_id, held)
            return loc[0] if loc else None
        exists, lay = os.path.exists, self.layout
        launcher = self.running_at.get(job_id)
        first = DIR_OF[self.index.state[r]]         # where the index says: mostly right
        order = ("waiting", "stagein", "ready", "running", "stageout", "done", "failed")
        for state in (first, *order[order.index(first):]) if first in order else order:
            if state == "running":
                if launcher is not None and exists(lay.job_file("running", job_id, launcher)):
                    return "running"
            elif exists(lay.job_file(state, job_id)):
                return state
        return "running"

    # ---- one iteration --------------------------------------------------------------------
    def tick(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        # Batches grow from 64 to INTAKE_BATCH: the first jobs of a burst are published (and
        # can start) after 64 drops' work, later ones share the syncs of bigger batches.
        taken, t0, limit = 0, time.monotonic(), 64
        while True:
            n = self.intake(limit)
            taken += n
            if n < limit or time.monotonic() - t0 > INTAKE_BUDGET:
                break
            limit = min(2 * limit, INTAKE_BATCH)
        while time.monotonic() - t0 <= INTAKE_BUDGET:
            n = self.bulk.step(INTAKE_BATCH)
            if n < 0:
                break
            taken += n
        counts = {"intake": taken, "merged": self.merge()}
        counts["staged"] = self.staging.tick(now)
        counts["revoked"] = self.check_launchers(now)
        if now >= self.next_settle:
            self.next_settle = now + SETTLE_PERIOD
            self._drop_stale_held()
            self.settle_all_waiting()
            self._finish_other_limbos()
            bell.trim(self.store.bell)
        if self.batch is not None:
            self.batch.tick(now)
        self.events.flush(durable=False)
        self.index.take_hints()
        if now >= self.next_check:
            self.next_check = now + self.check_every
            self.index.reconcile_step()
        self.index.flush(self.offsets)
        if self.index_requested():
            self.rebuild_index()
        return counts

    # ---- the query index ------------------------------------------------------------------
    def index_requested(self) -> bool:
        return (self.index.dir / "REBUILD").exists()

    def rebuild_index(self) -> None:
        """``spool site reindex`` asked for the index to be rebuilt from the records."""
        t = time.monotonic()
        rows = self.index.rebuild()
        log.info("index rebuilt from the records: %d jobs in %.1f s", rows, time.monotonic() - t)
        fsio.unlink_quiet(self.index.dir / "REBUILD")

    # ---- 1. intake ------------------------------------------------------------------------
    def intake(self, limit: int = INTAKE_BATCH) -> int:
        held = self._take_drops(limit)
        if not held:
            return 0
        parsed = []                 # (src, name, record, as dropped?) of well-formed drops
        for src in held:
            name = src.name.split("~", 1)[1]
            try:
                parsed.append((src, name, *self._parse(src, name)))
            except FileNotFoundError:
                continue
            except InvalidJob as e:
                self._reject(src, name, str(e))
        batch = fsio.Batch(self.layout.jobs, self.spares)
        try:
            return self._publish_drops(parsed, batch)
        except OSError:
            batch.abort()         # a full disk: the drops stay held in site/intake
            raise

    def _publish_drops(self, parsed: list, batch: fsio.Batch) -> int:
        published: dict[str, str] = {}           # id -> directory, for this batch
        records: list[dict] = []                 # what was published, for the index
        again: list[str] = []                    # published before a crash: look them up
        taken: list[Path] = []                   # drops to delete once the batch is in
        count = 0
        limbo = self.store.held_index(launchers=not self.index_checked)
        apps = self.apps.pinned()
        ordered, stuck = parents_first(parsed, lambda e: e[2])
        # a cycle within the batch: check_job rejects its jobs, naming the missing parent
        for src, name, rec, canonical in ordered + stuck:
            job_id = rec["id"]
            try:
                rec, where = check_job(rec, f"jobs/created/{name}", apps, self,
                                       self.machine, published, limbo, intake=True,
                                       locations=self.staging.locations)
            except InvalidJob as e:
                self._reject(src, name, str(e))
                continue
            if rec is None:                      # already published before a crash
                taken.append(src)
                again.append(job_id)
                count += 1
                continue
            if where in ("ready", "stagein"):
                self._make_workdir(rec)
            if canonical and where == "ready" and "transfer_items" not in rec:
                # Published as dropped: the file already is the record's user view, so it
                # becomes the record by rename, dated by its mtime (record.published_as_
                # dropped) -- no new file and nothing to delete.  A crash before the
                # batch's commit leaves it held here; the next intake publishes it again.
                now_ns = time.time_ns()
                os.utime(src, ns=(now_ns, now_ns))
                rec["created_at"] = now_ns / 1e9     # what readers will see (the mtime)
                batch.add_rename(src, self.layout.job_path(where, rec["id"]))
            else:
                taken.append(src)
                batch.add_json(self.layout.job_path(where, rec["id"]), rec)
            published[rec["id"]] = where
            records.append(rec)
            count += 1
            if where == "waiting":
                for p in rec["parent_ids"]:
                    self.children.setdefault(p, set()).add(rec["id"])
        batch.commit()
        for rec in records:
            self.index.add(rec, S.fine_state(published[rec["id"]], rec["state"]))
        if again:
            self.index.refresh(self.layout, again, self.store)
        if "ready" in published.values():
            self.store.ring()
        for job_id, where in published.items():
            self.staging.noticed(job_id, where)
        for src in taken:
            self.spares.give(src)
        # race: a parent may have finished between our look at it and the publication of
        # its waiting child; the merge that saw it could not see the child yet.  Settle the
        # new waiting jobs once more now that they are visible.
        for job_id, where in published.items():
            if where == "waiting":
                self._settle_waiting(job_id)
        return count

    def _take_drops(self, limit: int) -> list[Path]:
        """Move up to ``limit`` dropped files into ``site/intake/`` and return them there.

        # race: a submitter may drop a file again under the same name while the site works
        # on the first one.  Renaming a drop into the site's own directory before reading it
        # means the site only ever reads, rejects or deletes files it holds, never a name in
        # created/ that someone may have just replaced.  Held names are unique
        # (``MS.SEQ~NAME``), and files left there by a crash are taken in first.
        """
        hold = self.layout.site_dir / "intake"
        held = [hold / n for n in sorted(fsio.list_names(hold, suffix=""))
                if not n.endswith(BULK)][:limit]          # bulk drops: see ``site.bulk``
        names = sorted(fsio.list_names(self.layout.created))[: max(limit - len(held), 0)]
        stamp = int(time.time() * 1000)
        for i, name in enumerate(names):
            dst = hold / f"{stamp:013d}.{i:05d}~{name}"
            if fsio.rename_quiet(self.layout.created / name, dst):
                held.append(dst)
        return held

    def _parse(self, src: Path, name: str) -> tuple[dict, bool]:
        """(record, whether the file is exactly its user view and can be published as is)."""
        source = f"jobs/created/{name}"
        try:
            # lstat: a link is refused, never followed -- the site reads and publishes only
            # files inside the spool, and never touches what a link points to.
            st = os.lstat(src)
            if stat.S_ISLNK(st.st_mode):
                raise InvalidJob(source, None, "is a symbolic link; the site never follows "
                                 "links: drop the JSON file itself")
            if not stat.S_ISREG(st.st_mode):
                raise InvalidJob(source, None, "not a regular file; drop one JSON file per job")
            if st.st_size > MAX_DROP_BYTES:
                raise InvalidJob(source, None, f"is {st.st_size} bytes; a job file may have at "
                                 f"most {MAX_DROP_BYTES} (put large data in files in its workdir)")
            data = fsio.read_bytes(src)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise InvalidJob(source, None, f"cannot be read: {e.strerror}") from None
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise InvalidJob(source, None, f"not valid JSON: {e}") from None
        digest = hashlib.sha1(data).digest()
        stem = name[: -len(".json")]
        # A file without a usable id is named from its own bytes and drop time, so taking it
        # in again after a crash finds the job it already became (see check_job).
        default = stem if valid_id(stem) else new_id(st.st_mtime_ns // 1_000_000, digest)
        rec = normalize(raw, source, default_id=default)
        # a file with another name (a hard link) is no record of ours: it is rewritten whole
        canonical = raw == user_view(rec) and st.st_nlink == 1
        rec["intake_digest"] = digest.hex()[:16]
        return rec, canonical

    def _reject(self, src: Path, name: str, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        dst = self.layout.rejected / f"{stamp}-{name}"
        n = 1
        while dst.exists():
            dst = self.layout.rejected / f"{stamp}.{n}-{name}"
            n += 1
        fsio.write_atomic(dst.with_name(dst.name + ".reason"), (reason + "\n").encode())
        if self.store.move(src, dst):
            self.events.append({"t": time.time(), "rejected": name, "as": dst.name,
                                "reason": reason})
            log.warning("rejected %s: %s", name, reason)

    # ---- 2. merge launcher events ---------------------------------------------------------
    def merge(self) -> int:
        """Merge new launcher events into done/ and failed/ records; release children.

        A merge that cannot write (a full disk) changes nothing: its batch is taken back
        and the offsets, pending verdicts and held run ends are as before, so the next
        tick reads and merges the same events again."""
        saved = (dict(self.offsets), {k: list(v) for k, v in self.unsettled.items()},
                 {k: list(v) for k, v in self.held.items()})
        batch = fsio.Batch(self.layout.jobs, self.spares)
        try:
            return self._merge(batch)
        except OSError:
            batch.abort()
            self.offsets, self.unsettled, self.held = saved
            raise

    def _merge(self, batch: fsio.Batch) -> int:
        settled: list[tuple[str, str]] = []
        before = len(self.unsettled)
        merged = self._merge_unsettled(batch, settled)
        changed = len(self.unsettled) != before
        for launcher, path in event_logs(self.layout).items():
            start = self.offsets.get(launcher, 0)
            try:
                if os.stat(path).st_size <= start:
                    continue           # nothing appended since we read it: not opened
            except FileNotFoundError:
                continue
            events, end = fsio.read_lines_from(path, start)
            if end == start:
                continue
            by_job: dict[str, list[dict]] = {}
            for ev in events:
                if "job" in ev and "to" in ev:
                    by_job.setdefault(ev["job"], []).append(ev)
                    if ev["to"] == S.RUNNING:
                        self.running_at[ev["job"]] = launcher
            for job_id, evs in by_job.items():
                evs = self.held.pop(job_id, []) + evs
                if verdict_dir(evs[-1]):
                    merged += self._merge_final(job_id, evs, batch, settled)
                elif awaits_outcome(evs):
                    self.held[job_id] = evs          # its outcome comes later
            self.index.note_events(events)
            self.offsets[launcher] = end
            changed = True
        batch.commit()
        if changed:
            save_merge_state(self.layout, self.offsets, self.unsettled, self.held)
        released: dict[str, tuple[Path, dict]] = {}
        for job_id, where in settled:
            if where == "stageout":
                self.staging.noticed(job_id, where)    # children wait for its stage-out
            elif where == "done":
                self._release_children(job_id, released)
            else:
                self._fail_children(job_id)
        if released:
            self._publish_released(released)
        return merged

    def _drop_stale_held(self) -> None:
        """Backstop: forget held run ends of jobs that left running/ without an outcome the
        merge could see (removed, or moved by hand).

        # race: a job's outcome is synced to its launcher's log before its rename out of
        # running/, so a job found outside running/ *before* a merge has its outcome read
        # by that merge (and its held events with it); only what is still held after it
        # is stale.
        """
        gone = [j for j in self.held if (loc := self.store.locate(j)) is None
                or loc[0] != "running"]
        if gone:
            self.merge()
            for job_id in gone:
                self.held.pop(job_id, None)

    def _merge_final(self, job_id: str, evs: list[dict], batch, settled: list) -> int:
        """Apply a job's events to its record in done/ or failed/ (0 or 1 records changed).

        # race: a launcher syncs its verdict events *before* it renames the job out of
        # running/L/, so the site may read the verdict first.  Such a job is kept in
        # ``unsettled`` and looked at again every tick until the rename has happened (or the
        # job was revoked, when the verdict is dropped: the record's attempt moved on).
        """
        where = verdict_dir(evs[-1])
        path = self.layout.job_path(where, job_id)
        if evs[-1].get(MERGED):
            # The launcher published the record with these events merged in: nothing to
            # rewrite; one look tells whether its move is done (and the children may go).
            if not os.path.exists(path):
                self.unsettled[job_id] = self.unsettled.get(job_id, []) + evs
                return 0
            self.unsettled.pop(job_id, None)
            self.running_at.pop(job_id, None)
            settled.append((job_id, where))
            return 0
        try:
            rec = read_job(path, where, retry=False)   # absent: not renamed yet, see above
        except FileNotFoundError:
            self.unsettled[job_id] = self.unsettled.get(job_id, []) + evs
            return 0
        self.unsettled.pop(job_id, None)
        self.running_at.pop(job_id, None)
        new = rec
        for ev in evs:
            new = apply_event(new, ev)
        settled.append((job_id, where))
        if new is rec:
            return 0
        return int(self.store.move_rewrite(path, path, new, self.limbo, batch))

    def _merge_unsettled(self, batch, settled: list) -> int:
        n = 0
        for job_id, evs in list(self.unsettled.items()):
            where = verdict_dir(evs[-1]) or "done"
            if os.path.exists(self.layout.job_file(where, job_id)):
                del self.unsettled[job_id]
                n += self._merge_final(job_id, evs, batch, settled)
                continue
            # race: a file dropped into created/ under this job's id (a duplicate that the
            # intake will reject) says nothing about where the job is, so only ready/ or
            # waiting/ (revoked) or nowhere (removed) count; a job between two directories
            # is "running" and waits for the next tick.
            where = self.where(job_id)
            if where is None or where in ("ready", "waiting"):
                self.unsettled.pop(job_id)      # revoked or removed meanwhile
                self.running_at.pop(job_id, None)
            elif where in ("done", "failed", "stageout"):
                del self.unsettled[job_id]
                n += self._merge_final(job_id, evs, batch, settled)
        return n

    def _release_children(self, parent: str, released: dict | None = None) -> None:
        for child in self.children.pop(parent, ()):
            self._settle_waiting(child, released)

    def _publish_released(self, released: dict[str, tuple[Path, dict]]) -> None:
        """Move the children a merge released from ``waiting/`` on, all under one
        ``fsio.Batch`` (two syncs for all of them, not a durable write each).

        Their READY events are in the site's event log, synced, before the first of them
        goes into the site's limbo: a crash before the batch's commit leaves them there,
        and the recovery (``Store.finish_limbo``) publishes each with its READY applied.
        A batch that cannot commit (a full disk) puts every child back into ``waiting/``
        and under its parents again; they are released on a later look (``settle_all_waiting``).
        """
        self.events.flush()
        batch = fsio.Batch(self.layout.jobs, self.spares)
        moved = []
        try:
            for child, (path, new) in released.items():
                self._make_workdir(new)
                dest = first_dir(new)
                if self.store.move_rewrite(path, self.layout.job_path(dest, child), new,
                                           self.limbo, batch):
                    moved.append((child, dest, new))
            batch.commit()
        except OSError:
            batch.abort()
            for child, (_, new) in released.items():
                for p in new.get("parent_ids", ()):
                    self.children.setdefault(p, set()).add(child)
            raise
        for child, dest, new in moved:
            self.index.moved(child, S.fine_state(dest, S.READY), new.get("attempt", 1))
            self.staging.noticed(child, dest)

    def _settle_waiting(self, child: str, released: dict | None = None) -> None:
        """Move a waiting job on if its parents allow: all done -> ready, one failed -> failed.

        With ``released`` (a merge releasing the children of finished parents), a child
        bound for ready/ is only noted there, its READY logged, and moved with the others
        (``_publish_released``)."""
        if released is not None and child in released:
            return                       # a child of two parents done in the same merge
        path = self.layout.job_path("waiting", child)
        try:
            rec = fsio.read_json(path)
        except FileNotFoundError:
            return
        pending = []
        for p in rec.get("parent_ids", ()):
            where = self.where(p)
            if where == "failed" or where is None:
                why = f"parent {p} failed" if where else f"parent {p} no longer exists"
                new = transition(rec, S.FAILED, "site", why, error=why)
                if self.store.move_rewrite(path, self.layout.job_path("failed", child), new, self.limbo):
                    self.index.moved(child, S.FAILED, new.get("attempt", 1))
                    self._fail_children(child)
                return
            if where != "done":
                pending.append(p)
        if pending:
            for p in pending:
                self.children.setdefault(p, set()).add(child)
            return
        if released is not None:
            released[child] = (path, self.emit(rec, S.READY, msg="all parents finished"))
            return
        new = transition(rec, S.READY, "site", "all parents finished")
        self._make_workdir(new)
        dest = first_dir(new)
        if self.store.move_rewrite(path, self.layout.job_path(dest, child), new, self.limbo):
            self.index.moved(child, S.fine_state(dest, S.READY), new.get("attempt", 1))
            self.staging.noticed(child, dest)

    def _make_workdir(self, rec: dict) -> None:
        """Create a job's ``data/<workdir>/`` as it becomes ready (as Balsam's site does):
        inputs can be staged there, and the launcher -- one loop starting every job of its
        allocation -- does not pay for the directory's creation.  A failure is left to the
        launcher, which fails the job naming the reason if it cannot create it either."""
        try:
            os.makedirs(self.layout.workdir(rec["workdir"]), exist_ok=True)
        except OSError as e:
            log.warning("job %s: cannot create data/%s now (%s); the launcher will try",
                        rec["id"], rec["workdir"], e.strerror)

    def _fail_children(self, parent: str) -> None:
        for child in self.children.pop(parent, ()):
            self._settle_waiting(child)

    # ---- 3. launcher liveness -------------------------------------------------------------
    def check_launchers(self, now: float) -> int:
        """Judge every launcher's lease (once per ``JUDGE_PERIOD``) and revoke the jobs of
        the dead and the exited.  A lease is read again only when its file changed (a
        rewrite is a new file: another inode or mtime); unchanged, its ``seq`` is too."""
        revoked = 0
        names = fsio.list_dirs(self.layout.launchers)
        if self.on_launchers is not None and names != self.watched:
            self.on_launchers([self.layout.launcher_dir(n) for n in names])
            self.watched = names
        if now < self.next_judge:
            return 0
        self.next_judge = now + JUDGE_PERIOD
        for name in [n for n in self.leases if n not in set(names)]:
            del self.leases[name]
        for launcher in names:
            ldir = self.layout.launcher_dir(launcher)
            lease = self._lease(launcher, ldir / "lease.json")
            ended = bool(self.batch and lease and self.batch.allocation_ended(lease))
            verdict = self.judge.judge(launcher, lease, now, scheduler_ended=ended)
            if verdict in (DEAD, EXITED):
                self.merge()   # its last verdicts first: a finished job must not be rerun
                revoked += self.revoke_launcher(launcher, "dead" if verdict == DEAD else "exited")
        return revoked

    def _lease(self, launcher: str, path: Path) -> dict | None:
        try:
            st = os.stat(path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = ()
        cached = self.leases.get(launcher)
        if cached is not None and cached[0] == key and key:
            return cached[1]
        lease = read_lease(path)
        self.leases[launcher] = (key, lease)
        return lease

    def revoke_launcher(self, launcher: str, why: str) -> int:
        """Take back every job of a dead (or exited) launcher, then retire its directory."""
        ldir = self.layout.launcher_dir(launcher)
        self.index.refresh(self.layout, self.store.finish_limbo(ldir / "limbo",
                                                               ldir / "events.jsonl"), self.store)
        rdir = self.layout.running / launcher
        names = fsio.list_names(rdir)
        if names:
            self._kill_orphans({n[:-5] for n in names})
        # After the close no kill request can reach the launcher any more; its writers see
        # that and follow their jobs (see spool.kills).
        asked = kills.close(ldir)
        n = 0
        for name in names:
            src = rdir / name
            try:
                rec = read_job(src, "running")
            except FileNotFoundError:
                continue
            n += self._revoke_job(src, rec, launcher, why, asked.get(rec["id"]))
        try:
            rdir.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return n   # something new appeared; look again next tick
        # its spare files (records it replaced, kept to write later ones into) are garbage
        # now: a half-written one belongs to a move its limbo copy has just finished
        fsio.Spares(ldir / "spare").drain()
        retired = self.layout.launchers / ".retired"
        retired.mkdir(exist_ok=True)
        fsio.rename(ldir, retired / launcher)
        if why == "dead":
            self._sweep_temps()          # what it was writing when it died
        self.store.ring()       # for a move into ready/ whose ring its death cut off
        self.judge.forget(launcher)
        self.leases.pop(launcher, None)
        for job_id in [j for j, at in self.running_at.items() if at == launcher]:
            del self.running_at[job_id]
        self.offsets.pop(launcher, None)
        save_merge_state(self.layout, self.offsets, self.unsettled, self.held)
        self.events.append({"t": time.time(), "launcher": launcher, "retired": why, "revoked": n})
        log.info("launcher %s %s: %d job(s) revoked", launcher, why, n)
        return n

    def _kill_orphans(self, job_ids: set[str]) -> None:
        """Kill what is left of a dead launcher's jobs on this host before they run again.

        # race: kill -9 of a launcher does not kill the jobs it started (each runs in its own
        # session), and it may die before it has logged a new job's pid.  Revoking a job
        # that still runs would let the next attempt run beside it.  Every job process (and
        # everything it starts) carries SPOOL_SITE and SPOOL_JOB_ID in its environment, so
        # the site finds them all in /proc, whatever the launcher managed to log.  On other
        # hosts the revoke waits for the scheduler's word that the allocation ended, and the
        # scheduler has killed everything in it.
        """
        victims = job_processes(self.layout.root, job_ids)
        for pid in victims:
            try:
                os.kill(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 5
        while victims and time.monotonic() < deadline:
            victims = [p for p in victims if _alive(p)]
            time.sleep(0.01)
        for p in victims:
            log.warning("process %d of a dead launcher's job would not die", p)

    def _revoke_job(self, src: Path, rec: dict, launcher: str, why: str,
                    kill: kills.Request | None = None) -> int:
        job_id = rec["id"]
        clear_hook_files(self.layout.workdir(rec["workdir"]))   # its hooks died with it
        self.held.pop(job_id, None)      # a run end of this attempt, whose outcome never came
        evs = self.unsettled.pop(job_id, None)
        if evs and evs[-1].get("attempt") == rec.get("attempt"):
            # The launcher recorded a verdict durably but died before its rename.
            new = rec
            for ev in evs:
                new = apply_event(new, ev)
            where = verdict_dir(evs[-1])
            if self.store.move_rewrite(src, self.layout.job_path(where, job_id), new, self.limbo):
                self.index.moved(job_id, new["state"], new.get("attempt", 1))
                if where == "stageout":
                    self.staging.noticed(job_id, where)
                else:
                    (self._release_children if where == "done" else self._fail_children)(job_id)
            return 1
        msg = f"launcher {launcher} {why} while the job was claimed"
        if kill is not None and kill.wants(job_id, rec.get("attempt", 1)):
            # race: the launcher was asked to kill this job and died before it had moved
            # it (before it looked, or between its signal and its verdict); the request is
            # still in the mailbox we closed, so the job must not go back to ready/.
            where, kill_msg = "failed", f"{kill.describe()}; {msg}"
            new = self.emit(rec, S.KILLED, msg=kill_msg, error=kill_msg)
        else:
            app = self.apps.get(rec["app"])
            where, state, fields, why_ = after_failure(rec, "timeouts", policy_for(app, rec), msg)
            new = self.emit(rec, S.RUN_TIMEOUT, msg=msg)
            new = self.emit(new, state, msg=why_, **fields)
        self.events.flush()          # a crash mid-move is finished from these events
        if self.store.move_rewrite(src, self.layout.job_path(where, job_id), new, self.limbo):
            self.index.moved(job_id, new["state"], new.get("attempt", 1))
            self.store.drop_token(job_id)
            log.info("revoked job %s from launcher %s -> %s", job_id, launcher, new["state"])
            if where == "failed":
                self._fail_children(job_id)
            return 1
        return 0

    def emit(self, rec: dict, to: str, **details) -> dict:
        """Log a transition of ``rec`` in the site's event log; return the merged record."""
        ev = {"t": time.time(), "job": rec["id"], "attempt": rec.get("attempt", 1),
              "to": to, "by": "site", **details}
        self.events.append(ev)
        return apply_event(rec, ev)

    # ---- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event, wake: threading.Event | None = None,
            interval: float | None = None) -> None:
        """Tick until ``stop`` is set; ``wake`` (set by a file watcher) cuts a wait short."""
        interval = interval or self.settings.get("poll_interval_sec", 1.0)
        wake = wake or threading.Event()
        self.staging.wake = wake                 # transfer backends wake the loop
        failing, first_error = 0, ""
        self.recover()
        next_look = 0.0
        while not stop.is_set():
            started = time.monotonic()
            if started >= next_look:         # a site whose directory was deleted stops
                next_look = started + 10.0
                if not (self.layout.root / MARKER).exists():
                    log.error("site directory %s is gone (no %s); the site process stops",
                              self.layout.root, MARKER)
                    break
            try:
                counts = self.tick(started)
                if failing:
                    log.warning("site ticks work again after %d that failed (%s)", failing,
                                first_error)
                    failing = 0
            except OSError as e:
                # A full disk, a quota, a filesystem gone away: one line when it starts and
                # one when it ends, not a traceback per tick.  Nothing is lost meanwhile:
                # every step that failed is taken back and done again next tick.
                if not failing:
                    first_error = fsio.error_text(e)
                    log.error("site tick failed: %s; retrying every tick", first_error)
                failing += 1
                counts = {}
            except Exception:  # the site never stops on one bad tick; it logs and goes on
                log.exception("site tick failed; continuing")
                counts = {}
            if counts.get("intake", 0) >= INTAKE_BURST:
                continue       # a burst of drops is arriving: take the next ones in at once
            # Verdicts seen before their rename are settled on the next tick: come back soon
            # (the rename out of running/ is not watched).
            period = 0.02 if self.unsettled else interval
            wake.wait(timeout=max(0.0, period - (time.monotonic() - started)))
            wake.clear()
        self.staging.close()
        self.events.close()
        if self._index is not None:
            self._index.close()
