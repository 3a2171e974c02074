"""spoolbalsam's Python API: the names Balsam scripts import.

``from spoolbalsam.api import ApplicationDefinition, Job, BatchJob, Site`` is the only line
a Balsam script changes.  Each class keeps Balsam's methods and errors (``DoesNotExist``,
``MultipleObjectsReturned``); the site they act on is found as Balsam does (the ``site`` /
``site_name`` given, ``$SPOOL_SITE``, the current directory, the registry of known sites —
see ``api.site``).  Everything reads and writes the site directory through the spool's own
primitives: no server, no database.

Balsam's ``balsam.analytics`` is ``spoolbalsam.api.analytics`` (``throughput_report``,
``utilization_report``, ``available_nodes``), fed by ``EventLog.objects.filter(...)`` and
``BatchJob.objects.filter(...)`` as in Balsam.

Names are imported on first use, so a Python app's child process (which imports only
``ApplicationDefinition``) does not pay for the job, query and batch modules.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "ApplicationDefinition": ".app", "AppDefinitionError": ".app",
    "BatchJob": ".batch", "BatchJobWarning": ".batch",
    "EventLog": ".events",
    "Job": ".job", "JobBusy": ".job", "JobFailed": ".job",
    "Site": ".site",
    "SubmitError": "..submit",
}
__all__ = sorted(_WHERE) + ["ValidationError"]


def __getattr__(name: str):
    if name == "ValidationError":
        name = "SubmitError"
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'spoolbalsam.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
