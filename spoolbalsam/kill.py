"""Killing jobs: what ``spool job kill`` and ``Job.kill()`` / ``JobQuery.kill()`` share.

``kill(layout, ids)`` finds each named job where it is and acts there, round after round,
until every job has an outcome:

==============  =====================================================================
where it is     what happens
==============  =====================================================================
waiting/        *cancelled*: moved into ``failed/`` as KILLED with ``Store.move_rewrite``
stagein/        through this process's limbo.  A launcher's claim racing with it: the
ready/          rename decides; if the launcher won, the job is in running/L/ next round.
stageout/       The site forgets a staging job moved away (``site.transfers``); a job
                cancelled in stageout/ ran, but its outputs are not staged out.
running/L/      a kill request in L's mailbox (``spool.kills``), one per launcher per
                round; then the job's file is watched (its inode) until it leaves
                running/L/, and where it went decides: failed/ as KILLED: *killed*;
                done/ or failed/ otherwise: it *finished* on its own first; ready/ (L put
                it back before it looked): cancelled there; running/M/: M is asked.
created/        not taken in by the site yet (in ``created/``, a bulk drop, or the site's
                intake): waited for while the site runs; with the site stopped,
                *refused* (start the site, then kill again).
done/ failed/   *finished* already: nothing is changed.
nowhere         *not found*.
==============  =====================================================================

A job still running when ``timeout`` runs out is *unconfirmed*: its request stands (its
launcher acts at its next look, or the site when it finds the launcher dead).

Every move made here is followed by ``hints.send``.  The waiting children of cancelled
jobs fail at once, naming their parent, as the site fails the children of a failed parent
(the children of jobs that launchers kill are failed by the site when it merges their
verdicts).  A killed job is retried only by hand: ``spool job retry``.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .spool import fsio, hints, kills
from .spool import states as S
from .spool.events import unmerged_events
from .spool.layout import Layout
from .spool.query import Filter, read_record, select
from .spool.record import transition
from .spool.store import Store

KILLED, CANCELLED, FINISHED = "killed", "cancelled", "finished"
NOT_FOUND, UNCONFIRMED, REFUSED = "not_found", "unconfirmed", "refused"
# where a kill can still act: every directory but done/ and failed/
KILLABLE_DIRS = ("created", "waiting", "stagein", "ready", "running", "stageout")
CANCEL_DIRS = ("waiting", "stagein", "ready", "stageout")    # moved by the command itself
DEFAULT_TIMEOUT = 60.0
POLL_SEC = 0.05


@dataclass
class Outcome:
    id: str
    outcome: str                 # one of the six names above
    state: str | None = None     # the job's state now (None: not found)
    was: str | None = None       # the directory the command first found it in
    launcher: str | None = None  # the launcher asked to stop it
    message: str = ""            # one line for people

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    def line(self) -> str:
        return f"{self.id} {self.message}"

    @property
    def ok(self) -> bool:
        """False for outcomes that make the command fail (not found, refused, unconfirmed)."""
        return self.outcome in (KILLED, CANCELLED, FINISHED)


@dataclass
class Report:
    outcomes: list[Outcome]
    children_failed: list[tuple[str, str]] = field(default_factory=list)   # (child, parent)


_NOT_DONE = {"waiting": "it never ran", "stagein": "it never ran", "ready": "it never ran",
             "stageout": "its outputs were not staged out"}
_BEFORE = {"waiting": "before it ran", "stagein": "before it ran", "ready": "before it ran",
           "stageout": "before its outputs were staged out"}


def _clean(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


class _Round:
    """What one round reads at most once: the limbos, the unmerged events, the site."""

    def __init__(self, layout: Layout, store: Store):
        self.layout, self.store = layout, store
        self.held = store.held_index()
        self._pending: dict | None = None
        self._site: bool | None = None

    def locate(self, job_id: str):
        """``Store.locate`` with the round's index of limbos and bulk drops, and once more
        with them looked at afresh if that finds nothing.

        # race: the site's merges hold done/ and failed/ records in site/limbo for a
        # moment all the time; a job that entered a limbo after the round's index was
        # taken would otherwise be reported not found."""
        return self.store.locate(job_id, self.held) or self.store.locate(job_id)

    def read(self, path: Path, where: str) -> dict | None:
        if self._pending is None:
            self._pending = unmerged_events(self.layout)
        return read_record(path, where, self._pending)

    @property
    def site_running(self) -> bool:
        if self._site is None:
            from .site.service import running_site
            self._site = running_site(self.layout) is not None
        return self._site


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def kill(layout: Layout, ids: Iterable[str], *, why: str = "spool job kill",
         by: str | None = None, timeout: float = DEFAULT_TIMEOUT, limbo: Path | None = None,
         on_outcome: Callable[[Outcome], None] | None = None,
         poll: float = POLL_SEC) -> Report:
    """Kill or cancel the jobs ``ids``; one ``Outcome`` each, in their order (see above).

    ``by`` (default ``user@host``) and ``why`` go into the killed jobs' ``error``;
    ``on_outcome`` is called as each outcome is known; ``limbo`` is this process's limbo
    for moves with a rewrite (default ``site/limbo-cli``).  On KeyboardInterrupt the jobs
    not settled yet get an ``unconfirmed`` outcome, then it is raised again."""
    k = _Killer(layout, ids, by or kills.who(), why, limbo or layout.site_dir / "limbo-cli",
                on_outcome)
    deadline = time.monotonic() + timeout
    try:
        while not k.settled():
            k.round()
            if k.settled():
                break
            if time.monotonic() >= deadline:
                for job_id in k.unsettled():
                    k.decide(_unfinished(job_id, k.seen.get(job_id), k.asked.get(job_id),
                                         timeout))
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        for job_id in k.unsettled():
            k.decide(Outcome(job_id, UNCONFIRMED, None, k.seen.get(job_id),
                             k.asked.get(job_id), "not confirmed: interrupted before it was "
                             "settled; run the command again"))
        raise
    children = fail_waiting_children(layout, k.store, k.cancelled, k.limbo, why)
    return Report([k.out[i] for i in k.order], children)


class _Killer:
    """One kill command's state across its rounds."""

    def __init__(self, layout: Layout, ids: Iterable[str], by: str, why: str, limbo: Path,
                 on_outcome: Callable[[Outcome], None] | None):
        self.layout, self.by, self.why, self.limbo = layout, by, why, limbo
        self.store = Store(layout)
        self.t = time.time()
        self.on_outcome = on_outcome
        self.order = list(dict.fromkeys(ids))
        self.out: dict[str, Outcome] = {}
        self.seen: dict[str, str] = {}                  # id -> where first found
        self.asked: dict[str, str] = {}                 # id -> launcher a request went to
        self.watch: dict[str, tuple[Path, int]] = {}    # id -> (running/L/ID.json, inode)
        self.cancelled: list[str] = []

    def decide(self, o: Outcome) -> None:
        self.out[o.id] = o
        if self.on_outcome is not None:
            self.on_outcome(o)

    def unsettled(self) -> list[str]:
        return [i for i in self.order if i not in self.out]

    def settled(self) -> bool:
        return len(self.out) == len(self.order)

    def round(self) -> None:
        """Look at every unsettled job once and act where it is (see the module docstring)."""
        rnd = _Round(self.layout, self.store)
        asks: dict[str, dict[str, int]] = {}
        looked: dict[str, tuple[Path, int]] = {}
        moved: list[Outcome] = []
        batch = fsio.Batch(self.layout.jobs)          # the round's cancels share two syncs
        try:
            for job_id in self.unsettled():
                w = self.watch.get(job_id)
                if w is not None:
                    if _inode(w[0]) == w[1]:
                        continue                      # still in running/L/: not moved yet
                    del self.watch[job_id]
                loc = rnd.locate(job_id)
                if loc is None:
                    if job_id not in self.seen:
                        self.decide(Outcome(job_id, NOT_FOUND, message="not found"))
                    continue                          # seen before: moving; look again
                where, path = loc
                self.seen.setdefault(job_id, where)
                if (where in CANCEL_DIRS or where == "running") and not self.store.own_name(
                        where, path, job_id):
                    # race: held in a mover's limbo (the site publishing or staging it, a
                    # launcher moving it on): never ours to move; look again next round
                    continue
                if where in S.TERMINAL_DIRS:
                    rec = rnd.read(path, where)
                    if rec is not None:
                        self.decide(_finished(job_id, rec, self.seen[job_id],
                                              self.asked.get(job_id)))
                elif where == "created":
                    if not rnd.site_running:
                        self.decide(Outcome(job_id, REFUSED, S.CREATED, "created", message=(
                            "refused: it is still in jobs/created/ and the site is not "
                            "running; start it (`spool site start`) so it takes the job in, "
                            "then kill it")))
                elif where in CANCEL_DIRS:
                    got = self._cancel(rnd, job_id, where, path, batch)
                    if got is not None:
                        moved.append(got)
                elif where == "running":
                    rec = rnd.read(path, where)
                    ino = _inode(path)
                    if rec is None or ino is None:
                        continue                      # it just moved: look again
                    asks.setdefault(path.parent.name, {})[job_id] = rec.get("attempt", 1)
                    looked[job_id] = (path, ino)
        finally:
            batch.commit()                            # what was moved is published whole
            if moved:
                hints.send(self.layout, [o.id for o in moved], self.why)
                self.cancelled += [o.id for o in moved]
                for o in moved:
                    self.decide(o)
        for launcher, jobs in asks.items():
            self._ask(launcher, jobs, looked)

    def _cancel(self, rnd: _Round, job_id: str, where: str, path: Path,
                batch: fsio.Batch) -> Outcome | None:
        """Move a pending job into failed/ as KILLED (published by ``batch``); None if it
        moved first (a claim: it is looked for again next round)."""
        rec = rnd.read(path, where)
        if rec is None:
            return None
        msg = f"{kills.describe(self.by, self.t, self.why)} {_BEFORE[where]}"
        new = transition(_clean(rec), S.KILLED, self.why, msg, error=msg)
        # race: a launcher may claim the job right now; the rename decides, and if it won,
        # the job is in running/L/ when we look again.
        if not self.store.move_rewrite(path, self.layout.job_path("failed", job_id), new,
                                       self.limbo, batch):
            return None
        return Outcome(job_id, CANCELLED, S.KILLED, self.seen[job_id],
                       message=f"cancelled (it was {where}; {_NOT_DONE[where]})")

    def _ask(self, launcher: str, jobs: dict[str, int], looked: dict) -> None:
        """One request to ``launcher`` for ``jobs``; its jobs are watched once it is sent."""
        sent = kills.send(self.layout, launcher, jobs, self.by, self.why, self.t)
        for job_id in jobs:
            if sent == kills.SENT:
                self.watch[job_id] = looked[job_id]
                self.asked[job_id] = launcher
            elif sent == kills.NO_MAILBOX:
                self.decide(Outcome(job_id, REFUSED, S.RUNNING, self.seen[job_id], launcher, (
                    f"refused: launcher {launcher} takes no kill requests (started by an "
                    "older spoolbalsam?); stop it, or wait for the job to end")))
            # CLOSED_NOW: the site is taking the launcher's jobs back; look again next round


def _finished(job_id: str, rec: dict, was: str, launcher: str | None) -> Outcome:
    state = rec.get("state")
    if launcher is not None and state == S.KILLED:
        return Outcome(job_id, KILLED, state, was, launcher,
                       f"killed (it was running on launcher {launcher})")
    if launcher is not None:
        return Outcome(job_id, FINISHED, state, was, launcher,
                       f"finished on its own ({state}) before the kill reached it")
    return Outcome(job_id, FINISHED, state, was, message=f"already finished ({state})")


def _unfinished(job_id: str, was: str | None, launcher: str | None, timeout: float) -> Outcome:
    if was is None:
        return Outcome(job_id, NOT_FOUND, message="not found")
    if launcher is not None:
        return Outcome(job_id, UNCONFIRMED, S.RUNNING, was, launcher, (
            f"not confirmed: launcher {launcher} has not stopped it within {timeout:g} s; "
            f"the request stands ({launcher} acts at its next look, or the site when it "
            "finds the launcher dead)"))
    return Outcome(job_id, UNCONFIRMED, None, was, message=(
        f"not confirmed within {timeout:g} s: it kept moving (or the site has not taken it "
        "in); run the command again"))


def fail_waiting_children(layout: Layout, store: Store, parents: Iterable[str], limbo: Path,
                          why: str) -> list[tuple[str, str]]:
    """Fail the waiting descendants of ``parents`` (jobs just cancelled), each naming the
    parent that failed, as the site does; returns (child, parent) pairs.  One read of
    ``waiting/``, only if something was cancelled and ``waiting/`` has buckets."""
    frontier = set(parents)
    if not frontier or not store.buckets("waiting"):
        return []
    recs = {r["id"]: r for r in select(layout, Filter(dirs=("waiting",)))}
    failed: list[tuple[str, str]] = []
    grew = True
    while grew:
        grew = False
        batch = fsio.Batch(layout.jobs)
        for child, rec in list(recs.items()):
            parent = next((p for p in rec.get("parent_ids") or () if p in frontier), None)
            if parent is None:
                continue
            del recs[child]
            msg = f"parent {parent} failed"
            new = transition(_clean(rec), S.FAILED, why, msg, error=msg)
            # race: the site may settle this child at the same moment (a parent it saw
            # finish); the rename decides and the loser changes nothing.
            if store.move_rewrite(layout.job_path("waiting", child),
                                  layout.job_path("failed", child), new, limbo, batch):
                failed.append((child, parent))
                frontier.add(child)
                grew = True
        batch.commit()
    hints.send(layout, [c for c, _ in failed], why)
    return failed


def killable(layout: Layout, flt: Filter) -> list[str]:
    """Ids of the jobs ``flt`` matches that a kill can still act on (not yet finished)."""
    flt.dirs = tuple(d for d in flt.dirs if d in KILLABLE_DIRS)
    return [rec["id"] for rec in select(layout, flt)]
