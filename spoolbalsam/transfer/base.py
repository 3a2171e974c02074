"""The transfer backend interface: submit a batch, poll tasks, cancel -- never blocking.

The site's loop (``spoolbalsam.site.transfers``) is the only caller.  It must never wait on
a copy or on a web service, so every backend does its work on threads of its own and the
three calls only hand over or collect:

* ``submit(task_id, location, direction, moves)`` queues one *task*: a batch of ``Move``\\ s
  (at most ``transfer_batch_size``) that all go the same way between the site and one
  location.  ``task_id`` is chosen by the site (``new_task_id``) and is the key of every
  later report.
* ``poll()`` returns the ``TaskStatus`` of every task whose state changed since the last
  call: ``active`` (with ``external_id`` once the service has one), ``inactive`` (paused by
  the service), ``done`` or ``error``.  A finished task carries one ``Outcome`` per move
  when the backend knows them one by one (local), or only a task-wide error (Globus).
* ``cancel(task_id)`` asks for a task to stop; it still ends with a status (``error``).
* ``resume(task_id, external_id)``: after a site restart, follow a task recorded as
  active.  False if the task died with the previous process (a local copy): the site then
  submits its items again, and the backend's temp-then-rename makes that safe.

Errors are classified for the site: ``PERMANENT`` (retrying cannot help: a missing source;
the job fails naming the item and path), ``TRANSIENT`` (retried with backoff, a bounded
number of times) and ``BLOCKED`` (the service needs the user, e.g. Globus consent: retried
slowly, without limit, with a hint in the item's ``error``).

Backends call ``notify()`` (the site's wake-up) whenever a status is ready, so the site
reacts within milliseconds instead of at its next poll.
"""
from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

PERMANENT, TRANSIENT, BLOCKED = "permanent", "transient", "blocked"
TASK_STATES = ("active", "inactive", "done", "error")


@dataclass(frozen=True)
class Move:
    """One item of a task: ``src`` to ``dst`` (both as the backend sees them)."""
    key: str                   # the site's name for the item: JOB_ID/SLOT
    src: str
    dst: str
    recursive: bool = False


@dataclass(frozen=True)
class Outcome:
    """How one move of a finished task ended."""
    key: str
    ok: bool
    error: str | None = None
    kind: str = TRANSIENT       # of a failure: PERMANENT | TRANSIENT | BLOCKED


@dataclass
class TaskStatus:
    task_id: str
    state: str                                   # one of TASK_STATES
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None                     # task-wide (a failure without outcomes)
    kind: str = TRANSIENT
    external_id: str | None = None               # the service's own id (Globus task id)


class BackendError(Exception):
    """A failure with its classification (``kind``)."""

    def __init__(self, message: str, kind: str = TRANSIENT):
        super().__init__(message)
        self.kind = kind


def new_task_id(scheme: str) -> str:
    return f"{scheme}-{secrets.token_hex(8)}"


class Backend(ABC):
    """See the module docstring.  ``period``: seconds between the site's polls (0: every
    tick); a backend that talks to a web service sets it from ``service_period``."""

    scheme: str = ""
    period: float = 0.0

    def __init__(self) -> None:
        self.notify: Callable[[], None] = lambda: None

    @abstractmethod
    def submit(self, task_id: str, location, direction: str, moves: list[Move]) -> None: ...

    @abstractmethod
    def poll(self) -> list[TaskStatus]: ...

    @abstractmethod
    def cancel(self, task_id: str) -> None: ...

    def resume(self, task_id: str, external_id: str | None) -> bool:
        return False

    def busy(self) -> int:
        """Tasks submitted and not yet reported finished."""
        return 0

    def close(self) -> None:
        pass
