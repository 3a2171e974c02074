"""Reading jobs: records from their directories, with unmerged events applied on top.

``select`` is the one read path of the CLI and the Python API, ``count`` and ``counts`` the
one way to count, ``page`` the one way to read a page.  When the site's query index
(``spool.index``) is there, they take the candidate jobs from it (by state, tags and app)
and read only those records; without it they list the directories the filter needs
(``--state done`` never touches ``ready/``) and read every record there.  Either way every
record returned is read from disk with the launchers' events the site has not merged yet
applied (``events.overlay``), and checked against the whole filter, so a reader is right
even while the site is stopped and a stale index row can only cost a match, never show a
wrong record.  Each yielded record carries two extra keys: ``_dir`` (its directory) and
``_path``.  Counts from the index open no record at all.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import states as S
from . import fsio
from . import index as ix
from .events import overlay, unmerged_events
from .layout import Layout
from .store import BULK, Store, bulk_ids, bulk_record, read_job

JOB_DIRS = ("created", "waiting", "stagein", "ready", "running", "stageout", "done", "failed")


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

    def indexed(self) -> bool:
        """True if the index alone can answer which jobs match (no record content needed)."""
        return self.ids is None and not self.workdir_contains and not self.parent_id

    def names_only(self) -> bool:
        """True if the file names alone answer a count (whole directories, nothing else)."""
        if not self.indexed() or self.tags or self.app or self.exclude_states:
            return False
        whole = all({s for s, dd in S.STATE_DIR.items() if dd == d} <= self.states
                    for d in {S.STATE_DIR[s] for s in self.states})
        return not self.states or whole

    def index_states(self) -> set[str]:
        """The fine states this filter admits among the index's directories."""
        out = set()
        for d in self.dirs:
            if d in ix.INDEXED_DIRS:
                out.update(s for s, dd in S.STATE_DIR.items() if dd == d)
        if self.states:
            out &= self.states
        return out - self.exclude_states

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


def read_record(path, directory: str, pending: dict | None = None,
                job_id: str | None = None) -> dict | None:
    """The record at ``path`` in ``directory`` as readers see it (None if it is gone); a
    path that is a bulk drop gives the line of ``job_id``."""
    if str(path).endswith(BULK):
        rec = bulk_record(Path(path), job_id) if job_id else None
        if rec is None:
            return None
        rec = dict(rec)
        directory = "created"
    else:
        try:
            rec = read_job(path, directory)
        except (FileNotFoundError, ValueError):
            return None
    if not isinstance(rec, dict):
        return None
    if pending:
        rec = overlay(rec, pending)
    rec["state"] = S.fine_state(directory, rec.get("state"))
    rec["_dir"] = directory
    rec["_path"] = str(path)
    return rec


def _table(layout: Layout, use_index: bool = True):
    """The index as readers see it, or None (absent, unreadable, or not wanted)."""
    if not use_index:
        return None
    try:
        return ix.load(layout)
    except ix.IndexUnreadable:
        return None


def select(layout: Layout, flt: Filter | None = None, use_index: bool = True) -> Iterator[dict]:
    flt = flt or Filter()
    table = _table(layout, use_index and flt.ids is None)
    if table is not None:
        yield from _select_indexed(layout, flt, table, table.rows_matching(
            flt.index_states(), flt.tags or None, flt.app))
        return
    yield from _select_scan(layout, flt)


def _select_indexed(layout: Layout, flt: Filter, table, rows,
                    rest: bool = True) -> Iterator[dict]:
    """The records of index rows ``rows`` (in their order) that match ``flt``; then, with
    ``rest``, those of ``created/`` and ``rejected/`` if the filter wants them (the index
    holds neither)."""
    store = Store(layout)
    pending = unmerged_events(layout)
    id_of, st = table.id_of, table.state
    job_file = layout.job_file
    for r in rows:
        job_id, d = id_of(r), ix.DIR_OF[st[r]]
        rec = None
        if d != "running":
            rec = read_record(job_file(d, job_id), d, pending)
        if rec is None:                      # running (no launcher in the index), or moved
            loc = store.locate(job_id)
            rec = read_record(loc[1], loc[0], pending) if loc and loc[0] != "created" else None
        if rec is not None and rec["_dir"] in flt.dirs and flt.matches(rec):
            yield rec
    others = tuple(d for d in flt.dirs if d not in ix.INDEXED_DIRS)
    if rest and others:
        yield from _select_scan(layout, Filter(**{**flt.__dict__, "dirs": others}))


def count(layout: Layout, flt: Filter | None = None, use_index: bool = True) -> dict[str, int]:
    """Matching jobs per fine state (``REJECTED`` for rejected files).  From the index
    alone when it is there and the filter needs no record content."""
    flt = flt or Filter()
    table = _table(layout, use_index and flt.indexed())
    out: dict[str, int] = {}
    if table is None and flt.names_only():
        per_dir = counts(layout, use_index=False)
        return {S.DIR_STATE[d]: per_dir[d] for d in flt.dirs if per_dir.get(d)}
    if table is None:
        for rec in select(layout, flt, use_index=use_index):
            out[rec["state"]] = out.get(rec["state"], 0) + 1
        return out
    out.update(table.count_matching(flt.index_states(), flt.tags or None, flt.app))
    rest = tuple(d for d in flt.dirs if d not in ix.INDEXED_DIRS)
    if rest:
        for rec in _select_scan(layout, Filter(**{**flt.__dict__, "dirs": rest})):
            out[rec["state"]] = out.get(rec["state"], 0) + 1
    return out


def ordered(layout: Layout, flt: Filter | None = None, key: str = "created",
            reverse: bool = False) -> Iterator[dict]:
    """The matching jobs' records in order of ``key``: ``"created"`` (creation time, then
    id: the order of ``spool job ls``) or ``"id"``; newest first with ``reverse``.  With
    the index, records are read one by one as the caller consumes them, so the first page
    costs a page of reads (a candidate that no longer matches is skipped and the next one
    taken)."""
    flt = flt or Filter()
    keyfn = _sort_key(key)
    table = _table(layout, flt.ids is None)
    if table is None:
        yield from sorted(select(layout, flt, use_index=False), key=keyfn, reverse=reverse)
        return
    rows = table.rows_matching(flt.index_states(), flt.tags or None, flt.app)
    if key == "id":
        rows.sort(key=table.id_of)
    else:
        rows = _by_creation(table, rows)
    if reverse:
        rows.reverse()
    indexed = _select_indexed(layout, flt, table, rows, rest=False)
    others = tuple(d for d in flt.dirs if d not in ix.INDEXED_DIRS)
    extra = sorted(_select_scan(layout, Filter(**{**flt.__dict__, "dirs": others})),
                   key=keyfn, reverse=reverse) if others else []
    yield from heapq.merge(indexed, extra, key=keyfn, reverse=reverse)


def _by_creation(table, rows: list[int]) -> list[int]:
    """``rows`` in order of (creation time, id): sorted on the time column alone (in C),
    then runs of equal times sorted by id (rare, but a bulk of records may share one)."""
    created = table.created
    rows.sort(key=created.__getitem__)
    times = list(map(created.__getitem__, rows))
    if len(set(times)) == len(times):
        return rows
    out, i = [], 0
    while i < len(rows):
        j = i + 1
        t = created[rows[i]]
        while j < len(rows) and created[rows[j]] == t:
            j += 1
        run = rows[i:j]
        if len(run) > 1:
            run.sort(key=table.id_of)
        out.extend(run)
        i = j
    return out


def page(layout: Layout, flt: Filter | None, offset: int = 0, limit: int | None = None,
         key: str = "created", reverse: bool = False) -> list[dict]:
    """Records ``offset`` to ``offset + limit`` of ``ordered(layout, flt, key, reverse)``."""
    stop = None if limit is None else offset + limit
    return list(itertools.islice(ordered(layout, flt, key, reverse), offset, stop))


def _sort_key(key: str):
    if key == "id":
        return lambda r: r["id"]
    return lambda r: (r.get("created_at") or 0.0, r["id"])


def _select_scan(layout: Layout, flt: Filter) -> Iterator[dict]:
    store = Store(layout)
    pending = unmerged_events(layout)
    if flt.ids is not None:
        limbo = store.held_index()
        for job_id in sorted(flt.ids):
            # race: the job may move between the look and the read (the site taking a
            # drop in, a launcher claiming it): a record gone when read is looked up again.
            for _ in range(3):
                loc = store.locate(job_id, limbo)
                if loc is None:
                    break
                rec = read_record(loc[1], loc[0], pending, job_id)
                if rec is not None:
                    if rec["_dir"] in flt.dirs and flt.matches(rec):
                        yield rec
                    break
                limbo = store.held_index()
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
        if d == "created":                   # jobs of bulk drops not taken in yet
            for path in fsio.list_names(layout.created, suffix=BULK):
                for job_id in bulk_ids(layout.created / path):
                    rec = read_record(layout.created / path, d, pending, job_id)
                    if rec is not None and job_id not in seen:
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
    rec = read_record(held, d, pending, job_id)
    if rec is None:
        loc = store.locate(job_id)
        rec = read_record(loc[1], loc[0], pending, job_id) if loc else None
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


def counts(layout: Layout, use_index: bool = True) -> dict[str, int]:
    """Jobs per directory: from the index where it is there (``created/`` and
    ``rejected/`` by their names), else from the names in every directory.

    # race: a record the site is merging sits in site/limbo for a moment; each bucket
    # listing is bracketed by two looks at it, as in ``select``, so it is counted once.
    """
    table = _table(layout, use_index)
    if table is not None:
        by_dir = table.dir_counts()
        out = {"created": _count_created(layout)}
        out.update((d, by_dir.get(d, 0)) for d in JOB_DIRS if d != "created")
        out["rejected"] = _count_rejected(layout)
        return out
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
    for path in store.bulk_files():
        if path.parent == layout.created:
            seen["created"].update(bulk_ids(path))
    limbo.update(store.limbo_index())
    for job_id, (to, _) in limbo.items():
        if to in seen:
            seen[to].add(job_id)
    out = {d: len(ids) for d, ids in seen.items()}
    out["rejected"] = _count_rejected(layout)
    return out


def _count_created(layout: Layout) -> int:
    """Drops not taken in yet: single ones, and the lines of bulk drops."""
    n = len(fsio.list_names(layout.created))
    for name in fsio.list_names(layout.created, suffix=BULK):
        try:
            data = fsio.read_bytes(layout.created / name, retry=False)
        except FileNotFoundError:
            continue
        n += sum(1 for line in data.splitlines() if line.strip())
    return n


def _count_rejected(layout: Layout) -> int:
    return sum(1 for n in fsio.list_names(layout.rejected, suffix="") if not n.endswith(".reason"))
