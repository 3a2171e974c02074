"""Reading jobs: records from their directories, with unmerged events applied on top.

``select`` is the one read path of the CLI and the Python API.  It lists only the
directories the filter needs (``--state done`` never touches ``ready/``), reads names before
contents, and overlays the launchers' events the site has not merged yet (``events.overlay``)
so a reader is right even while the site is stopped.  Each yielded record carries two extra
keys: ``_dir`` (its directory) and ``_path``.  ``counts`` counts names only — no file is
opened — so ``spool job ls --by-state`` stays fast at a million jobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import states as S
from . import fsio
from .events import overlay, unmerged_events
from .layout import Layout
from .store import Store, read_job

JOB_DIRS = ("created", "waiting", "ready", "running", "done", "failed")


@dataclass
class Filter:
    dirs: tuple[str, ...] = JOB_DIRS
    states: set[str] = field(default_factory=set)        # fine states (Balsam names)
    exclude_states: set[str] = field(default_factory=set)
    tags: dict[str, str] = field(default_factory=dict)
    app: str | None = None
    workdir_contains: str | None = None
    ids: set[str] | None = None
    parent_id: str | None = None

    @classmethod
    def from_states(cls, names: list[str] | tuple[str, ...] = (), **kw) -> "Filter":
        """Build a filter from ``--state`` values (Balsam names or directory names)."""
        dirs, fine = set(), set()
        for name in names:
            d, f = S.parse_state(name)
            dirs.add(d)
            if f:
                fine.add(f)
            else:
                fine.update(s for s, dd in S.STATE_DIR.items() if dd == d)
        if not names:
            return cls(**kw)
        order = JOB_DIRS + ("rejected",)
        return cls(dirs=tuple(d for d in order if d in dirs), states=fine, **kw)

    def matches(self, rec: dict) -> bool:
        if self.states and rec.get("state") not in self.states:
            return False
        if rec.get("state") in self.exclude_states:
            return False
        if self.app and rec.get("app") != self.app:
            return False
        if self.workdir_contains and self.workdir_contains not in (rec.get("workdir") or ""):
            return False
        if self.parent_id and self.parent_id not in (rec.get("parent_ids") or ()):
            return False
        tags = rec.get("tags") or {}
        return all(tags.get(k) == v for k, v in self.tags.items())


def read_record(path, directory: str, pending: dict | None = None) -> dict | None:
    try:
        rec = read_job(path, directory)
    except (FileNotFoundError, ValueError):
        return None
    if pending:
        rec = overlay(rec, pending)
    rec["state"] = S.fine_state(directory, rec.get("state"))
    rec["_dir"] = directory
    rec["_path"] = str(path)
    return rec


def select(layout: Layout, flt: Filter | None = None) -> Iterator[dict]:
    flt = flt or Filter()
    store = Store(layout)
    pending = unmerged_events(layout)
    if flt.ids is not None:
        limbo = store.limbo_index()
        for job_id in sorted(flt.ids):
            loc = store.locate(job_id, limbo)
            if loc and loc[0] in flt.dirs:
                rec = read_record(loc[1], loc[0], pending)
                if rec and flt.matches(rec):
                    yield rec
        return
    # race: a job being moved with a rewrite sits in its mover's limbo for a moment (or,
    # after a crash, until recovery); a reader shows it where it is going.  The site's merges
    # rewrite done/ and failed/ records in place through site/limbo all the time, so every
    # bucket listing is bracketed by two looks at site/limbo: a record missing from the
    # listing because a merge held it is in one of them.  Other limbos (launchers', CLI's)
    # hold a job only while it changes state and are looked at before and after the scan.
    site_limbo = layout.site_dir / "limbo"
    limbo = store.limbo_index()
    seen: set[str] = set()
    for d in flt.dirs:
        if d == "rejected":
            yield from rejected(layout)
            continue
        for bucket in store.buckets(d):
            before = _held(site_limbo, d)
            names = store.names_in(d, bucket)
            held = {**before, **_held(site_limbo, d)}
            for path in names:
                rec = read_record(path, d, pending)
                if rec is None:
                    continue
                seen.add(rec["id"])
                if flt.matches(rec):
                    yield rec
            for job_id, path in held.items():
                if job_id not in seen:
                    rec = _read_somewhere(store, job_id, path, d, pending)
                    if rec is not None:
                        seen.add(job_id)
                        if flt.matches(rec):
                            yield rec
    limbo.update(store.limbo_index())
    for job_id, (d, path) in sorted(limbo.items()):
        if d in flt.dirs and job_id not in seen:
            rec = _read_somewhere(store, job_id, path, d, pending)
            if rec is not None and flt.matches(rec):
                yield rec


def _held(limbo: Path, d: str) -> dict[str, Path]:
    """Jobs in ``limbo`` on their way to directory ``d``."""
    out = {}
    for name in fsio.list_names(limbo):
        job_id, _, key = name[:-5].partition("@")
        if key.split(".", 1)[0] == d:
            out[job_id] = limbo / name
    return out


def _read_somewhere(store: Store, job_id: str, held: Path, d: str, pending) -> dict | None:
    """The record of a job seen in a limbo: from the limbo, or wherever it went since."""
    rec = read_record(held, d, pending)
    if rec is None:
        loc = store.locate(job_id)
        rec = read_record(loc[1], loc[0], pending) if loc else None
    return rec


def rejected(layout: Layout) -> Iterator[dict]:
    """Rejected drops as pseudo-records: file name, reason, when."""
    for name in sorted(fsio.list_names(layout.rejected, suffix="")):
        if name.endswith(".reason"):
            continue
        path = layout.rejected / name
        try:
            reason = (layout.rejected / (name + ".reason")).read_text().strip()
        except FileNotFoundError:
            reason = "(no reason recorded)"
        yield {"id": name, "state": S.REJECTED, "app": "", "workdir": "", "tags": {},
               "error": reason, "_dir": "rejected", "_path": str(path)}


def counts(layout: Layout) -> dict[str, int]:
    """Jobs per directory, from names alone.

    # race: a record the site is merging sits in site/limbo for a moment; each bucket
    # listing is bracketed by two looks at it, as in ``select``, so it is counted once.
    """
    store = Store(layout)
    site_limbo = layout.site_dir / "limbo"
    limbo = store.limbo_index()
    seen: dict[str, set[str]] = {}
    for d in JOB_DIRS:
        ids = seen[d] = set()
        for bucket in store.buckets(d):
            ids.update(_held(site_limbo, d))
            ids.update(p.name[:-5] for p in store.names_in(d, bucket))
            ids.update(_held(site_limbo, d))
    limbo.update(store.limbo_index())
    for job_id, (to, _) in limbo.items():
        if to in seen:
            seen[to].add(job_id)
    out = {d: len(ids) for d, ids in seen.items()}
    out["rejected"] = sum(1 for n in fsio.list_names(layout.rejected, suffix="")
                          if not n.endswith(".reason"))
    return out
