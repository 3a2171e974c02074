"""The starter: a helper process that starts, signals and reaps a launcher's jobs.

Starting a process costs a Python launcher about a millisecond: creating ``job.out``,
building the environment, and ``fork_exec``, which holds the interpreter lock until the
child has called ``execve``.  Reaping costs more.  The launcher hands all of it to one
child process of its own, so claiming, placing and writing verdicts go on in parallel with
the starts, on another core.

The starter is a fork of the launcher, made as the launcher begins (before it has any
thread): it serves at once, without an interpreter to start or modules to import.  It
keeps only its end of the socket and descriptors 0-2, so the launcher's end of the socket
is held by the launcher alone and its death is an end of file here.

Protocol: one socketpair, one JSON object per line, in order, in each direction.

  launcher -> starter   {"op": "env", "id": E, "env": {...}}        once per environment
                        {"op": "start", "k": KEY, "argv": [...], "cwd": DIR, "out": FILE,
                         "env": E, "add": {...}, "after": KEY2, "by": WALL}
                        {"op": "kill", "k": KEY, "sig": N}          the job's process group
  starter -> launcher   {"k": KEY, "pid": P, "ps": START_TICKS, "t": WALL}   it runs
                        {"k": KEY, "err": "why"}                    it could not start
                        {"k": KEY, "rc": RC, "t": WALL, "sig": B}   it ended, reaped (B:
                                                                    after a kill reached it)
                        {"k": KEY, "dropped": "why"}                never started (see below)

A start with ``after`` is a *standby*: it waits, in the starter, for job KEY2 to be reaped
(or to fail to start) and then starts at once on the resources KEY2 held, without a round
trip to the launcher -- the launcher queues the next jobs of a busy slot while its job runs,
so a slot goes from one job to the next in the time of one start.  KEY2 may itself be a
standby (a chain).  A standby still waiting at ``by`` (the last moment its wall time fits
the allocation) is dropped, and a kill for a standby that has not started drops it; either
way the standbys behind it are dropped too.  A dropped job never ran: the launcher returns
it unchanged.

Every job runs in a new session, so a signal reaches the whole process group.  A kill for a
job that has already been reaped is dropped: the starter never signals a pid it does not
own.  The starter outlives SIGTERM and SIGINT (the launcher decides what happens to jobs);
when the launcher goes away (end of file) it kills every job it still runs and exits, and
when the starter goes away the launcher kills them (``Starter.pump``) and stops.  A start
the starter had not yet reported when it went away may have happened unseen: it is reported
killed (``Child.unreported``), never dropped, and the launcher kills what runs of it.
"""
from __future__ import annotations

import errno
import gc
import os
import select
import shutil
import signal
import socket
import time
import traceback
from dataclasses import dataclass

import orjson

from ..spool.lease import pid_alive, proc_start


@dataclass
class Child:
    """The launcher's view of one job process; filled in by ``Starter.pump``."""
    key: str
    starter: "Starter"
    pid: int | None = None
    pid_start: str | None = None
    started_at: float | None = None
    returncode: int | None = None
    ended_at: float | None = None
    signalled: bool = False               # a kill reached it before it was reaped
    error: str | None = None
    dropped: str | None = None            # a standby that never started, and why
    unreported: bool = False              # its starter died before saying whether it ran

    def poll(self) -> int | None:
        return self.returncode

    def signal(self, sig: int) -> None:
        """Signal the job's process group; a standby that has not started is dropped."""
        if self.returncode is None and self.error is None and self.dropped is None:
            self.starter.kill(self.key, sig)


class Starter:
    """The launcher's side: send requests, ``pump`` replies into the ``Child`` objects."""

    def __init__(self):
        ours, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            _become_starter(theirs)              # never returns
        theirs.close()
        self.returncode: int | None = None       # the starter's own, once reaped
        ours.setblocking(False)
        self.sock = ours
        self.children: dict[str, Child] = {}
        self.envs: dict[int, tuple[dict, int]] = {}      # id(env) -> (env, number)
        self.inbox = b""
        self.dead = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def start(self, key: str, argv: list[str], cwd: str, out: str, env: dict,
              add: dict, after: str | None = None, by: float | None = None) -> Child:
        """Ask for ``argv`` to run with ``env`` + ``add`` (once job ``after`` is reaped, if
        given, and not after wall time ``by``); the pid comes later."""
        child = self.children[key] = Child(key, self)
        if self.dead:
            child.dropped = "the launcher's job starter has exited"
            return child
        known = self.envs.get(id(env))
        if known is None or known[0] is not env:
            known = self.envs[id(env)] = (env, len(self.envs))
            self._send({"op": "env", "id": known[1], "env": env})
        self._send({"op": "start", "k": key, "argv": argv, "cwd": cwd, "out": out,
                    "env": known[1], "add": add, "after": after, "by": by})
        return child

    def kill(self, key: str, sig: int) -> None:
        if not self.dead:
            self._send({"op": "kill", "k": key, "sig": int(sig)})

    def _send(self, msg: dict) -> None:
        # race: the starter blocks writing replies while we block writing requests, if both
        # socket buffers fill.  We never block: a full buffer makes us read replies first.
        view = memoryview(orjson.dumps(msg) + b"\n")
        while view and not self.dead:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                select.select([self.sock], [self.sock], [], 1.0)
                self.pump()
            except OSError:
                self._died()

    def pump(self) -> None:
        """Read every reply that has arrived, without blocking."""
        while not self.dead:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._died()
                break
            lines = (self.inbox + data).split(b"\n")
            self.inbox = lines.pop()
            for line in lines:
                self._apply(orjson.loads(line))

    def _apply(self, msg: dict) -> None:
        child = self.children.get(msg["k"])
        if child is None:
            return
        if "pid" in msg:
            child.pid, child.pid_start, child.started_at = msg["pid"], msg["ps"], msg["t"]
        elif "err" in msg:
            child.error = msg["err"]
            del self.children[child.key]
        elif "dropped" in msg:
            child.dropped = msg["dropped"]
            del self.children[child.key]
        else:
            child.returncode, child.ended_at, child.signalled = msg["rc"], msg["t"], msg["sig"]
            del self.children[child.key]

    def _died(self) -> None:
        """The starter is gone (killed, crashed): its jobs can no longer be reaped or
        signalled through it.  Kill them here -- by pid, checked against the start time the
        starter reported, so a reused pid is never hit -- and report them killed."""
        self.dead = True
        now = time.time()
        for child in self.children.values():
            if child.pid is not None and pid_alive(child.pid, child.pid_start):
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except OSError:
                    pass
            if child.pid is None:
                # race: the starter may have started it and died before saying so: it may
                # be running, or have run, unseen.  It is reported killed, never "dropped"
                # (which would send it back unchanged, to run again as the same attempt);
                # the launcher kills what may still run of it (``Launcher._unreported``).
                child.unreported = True
            child.returncode, child.ended_at = -signal.SIGKILL, now
        self.children.clear()

    def close(self) -> None:
        """End the starter (it kills any job still running) and reap it."""
        try:
            self.sock.close()
        finally:
            if self.wait(10) is None:
                os.kill(self.pid, signal.SIGKILL)
                self.wait(None)

    def wait(self, timeout: float | None) -> int | None:
        """The starter's exit code once it has exited (None if it still runs after
        ``timeout`` seconds; ``timeout=None`` waits as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() >= deadline:
                break
            else:
                time.sleep(0.005)
        return self.returncode


# ---- the starter process --------------------------------------------------------------------
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT)
_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def spawn(argv: list[str], cwd: str, out: str, env: dict) -> int:
    """Start ``argv`` in ``cwd`` (created if missing) in a new session, stdin from
    /dev/null, stdout and stderr to ``out`` (truncated), with exactly ``env``; its pid.

    ``posix_spawn``: the child opens ``out`` itself, and the environment is encoded in C --
    about half of what ``subprocess.Popen`` costs this process per job.  The executable is
    looked up in the job's own PATH, as a shell would.  Our descriptors are all
    close-on-exec (PEP 446), so the job inherits only 0, 1 and 2.
    """
    exe = _which(argv[0], env.get("PATH", os.defpath))
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, out, _OUT_FLAGS, 0o644),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    try:
        os.chdir(cwd)          # one thread: the child starts where we are (no chdir action)
    except FileNotFoundError:
        os.makedirs(cwd, exist_ok=True)           # the site makes it when the job is ready
        os.chdir(cwd)
    try:
        return os.posix_spawn(exe, argv, env, file_actions=actions, setsid=True,
                              setsigdef=_DEFAULT_SIGNALS)
    finally:
        os.chdir("/")


_WHICH: dict[tuple[str, str], str] = {}


def _which(name: str, path: str) -> str:
    if "/" in name:
        return name
    key = (name, path)
    got = _WHICH.get(key)
    if got is None:
        got = shutil.which(name, path=path)
        if got is None:
            raise FileNotFoundError(errno.ENOENT, f"{name}: not found in PATH", name)
        _WHICH[key] = got
    return got


def serve(sock: socket.socket) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        # a handler, not SIG_IGN: an ignored signal stays ignored across exec, in the jobs
        signal.signal(sig, lambda *_: None)
    envs: dict[int, dict] = {}
    jobs: dict[str, int] = {}                    # key -> pid, until reaped
    standby: dict[str, dict] = {}                # key of a running job -> the start after it
    signalled: set[str] = set()                  # running jobs a kill has reached
    pidfds: dict[int, str] = {}                  # pidfd -> key
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    inbox = b""
    tick = None if hasattr(os, "pidfd_open") else 5      # ms: no pidfds, poll the jobs

    gone = []                                    # the launcher closed its end

    def reply(msg: dict) -> None:
        try:
            sock.sendall(orjson.dumps(msg) + b"\n")
        except OSError:                          # EPIPE: it died after asking
            gone.append(True)

    def waiting(key: str) -> bool:
        return any(m["k"] == key for m in standby.values())

    def drop(m: dict, why: str) -> None:
        reply({"k": m["k"], "dropped": why})
        nxt = standby.pop(m["k"], None)
        if nxt is not None:
            drop(nxt, "the standby before it was dropped")

    def start(m: dict) -> None:
        key = m["k"]
        if m.get("after") in jobs or waiting(m.get("after")):
            standby[m["after"]] = m
            return
        if m.get("by") is not None and time.time() > m["by"]:
            return drop(m, "its wall time no longer fits the allocation")
        try:
            pid = spawn(m["argv"], m["cwd"], m["out"], {**envs[m["env"]], **m["add"]})
        except Exception as e:  # noqa: BLE001 - reported to the launcher, which fails the job
            reply({"k": key, "err": f"{type(e).__name__}: {e}"})
            nxt = standby.pop(key, None)
            if nxt is not None:
                start(nxt)                      # its resources are free
            return
        t = time.time()
        jobs[key] = pid
        if tick is None:
            fd = os.pidfd_open(pid)
            pidfds[fd] = key
            poller.register(fd, select.POLLIN)
        reply({"k": key, "pid": pid, "ps": proc_start(pid), "t": t})

    def reaped(key: str, rc: int) -> None:
        t = time.time()
        del jobs[key]
        nxt = standby.pop(key, None)
        if nxt is not None:
            start(nxt)                          # the slot's next job first: it waits
        reply({"k": key, "rc": rc, "t": t, "sig": key in signalled})
        signalled.discard(key)

    while True:
        for fd, _ in poller.poll(tick):
            if fd in pidfds:
                key = pidfds.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                reaped(key, os.waitstatus_to_exitcode(os.waitpid(jobs[key], 0)[1]))
                continue
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:                         # the launcher is gone
                gone.append(True)
                break
            lines = (inbox + data).split(b"\n")
            inbox = lines.pop()
            for line in lines:
                m = orjson.loads(line)
                if m["op"] == "start":
                    start(m)
                elif m["op"] == "env":
                    envs[m["id"]] = m["env"]
                elif m["op"] == "kill" and m["k"] in jobs:
                    try:
                        os.killpg(jobs[m["k"]], m["sig"])
                        signalled.add(m["k"])
                    except OSError as e:
                        if e.errno != errno.ESRCH:
                            raise
                elif m["op"] == "kill":
                    for before, nxt in list(standby.items()):
                        if nxt["k"] == m["k"]:
                            del standby[before]
                            drop(nxt, "stopped before it started")
        if tick is not None:
            for key, pid in list(jobs.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    reaped(key, os.waitstatus_to_exitcode(status))
        if gone:
            for pid in jobs.values():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                os.waitpid(pid, 0)
            return


def _become_starter(sock: socket.socket) -> None:
    """In the forked child: drop what belongs to the launcher, serve, and exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)                 # the launcher's wakeup pipe is not ours
        # Cycles in the launcher's heap may hold file objects: collected here, they would
        # close descriptor numbers that our pidfds reuse.
        gc.disable()
        keep = sock.fileno()
        try:
            fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
        except OSError:
            fds = range(3, os.sysconf("SC_OPEN_MAX"))
        for fd in fds:
            if fd > 2 and fd != keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.chdir("/")
        serve(sock)
        code = 0
    except BaseException:                        # noqa: BLE001 - reported, then we exit
        traceback.print_exc()
    finally:
        os._exit(code)
