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
import threading
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
    """

    def __init__(self, wake: threading.Event, paths: list[Path]):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        class Waker(FileSystemEventHandler):
            def on_any_event(self, event):
                wake.set()

        self.handler = Waker()
        self.observer = Observer()
        self.observer.daemon = True
        self.watches: dict[str, object] = {}
        for p in paths:
            self.watch(p)
        self.observer.start()

    def watch(self, path: Path) -> None:
        key = str(path)
        if key not in self.watches:
            path.mkdir(parents=True, exist_ok=True)
            self.watches[key] = self.observer.schedule(self.handler, key, recursive=False)

    def sync(self, launcher_dirs: list[Path]) -> None:
        """Watch exactly these launcher directories (plus the fixed paths)."""
        wanted = {str(p) for p in launcher_dirs}
        for key in [k for k in self.watches if "/launchers/" in k and k not in wanted]:
            try:
                self.observer.unschedule(self.watches.pop(key))
            except (KeyError, ValueError):
                pass
        for p in launcher_dirs:
            try:
                self.watch(p)
            except (FileNotFoundError, OSError):
                pass

    def stop(self) -> None:
        self.observer.stop()
