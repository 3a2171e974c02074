"""Noticing change: inotify where it works, polling of the small things where it cannot.

inotify (watchdog's Observer) only sees what this node's kernel did; on NFS, Lustre, GPFS and
DAOS it silently misses other nodes' writes.  So the mode follows the filesystem type of the
site directory (``/proc/mounts``), and ``watch: inotify|poll`` in settings.yml forces it.

Either way the site's loop does the same small work each tick (list ``jobs/created/``, stat
and read-from-offset each launcher's event log and lease): O(new files + launchers), never a
walk of the job tree.  With inotify a change wakes the loop at once; when polling, the loop
ticks every ``poll_interval_sec``.  watchdog's PollingObserver is never used: it stats every
entry of the tree each second, hopeless at a million jobs.
"""
from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path

NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "fuse.dfuse", "fuse.daos", "dfuse", "beegfs",
              "fuse.beegfs", "cifs", "smb3", "ceph", "fuse.ceph", "panfs", "wekafs", "9p",
              "fuse.sshfs", "orangefs", "pvfs2"}


def filesystem_type(path: Path, mounts_text: str | None = None) -> str:
    """The type of the filesystem holding ``path`` (longest matching mount point)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        # >=: of several mounts on one point the last listed is the one on top (an NFS
        # mount over its autofs trigger), so it decides.
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype


def choose_mode(path: Path, setting: str = "auto", mounts_text: str | None = None) -> str:
    if setting in ("inotify", "poll"):
        return setting
    return "poll" if filesystem_type(path, mounts_text) in NETWORK_FS else "inotify"


class InotifyWatcher:
    """Non-recursive inotify watches that wake ``wake`` on any change.

    The site watches ``jobs/created/``, ``launchers/`` (new launchers) and each live
    launcher's own directory (its lease and event log); ``sync`` follows launchers as they
    come and retire, so the watch set stays O(launchers) and never covers the job tree.

    One inotify descriptor (watchdog's bindings) and one thread that only wakes: it waits
    for the descriptor, drains it unparsed, sets ``wake`` and naps ``NAP`` s, so a burst of
    changes -- a busy launcher appends to its log several times per job -- is coalesced in
    the kernel's queue and costs one read per nap.  What changed is never decoded: the
    site's tick looks at the small things itself.  watchdog's Observer, which builds and
    dispatches a Python event per change through three threads, cost the site more CPU than
    its own work at a few hundred jobs a second (bench/throughput.py, per-thread CPU).
    """

    NAP = 0.05

    def __init__(self, wake: threading.Event, paths: list[Path]):
        from watchdog.observers import inotify_c as ic
        C = ic.InotifyConstants
        self._ic = ic
        self.mask = C.IN_CREATE | C.IN_MODIFY | C.IN_CLOSE_WRITE | C.IN_MOVED_TO
        self.fd = ic.inotify_init()
        if self.fd < 0:
            raise OSError(ctypes_errno(), "inotify_init failed")
        os.set_inheritable(self.fd, False)
        os.set_blocking(self.fd, False)
        self._stop_r, self._stop_w = os.pipe()
        self.wake = wake
        self.watches: dict[str, int] = {}
        for p in paths:
            self.watch(p)
        self.thread = threading.Thread(target=self._run, name="inotify-waker", daemon=True)
        self.thread.start()

    def watch(self, path: Path) -> None:
        key = str(path)
        if key not in self.watches:
            path.mkdir(parents=True, exist_ok=True)
            wd = self._ic.inotify_add_watch(self.fd, os.fsencode(key), self.mask)
            if wd < 0:
                raise OSError(ctypes_errno(), f"cannot watch {key}")
            self.watches[key] = wd

    def sync(self, launcher_dirs: list[Path]) -> None:
        """Watch exactly these launcher directories (plus the fixed paths)."""
        wanted = {str(p) for p in launcher_dirs}
        for key in [k for k in self.watches if "/launchers/" in k and k not in wanted]:
            # a removed directory's watch is already gone (the kernel said IN_IGNORED)
            self._ic.inotify_rm_watch(self.fd, self.watches.pop(key))
        for p in launcher_dirs:
            try:
                self.watch(p)
            except (FileNotFoundError, OSError):
                pass

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass
            self.wake.set()
            time.sleep(self.NAP)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self.thread.join(5)
        for fd in (self.fd, self._stop_r, self._stop_w):
            os.close(fd)


def ctypes_errno() -> int:
    import ctypes
    return ctypes.get_errno()
