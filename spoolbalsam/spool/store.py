"""The claim protocol: every state change of a job is one rename.

Rules (see ``layout`` for the tree)
-----------------------------------
1. A job has exactly one visible name at a time.  Moving it is ``rename(old, new)``;
   a racing mover gets ENOENT and loses.  Nothing ever copies a record.
2. Whoever holds a job's only name may create its next one.  A *plain move* renames the
   record unchanged (claim, finish, return of an unstarted claim).  A *move with a rewrite*
   first renames the record into the mover's private ``limbo/`` (the commit point: it now
   owns the job exclusively), then publishes the new record with ``write_atomic`` at the
   destination, then drops the limbo copy (a batch keeps it as a spare, ``fsio.Spares``).
   Because the old name is gone before the new one appears, a rewrite can never resurrect
   a job someone else moved meanwhile.
3. Nobody writes into ``running/L/``: launcher L renames in (claim) and out (finish); the
   site renames out only to revoke.  A slow launcher whose job was revoked finds its final
   rename fails and records a zombie event instead of a verdict.
4. After a crash, a file left in a limbo is finished by ``finish_limbo``: if the job has a
   visible name anywhere, the move completed and the limbo copy is dropped; otherwise the
   limbo copy is published where its name says it was going.
5. A record outside ``created/`` is read with ``read_job``: a file the site published as
   dropped (``record.published_as_dropped``) is completed from its mtime on every read.
6. A *bulk drop* (``created/NAME.jsonl``, one job per line) holds many jobs that have no
   file of their own until the site takes them in.  ``locate`` finds them there (and in
   ``site/intake/`` while the site publishes them) through ``held_index``, as CREATED; a
   job of a bulk drop the site has already published is found where it went first.

Claim modes
-----------
``rename`` (default): the rename from ``ready/`` is the arbitration; correct on ext4, xfs,
Lustre, GPFS, NFS (with the NFSv3 retransmit check below).  ``token``: for DAOS dfuse in
relaxed mode, where two racing renames can both "succeed", a claimer must first create
``jobs/claims/BB/ID`` with O_CREAT|O_EXCL (exclusive on every filesystem); only the token
holder renames.  The holder removes the token when the job leaves ``running/``.
"""
from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path
from typing import Iterator

from . import bell, fsio
from .ids import shard
from .record import published_as_dropped
from .layout import Layout
from .states import SHARDED_DIRS

LIMBO_SEP = "@"   # limbo file name: ID@DESTDIR.json
BULK = ".jsonl"   # a bulk drop: one job per line
_BULK_IDS: dict[str, tuple[tuple, list[str]]] = {}   # path -> (stat key, ids), see bulk_ids


def bulk_ids(path: Path) -> list[str]:
    """The ids given in a bulk drop's lines (lines without a valid id are left out: nobody
    can ask for them by id).  Cached by the file's identity: a drop is written whole and
    never changed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _BULK_IDS.pop(str(path), None)
        return []
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _BULK_IDS.get(str(path))
    if cached and cached[0] == key:
        return cached[1]
    from .ids import valid_id
    ids = []
    try:
        data = fsio.read_bytes(path, retry=False)
    except FileNotFoundError:
        return []
    for line in data.splitlines():
        try:
            job_id = fsio.loads(line).get("id") if line.strip() else None
        except (ValueError, AttributeError):
            continue
        if valid_id(job_id):
            ids.append(job_id)
    if len(_BULK_IDS) > 256:
        _BULK_IDS.clear()
    _BULK_IDS[str(path)] = (key, ids)
    return ids


def bulk_record(path: Path, job_id: str) -> dict | None:
    """The line of bulk drop ``path`` that gives ``job_id``, as dropped (or None)."""
    try:
        data = fsio.read_bytes(path, retry=False)
    except FileNotFoundError:
        return None
    needle = job_id.encode()
    for line in data.splitlines():
        if needle in line:
            try:
                raw = fsio.loads(line)
            except ValueError:
                continue
            if isinstance(raw, dict) and raw.get("id") == job_id:
                return raw
    return None


def read_job(path: Path, directory: str, retry: bool = True) -> dict:
    """The record at ``path``, which lies in state directory ``directory``, as it stands: a
    record the site published as dropped gets its system fields (``published_as_dropped``,
    dated by the file's mtime).  Every reader of records outside ``created/`` uses this."""
    return read_job_stat(path, directory, retry)[0]


def read_job_stat(path: Path, directory: str, retry: bool = True) -> tuple[dict, os.stat_result]:
    """``read_job`` and the stat of the file it read (see ``same_file``).

    # race: the site recycles the files of records it replaced (``fsio.Spares``), so a
    # reader that opened ``X.json`` just before a merge replaced it may read a later record
    # of another job through its open file.  Every record is named after its id, so such a
    # read is recognised and reported as what it is: X has moved on from this file.
    """
    rec, st = fsio.read_json_stat(path, retry)
    if directory != "created" and isinstance(rec, dict):
        name = os.path.basename(path)
        if rec.get("id") != name[: name.find(".json")].partition(LIMBO_SEP)[0]:
            raise FileNotFoundError(errno.ENOENT, "the file now holds another record", str(path))
        rec = published_as_dropped(rec, st.st_mtime_ns / 1e9)
    return rec, st


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """True if two stats show one file with unchanged content: the same inode, size and
    modification time.  Sound here because nobody writes into a visible record (a rewrite
    is a new or recycled file, written before it is published, and a recycled one rests
    ``fsio.Spares.rest`` -- far longer than one tick of the file clock -- before reuse), so
    content never changes under an unchanged mtime."""
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_dev, b.st_size,
                                                             b.st_mtime_ns)


class Store:
    def __init__(self, layout: Layout, claim_mode: str = "rename", see_intake: bool = True):
        """``see_intake``: ``locate`` also finds a drop the site is taking in (held in
        ``site/intake/``); the site itself, which knows what it holds, turns it off."""
        if claim_mode not in ("rename", "token"):
            raise ValueError(f"claim_mode must be 'rename' or 'token', got {claim_mode!r}")
        self.layout = layout
        self.claim_mode = claim_mode
        self.see_intake = see_intake
        self.bell = layout.jobs / bell.NAME
        self._ready = f"{layout.state_dir('ready')}/"

    # ---- finding jobs -------------------------------------------------------------------
    def locate(self, job_id: str, limbo: dict | None = None,
               drops: bool = True) -> tuple[str, Path] | None:
        """(directory, path) of the job's record, or None.  O(states + launchers).

        A job held in a limbo (mid-move, or left there by a crash) still exists, in the
        directory it is moving to; a job of a bulk drop is in ``created``.  Bulk callers pass
        one ``held_index()`` for many lookups; otherwise the limbos and bulk drops are looked
        at only when the job is found nowhere else.  ``drops=False``: only a job the site
        has taken in (a drop of the same id still in ``created/`` would hide it otherwise).

        # race: the job may move while we look.  The directories are looked at in the
        # order jobs move forward through them (created, the site's intake, waiting, stagein,
        # ready, running/L, stageout, done, failed), so a forward move between two looks is
        # seen by the later one: a parent renamed from running/L/ into done/ is not missed.
        # Jobs move backwards only into ready/ (a retry, a revoke, an unstarted claim
        # returned) and, on ``spool job retry``, stagein/; ready/ is looked at once more at
        # the end, and the states a limbo leads to once more after the limbos.
        """
        lay, exists = self.layout, os.path.exists
        p = lay.job_file("created", job_id)
        if drops and exists(p):
            return "created", Path(p)
        if drops and self.see_intake:
            # A drop moves created/ -> site/intake/ -> waiting|stagein|ready|failed: looked
            # at here, in that order, it is not missed while the site validates and
            # publishes it.
            tail = f"~{job_id}.json"
            for name in fsio.list_names(lay.site_dir / "intake"):
                if name.endswith(tail):
                    return "created", lay.site_dir / "intake" / name
        for state in ("waiting", "stagein", "ready"):
            p = lay.job_file(state, job_id)
            if exists(p):
                return state, Path(p)
        for launcher in fsio.list_dirs(lay.running):
            p = lay.job_file("running", job_id, launcher)
            if exists(p):
                return "running", Path(p)
        for state in ("stageout", "done", "failed", "ready"):
            p = lay.job_file(state, job_id)
            if exists(p):
                return state, Path(p)
        if limbo is None:
            limbo = self.held_index()
        held = limbo.get(job_id)
        if held is None:
            # race: a job that went through a limbo while we looked (running/L/ -> limbo
            # before our look into running/L/, limbo -> done/ after our look into done/ but
            # before the limbo listing) is in its destination now: look there once more.
            for state in ("stageout", "done", "failed", "ready"):
                p = lay.job_file(state, job_id)
                if exists(p):
                    return state, Path(p)
        return held if drops or held is None or held[0] != "created" else None

    def where(self, job_id: str, limbo: dict | None = None) -> str | None:
        """The state directory a job is in (``locate``'s first half), or None."""
        loc = self.locate(job_id, limbo)
        return loc[0] if loc else None

    def limbo_dirs(self, launchers: bool = True) -> list[Path]:
        site = self.layout.site_dir
        dirs = [site / "limbo"]
        if launchers:
            dirs += [self.layout.launchers / n / "limbo"
                     for n in fsio.list_dirs(self.layout.launchers)]
        for extra in fsio.list_dirs(site):
            if extra.startswith("limbo-"):
                dirs.append(site / extra)
                dirs += [site / extra / sub for sub in fsio.list_dirs(site / extra)]
        return dirs

    def limbo_index(self, launchers: bool = True) -> dict[str, tuple[str, Path]]:
        """Every job held in a limbo: id -> (dest, path).  The limbos are the site's
        (``site/limbo``), each launcher's (``launchers/L/limbo``; ``launchers=False`` leaves
        them out: one listing per launcher) and those of CLI and API processes
        (``site/limbo-*``, with one level of per-process subdirectories)."""
        out = {}
        dirs = self.limbo_dirs(launchers)
        for d in dirs:
            for name in fsio.list_names(d):
                job_id, _, key = name[: -len(".json")].partition(LIMBO_SEP)
                out[job_id] = (key.split(".", 1)[0] or "ready", d / name)
        return out

    def bulk_files(self) -> list[Path]:
        """Bulk drops not yet taken in (``created/``) and those the site is taking in
        (``site/intake/``)."""
        lay = self.layout
        hold = lay.site_dir / "intake"
        return ([lay.created / n for n in sorted(fsio.list_names(lay.created, suffix=BULK))]
                + [hold / n for n in sorted(fsio.list_names(hold, suffix=BULK))])

    def held_index(self, launchers: bool = True) -> dict[str, tuple[str, Path]]:
        """Every job without a visible record of its own: in a limbo (``limbo_index``), or
        in a bulk drop (as ``("created", the drop)``).  What ``locate`` falls back on."""
        out = {}
        for path in self.bulk_files():
            for job_id in bulk_ids(path):
                out[job_id] = ("created", path)
        out.update(self.limbo_index(launchers))
        return out

    def exists(self, job_id: str) -> bool:
        return self.locate(job_id) is not None

    def visible(self, job_id: str) -> bool:
        """True if the job has a visible name (limbos not counted)."""
        return self.locate(job_id, {}) is not None

    def own_name(self, where: str, path: Path, job_id: str) -> bool:
        """True if ``path`` is the job's own visible name in ``where``: not a copy held in
        a limbo, a bulk drop or the site's intake, which only their holder may move."""
        if where == "running":
            return path.parent.parent == self.layout.running and path.name == f"{job_id}.json"
        return path == self.layout.job_path(where, job_id)

    def locate_own(self, job_id: str, wait: float = 5.0) -> tuple[str, Path] | None:
        """``locate`` for a process about to move the job: its own visible name, waiting
        up to ``wait`` seconds while someone else holds it mid-move; None if it is gone.

        # race: the site's merges hold done/ and failed/ records in site/limbo for a moment
        # all the time.  Renaming that held copy away would leave the job with two names
        # once the site publishes the new record, so a mover only ever renames a job's own
        # name.  A job still held when ``wait`` runs out is reported where it is held
        # (the caller refuses: it is busy)."""
        deadline = time.monotonic() + wait
        while True:
            loc = self.locate(job_id)
            if loc is None or self.own_name(loc[0], loc[1], job_id):
                return loc
            if time.monotonic() >= deadline:
                return loc
            time.sleep(0.01)

    def buckets(self, state: str) -> list[str]:
        """The listing units of a state directory: its buckets, launchers, or itself ("")."""
        base = self.layout.state_dir(state)
        if state in SHARDED_DIRS or state == "running":
            return sorted(fsio.list_dirs(base))
        return [""]

    def names_in(self, state: str, bucket: str) -> list[Path]:
        base = self.layout.state_dir(state) / bucket if bucket else self.layout.state_dir(state)
        return [base / n for n in fsio.list_names(base)]

    def iter_dir(self, state: str) -> Iterator[tuple[str, Path]]:
        """(state, path) of every visible record in a state directory (names only, no stat)."""
        base = self.layout.state_dir(state)
        if state in SHARDED_DIRS:
            for bucket in sorted(fsio.list_dirs(base)):
                for name in fsio.list_names(base / bucket):
                    yield state, base / bucket / name
        elif state == "running":
            for launcher in sorted(fsio.list_dirs(base)):
                for name in fsio.list_names(base / launcher):
                    yield state, base / launcher / name
        else:
            for name in fsio.list_names(base):
                yield state, base / name

    # ---- moving ---------------------------------------------------------------------------
    def ring(self) -> None:
        """Ring the ready bell: jobs were put into ready/ (see ``bell``)."""
        bell.ring(self.bell)

    def _into_ready(self, dst: Path) -> bool:
        return str(dst).startswith(self._ready)

    def move(self, src: Path, dst: Path) -> bool:
        """Plain move.  False if someone else moved ``src`` first (we lost the race)."""
        try:
            fsio.rename(src, dst)
        except FileNotFoundError:
            return False
        if self._into_ready(dst):
            self.ring()
        return True

    def move_rewrite(self, src: Path, dst: Path, record: dict, limbo: Path,
                     batch: fsio.Batch | None = None) -> bool:
        """Move ``src`` to ``dst`` publishing ``record`` there.  False if we lost the race.

        # race: a launcher may claim (rename) ``src`` while we prepare ``record``.  Our
        # first rename is the commit point: if the launcher won, ours fails with ENOENT and
        # we publish nothing; if we won, its rename fails and it moves on.  The new name is
        # created only after the old one is gone, so no job ever has two live names.
        """
        job_id = record["id"]
        held = limbo / f"{job_id}{LIMBO_SEP}{self._dest_key(dst)}.json"
        try:
            fsio.rename(src, held)
        except FileNotFoundError:
            if not limbo.exists():
                limbo.mkdir(parents=True, exist_ok=True)
                return self.move_rewrite(src, dst, record, limbo, batch)
            return False
        try:
            if batch is None:
                fsio.write_json_atomic(dst, record)
            else:
                batch.add_json(dst, record)
        except OSError:
            # The new record could not be written (a full disk): we still hold the job's
            # only name, so the old record goes back where it was and the caller sees the
            # error.  Without this the job would wait in our limbo for a restart.
            fsio.rename(held, src)
            raise
        if batch is None:
            os.unlink(held)
            if self._into_ready(dst):
                self.ring()
        else:
            batch.hold(dst, held, src)
            if self._into_ready(dst):
                batch.after_commit(self.ring, once="bell")
        return True

    def _dest_key(self, dst: Path) -> str:
        rel = dst.relative_to(self.layout.jobs).parts
        return rel[0] if rel[0] != "running" else "running." + rel[1]

    def dest_path(self, key: str, job_id: str) -> Path:
        if key.startswith("running."):
            return self.layout.job_path("running", job_id, key.split(".", 1)[1])
        return self.layout.job_path(key, job_id)

    def finish_limbo(self, limbo: Path, events_log: Path | None = None) -> list[str]:
        """Complete the half-done moves in one limbo after a crash; returns the job ids.

        A limbo file holds the record as it was *before* its rewrite.  Every rewrite is
        described by events its mover synced to its own log before the move, so the record
        published now is the held one with those events applied: a revoke still reaches
        ready/ with attempt + 1 and its RUN_TIMEOUT.
        """
        from .events import apply_event
        names = fsio.list_names(limbo)
        if not names:
            return []
        by_job: dict[str, list[dict]] = {}
        if events_log is not None:
            events, _ = fsio.read_lines_from(events_log, 0)
            for ev in events:
                if "to" in ev and "job" in ev:
                    by_job.setdefault(ev["job"], []).append(ev)
        done, rang = [], False
        for name in names:
            job_id, _, key = name[: -len(".json")].partition(LIMBO_SEP)
            held = limbo / name
            if not self.visible(job_id):
                try:
                    rec = read_job(held, "limbo")
                except (FileNotFoundError, ValueError):
                    continue
                for ev in by_job.get(job_id, ()):
                    rec = apply_event(rec, ev)
                fsio.write_json_atomic(self.dest_path(key or "ready", job_id), rec)
                rang = rang or (key or "ready") == "ready"
            fsio.unlink_quiet(held)
            done.append(job_id)
        if rang:
            self.ring()
        return done

    # ---- claiming -------------------------------------------------------------------------
    def claim(self, src: Path, launcher: str) -> Path | None:
        """Claim the ready record at ``src`` for ``launcher``; its new path, or None."""
        job_id = src.name[: -len(".json")]
        dst = self.layout.running / launcher / src.name
        if self.claim_mode == "token" and not self._take_token(job_id, launcher):
            return None
        try:
            fsio.rename(src, dst)
            return dst
        except FileNotFoundError:
            # race: NFSv3 may report ENOENT to the winner of a retransmitted rename, so a
            # missing source is a loss only if the job is not already in our own directory.
            if dst.exists():
                return dst
            if not dst.parent.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                return self.claim(src, launcher)
            self.drop_token(job_id)
            return None

    def _token_path(self, job_id: str) -> Path:
        return self.layout.jobs / "claims" / shard(job_id) / job_id

    def _take_token(self, job_id: str, launcher: str) -> bool:
        path = self._token_path(job_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return self._take_token(job_id, launcher)
        except OSError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        os.write(fd, launcher.encode())
        os.close(fd)
        return True

    def drop_token(self, job_id: str) -> None:
        if self.claim_mode == "token":
            fsio.unlink_quiet(self._token_path(job_id))

    def ready_buckets(self) -> list[str]:
        buckets = fsio.list_dirs(self.layout.state_dir("ready"))
        random.shuffle(buckets)
        return buckets

    def ready_dir(self, bucket: str) -> Path:
        return self.layout.state_dir("ready") / bucket

    def ready_names(self, bucket: str) -> list[Path]:
        base = self.ready_dir(bucket)
        return [base / n for n in fsio.list_names(base)]
