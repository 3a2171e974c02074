"""The ready bell: one ``stat`` tells an idle launcher whether ``ready/`` may hold new jobs.

::

    jobs/ready.bell       grows by one byte each time someone has put jobs into ready/

Without it, a launcher with free resources and nothing to claim would list every bucket of
``ready/`` ten times a second: 257 directory reads per launcher per pass, which on Lustre
are metadata-server round trips, from every node of the allocation.

Protocol
--------
* Ring: whoever renames or writes jobs into ``ready/`` (the site publishing, releasing
  children and revoking; a launcher returning or retrying a job; ``spool job retry``)
  appends one byte to the bell *after* the renames are done: once per batch, not per job.
* Listen: a launcher takes the bell's ``signature`` (inode, size, mtime) *before* it begins
  a pass over ``ready/``.  If the pass finds nothing to claim, it keeps that signature and
  lists ``ready/`` again only when the bell's signature has changed, or when
  ``FULL_PASS_SEC`` has gone by.

Guarantee: a job put into ``ready/`` after a pass began and missed by it is announced by a
ring after that same begin, so the bell has grown since the signature the launcher keeps,
and its next look (every ``launcher.IDLE_SCAN_SEC``) sees the change.  A job already in
``ready/`` when the pass began is seen by the pass.

# race: a publisher may die between its rename and its ring.  The site rings when it
# starts (after its recovery) and when it retires a dead launcher, so such a job waits
# until then.  Two appends from one node never lose a byte (O_APPEND); on Lustre and GPFS
# size and mtime are coherent between nodes.  NFS may merge two clients' appends into one
# byte (the mtime still moves) and serves ``stat`` from its attribute cache for seconds.
# Against what remains -- a job moved into ready/ by hand, a cache that lags -- every
# launcher with room still makes a full pass every ``FULL_PASS_SEC``.

The site ``trim``s the bell back to zero bytes when it passes ``TRIM_BYTES``; that too is a
change, and costs one extra pass.
"""
from __future__ import annotations

import os
from pathlib import Path

NAME = "ready.bell"       # in jobs/, beside ready/ (not a dot-file: no temp, never swept)
FULL_PASS_SEC = 30.0      # a launcher lists ready/ at least this often while it has room
TRIM_BYTES = 1 << 16


def ring(bell: Path) -> None:
    """Announce jobs already put into ``ready/`` (call after the renames)."""
    try:
        fd = os.open(bell, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except FileNotFoundError:         # no jobs/ (a site being removed): nobody listens
        return
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


def signature(bell: Path) -> tuple:
    """What a listener compares: (inode, size, mtime) of the bell; () if it does not exist."""
    try:
        st = os.stat(bell)
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def trim(bell: Path) -> None:
    """Empty a bell that has grown past ``TRIM_BYTES`` (the site, now and then)."""
    try:
        if os.stat(bell).st_size > TRIM_BYTES:
            os.truncate(bell, 0)
    except FileNotFoundError:
        pass
