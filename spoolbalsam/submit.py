"""Submitting jobs from Python or the CLI: check now, then drop files into jobs/created/.

The files are exactly what any other language would drop (the user's fields and an id), so
the site's intake treats every submitter alike.  ``submit_jobs`` checks each job the way the
site will (``intake.check_job``), so mistakes are reported to the submitter at once.  Only
then are they written, in chunks under one grouped sync each (``fsio.Batch``).  The chunks
grow from ``FIRST_CHUNK`` to ``CHUNK`` jobs: the site takes in, and launchers start, the
first jobs within milliseconds while the rest are still being written, and 100,000 jobs
cost about 400 syncs, not 200,000.
"""
from __future__ import annotations

from . import settings as settings_mod
from .apps import AppRegistry
from .site.intake import check_job
from .spool import fsio
from .spool.layout import Layout
from .spool.record import InvalidJob, normalize, user_view
from .spool.store import Store


FIRST_CHUNK = 32   # jobs in the first commit; each next one doubles ...
CHUNK = 500        # ... up to this many (as the site's INTAKE_BATCH)


def chunks(n: int) -> list[tuple[int, int]]:
    """[start, stop) of each commit for ``n`` jobs: FIRST_CHUNK, doubling up to CHUNK."""
    out, start, size = [], 0, min(FIRST_CHUNK, CHUNK)
    while start < n:
        out.append((start, min(n, start + size)))
        start, size = start + size, min(CHUNK, 2 * size)
    return out


class SubmitError(ValueError):
    pass


def submit_jobs(layout: Layout, raws: list, source: str = "submit", machine=None) -> list[dict]:
    """Validate every job, then publish them all in ``jobs/created/``; records returned.

    Nothing is written unless every job is valid (the error names the job's index).  If
    writing fails (a full disk), the chunks already committed stay submitted and the
    error says how many; a job is never half-written.
    """
    apps = AppRegistry(layout.apps)
    store = Store(layout)
    if machine is None:
        try:
            machine = settings_mod.machine_from_settings(settings_mod.load(layout.settings))
        except settings_mod.SettingsError as e:
            raise SubmitError(str(e)) from None
    published: dict[str, str] = {}
    limbo = store.limbo_index()
    recs = []
    for i, raw in enumerate(raws):
        src = source if len(raws) == 1 else f"{source} [job {i}]"
        try:
            rec = normalize(raw, src)
            minted = "id" not in raw                     # normalize made it just now
            _, where = check_job(rec, src, apps, store, machine, published, limbo,
                                 minted=minted)
        except InvalidJob as e:
            raise SubmitError(str(e)) from None
        published[rec["id"]] = where
        recs.append(rec)
    written = 0
    for start, stop in chunks(len(recs)):
        batch = fsio.Batch(layout.jobs)
        try:
            for rec in recs[start:stop]:
                batch.add_json(layout.created / f"{rec['id']}.json", user_view(rec))
            batch.commit()
        except OSError as e:
            batch.abort()
            raise SubmitError(f"{layout.created}: writing job {start + len(batch.pending)} of "
                              f"{len(recs)} failed: {e.strerror or e}; jobs 0-{written - 1} are "
                              f"submitted, the rest are not" if written else
                              f"{layout.created}: writing the jobs failed: {e.strerror or e}; "
                              "none was submitted") from None
        written = stop
    return recs
