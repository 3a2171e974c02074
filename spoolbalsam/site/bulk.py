"""Bulk drops: many jobs in one file, taken in whole or rejected whole.

::

    jobs/created/NAME.jsonl          one JSON job per line (blank lines allowed), written whole
                                     by its submitter (dot-temp, fsync, rename) like any drop
    site/intake/MS.SEQ~NAME.jsonl    the drop while the site takes it in

A bulk drop carries what many single drops would (``spool job create --file``, and the
Python API's ``bulk_create`` beyond ``submit.BULK_MIN`` jobs, write them): one file and one
fsync for thousands of jobs.  The site takes one bulk drop at a time into its intake
directory (so it never reads a name in ``created/`` that a submitter may be replacing),
checks every line as it checks a single drop (``intake.check_job``: parents may be any job
of the site or of the same file, in any order), and if one line is bad it rejects the whole
file: the file goes to ``jobs/rejected/`` byte for byte, and its one-line reason names the
line and the field.  Otherwise it publishes the jobs, parents first, under grouped syncs of
``INTAKE_BATCH`` jobs, over as many ticks as that takes, and deletes the file after the
last batch.  Until a job is published, readers find it in the drop (``Store.held_index``).

Crash safety: a job's record carries the digest of its line (and of the line's number),
and a line without an id gets an id made from that digest and the file's mtime.  A drop
taken in again after a crash therefore finds the jobs it already published (``check_job``
recognises its own digest) and publishes only the rest.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..spool import fsio
from ..spool import states as S
from ..spool.ids import new_id
from ..spool.record import InvalidJob, normalize
from ..spool.store import BULK
from .intake import check_job, parents_first

log = logging.getLogger("spoolbalsam.site")
MAX_LINES = 100_000
MAX_BYTES = 256 << 20


@dataclass
class Taking:
    """The bulk drop being taken in: its jobs in publishing order, and how far it got."""
    held: Path
    name: str
    jobs: list[tuple[dict, str]]          # (record, directory), parents first
    again: list[str]                      # published before a crash: only looked up
    done: int = 0
    published: dict[str, str] = field(default_factory=dict)


class BulkIntake:
    """The site's side of bulk drops (``Site`` calls ``step`` from its intake)."""

    def __init__(self, site):
        self.site = site
        self.taking: Taking | None = None

    # ---- taking a drop in -----------------------------------------------------------------
    def step(self, limit: int) -> int:
        """Publish up to ``limit`` jobs of the current bulk drop (taking the next one in, and
        checking it whole, first if there is none); returns how many were published, or -1
        if there was no bulk drop to work on."""
        if self.taking is None:
            if not self._has_work():
                return -1
            self.taking = self._take()
            if self.taking is None:
                return 0                  # rejected, or gone: the next one at the next step
        t = self.taking
        chunk = t.jobs[t.done:t.done + limit]
        if chunk:
            self._publish(t, chunk)
            t.done += len(chunk)
        if t.done >= len(t.jobs):
            if t.again:
                self.site.index.refresh(self.site.layout, t.again, self.site.store)
            fsio.unlink_quiet(t.held)
            log.info("bulk drop %s: %d job(s) taken in", t.name, len(t.jobs) + len(t.again))
            self.taking = None
        return len(chunk)

    def _has_work(self) -> bool:
        lay = self.site.layout
        return bool(fsio.list_names(lay.created, suffix=BULK)
                    or fsio.list_names(lay.site_dir / "intake", suffix=BULK))

    def _next_held(self) -> Path | None:
        """A bulk drop left in ``site/intake/`` by a crash, else the oldest in ``created/``
        renamed into it."""
        lay = self.site.layout
        hold = lay.site_dir / "intake"
        held = sorted(fsio.list_names(hold, suffix=BULK))
        if held:
            return hold / held[0]
        for name in sorted(fsio.list_names(lay.created, suffix=BULK)):
            dst = hold / f"{int(time.time() * 1000):013d}.00000~{name}"
            if fsio.rename_quiet(lay.created / name, dst):
                return dst
        return None

    def _take(self) -> Taking | None:
        held = self._next_held()
        if held is None:
            return None
        name = held.name.split("~", 1)[1]
        try:
            jobs, again = self._check(held, name)
        except FileNotFoundError:
            return None
        except InvalidJob as e:
            self.site._reject(held, name, str(e))
            return None
        return Taking(held, name, jobs, again)

    def _check(self, held: Path, name: str) -> tuple[list[tuple[dict, str]], list[str]]:
        """Every line checked as a single drop would be: (jobs to publish, ids published
        before a crash).  ``InvalidJob`` for the first bad line, naming it."""
        source = f"jobs/created/{name}"
        st = os.lstat(held)              # a link is refused, never followed (as single drops)
        if stat.S_ISLNK(st.st_mode):
            raise InvalidJob(source, None, "is a symbolic link; the site never follows links: "
                             "drop the file itself")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidJob(source, None, "not a regular file; a bulk drop is one file with "
                             "one JSON job per line")
        if st.st_size > MAX_BYTES:
            raise InvalidJob(source, None, f"{st.st_size} bytes; a bulk drop takes at most "
                             f"{MAX_BYTES >> 20} MiB: split it into several files")
        try:
            data = fsio.read_bytes(held)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise InvalidJob(source, None, f"cannot be read: {e.strerror}") from None
        lines = data.splitlines()
        if sum(1 for ln in lines if ln.strip()) > MAX_LINES:
            raise InvalidJob(source, None, f"more than {MAX_LINES} jobs; split it into files "
                             f"of at most {MAX_LINES} lines")
        recs = []
        ms = st.st_mtime_ns // 1_000_000
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{source} line {n}"
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise InvalidJob(where, None, f"not valid JSON: {e}") from None
            digest = hashlib.sha1(b"%d:" % n + line).digest()
            rec = normalize(raw, where, default_id=new_id(ms, digest))
            rec["intake_digest"] = digest.hex()[:16]
            rec["_line"] = n
            recs.append(rec)
        if not recs:
            raise InvalidJob(source, None, "holds no job; give one JSON job per line")
        ordered, stuck = parents_first(recs)
        if stuck:
            raise InvalidJob(f"{source} line {stuck[0]['_line']}", "parent_ids",
                             f"job {stuck[0]['id']} is in (or behind) a cycle of parents "
                             "within this file")
        site = self.site
        held_ids = {k: v for k, v in site.store.held_index(launchers=not site.index_checked)
                    .items() if v[1] != held}
        published: dict[str, str] = {}
        jobs, again = [], []
        apps = site.apps.pinned()
        for rec in ordered:
            n = rec.pop("_line")
            job_id = rec["id"]
            out, where = check_job(rec, f"{source} line {n}", apps, site,
                                   site.machine, published, held_ids, intake=True,
                                   locations=site.staging.locations)
            published[job_id] = where
            if out is None:
                again.append(job_id)
            else:
                jobs.append((out, where))
        return jobs, again

    # ---- publishing -------------------------------------------------------------------------
    def _publish(self, t: Taking, chunk: list[tuple[dict, str]]) -> None:
        site = self.site
        lay = site.layout
        batch = fsio.Batch(lay.jobs, site.spares)
        try:
            for rec, where in chunk:
                if where in ("ready", "stagein"):
                    site._make_workdir(rec)
                batch.add_json(lay.job_path(where, rec["id"]), rec)
            batch.commit()
        except OSError:
            batch.abort()      # a full disk: the chunk is published again next tick
            raise
        ready = False
        for rec, where in chunk:
            site.index.add(rec, S.fine_state(where, rec["state"]))
            site.staging.noticed(rec["id"], where)
            t.published[rec["id"]] = where
            ready = ready or where == "ready"
            if where == "waiting":
                for p in rec["parent_ids"]:
                    site.children.setdefault(p, set()).add(rec["id"])
        if ready:
            site.store.ring()
        # race: as for single drops, a parent may have finished since the file was checked
        for rec, where in chunk:
            if where == "waiting":
                site._settle_waiting(rec["id"])
