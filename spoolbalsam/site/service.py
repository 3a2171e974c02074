"""The site process: one per site, started by ``spool site start``.

``site/site.pid`` holds ``{host, pid, started}`` while it runs, and ``site/site.lock`` is
held with flock for node-local exclusion (flock is never trusted across nodes: the pid file's
host tells a user on another login node where the site runs).  SIGTERM/SIGINT stop it after
the current tick.  Run in the foreground with ``python -m spoolbalsam.site.service SITE``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from .. import settings as settings_mod
from ..spool import fsio
from ..spool.layout import Layout
from ..spool.lease import pid_alive

log = logging.getLogger("spoolbalsam.site")
MIN_TICK_GAP = 0.1      # a burst of events wakes the site at most 10 times a second


class AlreadyRunning(RuntimeError):
    pass


def pid_file(layout: Layout) -> Path:
    return layout.site_dir / "site.pid"


def running_site(layout: Layout) -> dict | None:
    """The pid record of a live site process, or None (stale records are ignored)."""
    try:
        info = fsio.read_json(pid_file(layout))
    except (FileNotFoundError, ValueError):
        return None
    if info.get("host") == fsio.HOST and not pid_alive(info.get("pid", -1), info.get("pid_start")):
        return None
    return info


@contextlib.contextmanager
def site_lock(layout: Layout) -> Iterator[bool]:
    """Hold the site's node-local lock (``site/site.lock``) for the block; yields False,
    holding nothing, if another process of this host has it (a running site)."""
    import portalocker
    layout.site_dir.mkdir(exist_ok=True)
    with open(layout.site_dir / "site.lock", "a") as lock:
        try:
            portalocker.lock(lock, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.LockException:
            yield False
            return
        yield True


def serve(layout: Layout, stop: threading.Event | None = None) -> None:
    with site_lock(layout) as got:
        if not got:
            info = running_site(layout) or {}
            raise AlreadyRunning(f"site {layout.root} is already running (pid "
                                 f"{info.get('pid', '?')} on {info.get('host', fsio.HOST)}); "
                                 "stop it with `spool site stop`")
        _serve_locked(layout, stop)


def _serve_locked(layout: Layout, stop: threading.Event | None) -> None:
    from .loop import Site
    from .watch import InotifyWatcher, choose_mode

    settings = settings_mod.load(layout.settings)
    from ..spool.lease import proc_start
    fsio.write_json_atomic(pid_file(layout), {"host": fsio.HOST, "pid": os.getpid(),
                                              "pid_start": proc_start(os.getpid()),
                                              "started": time.time()})
    stop = stop or threading.Event()
    wake = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: (stop.set(), wake.set()))
    machine = settings_mod.machine_from_settings(settings)
    site = Site(layout, settings, machine)
    from .batch import BatchManager
    site.batch = BatchManager(layout, settings, machine)
    mode = choose_mode(layout.root, settings["watch"])
    observer = None
    interval = settings["poll_interval_sec"]
    if mode == "inotify":
        observer = InotifyWatcher(wake, [layout.created, layout.launchers])
        site.on_launchers = observer.sync
        interval = max(interval, 1.0)      # a backstop; changes wake the loop at once
    log.info("site %s started (pid %d, watch=%s, machine=%s)", layout.root, os.getpid(), mode,
             settings["machine"])
    try:
        site.run(stop, _throttled(wake), interval)
    finally:
        if observer is not None:
            observer.stop()
        fsio.unlink_quiet(pid_file(layout))
        log.info("site stopped")


class _throttled:
    """An Event whose wait() returns no sooner than MIN_TICK_GAP after the last one."""

    def __init__(self, event: threading.Event):
        self.event, self.last = event, 0.0

    def wait(self, timeout: float) -> bool:
        gap = MIN_TICK_GAP - (time.monotonic() - self.last)
        if gap > 0:
            time.sleep(gap)
        got = self.event.wait(timeout)
        self.last = time.monotonic()
        return got

    def clear(self) -> None:
        self.event.clear()

    def set(self) -> None:
        self.event.set()


def setup_logging(path: Path | None, level: str = "INFO") -> None:
    handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("spoolbalsam")
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("SPOOL_LOG_LEVEL", level))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    layout = Layout(Path(argv[0]).resolve())
    setup_logging(layout.log / "site.log")
    try:
        serve(layout)
    except AlreadyRunning as e:
        print(f"spool: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
