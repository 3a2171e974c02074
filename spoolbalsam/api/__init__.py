"""spoolbalsam's Python API: the names Balsam scripts import.

``from spoolbalsam.api import ApplicationDefinition, Job, BatchJob, Site`` is the only line
a Balsam script changes.  Each class keeps Balsam's methods and errors (``DoesNotExist``,
``MultipleObjectsReturned``); the site they act on is found as Balsam does (the ``site`` /
``site_name`` given, ``$SPOOL_SITE``, the current directory, the registry of known sites —
see ``api.site``).  Everything reads and writes the site directory through the spool's own
primitives: no server, no database.
"""
from ..submit import SubmitError
from .app import AppDefinitionError, ApplicationDefinition
from .batch import BatchJob
from .events import EventLog
from .job import Job, JobBusy, JobFailed
from .site import Site

ValidationError = SubmitError

__all__ = ["ApplicationDefinition", "AppDefinitionError", "BatchJob", "EventLog", "Job",
           "JobBusy", "JobFailed", "Site", "SubmitError", "ValidationError"]
