"""Submitting jobs from Python or the CLI: check now, then drop files into jobs/created/.

The files are exactly what any other language would drop (the user's fields and an id), so
the site's intake treats every submitter alike.  ``submit_jobs`` checks each job the way the
site will (``intake.check_job``), so mistakes are reported to the submitter at once.  Only
then are they written:

* up to ``BULK_MIN`` jobs, one file per job, in chunks under one grouped sync each
  (``fsio.Batch``).  The chunks grow from ``FIRST_CHUNK`` to ``CHUNK`` jobs: the site takes
  in, and launchers start, the first jobs within milliseconds while the rest are still
  being written, and a published job's record is the dropped file itself;
* more than that, as bulk drops (``site.bulk``): files of one job per line, growing from
  ``CHUNK`` to ``BULK_LINES`` lines, each written whole and fsynced.  100,000 jobs cost a
  few dozen files and syncs instead of 100,000 files.

Either way every job is durable when ``submit_jobs`` returns.
"""
from __future__ import annotations

import orjson

from . import settings as settings_mod
from .apps import AppRegistry
from .site.intake import check_job
from .spool import fsio
from .spool.ids import new_id
from .spool.layout import Layout
from .spool.record import InvalidJob, normalize, user_view
from .spool.store import Store


FIRST_CHUNK = 32   # jobs in the first commit; each next one doubles ...
CHUNK = 500        # ... up to this many (as the site's INTAKE_BATCH)
BULK_MIN = 2000    # more jobs than this are written as bulk drops ...
BULK_LINES = 10000  # ... growing from CHUNK to this many jobs per file


def chunks(n: int, first: int | None = None, most: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each commit for ``n`` jobs: ``first`` (FIRST_CHUNK), doubling up to
    ``most`` (CHUNK)."""
    first = FIRST_CHUNK if first is None else first
    most = CHUNK if most is None else most
    out, start, size = [], 0, min(first, most)
    while start < n:
        out.append((start, min(n, start + size)))
        start, size = start + size, min(most, 2 * size)
    return out


class SubmitError(ValueError):
    pass


def submit_jobs(layout: Layout, raws: list, source: str = "submit", machine=None,
                names: list[str] | None = None) -> list[dict]:
    """Validate every job, then publish them all in ``jobs/created/``; records returned.

    Nothing is written unless every job is valid; the error names the job by ``names[i]``
    if given (``jobs.jsonl line 7``), else by its index.  If writing fails (a full disk),
    the chunks already committed stay submitted and the error says how many; a job is never
    half-written.
    """
    apps = AppRegistry(layout.apps).pinned()
    store = Store(layout)
    try:
        conf = settings_mod.load(layout.settings)
        if machine is None:
            machine = settings_mod.machine_from_settings(conf)
        locations = settings_mod.transfer_locations(conf)
    except settings_mod.SettingsError as e:
        raise SubmitError(str(e)) from None
    published: dict[str, str] = {}
    limbo = store.held_index()
    recs = []
    for i, raw in enumerate(raws):
        src = names[i] if names else source if len(raws) == 1 else f"{source} [job {i}]"
        try:
            rec = normalize(raw, src)
            minted = "id" not in raw                     # normalize made it just now
            _, where = check_job(rec, src, apps, store, machine, published, limbo,
                                 minted=minted, locations=locations)
        except InvalidJob as e:
            raise SubmitError(str(e)) from None
        published[rec["id"]] = where
        recs.append(rec)
    if len(recs) > BULK_MIN:
        _write_bulk(layout, recs)
    else:
        _write_singles(layout, recs)
    return recs


def _failed(layout: Layout, e: OSError, written: int, total: int) -> SubmitError:
    if written:
        return SubmitError(f"{layout.created}: writing the jobs failed after {written} of "
                           f"{total}: {e.strerror or e}; jobs 0-{written - 1} are submitted, "
                           "the rest are not")
    return SubmitError(f"{layout.created}: writing the jobs failed: {e.strerror or e}; none "
                       "was submitted")


def _write_singles(layout: Layout, recs: list[dict]) -> None:
    written = 0
    for start, stop in chunks(len(recs)):
        batch = fsio.Batch(layout.jobs)
        try:
            for rec in recs[start:stop]:
                batch.add_json(layout.created / f"{rec['id']}.json", user_view(rec))
            batch.commit()
        except OSError as e:
            batch.abort()
            raise _failed(layout, e, written, len(recs)) from None
        written = stop


def _write_bulk(layout: Layout, recs: list[dict]) -> None:
    """Bulk drops named ``STAMP.NNNNNN.jsonl``, so the site takes them in in order (a parent
    in an earlier file than its child)."""
    stamp = new_id()
    dumps = orjson.dumps
    written = 0
    for k, (start, stop) in enumerate(chunks(len(recs), CHUNK, BULK_LINES)):
        data = b"".join([dumps(user_view(rec)) + b"\n" for rec in recs[start:stop]])
        try:
            fsio.write_atomic(layout.created / f"{stamp}.{k:06d}.jsonl", data)
        except OSError as e:
            raise _failed(layout, e, written, len(recs)) from None
        written = stop
