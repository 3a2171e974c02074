"""Hints: how a process other than the site tells it which jobs it moved or rewrote.

::

    SITE/site/hints/T.HOST.PID.RAND.json    {"jobs": [ID, ...], "why": "retry"}

The site keeps a query index (``spool.index``) of where every job is and what it is tagged.
It learns most changes from its own moves and from the launchers' event logs.  A CLI or API
process that moves or rewrites jobs (``spool job retry``/``rm``/``kill``, ``job.save()``,
``update()``, ``delete()``) calls ``send`` after its moves: one file per call, written whole
(temp, fsync, rename), never appended to, so every hint has exactly one writer.  The site
reads each hint, looks the named jobs up where they really are (``Store.locate``), updates
the index from what it finds, and deletes the hint.

A hint is only a pointer, never a fact: the jobs' records stay the truth.  A hint that names
a job which did not move (the mover lost a race), or that arrives twice, costs one lookup.
A hint lost to a crash between a move and ``send`` is made good by the site's periodic
check of the index against the directories (``spool.index``).
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Iterable

from . import fsio
from .layout import Layout

DIRNAME = "hints"


def directory(layout: Layout) -> Path:
    return layout.site_dir / DIRNAME


def send(layout: Layout, job_ids: Iterable[str], why: str) -> None:
    """Tell the site that ``job_ids`` were moved or rewritten (durably; nothing if none)."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return
    name = f"{time.time_ns():019d}.{fsio.HOST}.{os.getpid()}.{secrets.token_hex(3)}.json"
    fsio.write_json_atomic(directory(layout) / name, {"jobs": ids, "why": why})


def pending(layout: Layout) -> list[Path]:
    """Hint files not yet consumed, oldest first."""
    d = directory(layout)
    return [d / n for n in sorted(fsio.list_names(d))]
