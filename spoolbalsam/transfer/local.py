"""The local backend: copy, hard-link or rsync between filesystems this host mounts.

For Aurora that is Flare (Lustre), DAOS (dfuse) and home, all mounted on the login node
where the site runs.  Location URLs: ``file:///path`` (see ``items``); the method is the
location's ``?method=`` or ``transfers.local_method``:

* ``copy``: the kernel copies (``sendfile``), each file is ``fsync``\\ ed before it is
  renamed into place, so a staged input survives a power loss as well as a crash;
* ``link``: a hard link (no data moves) -- only within one filesystem; across two it
  copies instead, since the user asked for the data to be there;
* ``rsync``: ``rsync -a`` (the ``rsync`` program on the site's host).

Guarantees
----------
* **Never seen half-copied.**  Every move is written to a dot-temp beside its destination
  (``.NAME.spool-part-TOKEN``; readers skip dot-files) and renamed into place once it is
  whole.  A recursive move into an existing directory (``local_path: .``) renames each
  top-level entry into place.  A destination that already exists is replaced whole: the
  old one is renamed aside first and removed after.
* **Off the site's loop.**  ``max_concurrent_transfers`` worker threads each run one task
  (up to ``transfer_batch_size`` moves) at a time; ``submit`` only queues, ``poll`` only
  collects.  Copies release the GIL (``sendfile``, ``fsync``), so the site's loop runs on.
* **Restartable.**  A task dies with the site process (threads); its temp is left behind.
  The next attempt at the same destination first removes the ``.NAME.spool-part-*`` and
  ``.NAME.spool-old-*`` leftovers beside it (the site runs one task per item at a time, and
  one site process per site), then copies anew.  An ``rsync`` child may outlive a killed
  site and finish into its own temp, which is never renamed (and is removed by a later
  attempt at the same destination).
* Outcomes are per move: a missing source fails its own item (``PERMANENT``, naming the
  path), not the other items of the batch.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import secrets
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

from ..spool.fsio import fsync_dir, sync_filesystem
from .base import PERMANENT, TRANSIENT, Backend, BackendError, Move, Outcome, TaskStatus

log = logging.getLogger("spoolbalsam.transfer")
PART, OLD = ".spool-part-", ".spool-old-"
CHUNK = 1 << 20


class Cancelled(Exception):
    pass


class LocalBackend(Backend):
    scheme = "file"

    def __init__(self, workers: int = 5, method: str = "copy", bwlimit_mb: float | None = None):
        super().__init__()
        self.method = method
        self.bwlimit = bwlimit_mb * 1e6 if bwlimit_mb else None   # bytes/s per task
        self.todo: queue.Queue = queue.Queue()
        self.results: list[TaskStatus] = []
        self.lock = threading.Lock()
        self.cancelled: dict[str, threading.Event] = {}
        self.open: set[str] = set()
        self.threads = [threading.Thread(target=self._work, name=f"transfer-{n}", daemon=True)
                        for n in range(max(1, workers))]
        for t in self.threads:
            t.start()

    # ---- the site's calls -------------------------------------------------------------
    def submit(self, task_id: str, location, direction: str, moves: list[Move]) -> None:
        method = getattr(location, "method", None) or self.method
        with self.lock:
            self.cancelled[task_id] = threading.Event()
            self.open.add(task_id)
        self.todo.put((task_id, method, list(moves)))

    def poll(self) -> list[TaskStatus]:
        with self.lock:
            out, self.results = self.results, []
        return out

    def cancel(self, task_id: str) -> None:
        ev = self.cancelled.get(task_id)
        if ev is not None:
            ev.set()

    def busy(self) -> int:
        with self.lock:
            return len(self.open)

    def close(self) -> None:
        """Stop: cancel every task, let the workers remove their temps (bounded wait)."""
        for ev in list(self.cancelled.values()):
            ev.set()
        for _ in self.threads:
            self.todo.put(None)
        deadline = time.monotonic() + 5
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ---- the workers --------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            got = self.todo.get()
            if got is None:
                return
            task_id, method, moves = got
            stop = self.cancelled[task_id]
            outcomes = []
            for mv in moves:
                if stop.is_set():
                    outcomes.append(Outcome(mv.key, False, "cancelled", TRANSIENT))
                    continue
                try:
                    place(mv, method, self.bwlimit, stop)
                    outcomes.append(Outcome(mv.key, True))
                except Cancelled:
                    outcomes.append(Outcome(mv.key, False, "cancelled", TRANSIENT))
                except BackendError as e:
                    outcomes.append(Outcome(mv.key, False, str(e), e.kind))
                except OSError as e:
                    outcomes.append(Outcome(mv.key, False, describe(e), classify(e)))
            ok = all(o.ok for o in outcomes)
            with self.lock:
                self.results.append(TaskStatus(task_id, "done" if ok else "error", outcomes))
                self.open.discard(task_id)
                self.cancelled.pop(task_id, None)
            self.notify()


# ---- one move -----------------------------------------------------------------------------
def classify(e: OSError) -> str:
    """Whether retrying can help: a missing source or a refused permission cannot."""
    if e.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                   errno.ELOOP, errno.ENAMETOOLONG):
        return PERMANENT
    return TRANSIENT


def describe(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


def place(mv: Move, method: str, bwlimit: float | None = None,
          stop: threading.Event | None = None) -> None:
    """Copy (link, rsync) ``mv.src`` to a temp beside ``mv.dst`` and rename it into place."""
    src, dst = Path(mv.src), Path(mv.dst)
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise BackendError(f"source {src} does not exist", PERMANENT) from None
    except OSError as e:
        raise BackendError(f"source {src}: {e.strerror}", classify(e)) from None
    if mv.recursive and not stat.S_ISDIR(st.st_mode):
        raise BackendError(f"source {src} is not a directory (the slot is recursive)", PERMANENT)
    if not mv.recursive and stat.S_ISDIR(st.st_mode):
        raise BackendError(f"source {src} is a directory; its slot needs recursive: true",
                           PERMANENT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(dst)
    tmp = dst.parent / f".{dst.name}{PART}{secrets.token_hex(4)}"
    try:
        if method == "rsync":
            _rsync(src, tmp, mv.recursive)
        elif mv.recursive:
            _copy_tree(src, tmp, method, bwlimit, stop)
        else:
            _copy_file(src, tmp, method, bwlimit, stop)
        if mv.recursive and dst.is_dir() and not dst.is_symlink():
            for name in sorted(os.listdir(tmp)):
                _replace(tmp / name, dst / name)
            os.rmdir(tmp)
            fsync_dir(dst)
        else:
            _replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        _remove(tmp)
        raise


def clear_leftovers(dst: Path) -> None:
    """Remove the temps an interrupted earlier attempt at ``dst`` left beside it."""
    prefixes = (f".{dst.name}{PART}", f".{dst.name}{OLD}")
    try:
        names = os.listdir(dst.parent)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefixes):
            _remove(dst.parent / name)


def _replace(new: Path, dst: Path) -> None:
    """Rename ``new`` to ``dst``; an existing ``dst`` that a rename cannot replace (a
    directory) is renamed aside first and removed after."""
    try:
        os.rename(new, dst)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            raise
    aside = dst.parent / f".{dst.name}{OLD}{secrets.token_hex(4)}"
    os.rename(dst, aside)
    os.rename(new, dst)
    _remove(aside)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _copy_file(src: Path, dst: Path, method: str, bwlimit: float | None,
               stop: threading.Event | None) -> None:
    if method == "link":
        try:
            os.link(src, dst)
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            log.info("cannot hard-link %s (%s): copying it", src, e.strerror)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size, done, t0 = os.fstat(fin.fileno()).st_size, 0, time.monotonic()
            while True:
                if stop is not None and stop.is_set():
                    raise Cancelled()
                n = os.sendfile(fd, fin.fileno(), done, CHUNK)
                if n == 0:
                    break
                done += n
                if bwlimit:
                    ahead = done / bwlimit - (time.monotonic() - t0)
                    if ahead > 0:
                        (stop.wait if stop is not None else time.sleep)(ahead)
            if done < size:
                raise BackendError(f"source {src} shrank while it was copied", TRANSIENT)
            os.fsync(fd)
        finally:
            os.close(fd)
    shutil.copystat(src, dst)
    os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode))


def _copy_tree(src: Path, dst: Path, method: str, bwlimit: float | None,
               stop: threading.Event | None) -> None:
    os.mkdir(dst, 0o700)
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        target = dst / rel
        for d in dirs:
            p = Path(root) / d
            if p.is_symlink():
                os.symlink(os.readlink(p), target / d)
            else:
                os.mkdir(target / d)
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        for f in files:
            _copy_file(Path(root) / f, target / f, method, bwlimit, stop)
    for root, dirs, _ in os.walk(dst, topdown=False):
        for d in dirs:
            p = Path(root) / d
            if not p.is_symlink():
                shutil.copystat(src / p.relative_to(dst), p)
    shutil.copystat(src, dst)


def _rsync(src: Path, dst: Path, recursive: bool) -> None:
    exe = shutil.which("rsync")
    if exe is None:
        raise BackendError("method rsync needs the rsync program on the site's host, and it "
                           "is not on PATH; install it or use method copy", PERMANENT)
    argv = [exe, "-a", f"{src}/" if recursive else str(src), str(dst)]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or [""])[-1]
        raise BackendError(f"rsync exit {proc.returncode}: {msg}", TRANSIENT)
    sync_filesystem(dst)       # rsync does not fsync what it wrote
