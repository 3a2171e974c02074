"""Kill requests: how any process asks the launcher that runs a job to stop it.

::

    launchers/L/kill/T.HOST.PID.RAND.json   one request: {"jobs": {ID: ATTEMPT, ...},
                                             "by": "alice@login1", "t": EPOCH, "why": "..."}
    launchers/L/kill.bell                   grows one byte after each request (``bell.ring``)
    launchers/L/kill.closed/                kill/ as the site renamed it to take L's jobs back

Nobody but launcher L writes into ``running/L/``, and a launcher may run on another node
than the one the request comes from (no signal crosses nodes; the CLI may run on a login
node).  So a kill is a *request* in L's mailbox, and L itself stops the job's process tree,
records the verdict and renames the job into ``failed/``.

Protocol
--------
* **Mailbox.**  L makes ``kill/`` when it starts, before its first claim.  Nobody else ever
  creates it (``fsio.write_atomic(make_parent=False)``): a missing ``kill/`` means L is gone,
  or being taken back by the site, or too old to take requests.
* **Writers.**  Any process (``spool job kill``, ``Job.kill()``) that has seen job X in
  ``running/L/`` writes one request naming X and the attempt it saw there: a file of its
  own (unique name), written whole (temp, fsync, rename, fsync dir), never changed after.
  Then it rings ``kill.bell``.  One request may name many jobs of the same launcher.
* **Listening.**  While L holds a job (running, waiting in the starter, or in a hook), it
  looks at the bell's ``stat`` at most every ``LOOK_SEC`` (one system call, no directory
  listing) and lists ``kill/`` only when the bell's signature has changed.  It takes the
  signature *before* the listing, so a request that lands during a listing is announced by
  a ring that L's next look sees (the ready bell's argument, ``spool.bell``).  Against a
  ring it cannot see (an NFS client's attribute cache, a request written by hand without
  a ring) L also lists ``kill/`` every ``FULL_LOOK_SEC`` while it holds a job.  An idle L
  holds nothing a request could name, and does not look at all.  The bell grows one byte
  per request and lives as long as L's directory (one allocation); it is never trimmed.
* **Acting.**  For every named job L holds at the attempt named, L stops it: a running
  job's process group gets SIGTERM (an MPI job's group holds its ``mpiexec``, which takes
  the signal to every rank on every node), then SIGKILL after
  ``launcher.sigterm_grace_sec``; a standby still waiting in the starter is dropped; a
  running preprocess or post-run hook is killed with its process group.  Once the job is
  reaped, whatever of it left the group on L's node (it carries the job's
  ``SPOOL_JOB_ID``) gets SIGKILL.  L writes the ``KILLED`` event (synced) and moves the job
  into ``failed/`` itself.  A job that ended on its own before the signal reached it keeps
  its own verdict: one verdict per attempt.  A killed job is never retried by the retry
  policy; ``spool job retry`` brings it back.
* **Not held.**  A request naming a job L does not hold at that attempt does nothing: the
  job ended, or moved on to a later attempt (the writer follows it and asks again, below),
  or was never here.  Matching attempts exactly means a request left over from an earlier
  run can never stop a later one (``spool job retry`` after a kill, for one).
* **Before the claim.**  A writer names only jobs it saw in ``running/L/``, so L has
  claimed them.  A request naming a job L has not claimed (written by hand, say) is
  deleted at L's next look; if L claims that job at the named attempt before it looks,
  the job is stopped, as the request asked.
* **Deleting.**  Only L deletes a request, once no job named in it is in ``running/L/`` any
  more: at its first look for a request naming only jobs L does not hold, else after the
  last named job's move out, and every request when L exits with ``running/L/`` empty.  So
  a request outlives L's reaction as long as L could still die holding one of its jobs (a
  request that landed just as L's last job ended waits for L's next look or its exit).
* **L dies with a request pending.**  Before the site takes L's jobs back (a revoke), it
  *closes* the mailbox: it renames ``kill/`` to ``kill.closed/`` and then reads every
  request there (``close``).  A revoked job named by one at its attempt goes to ``failed/`` as ``KILLED`` instead of back to ``ready/`` (or, if L had written a
  verdict before it died, to that verdict): a job killed while its launcher died never
  runs again.

  # race: a writer saw X in running/L/ and sends its request while the site revokes L.
  # The close is the commit point.  If the writer's rename into kill/ came first, the
  # request is in kill.closed/ when the site reads it, and X goes to failed/.  If it came
  # after, it fails with ENOENT (kill/ is gone and is never re-created), the writer knows
  # its request was not taken, and it looks for X again: in ready/ it cancels it there, in
  # running/M/ it asks launcher M.
* **Writers follow the job.**  A writer keeps watching ``running/L/X.json`` (its inode)
  until X has left it, then reports where X went.  X may leave running/L/ for ``ready/``
  (L's retry policy, a walltime drain, a standby returned) after a request landed and
  before L looked; L then drops the request and the writer cancels X in ``ready/`` (or
  follows it to its next launcher).  A writer interrupted in that window (Ctrl-C) may leave
  the job alive; the command then says which jobs it has not seen settled, and running it
  again finishes the kill.

Pending jobs (``created/ waiting/ ready/``) need no launcher: the writer moves them into
``failed/`` itself with ``Store.move_rewrite``; a claim racing with it is decided by the
rename, and if the launcher won, the job is in running/L/ and the request path applies
(``spoolbalsam.kill``).
"""
from __future__ import annotations

import getpass
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bell, fsio
from .layout import Layout

DIRNAME = "kill"
CLOSED = "kill.closed"
BELL = "kill.bell"
LOOK_SEC = 0.2            # a launcher looks at its kill bell at most this often
FULL_LOOK_SEC = 30.0      # ... and lists its mailbox at least this often (holding a job)


@dataclass(frozen=True)
class Request:
    path: Path
    jobs: dict            # job id -> the attempt the writer saw in running/L/
    by: str               # user@host of the writer
    t: float              # when it was asked (the writer's clock)
    why: str              # the command or API call

    def describe(self) -> str:
        """What the killed job's ``error`` says: who killed it and when."""
        return describe(self.by, self.t, self.why)

    def wants(self, job_id: str, attempt: int) -> bool:
        """True if this request stops ``job_id`` at ``attempt`` (exactly the one named)."""
        return self.jobs.get(job_id) == attempt


def describe(by: str, t: float, why: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S%z", time.localtime(t))
    return f"killed by {by} at {when} ({why})"


def who() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{fsio.HOST}"


def mailbox(layout: Layout, launcher: str) -> Path:
    return layout.launcher_dir(launcher) / DIRNAME


# ---- writers --------------------------------------------------------------------------------
SENT, CLOSED_NOW, NO_MAILBOX = "sent", "closed", "no mailbox"


def send(layout: Layout, launcher: str, jobs: dict[str, int], by: str, why: str,
         t: float | None = None) -> str:
    """Ask ``launcher`` to kill ``jobs`` (id -> attempt seen in running/L/).

    ``SENT``: the request is durable in L's mailbox and the bell rang.  ``CLOSED_NOW``: the
    site has closed the mailbox (L is being taken back, or is gone): the request was not
    taken; look for the jobs again.  ``NO_MAILBOX``: L is alive but has no mailbox (a
    launcher of a version without kill requests)."""
    ldir = layout.launcher_dir(launcher)
    name = f"{time.time_ns():019d}.{fsio.HOST}.{os.getpid()}.{secrets.token_hex(3)}.json"
    body = {"jobs": dict(jobs), "by": by, "t": time.time() if t is None else t, "why": why}
    try:
        fsio.write_json_atomic(ldir / DIRNAME / name, body, make_parent=False)
    except FileNotFoundError:
        if (ldir / CLOSED).exists() or not ldir.exists():
            return CLOSED_NOW
        return NO_MAILBOX
    bell.ring(ldir / BELL)
    return SENT


# ---- readers ---------------------------------------------------------------------------------
def read(path: Path) -> Request | None:
    """The request at ``path``; None if it is gone or not a request (never raises)."""
    try:
        raw = fsio.read_json(path)
        jobs = {str(k): int(v) for k, v in raw["jobs"].items()}
        return Request(path, jobs, str(raw.get("by", "?")), float(raw.get("t", 0.0)),
                       str(raw.get("why", "kill")))
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None


def requests_in(directory: Path) -> list[Request]:
    """Every request in a mailbox (open or closed), oldest first."""
    out = []
    for name in sorted(fsio.list_names(directory)):
        req = read(directory / name)
        if req is not None:
            out.append(req)
    return out


def close(launcher_dir: Path) -> dict[str, Request]:
    """The site, before it takes a dead launcher's jobs back: close its mailbox (no request
    lands after this) and return the requests in it, by job id (the latest per job).
    Closing again (after a crash of the site) reads what the first close kept."""
    closed = launcher_dir / CLOSED
    try:
        fsio.rename(launcher_dir / DIRNAME, closed)
    except FileNotFoundError:
        pass               # closed before, or the launcher never had a mailbox
    except OSError:
        pass               # kill.closed exists already (an earlier close): keep both
    out: dict[str, Request] = {}
    for req in requests_in(closed) + requests_in(launcher_dir / DIRNAME):
        for job_id in req.jobs:
            out[job_id] = req
    return out


# ---- the launcher's side ------------------------------------------------------------------------
@dataclass
class Mailbox:
    """Launcher L's view of its mailbox: ``look`` returns the requests not seen before,
    at the cost of one ``stat`` while nothing has rung."""
    directory: Path
    look_sec: float = LOOK_SEC
    seen: set = field(default_factory=set)         # request files already handed out
    signature: tuple | None = None                  # the bell when the last listing began
    next_look: float = 0.0
    full_look_at: float = 0.0                       # list by then even if the bell is quiet

    @classmethod
    def open(cls, launcher_dir: Path) -> "Mailbox":
        d = launcher_dir / DIRNAME
        d.mkdir(parents=True, exist_ok=True)
        return cls(d)

    @property
    def bell(self) -> Path:
        return self.directory.parent / BELL

    def look(self, now: float) -> list[Request]:
        """New requests, if the bell rang since the last listing (or at the first look)."""
        if now < self.next_look:
            return []
        self.next_look = now + self.look_sec
        sig = bell.signature(self.bell)
        if sig == self.signature and now < self.full_look_at:
            return []
        self.signature = sig                 # before the listing: see the module docstring
        self.full_look_at = now + FULL_LOOK_SEC
        names = fsio.list_names(self.directory)
        self.seen &= set(names)              # forget deleted ones
        new = []
        for name in sorted(names):
            if name in self.seen:
                continue
            req = read(self.directory / name)
            if req is not None:
                self.seen.add(name)
                new.append(req)
        return new

    def done(self, req: Request) -> None:
        """Delete a request L has finished with (every job it names has left running/L/)."""
        fsio.unlink_quiet(req.path)

    def clear(self) -> None:
        """Delete every request (L exits holding no job: none can name one it holds)."""
        for name in fsio.list_names(self.directory):
            fsio.unlink_quiet(self.directory / name)
