"""The query index: where every job is and what it is tagged, kept by the site for readers.

::

    SITE/site/index/CURRENT    "G\\n": the generation readers use (rewritten whole)
    SITE/site/index/G.base     the table as it was when G began (written whole, never changed)
    SITE/site/index/G.log      every change since: one JSON line per site tick (append-only)

The table has one row per job the site has taken in, in intake order: its id, its state
(Balsam's fine state, which names the directory too), attempt, app, tag set and creation
time.  ``REMOVED`` marks a job deleted since.  Jobs still in ``jobs/created/`` are not in it.

Who writes
----------
Only the site process (one per site) writes here.  It changes a row as it learns of a move:
its own moves (intake, release of children, revokes, finished limbos), every launcher
event it merges (``RUNNING``, run ends, verdicts, returns to ready), and the hints that CLI
and API processes leave after their moves (``spool.hints``: the site looks those jobs up
where they really are).  At the end of each tick it appends the tick's changes as one line,
with the launcher-log offsets they reach.  When the log has grown to a quarter of the table
(at least 50,000 changes) it starts a new generation: it writes ``G+1.base`` whole, an empty
``G+1.log``, switches ``CURRENT`` to ``G+1``, and deletes generation G.

What readers get
----------------
``load`` reads ``CURRENT``, the base and the log, and applies on top what the site has not
folded in yet: launcher events past the log's offsets and hints not yet consumed.  So
counts and candidates are right to within the moves in flight, even while the site is
stopped.  The records stay the truth: a reader that returns jobs reads their records
(``spool.query``) and checks them against its filter, so a stale row can cost a page one
job, never a wrong record.

# race: the site may switch generations while a reader reads.  A reader that finds G's base
# or log gone (ENOENT) starts over from CURRENT; the site writes G+1 whole before CURRENT
# names it, and deletes G only after.  A log line still being appended is incomplete and is
# skipped (``fsio.read_lines_at``).

The site itself asks the index where a job is (``Site.locate``), and in particular whether
an id it takes in is new: a job without a row is in no state directory.  That holds
because the site adds a row for every job it publishes at once, and its start-up check
below runs before its first intake.  The check looks a job up with ``drops=False``: a new
drop of the same id waiting in ``created/`` must not hide the job taken in before.

Crashes
-------
The index is a cache and is never fsynced.  ``kill -9`` of the site at any point leaves
``CURRENT`` naming a complete generation whose log may lack the last tick's changes; a base
that cannot be read (power loss) is rebuilt from the records.  At start the site replays the
launcher events between the index's offsets and its merge offsets, then checks every row
against the directory listings (``Keeper.reconcile``): a job found in a place the index does
not say is looked up and its row corrected, a job found nowhere is marked removed.  Because
launchers log a verdict *before* their rename, the index may run ahead of the directories
for a moment; a difference that puts the directory *behind* the index within the same
attempt is therefore corrected only when a second look, a check period later, sees it
again.  The same check runs in the background over one bucket per tick, so a job moved by
hand is found too.  ``spool site reindex`` rebuilds the index from the records, and
``spool site reindex --check`` compares it with a full scan.
"""
from __future__ import annotations

import bisect
import os
import sys
import time
from array import array
from itertools import compress
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from . import fsio
from . import states as S
from .ids import SHARDS, shard
from .layout import Layout

REMOVED = "REMOVED"
STATES = tuple(s for s in S.ALL_STATES if s != S.REJECTED) + (REMOVED,)
CODE = {name: i for i, name in enumerate(STATES)}
DIR_OF = tuple(S.STATE_DIR.get(s) for s in STATES)          # code -> directory (None: removed)
INDEXED_DIRS = ("waiting", "stagein", "ready", "running", "stageout", "done", "failed")
FORMAT = "spool-index 1"
COMPACT_MIN = 50_000
SECTIONS = ("ids", "idoff", "state", "attempt", "app", "tagset", "created", "tagsets")
_LITTLE = sys.byteorder == "little"


class IndexUnreadable(Exception):
    """The index is absent or cannot be read; callers fall back to reading the records."""


def index_dir(layout: Layout) -> Path:
    return layout.site_dir / "index"


def tagset_key(tags: dict | None) -> bytes:
    """The canonical bytes of a tag set: compact JSON with sorted keys."""
    return orjson.dumps(tags or {}, option=orjson.OPT_SORT_KEYS)


def _le(arr: array) -> bytes:
    if not _LITTLE:
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def _from_le(typecode: str, data) -> array:
    arr = array(typecode)
    arr.frombytes(data)
    if not _LITTLE:
        arr.byteswap()
    return arr


class Table:
    """The rows and their lookup tables (shared by readers and the site's ``Keeper``)."""

    def __init__(self):
        self.gen = 0
        # Ids: the base's as one blob with an offset per row (read one id without decoding
        # a million), the ones added since in a list; ``ids`` decodes them all when asked.
        self._ids: list[str] | None = []
        self._ids_blob: bytes | None = None
        self._id_off: array | None = None
        self._new_ids: list[str] = []
        self.state = bytearray()
        self.attempt = array("H")
        self.app = array("H")
        self.tagset = array("I")
        self.created = array("d")
        self.apps: list[str] = []
        self._tagsets: list[bytes] | None = []
        self._tagsets_blob: bytes | None = None
        self.offsets: dict[str, int] = {}
        self.t = 0.0
        self._row: dict[str, int] | None = None

    # ---- lazily decoded columns -----------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """Every row's id (decodes the base's ids once)."""
        if self._ids is None:
            blob = self._ids_blob
            self._ids = (blob.decode().split("\n") if blob else []) + self._new_ids
            self._ids_blob, self._id_off, self._new_ids = None, None, []
        return self._ids

    def id_of(self, r: int) -> str:
        if self._ids is not None:
            return self._ids[r]
        off = self._id_off
        if r < len(off) - 1:
            return self._ids_blob[off[r]:off[r + 1] - 1].decode()
        return self._new_ids[r - len(off) + 1]

    def _append_id(self, job_id: str) -> None:
        if self._row is not None:
            self._row[job_id] = len(self.state)
        (self._new_ids if self._ids is None else self._ids).append(job_id)

    def find_rows(self, job_ids) -> dict[str, int]:
        """Rows of ``job_ids`` (those the table has).  A few are searched for in the ids'
        blob; many build the whole id -> row map once."""
        job_ids = list(job_ids)
        if self._row is not None or self._ids is not None or len(job_ids) > 64:
            row = self.row
            return {j: row[j] for j in job_ids if j in row}
        out = {}
        blob, off = self._ids_blob, self._id_off
        for j in job_ids:
            needle, pos = j.encode(), 0
            while True:
                pos = blob.find(needle, pos)
                if pos < 0:
                    break
                end = pos + len(needle)
                if (pos == 0 or blob[pos - 1] == 10) and (end == len(blob) or blob[end] == 10):
                    out[j] = bisect.bisect_right(off, pos) - 1
                    break
                pos = end
        base = len(off) - 1
        for i, j in enumerate(self._new_ids):
            if j in job_ids:
                out[j] = base + i
        return out

    @property
    def tagsets(self) -> list[bytes]:
        if self._tagsets is None:
            blob = self._tagsets_blob
            self._tagsets = blob.split(b"\n") if blob else []
            self._tagsets_blob = None
        return self._tagsets

    @property
    def row(self) -> dict[str, int]:
        if self._row is None:
            self._row = {job_id: i for i, job_id in enumerate(self.ids)}
        return self._row

    def __len__(self) -> int:
        return len(self.state)

    # ---- reading the files ----------------------------------------------------------------
    def load_base(self, data: bytes) -> None:
        nl = data.find(b"\n")
        head = orjson.loads(data[:nl])
        if head.get("format") != FORMAT:
            raise IndexUnreadable(f"unknown index format {head.get('format')!r}")
        pos, parts = nl + 1, {}
        for name, size in head["sections"]:
            parts[name] = memoryview(data)[pos:pos + size]
            pos += size
        if pos != len(data):
            raise IndexUnreadable(f"index base is {len(data)} bytes, its header says {pos}")
        n = head["rows"]
        remap = _state_remap(head["states"])
        self.gen, self.offsets, self.t = head["gen"], dict(head["offsets"]), head["t"]
        self.apps = list(head["apps"])
        self._ids, self._ids_blob, self._new_ids = None, bytes(parts["ids"]), []
        self._id_off = _from_le("I", parts["idoff"])
        self._tagsets, self._tagsets_blob = None, bytes(parts["tagsets"])
        self.state = bytearray(parts["state"])
        if remap is not None:
            self.state = self.state.translate(remap)
        self.attempt = _from_le("H", parts["attempt"])
        self.app = _from_le("H", parts["app"])
        self.tagset = _from_le("I", parts["tagset"])
        self.created = _from_le("d", parts["created"])
        if not (len(self.state) == len(self.attempt) == len(self.app) == len(self.tagset)
                == len(self.created) == n):
            raise IndexUnreadable("index base columns disagree on the number of rows")
        self._row = None

    def apply_line(self, line: dict) -> None:
        """Apply one log line (a tick's changes) in place."""
        self.apps.extend(line.get("apps", ()))
        if line.get("tagsets"):
            self.tagsets.extend(t.encode() for t in line["tagsets"])
        new = line.get("new")
        if new:
            for job_id, st, att, app, tag, created in new:
                self._append_id(job_id)
                self.state.append(st)
                self.attempt.append(min(att, 65535))
                self.app.append(app)
                self.tagset.append(tag)
                self.created.append(created)
        for r, st, att, app, tag in line.get("set", ()):
            self.state[r] = st
            self.attempt[r] = min(att, 65535)
            self.app[r] = app
            self.tagset[r] = tag
        if "offsets" in line:
            self.offsets = dict(line["offsets"])
        self.t = line.get("t", self.t)

    # ---- changing rows (readers' overlay and the site) ------------------------------------
    def code_app(self, name: str) -> int:
        try:
            return self.apps.index(name)
        except ValueError:
            self.apps.append(name)
            return len(self.apps) - 1

    def code_tagset(self, tags: dict | None) -> int:
        key = tagset_key(tags)
        try:
            return self.tagsets.index(key)
        except ValueError:
            self.tagsets.append(key)
            return len(self.tagsets) - 1

    def put(self, job_id: str, state: str, attempt: int, rec: dict | None = None) -> int:
        """Set a job's state and attempt (and app and tags from ``rec``); a new row if the
        job has none (then ``rec`` is needed).  Returns the row."""
        r = self.find_rows([job_id]).get(job_id)
        if r is None:
            if rec is None:
                return -1
            r = len(self.state)
            self._append_id(job_id)
            self.state.append(CODE[state])
            self.attempt.append(min(attempt, 65535))
            self.app.append(self.code_app(rec.get("app") or ""))
            self.tagset.append(self.code_tagset(rec.get("tags")))
            self.created.append(float(rec.get("created_at") or 0.0))
            self._added(r, job_id)
            return r
        self.state[r] = CODE[state]
        self.attempt[r] = min(attempt, 65535)
        if rec is not None:
            self.app[r] = self.code_app(rec.get("app") or "")
            self.tagset[r] = self.code_tagset(rec.get("tags"))
        self._changed(r)
        return r

    def _changed(self, r: int) -> None:
        """Row ``r`` (an existing one) changed; the site's ``Keeper`` logs it."""

    def _added(self, r: int, job_id: str) -> None:
        """Row ``r`` is new."""

    def apply_events(self, events: Iterable[dict]) -> list[str]:
        """Apply launcher events (log order) to the rows; returns ids the table lacks.

        An event of an older attempt than the row's is a zombie's and changes nothing (as
        ``events.apply_event`` treats it)."""
        events = list(events)
        row = self.find_rows({ev.get("job") for ev in events if ev.get("job")})
        unknown = []
        for ev in events:
            job_id, to = ev.get("job"), ev.get("to")
            if job_id is None or to not in CODE:
                continue
            r = row.get(job_id)
            if r is None:
                unknown.append(job_id)
                continue
            att = ev.get("attempt", 1)
            if att < self.attempt[r]:
                continue
            self.state[r] = CODE[to]
            self.attempt[r] = min(att, 65535)
            self._changed(r)
        return unknown

    def refresh(self, layout: Layout, job_ids: Iterable[str], store=None) -> None:
        """Look jobs up where they really are and correct their rows (hints, and jobs the
        table does not know).  A job found nowhere is marked removed."""
        from .store import Store
        store = store or Store(layout)
        job_ids = list(job_ids)
        if not job_ids:
            return
        limbo = store.held_index()
        rows = self.find_rows(job_ids)
        for job_id in job_ids:
            loc = store.locate(job_id, limbo, drops=False)
            if loc is None or loc[0] == "created":
                if job_id in rows and loc is None:
                    self.put(job_id, REMOVED, self.attempt[rows[job_id]])
                continue
            rec = read_located(loc)
            if rec is None:
                continue
            where, state = loc[0], rec["state"]
            r = rows.get(job_id)
            if r is not None and DIR_OF[self.state[r]] == where == "running":
                state = STATES[self.state[r]]   # a record in running/ is not rewritten: the
                #                                 events say more than its state field
            self.put(job_id, state, rec.get("attempt", 1), rec)

    # ---- queries ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Jobs per fine state (removed ones left out)."""
        out = {}
        st = self.state
        for code, name in enumerate(STATES[:-1]):
            n = st.count(code)
            if n:
                out[name] = n
        return out

    def dir_counts(self) -> dict[str, int]:
        out = dict.fromkeys(INDEXED_DIRS, 0)
        for name, n in self.counts().items():
            d = S.STATE_DIR[name]
            out[d] = out.get(d, 0) + n
        return out

    def tagsets_matching(self, tags: dict[str, str]) -> set[int]:
        """Codes of the tag sets that contain every pair of ``tags``."""
        if not tags:
            return set(range(len(self.tagsets)))
        needles = [orjson.dumps({k: v})[1:-1] for k, v in tags.items()]
        out = set()
        for code, blob in enumerate(self.tagsets):
            if all(n in blob for n in needles):
                got = orjson.loads(blob)
                if all(got.get(k) == v for k, v in tags.items()):
                    out.add(code)
        return out

    def rows_matching(self, states: set[str] | None = None, tags: dict | None = None,
                      app: str | None = None) -> list[int]:
        """Rows whose state is in ``states`` (None: any but removed), whose tags contain
        ``tags`` and whose app is ``app``; in intake order.  Each condition is one pass
        over its column in C (``compress`` over a ``map`` of a set's ``__contains__``),
        the most selective first, then checks on the rows left."""
        codes = {CODE[s] for s in states if s in CODE} if states is not None else \
            set(range(len(STATES) - 1))
        codes.discard(CODE[REMOVED])
        if not codes:
            return []
        rows = None
        if tags:
            sets = self.tagsets_matching(tags)
            if not sets:
                return []
            rows = list(compress(range(len(self.state)), map(sets.__contains__, self.tagset)))
        if app is not None:
            try:
                a = self.apps.index(app)
            except ValueError:
                return []
            col = self.app
            rows = (list(compress(range(len(self.state)), map(a.__eq__, col))) if rows is None
                    else [r for r in rows if col[r] == a])
        if rows is None:
            if len(codes) == len(STATES) - 1 and CODE[REMOVED] not in self.state:
                return list(range(len(self.state)))
            return list(compress(range(len(self.state)), map(codes.__contains__, self.state)))
        if len(codes) == len(STATES) - 1:
            st, removed = self.state, CODE[REMOVED]
            return [r for r in rows if st[r] != removed]
        st = self.state
        return [r for r in rows if st[r] in codes]

    def count_matching(self, states=None, tags=None, app=None) -> dict[str, int]:
        """Jobs per fine state among those ``rows_matching`` would return."""
        st = self.state
        out: dict[str, int] = {}
        if tags is None and app is None:
            full = self.counts()
            return {k: v for k, v in full.items() if states is None or k in states}
        for r in self.rows_matching(states, tags, app):
            name = STATES[st[r]]
            out[name] = out.get(name, 0) + 1
        return out

    def tags_of(self, r: int) -> dict:
        return orjson.loads(self.tagsets[self.tagset[r]])

    def describe(self, r: int) -> dict:
        """The indexed fields of row ``r`` (what ``verify`` compares)."""
        return {"state": STATES[self.state[r]], "attempt": self.attempt[r],
                "app": self.apps[self.app[r]], "tags": self.tags_of(r)}


def _state_remap(names: list[str]) -> bytes | None:
    """A translation table from a base's state codes to ours, or None if they agree."""
    if list(names) == list(STATES):
        return None
    table = bytearray(range(256))
    for code, name in enumerate(names):
        table[code] = CODE.get(name, CODE[REMOVED])
    return bytes(table)


def read_located(loc) -> dict | None:
    """The record at a ``Store.locate`` result with its fine state (or None if it moved)."""
    from .store import read_job
    where, path = loc
    try:
        rec = read_job(path, where if where != "limbo" else "ready")
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    rec = dict(rec)
    rec["state"] = S.fine_state(where, rec.get("state"))
    return rec


# ---- reading ------------------------------------------------------------------------------------
def _current_generation(layout: Layout) -> int:
    d = index_dir(layout)
    try:
        return int(fsio.read_bytes(d / "CURRENT", retry=False).strip())
    except FileNotFoundError:
        raise IndexUnreadable(f"{d}/CURRENT is missing (the site builds the index when it "
                              "starts)") from None
    except ValueError:
        raise IndexUnreadable(f"{d}/CURRENT is not a generation number") from None


def _read_generation(layout: Layout) -> tuple[Table, list[dict]]:
    """Generation G's table and log lines (FileNotFoundError: G was just replaced).

    # race: both files are opened before either is read, so a generation switch after the
    # opens cannot pair G's base with a missing or newer log: deleting a name does not
    # take the file from a process that has it open."""
    d = index_dir(layout)
    gen = _current_generation(layout)
    with open(d / f"{gen}.base", "rb") as base, open(d / f"{gen}.log", "rb") as log:
        table = Table()
        try:
            table.load_base(base.read())
        except (ValueError, KeyError, TypeError) as e:
            raise IndexUnreadable(f"{d}/{gen}.base cannot be read: {e}") from None
        lines, _ = fsio.parse_lines(log.read())
    return table, [line for line, _ in lines]


def load(layout: Layout, overlay: bool = True) -> Table:
    """The index as readers see it (``IndexUnreadable`` if there is none).

    With ``overlay``, the launcher events past the index's offsets and the hints the site
    has not consumed are applied, so the counts are right while the site is stopped."""
    for _ in range(10):
        try:
            table, lines = _read_generation(layout)
        except FileNotFoundError:
            continue                 # race: a generation switch; read CURRENT again
        for line in lines:
            table.apply_line(line)
        if overlay:
            _overlay(layout, table)
        return table
    raise IndexUnreadable(f"{index_dir(layout)} kept changing while it was read")


def _overlay(layout: Layout, table: Table) -> None:
    from .events import event_logs
    from . import hints
    events = []
    for launcher, path in event_logs(layout).items():
        evs, _ = fsio.read_lines_from(path, table.offsets.get(launcher, 0))
        events.extend(evs)
    if events:
        table.apply_events(events)
    pending = hints.pending(layout)
    if pending:
        ids = []
        for p in pending:
            try:
                ids.extend(fsio.read_json(p, retry=False).get("jobs", ()))
            except (FileNotFoundError, ValueError, AttributeError):
                continue
        table.refresh(layout, dict.fromkeys(ids))


def available(layout: Layout) -> bool:
    return (index_dir(layout) / "CURRENT").exists()


# ---- the full scan: the truth the index is a cache of ------------------------------------------
def scan(layout: Layout) -> Iterator[dict]:
    """Every taken-in job's record as readers see it (``spool.query.select`` without the
    index, ``created/`` left out)."""
    from .query import Filter, select
    yield from select(layout, Filter(dirs=INDEXED_DIRS), use_index=False)


def verify(layout: Layout, table: Table | None = None) -> list[str]:
    """Differences between the index and a full scan of the records, one line each."""
    table = table or load(layout)
    seen, out = set(), []
    row = table.row
    for rec in scan(layout):
        job_id = rec["id"]
        seen.add(job_id)
        want = {"state": rec["state"], "attempt": rec.get("attempt", 1),
                "app": rec.get("app") or "", "tags": dict(rec.get("tags") or {})}
        r = row.get(job_id)
        if r is None:
            out.append(f"job {job_id}: in jobs/{rec['_dir']}/ but not in the index")
            continue
        got = table.describe(r)
        for k in want:
            if got[k] != want[k]:
                out.append(f"job {job_id}: index says {k}={got[k]!r}, the record {want[k]!r}")
    for job_id, r in row.items():
        if job_id not in seen and table.state[r] != CODE[REMOVED]:
            out.append(f"job {job_id}: index says {STATES[table.state[r]]}, but it is in "
                       "no state directory")
    return out


# ---- the site's side ----------------------------------------------------------------------------
class Keeper(Table):
    """The site's index: the table in memory, its log, generations, and the checks."""

    def __init__(self, layout: Layout, compact_min: int = COMPACT_MIN):
        super().__init__()
        self.layout = layout
        self.compact_min = compact_min
        self.dir = index_dir(layout)
        self._app_code: dict[str, int] = {}
        self._tag_code: dict[bytes, int] = {}
        self.dirty: set[int] = set()
        self.flushed_rows = 0
        self.flushed_apps = 0
        self.flushed_tagsets = 0
        self.log_entries = 0
        self.log = None
        self.suspects: dict[int, tuple[int, int, int]] = {}   # row -> (seen, index, attempt)
        self.bucket_rows: list[list[int]] | None = None
        self.next_bucket = 0
        self.running_seen: dict[str, str] = {}
        self.consumed: list[Path] = []

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, layout: Layout, compact_min: int = COMPACT_MIN) -> "Keeper":
        """The site's index at start: the current generation, or a rebuilt one."""
        keeper = cls(layout, compact_min)
        try:
            table, lines = _read_generation(layout)
        except (IndexUnreadable, FileNotFoundError, OSError):
            keeper.rebuild()
            return keeper
        keeper._adopt(table)
        for line in lines:
            keeper.apply_line(line)
            keeper.log_entries += max(1, len(line.get("new", ())) + len(line.get("set", ())))
        keeper._index_codes()
        keeper.flushed_rows = len(keeper)
        keeper.flushed_apps, keeper.flushed_tagsets = len(keeper.apps), len(keeper.tagsets)
        keeper.log = fsio.AppendLog(keeper.dir / f"{keeper.gen}.log")
        keeper._drop_other_generations()
        return keeper

    def _adopt(self, table: Table) -> None:
        self.__dict__.update({k: v for k, v in table.__dict__.items()
                              if k in ("gen", "_ids", "_ids_blob", "_id_off", "_new_ids",
                                       "state", "attempt", "app", "tagset", "created", "apps",
                                       "_tagsets", "_tagsets_blob", "offsets", "t")})
        self._row = None
        self.ids                          # the site keeps every id decoded (it maps ids)

    def _index_codes(self) -> None:
        self._app_code = {name: i for i, name in enumerate(self.apps)}
        self._tag_code = {key: i for i, key in enumerate(self.tagsets)}

    def code_app(self, name: str) -> int:
        code = self._app_code.get(name)
        if code is None:
            code = self._app_code[name] = len(self.apps)
            self.apps.append(name)
        return code

    def code_tagset(self, tags: dict | None) -> int:
        key = tagset_key(tags)
        code = self._tag_code.get(key)
        if code is None:
            code = self._tag_code[key] = len(self.tagsets)
            self.tagsets.append(key)
        return code

    def _changed(self, r: int) -> None:
        if r < self.flushed_rows:
            self.dirty.add(r)

    def _added(self, r: int, job_id: str) -> None:
        if self.bucket_rows is not None:
            self.bucket_rows[int(shard(job_id), 16)].append(r)

    # ---- the site's moves ---------------------------------------------------------------------
    def add(self, rec: dict, state: str) -> None:
        """A job the site has just published (taken in, or found unindexed)."""
        self.put(rec["id"], state, rec.get("attempt", 1), rec)

    def moved(self, job_id: str, state: str, attempt: int) -> None:
        """A job the site has just moved (its row exists unless the index lost it)."""
        if self.put(job_id, state, attempt) < 0:
            self.refresh(self.layout, [job_id])

    def note_events(self, events: list[dict]) -> None:
        """Launcher events the site has consumed (log order)."""
        unknown = self.apply_events(events)
        if unknown:
            self.refresh(self.layout, dict.fromkeys(unknown))

    def take_hints(self) -> int:
        """Consume the hint files: look their jobs up, fix their rows, delete the files
        (after the tick's line is written: see ``flush``)."""
        from . import hints
        files = hints.pending(self.layout)
        if not files:
            return 0
        ids: list[str] = []
        for p in files:
            try:
                data = fsio.read_json(p, retry=False)
                ids.extend(j for j in data.get("jobs", ()) if isinstance(j, str))
            except (FileNotFoundError, ValueError, AttributeError):
                pass
        self.refresh(self.layout, dict.fromkeys(ids))
        self.consumed.extend(files)
        return len(ids)

    # ---- writing ------------------------------------------------------------------------------
    def flush(self, offsets: dict[str, int]) -> None:
        """Append the tick's changes as one line (with the launcher offsets they reach)."""
        n = len(self)
        changed = bool(self.dirty) or n > self.flushed_rows or offsets != self.offsets
        if changed:
            ids, st, att, app, tag, cr = (self.ids, self.state, self.attempt, self.app,
                                          self.tagset, self.created)
            line = {"t": time.time()}
            if len(self.apps) > self.flushed_apps:
                line["apps"] = self.apps[self.flushed_apps:]
            if len(self.tagsets) > self.flushed_tagsets:
                line["tagsets"] = [t.decode() for t in self.tagsets[self.flushed_tagsets:]]
            if n > self.flushed_rows:
                line["new"] = [[ids[r], st[r], att[r], app[r], tag[r], cr[r]]
                               for r in range(self.flushed_rows, n)]
            if self.dirty:
                line["set"] = [[r, st[r], att[r], app[r], tag[r]] for r in sorted(self.dirty)]
            if offsets != self.offsets:
                line["offsets"] = dict(offsets)
                self.offsets = dict(offsets)
            self.log.append(line)
            self.log.flush(durable=False)
            self.log_entries += max(1, len(self.dirty) + n - self.flushed_rows)   # a line is one at least
            self.flushed_rows, self.dirty = n, set()
            self.flushed_apps, self.flushed_tagsets = len(self.apps), len(self.tagsets)
            self.t = line["t"]
        for p in self.consumed:         # their changes are in the line just written
            fsio.unlink_quiet(p)
        self.consumed = []
        if self.log_entries >= max(self.compact_min, len(self) // 4):
            self.compact()

    def compact(self) -> None:
        """Start a new generation: the table (removed rows dropped) as its base."""
        keep = [r for r, s in enumerate(self.state) if s != CODE[REMOVED]]
        if len(keep) != len(self):
            self._renumber(keep)
        self._write_generation(self.gen + 1)

    def _renumber(self, keep: list[int]) -> None:
        ids = self.ids
        self._ids = [ids[r] for r in keep]
        self.state = bytearray(self.state[r] for r in keep)
        for name in ("attempt", "app", "tagset", "created"):
            col = getattr(self, name)
            setattr(self, name, array(col.typecode, (col[r] for r in keep)))
        self._row = None
        self.suspects.clear()
        if self.bucket_rows is not None:
            self.bucket_rows = None
            self._bucket()

    def _write_generation(self, gen: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        encoded = [j.encode() for j in self.ids]
        idoff = array("I", [0])
        for e in encoded:
            idoff.append(idoff[-1] + len(e) + 1)      # each id ends with its newline
        sections = {
            "ids": b"\n".join(encoded),
            "idoff": _le(idoff),
            "state": bytes(self.state),
            "attempt": _le(self.attempt), "app": _le(self.app), "tagset": _le(self.tagset),
            "created": _le(self.created),
            "tagsets": b"\n".join(self.tagsets),
        }
        head = {"format": FORMAT, "gen": gen, "rows": len(self), "states": list(STATES),
                "apps": self.apps, "offsets": self.offsets, "t": time.time(),
                "sections": [[name, len(sections[name])] for name in SECTIONS]}
        data = b"".join([orjson.dumps(head), b"\n", *(sections[n] for n in SECTIONS)])
        fsio.write_atomic(self.dir / f"{gen}.base", data, durable=False)
        fsio.write_atomic(self.dir / f"{gen}.log", b"", durable=False)
        fsio.write_atomic(self.dir / "CURRENT", f"{gen}\n".encode(), durable=False)
        old = self.gen
        self.gen = gen
        if self.log is not None:
            self.log.close()
        self.log = fsio.AppendLog(self.dir / f"{gen}.log")
        self.log_entries = 0
        self.flushed_rows, self.dirty = len(self), set()
        self.flushed_apps, self.flushed_tagsets = len(self.apps), len(self.tagsets)
        if old != gen:
            self._drop_other_generations()

    def _drop_other_generations(self) -> None:
        for name in os.listdir(self.dir):
            stem, _, ext = name.partition(".")
            if ext in ("base", "log") and stem.isdigit() and int(stem) != self.gen:
                fsio.unlink_quiet(self.dir / name)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    # ---- rebuilding from the records -----------------------------------------------------------
    def rebuild(self) -> int:
        """Build the table afresh from a full scan of the records; returns its rows."""
        from .events import merge_state
        fresh = Keeper(self.layout, self.compact_min)
        offsets = merge_state(self.layout)[0]
        for rec in scan(self.layout):
            fresh.put(rec["id"], rec["state"], rec.get("attempt", 1), rec)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items()
                              if k in ("_ids", "_ids_blob", "_id_off", "_new_ids", "_row",
                                       "state", "attempt", "app", "tagset", "created", "apps",
                                       "_tagsets", "_app_code", "_tag_code")})
        self.offsets = dict(offsets)
        self.suspects.clear()
        self.bucket_rows = None
        # A new generation number, never a reused one: a reader may still hold the old one.
        try:
            current = _current_generation(self.layout)
        except IndexUnreadable:
            current = 0
        self._write_generation(max(self.gen, current) + 1)
        return len(self)

    # ---- checking rows against the directories --------------------------------------------------
    def _bucket(self) -> None:
        rows: list[list[int]] = [[] for _ in range(SHARDS)]
        for r, job_id in enumerate(self.ids):
            rows[int(shard(job_id), 16)].append(r)
        self.bucket_rows = rows

    def reconcile(self, buckets: Iterable[int] | None = None) -> int:
        """Check rows against the directory listings (all buckets, or ``buckets``); returns
        how many rows were corrected."""
        if self.bucket_rows is None:
            self._bucket()
        lay = self.layout
        if buckets is None or 0 in buckets:
            # running/ is listed once per pass: a job that moved since is found in the
            # bucket listings or, if it moved out of them too, looked up (``locate``).
            self.running_seen = {name[:-5]: "running" for launcher in fsio.list_dirs(lay.running)
                                 for name in fsio.list_names(lay.running / launcher)}
        fixed = 0
        for b in (range(SHARDS) if buckets is None else buckets):
            seen: dict[str, str] = {}
            for d in S.SHARDED_DIRS:
                for name in fsio.list_names(lay.state_dir(d) / f"{b:02x}"):
                    seen[name[:-5]] = d
            fixed += self._check_bucket(b, seen, self.running_seen)
        return fixed

    def reconcile_step(self) -> int:
        """The next bucket of the background check."""
        b = self.next_bucket
        self.next_bucket = (b + 1) % SHARDS
        return self.reconcile([b])

    def _check_bucket(self, b: int, seen: dict[str, str], running: dict[str, str]) -> int:
        row, st = self.row, self.state
        fixed = 0
        look: list[str] = []
        bucket = self.bucket_rows[b]
        for r in bucket:
            job_id = self.ids[r]
            where = seen.pop(job_id, None) or running.get(job_id)
            have = DIR_OF[st[r]]
            if where != have:
                look.append(job_id)
            else:
                self.suspects.pop(r, None)
        look.extend(j for j in seen if j not in row)       # in a directory, not in the index
        for job_id in look:
            fixed += self._settle_difference(job_id)
        return fixed

    def _settle_difference(self, job_id: str) -> int:
        """A job whose listing disagrees with its row: look it up and decide (see the
        module docstring)."""
        from .store import Store
        store = Store(self.layout)
        loc = store.locate(job_id, drops=False)    # (a new drop of the same id: not this job)
        r = self.row.get(job_id)
        if loc is None:
            if r is None or self.state[r] == CODE[REMOVED]:
                return 0
            return self._correct_later(r, CODE[REMOVED], self.attempt[r], job_id, None)
        if loc[0] == "created":
            return 0
        rec = read_located(loc)
        if rec is None:
            return 0
        att = rec.get("attempt", 1)
        if r is None:
            self.add(rec, rec["state"])
            return 1
        have = self.state[r]
        if DIR_OF[have] == loc[0]:
            self.suspects.pop(r, None)
            return 0
        if att > self.attempt[r] or (att == self.attempt[r]
                                     and _ORDER[loc[0]] > _ORDER.get(DIR_OF[have], -1)):
            self.put(job_id, rec["state"], att, rec)            # the index was behind
            self.suspects.pop(r, None)
            return 1
        if att < self.attempt[r]:
            return 0                                            # the index is ahead
        return self._correct_later(r, CODE[rec["state"]], att, job_id, rec)

    def _correct_later(self, r: int, seen: int, att: int, job_id: str, rec) -> int:
        """The directory is behind the row within one attempt: correct it only if the
        previous look saw the same (a verdict logged before its rename is seen once)."""
        prev = self.suspects.get(r)
        now = (seen, self.state[r], self.attempt[r])
        if prev == now:
            del self.suspects[r]
            self.put(job_id, STATES[seen], att, rec)
            return 1
        self.suspects[r] = now
        return 0


_ORDER = {"created": 0, "waiting": 1, "stagein": 2, "ready": 3, "running": 4, "stageout": 5,
          "done": 6, "failed": 6}
