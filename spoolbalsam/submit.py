"""Submitting jobs from Python or the CLI: check now, then drop files into jobs/created/.

The files are exactly what any other language would drop (the user's fields and an id), so
the site's intake treats every submitter alike.  ``submit_jobs`` checks each job the way the
site will (``intake.check_job``), so mistakes are reported to the submitter at once, and
writes them all under one grouped sync (``fsio.Batch``): 100,000 jobs cost two syncs.
"""
from __future__ import annotations

from . import settings as settings_mod
from .apps import AppRegistry
from .intake import check_job
from .spool import fsio
from .spool.layout import Layout
from .spool.record import InvalidJob, normalize, user_view
from .spool.store import Store


class SubmitError(ValueError):
    pass


def submit_jobs(layout: Layout, raws: list, source: str = "submit", machine=None) -> list[dict]:
    """Validate every job, then publish them all in ``jobs/created/``; records returned.

    Nothing is written unless every job is valid (the error names the job's index).
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
            _, where = check_job(rec, src, apps, store, machine, published, limbo)
        except InvalidJob as e:
            raise SubmitError(str(e)) from None
        published[rec["id"]] = where
        recs.append(rec)
    batch = fsio.Batch(layout.jobs)
    for rec in recs:
        batch.add_json(layout.created / f"{rec['id']}.json", user_view(rec))
    batch.commit()
    return recs
