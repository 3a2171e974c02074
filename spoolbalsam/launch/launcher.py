"""The launcher: claim ready jobs by rename and run them on the allocation's free resources.

One launcher is one claimer with its own id L, its own ``jobs/running/L/`` and its own
``launchers/L/`` (lease, event log, limbo).  Serial mode runs one launcher per node, each
placing single-node jobs on its own cores and gpus and starting them directly; MPI mode runs
one launcher on the head node that places jobs over all nodes and starts each through the
machine's mpiexec.  There is no master: the spool is the only channel between launchers
and the site.  Inside one launcher, a child process, its *starter* (``starter``), creates
each job's ``job.out``, execs and reaps it, so this loop never waits for an exec.

One ``tick(now)``:

1. heartbeat (the lease counter);
2. reap finished processes (their resources go to step 4 first, their verdicts are
   written after it): rc 0 -> event RUN_DONE + JOB_FINISHED, then the move to ``done/``
   (a job with stage-out items: RUN_DONE + POSTPROCESSED marked ``stage_out``, then a
   rename to ``stageout/``, where the site stages its outputs out); rc != 0 -> RUN_ERROR,
   then the retry policy: back to ``ready/`` with ``attempt + 1`` or to ``failed/`` with
   the tail of job.out.  Events are written at once and synced *before* the moves, so a
   verdict is never lost; jobs that end within ``VERDICT_SYNC_SEC`` of each other share one
   fsync (their moves wait for it, their resources are free at once).  A move into
   ``failed/`` or ``ready/`` -- and, with ``launcher.merge_verdicts`` (the default on
   machines with a batch scheduler), into ``done/`` -- is a move with a rewrite
   (``Store.move_rewrite``): the job goes into our limbo at once (the commit point) and its
   record, with the verdict merged in, is published with the others of the same fsync
   under one ``fsio.Batch``, written into spare files (``launchers/L/spare/``); the final
   event says ``merged``, so the site has no record to rewrite.  Without it a finished job
   is renamed into ``done/`` as it was claimed and the site merges its verdict;
3. near the walltime (or on SIGTERM / a stop file): stop starting jobs, SIGTERM running
   ones, SIGKILL after the grace; they end RUN_TIMEOUT and go back to ``ready/`` for the
   next allocation.  Kill requests (``spool.kills``: one ``stat`` of ``launchers/L/kill.bell``
   at most every ``kills.LOOK_SEC`` while a job is held) stop the jobs they name the same
   way, or drop them from the starter, or kill their hook; those end ``KILLED`` in
   ``failed/`` and are not retried;
4. fill free resources: read candidates from a random bucket of ``ready/``, keep those whose
   tags match, whose ``wall_time_min`` fits the time left and that could ever fit here; let
   ``placement.choose`` place them (no head-of-line blocking, no starvation), claim each by
   rename and start it.  A lost race (ENOENT) just releases the placement.  After a pass
   that found nothing, ``ready/`` is listed again only once its bell has rung
   (``spool.bell``: a look is one ``stat``), or after ``bell.FULL_PASS_SEC``.  Behind a job
   of an app whose recent runs were short (under ``STANDBY_BELOW_SEC``), up to
   ``STANDBY_DEPTH`` claimed jobs of the same shape wait in the starter as *standbys* and
   start on its resources the moment it is reaped: short tasks go back to back without
   waiting for this loop.  A standby that never started goes back to ``ready/`` unchanged.

The loop exits when the walltime is used up, after ``idle_ttl_sec`` with nothing running
and nothing claimable, when the mpiexec budget is spent and running jobs have finished, or
on a stop request.  Every exit logs why and leaves ``running/L/`` empty.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import time
from pathlib import Path
from typing import NamedTuple

from ..spool import states as S
from ..apps import AppRegistry
from ..spool import bell, fsio, kills
from ..spool.events import MERGED, apply_event
from ..spool.ids import new_id
from ..spool.layout import Layout
from ..spool.lease import LeaseWriter, job_processes, proc_start
from ..spool.policy import after_failure, policy_for
from ..spool.store import Store, read_job, read_job_stat, same_file
from ..transfer.items import has_stage_out
from . import pyapp, runner
from .placement import NodePool, choose
from .resources import NodeSpec, Request
from .starter import Starter

log = logging.getLogger("spoolbalsam.launcher")
IDLE_SCAN_SEC = 0.1          # rescan an empty ready/ this often
# Exit statuses of a job ended by SIGTERM/SIGKILL (directly, or as a shell's 128+N).
KILLED = {-signal.SIGTERM: "SIGTERM", -signal.SIGKILL: "SIGKILL",
          128 + signal.SIGTERM: "SIGTERM", 128 + signal.SIGKILL: "SIGKILL"}
MAX_SCAN_BUCKETS = 16        # buckets read per fill before giving the loop back
STANDBY_DEPTH = 3            # jobs queued in the starter behind each running one ...
STANDBY_BELOW_SEC = 1.0      # ... if recent runs of its app were this short (else none)
VERDICT_SYNC_SEC = 0.02      # verdicts of jobs ending this close together share one fsync
GATHER_SEC = 0.001           # replies gather this long when every slot has a standby (wait)
HOOK_POLL_SEC = 0.05         # a running hook is looked at this often
SPARES_KEEP = 256            # replaced records kept to write later ones into (fsio.Spares)
_MERGED = {MERGED: True}     # on a final event whose move carries the record


class Hooked(NamedTuple):
    """A job whose hook runs in its own process while this loop goes on (``_hook``)."""
    hook: pyapp.HookRun
    deadline: float             # monotonic: killed, and the hook failed, after this
    path: Path                  # the claimed record, in running/L/
    rec: dict
    then: tuple                 # what to do with the result: the arguments of the next step


class Candidate(NamedTuple):
    """A ready job as read before its claim."""
    rec: dict
    req: Request
    wall: float                 # wall_time_min, 0 if none
    st: os.stat_result          # of the file read: a claim of the same file needs no re-read


class Launcher:
    def __init__(self, layout: Layout, settings: dict, machine, *, mode: str,
                 nodes: list[NodeSpec], wall_time_min: float, filter_tags: dict | None = None,
                 launcher_id: str | None = None, batch_job: str | None = None,
                 scheduler_id: str | None = None, idle_ttl_sec: float | None = None,
                 max_jobs: int | None = None):
        if mode not in ("serial", "mpi"):
            raise ValueError(f"job mode must be serial or mpi, got {mode!r}")
        lset = settings.get("launcher", {})
        self.layout, self.settings, self.machine, self.mode = layout, settings, machine, mode
        self.id = launcher_id or f"{mode}-{fsio.HOST.split('.')[0]}-{new_id()[-8:]}"
        self.store = Store(layout, settings.get("claim_mode", "rename"))
        self.apps = AppRegistry(layout.apps)
        self.pool = NodePool(nodes)
        self.filter_tags = {**settings.get("filter_tags", {}), **(filter_tags or {})}
        self.idle_ttl = lset.get("idle_ttl_sec", 30.0) if idle_ttl_sec is None else idle_ttl_sec
        self.grace = lset.get("sigterm_grace_sec", 10.0)
        self.margin = lset.get("walltime_margin_min", 1.0) * 60
        self.tail_lines = lset.get("error_tail_num_lines", 10)
        self.hook_timeout = 300.0
        # On a machine with a batch scheduler many launchers share one site, each finishing a
        # few jobs a second: each publishes its finished jobs' records itself, so the site
        # only reads their events (see _publish_verdicts).  On the local machine one or two
        # launchers finish jobs by the thousand a second and the site has cores to spare.
        merge = lset.get("merge_verdicts")
        self.merge_verdicts = machine.scheduler != "local" if merge is None else merge
        # Candidates read ahead: enough to fill every free core twice over, few enough that
        # the per-tick pass over them stays cheap when jobs are short.
        cores = sum(len(n.cpu_ids) for n in nodes)
        self.prefetch = lset.get("prefetch") or min(max(16, 2 * cores), 4096)
        budget = os.environ.get("SPOOL_MPIEXEC_BUDGET")   # a serial worker's share
        self.max_mpiexec = int(budget) if budget else machine.max_mpiexec_per_batch_job
        self.max_concurrent = machine.max_concurrent_mpiruns
        self.max_jobs = max_jobs
        self.batch_job = batch_job
        self.scheduler_id = scheduler_id
        self.t0 = time.monotonic()
        self.end_at = self.t0 + wall_time_min * 60 if wall_time_min else float("inf")
        self.dir = layout.launcher_dir(self.id)
        self.rdir = layout.running / self.id
        self.limbo = self.dir / "limbo"
        for d in (self.dir, self.rdir, self.limbo):
            d.mkdir(parents=True, exist_ok=True)
        self.events = fsio.AppendLog(self.dir / "events.jsonl")
        self.mailbox = kills.Mailbox.open(self.dir)     # before the first claim (kills)
        self.kill_files: dict[Path, tuple[kills.Request, set[str]]] = {}   # to delete
        self.killed: set[str] = set()           # killed this tick: strays to sweep (_sweep)
        self.spares = fsio.Spares(self.dir / "spare", keep=SPARES_KEEP)   # see _publish_verdicts
        self.lease = LeaseWriter(self.dir / "lease.json", settings.get("lease_interval_sec", 5.0),
                                 host=fsio.HOST, pid=os.getpid(), pid_start=proc_start(os.getpid()),
                                 mode=mode, batch_job=batch_job, scheduler_id=scheduler_id,
                                 nodes=[n.name for n in nodes],
                                 gpus=sum(len(n.gpu_ids) for n in nodes),
                                 started_at=time.time(), state="running")
        self.lease.beat(force=True)
        self.running: dict[str, runner.Running] = {}
        self.cands: list[Path] = []
        self.buckets: list[str] = []
        self.skip: set[str] = set()             # never claimable here (tags, size)
        self.passed: dict[str, int] = {}
        self.parsed: dict[Path, Candidate] = {}
        self.next_scan = 0.0
        self.idle_since = time.monotonic()
        self.round_start = self.round_found = None   # the current pass over ready/'s buckets
        self.backlog: list[str] = []            # names of the last bucket listed, not yet taken
        self.backlog_dir: Path | None = None
        self.empty_round_at = float("-inf")     # start of the last pass that found nothing
        self.round_bell: tuple = ()             # the bell as the current pass began
        self.quiet_bell: tuple | None = None    # ... as the last pass that found nothing began
        self.full_pass_at = 0.0                 # list ready/ by then even if the bell is quiet
        self.launches = 0
        self.standbys = 0                       # of them, queued as standbys (see starter)
        self.mpiexecs = 0                       # launches through mpiexec/srun (the budget)
        self.finished = 0
        # what claiming costs, in the exit lease (bench/many_launchers.py)
        self.claims_lost = 0                    # renames that found the job gone
        self.candidates_gone = 0                # candidates gone before we read them
        self.empty_passes = 0                   # passes over ready/ that found nothing
        self.listings = 0                       # listings of ready/ and of its buckets
        self.draining: str | None = None        # why we stopped starting jobs
        self.exit_reason: str | None = None
        self.verdicts: list = []                # renames waiting for the events' fsync
        self.hooks: list[Hooked] = []           # post-run hooks running (their jobs have ended)
        self.preparing: list[Hooked] = []       # preprocess hooks running (resources held)
        self.hooks_cut_at = float("inf")        # post-run hooks are stopped then (request_stop)
        self._starter: Starter | None = None    # started with the first job
        self.signalled: str | None = None       # SIGTERM/SIGINT noted, acted on by tick
        self._wake_r: int | None = None         # readable when a signal came (run())
        self.run_sec: dict[str, float] = {}     # app -> recent run time (moving average)
        self.verdicts_since = 0.0
        self.write_failures = 0                 # ticks in a row that failed to write
        self.write_error = ""
        self.finishing: set[str] = set()        # jobs whose move out of running/L/ is tried
        self.lease_error = ""                   # why the lease could not be rewritten

    # ---- events ---------------------------------------------------------------------------
    def emit(self, rec: dict, to: str, t: float | None = None, **details) -> dict:
        ev = {"t": time.time() if t is None else t, "job": rec["id"], "attempt": rec.get("attempt", 1), "to": to,
              "by": self.id, "launcher": self.id, **details}
        if self.batch_job:
            ev.setdefault("batch_job", self.batch_job)
        self.events.append(ev)
        return apply_event(rec, ev)

    # ---- the loop -------------------------------------------------------------------------
    def request_stop(self, why: str) -> None:
        if not self.draining:
            self.draining = why
            self.hooks_cut_at = time.monotonic() + self.grace   # hooks get the jobs' grace
            log.info("launcher %s: %s; no new jobs, stopping running ones", self.id, why)
            if self._starter is not None:
                self._starter.pump()       # a job already reaped ended on its own
            # race: the starter acts on messages in order but may reap a job between two of
            # them; waiting standbys are dropped first, so none starts on a slot we then stop
            waiting_first = sorted(self.running.values(),
                                   key=lambda r: not (r.after and r.proc.pid is None))
            for run in waiting_first:
                if run.proc.returncode is None:
                    run.timed_out = True
                    runner.terminate(run, self.grace)

    def tick(self, now: float | None = None) -> bool:
        """One iteration; False when the launcher is done."""
        now = time.monotonic() if now is None else now
        if self.signalled:
            self.request_stop(self.signalled)
        try:
            if self.lease.beat(now) and self.lease_error:
                log.warning("launcher %s: its lease is rewritten again (it could not be: %s)",
                            self.id, self.lease_error)
                self.lease_error = ""
        except OSError as e:
            # Not rewritten (a full disk): the site only grows suspicious of us; retried
            # next tick.  One line when it starts, one when it ends.
            if not self.lease_error:
                self.lease_error = fsio.error_text(e)
                log.error("launcher %s: cannot rewrite its lease (%s); the site may suspect "
                          "it until it can", self.id, self.lease_error)
        if (self.dir / "stop").exists():
            self.request_stop("stop requested")
        self._look_for_kills(now)
        if now >= self.end_at - self.margin:
            self.request_stop("walltime nearly used up")
        ended = self.collect(now)
        if not self.draining:
            if self.mode == "mpi" and self.budget_left() == 0:
                self.draining = f"mpiexec budget of {self.max_mpiexec} launches spent"
                log.info("launcher %s: %s; finishing running jobs", self.id, self.draining)
            elif self.max_jobs is not None and self.launches >= self.max_jobs:
                self.draining = f"max_jobs {self.max_jobs} reached"
            else:
                if self.preparing:
                    self._prepared(now)
                self.fill(now)           # freed resources go to the next jobs first
        self.judge(ended, now)
        if self.running or self.hooks or self.preparing:
            self.idle_since = now
        if self.draining and not self.running and (not self.hooks or now >= self.hooks_cut_at):
            self.exit_reason = self.draining
            return False
        # Idle means: nothing ran for idle_ttl and a whole pass over ready/ that began after
        # the last job ended found nothing to claim (one look at a few buckets is not enough).
        if (not self.running and not self.cands and now - self.idle_since >= self.idle_ttl
                and self.empty_round_at >= self.idle_since):
            if self._drops_pending():
                self.idle_since = now    # the site is still taking jobs in: wait for them
            else:
                self.exit_reason = f"idle for {self.idle_ttl:g} s"
                return False
        return True

    def run(self) -> str:
        """Tick until done; returns why the launcher stopped."""
        # race: a signal arrives between any two bytecodes, also in the middle of a message
        # to the starter.  The handler only takes note; the next tick stops, and the wakeup
        # descriptor ends the wait at once.
        def note(signum, _frame):
            self.signalled = signal.Signals(signum).name
        signal.signal(signal.SIGTERM, note)
        signal.signal(signal.SIGINT, note)
        self._wake_r, wake_w = os.pipe()
        for fd in (self._wake_r, wake_w):
            os.set_blocking(fd, False)
        previous = signal.set_wakeup_fd(wake_w)
        try:
            self.starter              # its interpreter starts while we look for the first jobs
            while self._tick_or_wait_out():
                self.wait()
        finally:
            signal.set_wakeup_fd(previous)
            self.shutdown()
            for fd in (self._wake_r, wake_w):
                os.close(fd)
            self._wake_r = None
        return self.exit_reason or "stopped"

    def _tick_or_wait_out(self) -> bool:
        """``tick``, riding out a filesystem that refuses writes (a full disk, a quota).

        Every write of a tick is one that can be done again: events stay buffered until
        they are written (``fsio.AppendLog.flush``), verdicts wait in order for their
        events' sync, a move with a rewrite that cannot publish gives the job back to where
        it was (``Store.move_rewrite``), and a lease not rewritten only makes the site
        suspect us.  One log line when the trouble starts and one when it ends."""
        try:
            alive = self.tick()
        except OSError as e:
            if not self.write_failures:
                self.write_error = fsio.error_text(e)
                log.error("launcher %s: cannot write (%s); retrying", self.id, self.write_error)
            self.write_failures += 1
            time.sleep(min(0.05 * self.write_failures, 1.0))
            return True
        if self.write_failures:
            log.warning("launcher %s: writes work again after %d failed ticks (%s)", self.id,
                        self.write_failures, self.write_error)
            self.write_failures = 0
        return alive

    def _drops_pending(self) -> bool:
        return bool(fsio.list_names(self.layout.created) or
                    fsio.list_names(self.layout.site_dir / "intake", suffix=""))

    def wait(self) -> None:
        """Sleep until the starter reports (a job started or ended), or until it is time
        to look for work again: a finished job is reaped at once, not on a fixed tick."""
        if not self.running:
            time.sleep(min(IDLE_SCAN_SEC, 0.05))
            return
        timeout = IDLE_SCAN_SEC if self.pool.has_room() and not self.draining else 1.0
        if self.hooks or self.preparing:
            timeout = min(timeout, HOOK_POLL_SEC)
        if self.verdicts:
            left = self.verdicts_since + VERDICT_SYNC_SEC - time.monotonic()
            timeout = min(timeout, max(left, 0.0))
        watched = [self.starter] + ([self._wake_r] if self._wake_r is not None else [])
        ready, _, _ = select.select(watched, [], [], timeout)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
        elif ready and self._slots_covered():
            # Every busy slot has its next job waiting in the starter, which starts it on
            # its own: replies may gather a moment, and one tick handles several jobs.
            time.sleep(GATHER_SEC)

    def _slots_covered(self) -> bool:
        return not self.draining and all(r.standby for r in self.running.values() if r.holds)

    def shutdown(self) -> None:
        """Leave nothing behind: end running jobs, return unstarted claims, say goodbye."""
        if self.running or self.hooks:
            self.request_stop(self.draining or "launcher exiting")
            deadline = time.monotonic() + self.grace + 5
            while time.monotonic() < deadline and (
                    self.running or (self.hooks and time.monotonic() < self.hooks_cut_at)):
                self._look_for_kills(time.monotonic())
                self.reap(time.monotonic())
                time.sleep(0.01)
            for h in self.hooks:
                # Past the grace its post-run hook never finished: the job goes back for
                # another attempt, as a job stopped at the walltime does.
                h.hook.expire(self.grace)
                run, hook = h.then[0], h.then[1]
                self.verdicts.append(self._after_hook(
                    h.rec, run, hook, "timeouts", f"{hook} stopped: {self.draining}", None))
            self.hooks.clear()
        for h in self.preparing:     # never started: the job goes back unchanged (below)
            h.hook.expire(self.grace)
            self._unplace(h.then[0])
        self.preparing.clear()
        self._publish_verdicts(time.monotonic(), force=True)
        self.spares.drain()
        # race: a claim whose start failed, or a job claimed just before the stop, is in
        # running/L/ but not running; it was never started, so it goes back unchanged.
        for name in fsio.list_names(self.rdir):
            job_id = name[:-5]
            if job_id not in self.running:
                if self.store.move(self.rdir / name, self.layout.job_path("ready", job_id)):
                    self.store.drop_token(job_id)
        if not fsio.list_names(self.rdir):   # no job left here for any request to name
            self.mailbox.clear()
            self.kill_files.clear()
        if self._starter is not None:
            self._starter.close()
        self.events.close()
        self.lease.beat(force=True, state="exited", ended_at=time.time(),
                        exit_reason=self.exit_reason or self.draining,
                        launches=self.launches, finished=self.finished, standbys=self.standbys,
                        claims_lost=self.claims_lost, candidates_gone=self.candidates_gone,
                        empty_passes=self.empty_passes, listings=self.listings)
        try:
            self.rdir.rmdir()
        except OSError:
            pass
        log.info("launcher %s exits: %s (%d launched, %d of them as standbys, %d finished)",
                 self.id, self.exit_reason or self.draining, self.launches, self.standbys,
                 self.finished)

    # ---- reaping --------------------------------------------------------------------------
    def reap(self, now: float) -> None:
        self.judge(self.collect(now), now)

    def collect(self, now: float) -> list:
        """The jobs that ended, out of ``running`` with their resources released, so that a
        fill can start the next jobs before these verdicts are written."""
        ended = []
        if self._starter is not None:
            self._starter.pump()
            if self._starter.dead and not self.draining:
                self.request_stop("its job starter exited")
            if self._starter.dead:
                self._unreported()
        for job_id, run in list(self.running.items()):
            if run.proc.error is not None or run.proc.dropped is not None:   # never started
                del self.running[job_id]
                self._let_go(run)
                self.launches -= 1
                self.mpiexecs -= run.used_mpi
                self.standbys -= run.after is not None
                if run.kill is not None:           # stopped before it started: as asked
                    self._fail_start(run.path, run.record, None,
                                     f"{run.kill.describe()} before it started", S.KILLED)
                elif run.proc.dropped is not None:   # not the job's fault: back, unchanged
                    log.info("job %s not started: %s", job_id, run.proc.dropped)
                    if self.store.move(run.path, self.layout.job_path("ready", job_id)):
                        self.store.drop_token(job_id)
                else:
                    self._fail_start(run.path, run.record, None,
                                     f"could not start: {run.proc.error}")
                continue
            if run.proc.pid is not None and not run.announced:
                self._announce(run)
            rc = run.proc.poll()
            if rc is None:
                runner.kill_if_due(run, now)
                continue
            del self.running[job_id]
            self._let_go(run)
            self.finished += 1
            ended.append((run, rc, run.proc.ended_at))
            app, took = run.record["app"], run.proc.ended_at - (run.started_at or run.proc.ended_at)
            self.run_sec[app] = 0.7 * self.run_sec.get(app, took) + 0.3 * took
        return ended

    def _unreported(self) -> None:
        """Kill whatever runs of the jobs a dead starter may have started without telling
        us (their environment names them: ``SPOOL_SITE``, ``SPOOL_JOB_ID``).  Their runs end
        as killed from outside, so each goes back as a new attempt."""
        ids = {j for j, r in self.running.items() if r.proc.unreported}
        if not ids:
            return
        from ..site.loop import job_processes
        for pid in job_processes(self.layout.root, ids):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for run in self.running.values():
            run.proc.unreported = False

    def _let_go(self, run: runner.Running) -> None:
        """``run`` has left ``running``: its resources pass to its standby if it has one
        still waiting or running on them, or go back to the pool."""
        nxt = self.running.get(run.standby) if run.standby else None
        if nxt is not None and nxt.after != run.job_id:
            nxt = None
        before = self.running.get(run.after) if run.after else None
        if before is not None and before.standby != run.job_id:
            before = None
        if run.holds:
            if nxt is not None:
                nxt.holds = True               # it starts (or started) on them
            else:
                self.pool.release(run.placement)
        elif before is not None:               # a standby dropped while its slot is busy
            before.standby = None              # (the starter drops those behind it too)

    def judge(self, ended: list, now: float) -> None:
        """Write the verdicts of ``ended`` jobs, and of jobs whose post-run hook has ended;
        their renames follow the events' sync."""
        moves = [self._verdict(run, rc, ended_at) for run, rc, ended_at in ended]
        moves += [self._after_hook(h.rec, *h.then, res)
                  for h, res in self._hooks_done(self.hooks, now)]
        moves = [m for m in moves if m is not None]
        if self.killed:
            self._sweep()
        if moves and not self.verdicts:
            self.verdicts_since = now
        self.verdicts += moves
        self.events.flush(durable=False)     # readers see verdicts at once
        self._publish_verdicts(now)

    def _publish_verdicts(self, now: float, force: bool = False) -> None:
        """Sync the event log, then move the waiting jobs -- each verdict is durable before
        the move that makes it visible.  One fsync serves every job that ended within
        VERDICT_SYNC_SEC; nothing waits once nothing else runs.

        A job goes to done/ or failed/ with its verdict merged into its record (the final
        event says ``merged``, so the site has nothing to rewrite): each move's commit
        point is the rename of the job into our limbo, at once; the new records are written
        into spare files and published together under one ``fsio.Batch`` (two syncs for
        all of them, none per record)."""
        if not self.verdicts:
            return
        if not force and self.running and now - self.verdicts_since < VERDICT_SYNC_SEC:
            return
        self.events.sync()
        batch = fsio.Batch(self.layout.jobs, self.spares)
        try:
            for move in self.verdicts:
                move(batch)
            batch.commit()
        except OSError:
            # A full disk: what the batch published stays, the rest is back in running/L/
            # (``Batch.abort``); every move is tried again, in order, next tick
            # (``_finish`` knows a move that was already published).
            batch.abort()
            raise
        self.verdicts = []

    def _hook(self, app, rec: dict, hook: str) -> pyapp.HookRun | None:
        """Start a Python app's hook in a child process (in the job's workdir); None if the
        app does not define it.

        Hooks run where Balsam's site would run them, but on the launcher's node, while the
        job is still in running/L/: ``preprocess`` before the start (its resources held
        meanwhile), ``postprocess`` after rc 0, ``handle_error`` after rc != 0,
        ``handle_timeout`` after a timeout.  The loop does not wait for them; each tick
        polls them (``_hooks_done``).  An exception in a hook, or a hook still running after
        ``hook_timeout``, fails the job with the hook's message; it is never dropped.  A
        hook killed by a signal from outside gave no verdict: its job goes back for another
        attempt, counted as a timeout.
        """
        if app is None or not app.python_class or not pyapp.has_hook(self.layout.root, app, hook):
            return None
        return pyapp.start_hook(self.layout.root, app, rec, hook)

    def _hooks_done(self, pending: list[Hooked], now: float) -> list[tuple[Hooked, dict]]:
        """The hooks of ``pending`` that have ended, or overran and were killed, taken out
        of it, with their results."""
        done = []
        for h in list(pending):
            res = h.hook.poll()
            if res is None and now >= h.deadline:
                res = h.hook.expire(self.hook_timeout)
            if res is not None:
                pending.remove(h)
                done.append((h, res))
        return done

    def _verdict(self, run: runner.Running, rc: int, ended_at: float):
        rec = run.record
        app = run.app                 # the definition it ran with decides its verdict too
        details = {"return_code": rc, "ended_at": ended_at, "started_at": run.started_at,
                   "host": run.placement.hosts[0], "placement": run.placement.to_json(),
                   "affinity": rec.get("affinity") or {}}
        if app is not None and app.python_class:       # only a run() app leaves a result
            details.update(pyapp.result_fields(run.out.parent, rec))
        if run.kill is not None and run.proc.signalled:
            # race: a job the starter reaped before our signal reached it ended on its own
            # and keeps its own verdict below (the request is then simply done with)
            msg = run.kill.describe()
            rec = self.emit(rec, S.KILLED, t=ended_at, msg=msg, error=msg, **details,
                            **_MERGED)
            self.killed.add(run.job_id)
            return lambda batch: self._finish(run, "failed", rec, (), batch)
        # race: a job the starter reaped before our SIGTERM reached it ended on its own
        stopped = run.timed_out and run.proc.signalled
        if rc == 0 and not stopped:
            rec = self.emit(rec, S.RUN_DONE, t=ended_at, **details)
            hook, kind, msg = "postprocess", None, None
        elif stopped or rc in KILLED:
            # race: when an allocation ends, the scheduler signals the jobs and the launcher
            # at once; a job reaped before our own SIGTERM handler ran was killed from
            # outside, like a timeout, and must not spend the job's error retries.
            msg = (f"stopped by the launcher ({self.draining})" if stopped
                   else f"killed by signal {KILLED[rc]} from outside the launcher")
            if not stopped:
                # Whatever killed it (the allocation ending, the OOM killer) may strike
                # again here: its next attempt is left to another launcher.
                self.skip.add(f"{run.job_id}.json")
            rec = self.emit(rec, S.RUN_TIMEOUT, t=ended_at, msg=msg, **details)
            hook, kind = "handle_timeout", "timeouts"
        else:
            msg = f"exit code {rc}"
            rec = self.emit(rec, S.RUN_ERROR, t=ended_at, msg=msg,
                            error=runner.tail(run.out, self.tail_lines), **details)
            hook, kind = "handle_error", "errors"
        started = self._hook(app, rec, hook)
        if started is not None:      # its verdict waits for the hook, this loop does not
            self.hooks.append(Hooked(started, time.monotonic() + self.hook_timeout, run.path,
                                     rec, (run, hook, kind, msg)))
            return None
        return self._after_hook(rec, run, hook, kind, msg, None)

    def _after_hook(self, rec: dict, run: runner.Running, hook: str, kind: str | None,
                    msg: str | None, res: dict | None):
        """The rest of a verdict once the hook (if any) has said its word: the move."""
        app = run.app
        if res is not None and (res.get("data") is not None or res.get("state_data")):
            extra = {"data": res["data"]} if res.get("data") is not None else {}
            rec = self.emit(rec, S.POSTPROCESSED if kind is None else rec["state"],
                            msg=res.get("state_data"), **extra)
        if res is not None and res.get("killed"):
            # A hook killed from outside (the OOM killer, an operator) gave no verdict, like
            # a job killed from outside: the job goes back for another attempt, counted
            # against its timeouts, never failed for the kill.
            where, state, fields, why = after_failure(
                rec, "timeouts", policy_for(app, rec),
                f"{hook} killed by {res['killed']} from outside the launcher")
            rec = self.emit(rec, state, msg=why, **fields)
            return lambda batch: self._finish(run, where, rec, (), batch)
        if res is not None and res.get("error"):
            why = f"{hook} failed: {res['error']}"
            rec = self.emit(rec, S.FAILED, msg=why, error=why, **_MERGED)
            return lambda batch: self._finish(run, "failed", rec, (), batch)
        wanted = (res or {}).get("state")
        if (wanted is None and kind is None or wanted in (S.JOB_FINISHED, S.POSTPROCESSED)) \
                and has_stage_out(rec):
            # Its outputs leave before it is finished: the site stages them out from
            # stageout/ (site.transfers), then finishes it and releases its children.
            new = self.emit(rec, S.POSTPROCESSED, stage_out=True,
                            msg=f"set by {hook}" if wanted else None)
            return lambda batch: self._finish(run, "stageout", new if wanted else None, (),
                                              batch)
        if wanted is None and kind is None:
            cleanup = app.cleanup_files if app else ()
            if not self.merge_verdicts:          # a plain rename; the site merges the verdict
                self.emit(rec, S.JOB_FINISHED)
                return lambda batch: self._finish(run, "done", None, cleanup, batch)
            rec = self.emit(rec, S.JOB_FINISHED, **_MERGED)
            return lambda batch: self._finish(run, "done", rec, cleanup, batch)
        if wanted in (S.JOB_FINISHED, S.POSTPROCESSED):
            rec = self.emit(rec, S.JOB_FINISHED, msg=f"set by {hook}", **_MERGED)
            return lambda batch: self._finish(run, "done", rec, (), batch)
        if wanted == S.FAILED:
            rec = self.emit(rec, S.FAILED, msg=f"set by {hook}", error=f"set FAILED by {hook}",
                            **_MERGED)
            return lambda batch: self._finish(run, "failed", rec, (), batch)
        if wanted == S.RESTART_READY:
            rec = self.emit(rec, S.RESTART_READY, msg=f"set by {hook}",
                            attempt=rec.get("attempt", 1) + 1)
            return lambda batch: self._finish(run, "ready", rec, (), batch)
        where, state, fields, why = after_failure(rec, kind or "errors", policy_for(app, rec),
                                                  msg or f"{hook} asked for {wanted}")
        if state == S.FAILED and kind == "errors":
            fields["error"] = f"{why}\n{runner.tail(run.out, self.tail_lines)}"
        rec = self.emit(rec, state, msg=why, **fields, **(_MERGED if where == "failed" else {}))
        return lambda batch: self._finish(run, where, rec, (), batch)

    def _finish(self, run: runner.Running, where: str, record: dict | None, cleanup,
                batch: fsio.Batch) -> None:
        """Move a job that ended to ``where``: with ``record`` (its verdict merged in), as a
        move with a rewrite whose publication ``batch`` commits; without, by plain rename.

        Called again for the same job when a batch failed (a full disk): a job no longer in
        running/L/ by then was published by that batch before it failed (or revoked
        meanwhile), and only what follows a move is left to do."""
        dst = self.layout.job_path(where, run.job_id)
        if run.job_id in self.finishing and not os.path.exists(run.path):
            self._finished(run, cleanup)
            return
        self.finishing.add(run.job_id)
        if record is None:
            ok = self.store.move(run.path, dst)
        else:
            ok = self.store.move_rewrite(run.path, dst, record, self.limbo, batch)
        if not ok:
            # race: the site revoked this job (it judged us dead) while it ran; our verdict
            # stays in our event log for the record, but the job belongs to its next attempt.
            self.finishing.discard(run.job_id)
            self._moved_out(run.job_id)
            self.events.append({"t": time.time(), "job": run.job_id, "zombie": True,
                                "attempt": run.record.get("attempt", 1), "by": self.id})
            log.warning("job %s was revoked while running here; verdict kept as zombie event",
                        run.job_id)
            return
        if record is None:
            self._finished(run, cleanup)
        else:
            batch.after_commit(lambda: self._finished(run, cleanup))

    def _finished(self, run: runner.Running, cleanup) -> None:
        """What follows a job's move out of running/L/ once it is published."""
        self.finishing.discard(run.job_id)
        self._moved_out(run.job_id)
        self.store.drop_token(run.job_id)      # it has left running/ (the limbo is ours)
        if cleanup:
            _cleanup(run.out.parent, cleanup)

    # ---- filling --------------------------------------------------------------------------
    def _next_candidates(self, now: float) -> None:
        """Refill the candidate list from random buckets of ready/ (names only)."""
        if now < self.next_scan:
            return
        if not self.buckets and not self.backlog and self._bell_quiet(now):
            # Nothing came into ready/ since the last pass that found nothing began.
            self.empty_round_at = now
            self.next_scan = now + IDLE_SCAN_SEC
            return
        scanned = 0
        # with jobs running, a few buckets per tick keep reaping prompt; idle, a whole pass
        limit = MAX_SCAN_BUCKETS if self.running else 1 << 30
        while len(self.cands) < self.prefetch:
            if not self.backlog:
                if not self.buckets and self.round_start is not None:
                    if not self.round_found:
                        self._found_nothing(now, self.round_start)
                    self.round_start = None
                    break              # a full round: let the loop run before another
                if scanned >= limit:
                    break
                if not self.buckets:
                    self.round_bell = bell.signature(self.store.bell)   # before the listing
                    self.buckets = self.store.ready_buckets()
                    self.listings += 1
                    self.round_start, self.round_found = now, False
                    if not self.buckets:
                        self._found_nothing(now, now)
                        self.round_start = None
                        break
                # One listing serves the next claims until it is used up: at a million
                # jobs a bucket holds ~4,000 names and takes ~17 ms to list.
                self.backlog_dir = self.store.ready_dir(self.buckets.pop())
                self.backlog = fsio.list_names(self.backlog_dir)[::-1]
                self.listings += 1
                scanned += 1
                continue
            # race: a job that waits for resources stays a candidate while buckets are
            # listed again; it must appear once, or choose() would place it twice.
            have = {p.name for p in self.cands}
            room = min(self.prefetch - len(self.cands), len(self.backlog))
            taken = [self.backlog.pop() for _ in range(room)]
            new = [n for n in taken if n not in self.skip and n not in have
                   and n[:-5] not in self.running]
            if new:
                self.cands.extend(self.backlog_dir / n for n in new)
                self.round_found = True
        if not self.cands and not self.buckets and not self.backlog:
            self.next_scan = now + IDLE_SCAN_SEC     # a whole pass found nothing: back off

    def _found_nothing(self, now: float, began: float) -> None:
        """A whole pass over ready/, begun at ``began``, found nothing to claim."""
        self.empty_round_at = began
        self.empty_passes += 1
        self.quiet_bell, self.full_pass_at = self.round_bell, now + bell.FULL_PASS_SEC

    def _bell_quiet(self, now: float) -> bool:
        """True if the last pass found nothing and ready/'s bell has not rung since it
        began (nor has ``bell.FULL_PASS_SEC`` passed): another pass would find nothing."""
        if self.quiet_bell is None or now >= self.full_pass_at:
            return False
        if bell.signature(self.store.bell) == self.quiet_bell:
            return True
        self.quiet_bell = None
        return False

    def budget_left(self) -> int | None:
        if self.max_mpiexec is None:
            return None
        return max(self.max_mpiexec - self.mpiexecs, 0)

    def mpi_slots(self) -> int | None:
        """How many more jobs may start through mpiexec now (None: no limit)."""
        slots = None
        if self.max_concurrent is not None:
            slots = self.max_concurrent - sum(r.used_mpi for r in self.running.values())
        left = self.budget_left()
        if left is not None:
            slots = left if slots is None else min(slots, left)
        return None if slots is None else max(slots, 0)

    def _candidate(self, path: Path, time_left_min: float) -> Candidate | None:
        """A ready candidate, read, parsed and checked once and cached; None to pass it (and
        it is never looked at again if it can never run here)."""
        got = self.parsed.get(path)
        if got is None:
            try:
                rec, st = read_job_stat(path, "ready", retry=False)   # absent: claimed
                req = Request.from_job(rec)
            except (FileNotFoundError, ValueError) as e:
                self.candidates_gone += isinstance(e, FileNotFoundError)
                if not isinstance(e, FileNotFoundError) and path.exists():
                    log.warning("job %s: %s; skipped", path.name[:-5], e)
                    self.skip.add(path.name)
                return None          # claimed by someone else, or unusable
            reason = self.pool.fits_ever(req)
            if reason:
                log.info("job %s never fits this allocation (%s); left for another",
                         rec["id"], reason)
                self.skip.add(path.name)
                return None
            if not self._tags_match(rec):
                self.skip.add(path.name)
                return None
            got = self.parsed[path] = Candidate(rec, req, rec.get("wall_time_min") or 0, st)
        if got.wall and got.wall > time_left_min:
            self.skip.add(path.name)     # time left only shrinks: never here
            del self.parsed[path]
            return None
        return got

    def fill(self, now: float) -> None:
        """Start candidates on free resources, then queue standbys behind busy slots."""
        time_left_min = (self.end_at - self.margin - now) / 60
        if self.pool.has_room():
            self._place(now, time_left_min)
        slots = self._standby_slots()
        if slots:
            self._next_candidates(now)
            self._queue_standbys(time_left_min, slots)
        if len(self.parsed) > len(self.cands):       # forget candidates no longer held
            live = set(self.cands)
            self.parsed = {p: v for p, v in self.parsed.items() if p in live}

    def _place(self, now: float, time_left_min: float) -> None:
        slots = self.mpi_slots()
        free_runs = slots if self.mode == "mpi" else None
        if free_runs is not None and free_runs <= 0:
            return
        self._next_candidates(now)
        if not self.cands:
            return
        batch: list[tuple[Path, Request]] = []
        keep: list[Path] = []
        for path in self.cands:
            got = self._candidate(path, time_left_min)
            if got is None:
                if path in self.parsed:
                    keep.append(path)    # waits for time or an mpiexec slot
                continue
            req = got.req
            if self.mode == "serial" and slots is not None and runner.needs_mpi("serial", req):
                if self.budget_left() == 0:
                    self.skip.add(path.name)     # no mpiexec left here: for another launcher
                    continue
                if slots <= 0:
                    keep.append(path)    # a multi-rank job waits for an mpiexec slot
                    continue
                slots -= 1
            batch.append((path, req))
        chosen = choose(self.pool, batch, passed_over=self.passed, max_jobs=free_runs)
        placed = set()
        for path, placement in chosen:
            placed.add(path)
            cand = self.parsed.pop(path)
            claimed = self.store.claim(path, self.id)
            if claimed is None:
                self.claims_lost += 1
                self.pool.release(placement)
                continue
            self._start(claimed, placement, cand)
        self.cands = [p for p, _ in batch if p not in placed] + keep

    def _standby_slots(self) -> list[runner.Running]:
        """The running jobs that may take one more standby now (see ``_queue_standbys``)."""
        if self.mode != "serial" or self.draining:
            return []
        short = {app for app, sec in self.run_sec.items() if sec < STANDBY_BELOW_SEC}
        if not short:
            return []
        return [r for r in self.running.values() if r.record["app"] in short
                and r.standby is None and not r.used_mpi
                and r.kill_at is None and r.proc.returncode is None
                and r.proc.error is None and r.proc.dropped is None
                and self._standby_depth(r) < STANDBY_DEPTH]

    def _queue_standbys(self, time_left_min: float, slots: list[runner.Running]) -> None:
        """Give each running single-rank job without one a standby: a claimed candidate of
        the same shape that the starter starts on its resources the moment it is reaped
        (see ``starter``).  A slot then goes from job to job without waiting for this loop.

        Only behind jobs of apps whose recent runs were short (STANDBY_BELOW_SEC): a standby
        is claimed but waits, and a long wait would hold back a job that another launcher,
        with free resources, could run now.
        """
        if not slots or not self.cands:
            return
        # the last wall-clock moment a job of ``wall`` minutes may start here
        end_wall = time.time() + (self.end_at - self.margin - time.monotonic())
        keep = []
        for path in self.cands:
            if not slots:
                keep.append(path)            # for the next free resources
                continue
            got = self._candidate(path, time_left_min)
            if got is None:
                if path in self.parsed:
                    keep.append(path)
                continue
            before = next((r for r in slots if r.req == got.req), None)   # none runs mpiexec
            if before is None:
                keep.append(path)
                continue
            name = got.rec["app"]
            app = before.app if name == before.record["app"] else self.apps.get(name)
            if pyapp.has_hook(self.layout.root, app, "preprocess"):
                keep.append(path)            # a preprocess hook needs this loop: no standby
                continue
            self.parsed.pop(path)
            claimed = self.store.claim(path, self.id)
            if claimed is None:
                self.claims_lost += 1
                continue
            slots.remove(before)
            self._start(claimed, before.placement, got, after=before,
                        by=end_wall - got.wall * 60)
            queued = self.running.get(claimed.name[:-5])
            if queued is not None and self._standby_depth(queued) < STANDBY_DEPTH:
                slots.append(queued)         # the chain may grow behind it
        self.cands = keep

    def _standby_depth(self, run: runner.Running) -> int:
        """How many standbys are ahead of ``run`` on its slot (0: it is the slot's job)."""
        depth, seen = 0, {run.job_id}
        while run.after is not None:
            before = self.running.get(run.after)
            # A link counts only while both ends name each other.  A job that has left keeps
            # no link, but its id can run here again -- behind this very chain (a job that
            # failed, back for its next attempt) -- and a stale link to it would go round
            # forever.
            if before is None or before.standby != run.job_id or before.job_id in seen:
                break
            seen.add(before.job_id)
            run = before
            depth += 1
        return depth

    def _affinity(self, rec: dict, placement) -> dict:
        """What the job's ranks see: the gpu variable, each rank's mask, the tile mode."""
        gpr = rec.get("gpus_per_rank") or 0
        if not gpr or not placement.gpus[0]:
            return {}
        masks = [self.machine.gpu_mask(placement.rank_gpus(r, gpr))
                 for r in range(rec.get("ranks_per_node", 1))]
        out = {"variable": self.machine.gpu_env, "rank_masks": masks}
        if self.machine.tile_hierarchy:
            out["tile_hierarchy"] = self.machine.tile_hierarchy
        return out

    def _tags_match(self, rec: dict) -> bool:
        tags = rec.get("tags") or {}
        return all(tags.get(k) == v for k, v in self.filter_tags.items())

    def _start(self, path: Path, placement, cand: Candidate,
               after: runner.Running | None = None, by: float | None = None) -> None:
        """Start claimed job ``cand``, now at ``path``, on ``placement`` -- or, with ``after``,
        queue it as that job's standby on its placement, which it does not own until that
        job has left."""
        job_id = path.name[:-5]
        owned = placement if after is None else None    # what a failure here releases
        if job_id in self.running:            # never two processes for one job
            self._unplace(owned)
            return
        # race: the record may have been rewritten (resources changed) between our read of
        # the candidate and the claim.  The claimed content is the authority: if the file
        # is not the one we read, it is read again, and if its shape changed it goes back,
        # unstarted, since the placement may not suit it.
        rec, req = cand.rec, cand.req
        try:
            if not same_file(os.stat(path), cand.st):
                rec = read_job(path, "running")
                req = Request.from_job(rec)
        except (FileNotFoundError, ValueError):
            self._unplace(owned)
            return
        if req != cand.req:
            self._unplace(owned)
            self.store.move(path, self.layout.job_path("ready", job_id))
            self.store.drop_token(job_id)
            return
        app = self.apps.get(rec["app"])
        if app is None:
            why = self.apps.errors.get(rec["app"], f"apps/{rec['app']}.yml is missing")
            return self._fail_start(path, rec, owned, f"app {rec['app']} unusable: {why}")
        workdir = self.layout.workdir(rec["workdir"])   # made by the site, or by the starter
        if app.python_class:
            workdir.mkdir(parents=True, exist_ok=True)      # hooks and run() start in it
        if after is not None and pyapp.has_hook(self.layout.root, app, "preprocess"):
            self.store.move(path, self.layout.job_path("ready", job_id))   # no standby's kind
            self.store.drop_token(job_id)                                  # (_queue_standbys)
            return
        started = self._hook(app, rec, "preprocess") if after is None else None
        if started is not None:
            self.preparing.append(Hooked(started, time.monotonic() + self.hook_timeout, path,
                                         rec, (placement, req, app, workdir, by)))
            return
        self._launch(path, placement, rec, req, app, workdir, after, by)

    def _prepared(self, now: float) -> None:
        """Start the jobs whose preprocess hook has ended (or fail them), on the resources
        held for them."""
        for h, res in self._hooks_done(self.preparing, now):
            placement, req, app, workdir, by = h.then
            rec = h.rec
            if res.get("killed"):      # no verdict: back for another attempt (_after_hook)
                self._unplace(placement)
                where, state, fields, why = after_failure(
                    rec, "timeouts", policy_for(app, rec),
                    f"preprocess killed by {res['killed']} from outside the launcher")
                rec = self.emit(rec, state, msg=why, **fields)
                self.events.flush()
                if self.store.move_rewrite(h.path, self.layout.job_path(where, rec["id"]), rec,
                                           self.limbo):
                    self.store.drop_token(rec["id"])
                continue
            if res.get("error") or res.get("state") == S.FAILED:
                self._fail_start(h.path, rec, placement,
                                 f"preprocess failed: {res.get('error') or 'set FAILED'}")
                continue
            extra = {"data": res["data"]} if res.get("data") is not None else {}
            rec = self.emit(rec, S.PREPROCESSED, msg=res.get("state_data"), **extra)
            self._launch(h.path, placement, rec, req, app, workdir, None, by)

    def _launch(self, path: Path, placement, rec: dict, req: Request, app, workdir: Path,
                after: runner.Running | None, by: float | None) -> None:
        """Hand the claimed job to the starter (see ``_start``)."""
        owned = placement if after is None else None
        try:
            run = runner.start(rec, app, placement, req, site_root=self.layout.root,
                               workdir=workdir, machine=self.machine, mode=self.mode, path=path,
                               starter=self.starter, after=after and after.job_id, by=by)
        except Exception as e:  # noqa: BLE001 - a job that cannot start fails; the launcher goes on
            return self._fail_start(path, rec, owned, f"could not start: {type(e).__name__}: {e}")
        if after is not None:
            after.standby = run.job_id
            self.standbys += 1
        self.launches += 1
        self.mpiexecs += run.used_mpi
        self.running[rec["id"]] = run        # RUNNING is written when the starter has its pid

    def _unplace(self, placement) -> None:
        if placement is not None:
            self.pool.release(placement)

    def _announce(self, run: runner.Running) -> None:
        """Write the RUNNING event of a job whose process the starter reports started."""
        rec, placement = run.record, run.placement
        run.record = self.emit(rec, S.RUNNING, host=placement.hosts[0],
                               placement=placement.to_json(), pid=run.proc.pid,
                               host_name=fsio.HOST, pid_start=run.proc.pid_start,
                               affinity=self._affinity(rec, placement), started_at=run.started_at,
                               t=run.started_at)     # the same instant as the run's end says
        run.announced = True

    @property
    def starter(self) -> Starter:
        if self._starter is None:
            self._starter = Starter()
        return self._starter

    def _fail_start(self, path: Path, rec: dict, placement, msg: str,
                    state: str = S.FAILED) -> None:
        log.warning("job %s: %s", rec["id"], msg)
        rec = self.emit(rec, state, msg=msg, error=msg, **_MERGED)
        self.events.flush()
        if self.store.move_rewrite(path, self.layout.job_path("failed", rec["id"]), rec, self.limbo):
            self.store.drop_token(rec["id"])
        self._moved_out(rec["id"])
        self._unplace(placement)

    # ---- kill requests (spool.kills) ------------------------------------------------------
    def _look_for_kills(self, now: float) -> None:
        """Act on new kill requests; only while a job is held (an idle launcher holds
        nothing a request could name, and pays nothing)."""
        if not (self.running or self.preparing or self.hooks):
            return
        for req in self.mailbox.look(now):
            held = {job_id for job_id in req.jobs if self._kill(job_id, req)}
            if held:
                self.kill_files[req.path] = (req, held)
            else:
                self.mailbox.done(req)

    def _kill(self, job_id: str, req: kills.Request) -> bool:
        """Stop ``job_id`` if we hold it at the attempt ``req`` names.  True while the job
        is still in running/L/ afterwards (its verdict follows); False if we do not hold it
        or it has already been moved out."""
        run = self.running.get(job_id)
        if run is not None:
            if not req.wants(job_id, run.record.get("attempt", 1)):
                return False
            log.info("job %s: %s; stopping it", job_id, req.describe())
            if run.kill is None:
                run.kill = req
            # SIGTERM to its process group now (mpiexec takes it to every rank), SIGKILL
            # after the grace; a standby not yet started is dropped by the starter.
            runner.terminate(run, self.grace)
            return True
        for h in self.preparing:
            if h.rec["id"] == job_id and req.wants(job_id, h.rec.get("attempt", 1)):
                self.preparing.remove(h)
                h.hook.expire(0)             # its process group killed, its temps removed
                self._fail_start(h.path, h.rec, h.then[0],
                                 f"{req.describe()} before it started (in preprocess)",
                                 S.KILLED)
                return False
        for h in self.hooks:
            if h.rec["id"] == job_id and req.wants(job_id, h.rec.get("attempt", 1)):
                self.hooks.remove(h)
                h.hook.expire(0)
                run, hook = h.then[0], h.then[1]
                msg = f"{req.describe()} (in {hook})"
                rec = self.emit(h.rec, S.KILLED, msg=msg, error=msg, **_MERGED)
                if not self.verdicts:
                    self.verdicts_since = time.monotonic()
                self.verdicts.append(lambda batch: self._finish(run, "failed", rec, (), batch))
                return True
        return False

    def _sweep(self) -> None:
        """SIGKILL what is left on this node of the jobs killed this tick: processes that
        left the job's process group (a daemon, ``setsid``) still carry its SPOOL_JOB_ID.
        One pass over /proc for all of them."""
        ids, self.killed = self.killed, set()
        for pid in job_processes(self.layout.root, ids):
            try:
                os.kill(pid, signal.SIGKILL)
                log.info("killed process %d, left behind by killed job(s) %s", pid,
                         ", ".join(sorted(ids)))
            except (ProcessLookupError, PermissionError):
                pass

    def _moved_out(self, job_id: str) -> None:
        """``job_id`` has left running/L/: delete the kill requests that waited for it."""
        if not self.kill_files:
            return
        for path, (req, held) in list(self.kill_files.items()):
            held.discard(job_id)
            if not held:
                self.mailbox.done(req)
                del self.kill_files[path]


def _cleanup(workdir: Path, globs) -> None:
    for pattern in globs:
        for p in workdir.glob(pattern):
            try:
                if workdir in p.resolve().parents and p.is_file():
                    p.unlink()
            except OSError:
                pass
