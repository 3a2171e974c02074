"""Retry policy: where a job goes after an error or a timeout (pure).

A job's app sets ``retry: {errors: N, timeouts: M}`` (defaults 0 and 5) and the job's own
``retry`` overrides it.  The counts so far live in the record (``retries``), so every
attempt, on any launcher in any allocation, sees the same history.  A run that ends with an
error or a timeout is retried (``RESTART_READY``, ``attempt + 1``) while its count stays
within the policy, and ends ``FAILED`` once it is spent.
"""
from __future__ import annotations

from . import states as S

DEFAULT = {"errors": 0, "timeouts": 5}


def policy_for(app, rec: dict) -> dict:
    policy = dict(app.retry) if app is not None else dict(DEFAULT)
    policy.update(rec.get("retry") or {})
    return policy


def after_failure(rec: dict, kind: str, policy: dict, msg: str) -> tuple[str, str, dict, str]:
    """(directory, state, record fields, message) for a run that ended in ``kind``.

    ``kind`` is ``"errors"`` or ``"timeouts"``.
    """
    retries = dict(rec.get("retries") or {"errors": 0, "timeouts": 0})
    retries[kind] = retries.get(kind, 0) + 1
    allowed = policy.get(kind, 0)
    if retries[kind] > allowed:
        spent = f"{msg}; retry policy spent ({kind}: {allowed} allowed)"
        return "failed", S.FAILED, {"retries": retries, "error": spent}, spent
    return "ready", S.RESTART_READY, {"retries": retries,
                                      "attempt": rec.get("attempt", 1) + 1}, msg
