"""The job record: Balsam's job fields plus the system's, and their validation.

A record is one JSON object.  Fields a submitter may give (with Balsam's defaults)::

    app (or app_id)  workdir  parameters{}  tags{}  num_nodes=1  ranks_per_node=1
    threads_per_rank=1  threads_per_core=1  gpus_per_rank=0  node_packing_count=1
    launch_params{}  wall_time_min=0  parent_ids[]  data{}  retry{errors, timeouts}  id
    transfers{slot: "ALIAS:/path"}    (Balsam's transfer items; absent unless given)

Fields the system keeps: ``state attempt return_code launcher batch_job host created_at
state_timestamp started_at ended_at error retries{errors,timeouts} placement history[]``,
and ``transfer_items[]`` for a job with transfers (``spoolbalsam.transfer.items``).
``history`` holds the last ``HISTORY_MAX`` transitions ``{t, from, to, by, msg}``; the full
story is in the per-writer event logs.

``normalize(raw, source)`` checks everything that can be checked without the site's apps
and other jobs and returns a complete record; every failure is an ``InvalidJob`` naming the
file and the field, in one line.

A record *published as dropped*: when a dropped file is already a job's canonical user view
(``user_view``: its id and every user field, defaults filled in -- what ``spool job create``
and the Python API write), the site publishes that very file by rename instead of writing a
new one, after setting its mtime to the moment of publication.  Such a record has no system
fields; ``published_as_dropped`` adds the ones the site would have written, dated by that
mtime, and every reader of records in a state directory applies it (``store.read_job``).
"""
from __future__ import annotations

import math
import posixpath
import time

from ..transfer.items import check_job_transfers
from .ids import new_id, valid_id

HISTORY_MAX = 16
MAX_DEPTH = 64          # lists and objects a job may nest (the site writes records nested
                        # a few levels deeper, and orjson writes at most 254 levels)
MAX_APP_NAME = 200      # bytes: apps/NAME.yml must be a legal file name


class InvalidJob(ValueError):
    """One line: ``SOURCE: field NAME: what is wrong``."""

    def __init__(self, source: str, field: str | None, message: str):
        self.source, self.field, self.message = source, field, message
        where = f"field {field!r}: " if field else ""
        super().__init__(f"{source}: {where}{message}")


def _int(lo: int):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f"must be an integer >= {lo}, got {v!r}")
        if v < lo:
            raise ValueError(f"must be >= {lo}, got {v}")
        return v
    return check


def _number(lo: float):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"must be a number >= {lo}, got {v!r}")
        if v < lo:
            raise ValueError(f"must be >= {lo}, got {v}")
        return int(v) if isinstance(v, float) and v.is_integer() else v
    return check


def _str_map(v):
    if not isinstance(v, dict):
        raise ValueError(f"must be an object of strings, got {type(v).__name__}")
    out = {}
    for k, val in v.items():
        if isinstance(val, (dict, list)) or val is None:
            raise ValueError(f"value of {k!r} must be a string or number, got {val!r}")
        if _has_nul(k) or _has_nul(val):
            raise ValueError(f"{k!r} contains a NUL byte")
        out[str(k)] = val if isinstance(val, str) else _scalar_str(val)
    return out


def _scalar_str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _params(v):
    if not isinstance(v, dict):
        raise ValueError(f"must be an object, got {type(v).__name__}")
    for k, val in v.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise ValueError(f"parameter name {k!r} is not an identifier")
        if _has_nul(val):
            raise ValueError(f"value of {k!r} contains a NUL byte, which no command can carry")
    return dict(v)


def _has_nul(v) -> bool:
    if isinstance(v, str):
        return "\0" in v
    if isinstance(v, dict):
        return any(_has_nul(k) or _has_nul(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_nul(x) for x in v)
    return False


def _parents(v):
    if not isinstance(v, list) or not all(valid_id(p) for p in v):
        raise ValueError(f"must be a list of job ids, got {v!r}")
    return list(dict.fromkeys(v))


def _retry(v):
    if not isinstance(v, dict) or set(v) - {"errors", "timeouts"}:
        raise ValueError("must be {errors: N, timeouts: M}")
    return {k: _int(0)(n) for k, n in v.items()}


def normalize_workdir(v) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("is required: a path relative to the site's data/ directory")
    if "\0" in v or v.startswith(("/", "~")):
        raise ValueError(f"{v!r} must be relative to data/ (no leading / or ~)")
    norm = posixpath.normpath(v.strip())
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"{v!r} leaves data/; give a path inside it, like demo/run1")
    return norm


def _any_json(v):
    return v


def app_name_problem(v) -> str | None:
    """Why ``v`` cannot name an app (``apps/NAME.yml``), or None."""
    if not isinstance(v, str) or not v:
        return "must be an app name"
    if "/" in v or "\0" in v or v.startswith(".") or len(v.encode()) > MAX_APP_NAME:
        return (f"{v[:60]!r}{'...' if len(v) > 60 else ''} is not an app name (apps/NAME.yml: "
                f"no '/', no leading dot, at most {MAX_APP_NAME} bytes)")
    return None


def _app(v):
    problem = app_name_problem(v)
    if problem:
        raise ValueError(problem)
    return v


def depth(obj) -> int:
    """How deeply ``obj`` nests lists and objects (a scalar: 0), without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        stack.extend((x, d + 1) for x in v)
    return deepest


USER_FIELDS = {
    "app": (None, _app),
    "workdir": (None, normalize_workdir),
    "parameters": (dict, _params),
    "tags": (dict, _str_map),
    "num_nodes": (1, _int(1)),
    "ranks_per_node": (1, _int(1)),
    "threads_per_rank": (1, _int(1)),
    "threads_per_core": (1, _int(1)),
    "gpus_per_rank": (0, _number(0)),
    "node_packing_count": (1, _int(1)),
    "launch_params": (dict, _str_map),
    "wall_time_min": (0, _number(0)),
    "parent_ids": (list, _parents),
    "data": (dict, _any_json),
    "retry": (None, _retry),
    "transfers": (None, check_job_transfers),
}
OPTIONAL_FIELDS = ("retry", "transfers")      # absent unless given
ALIASES = {"app_id": "app"}
IGNORED = {"site_name", "site_id"}      # accepted for Balsam compatibility
SYSTEM_FIELDS = ("id", "state", "attempt", "return_code", "launcher", "batch_job", "host",
                 "created_at", "state_timestamp", "started_at", "ended_at", "error",
                 "retries", "placement", "affinity", "history", "result", "exception",
                 "transfer_items")


def _bad(msg: str):
    raise ValueError(msg)


def normalize(raw: object, source: str, *, default_id: str | None = None) -> dict:
    """A complete record from user input, or ``InvalidJob`` naming the field."""
    if not isinstance(raw, dict):
        raise InvalidJob(source, None, f"a job must be a JSON object, got {type(raw).__name__}")
    nesting = depth(raw)
    if nesting > MAX_DEPTH:
        raise InvalidJob(source, None, f"nests lists and objects {nesting} levels deep; a job "
                         f"may nest at most {MAX_DEPTH}")
    rec: dict = {}
    for key, value in raw.items():
        key = ALIASES.get(key, key)
        if key in IGNORED or key in ("id",):
            continue
        if key not in USER_FIELDS:
            if key in SYSTEM_FIELDS:
                raise InvalidJob(source, key, "is set by spoolbalsam, not by the submitter")
            raise InvalidJob(source, key, f"unknown field; known: {', '.join(USER_FIELDS)}")
        try:
            rec[key] = USER_FIELDS[key][1](value)
        except ValueError as e:
            raise InvalidJob(source, key, str(e)) from None
    for key in ("app", "workdir"):
        if key not in rec:
            raise InvalidJob(source, key, "is required")
    for key, (default, _) in USER_FIELDS.items():
        if key not in rec and key not in OPTIONAL_FIELDS:
            rec[key] = default() if callable(default) else default
    job_id = raw.get("id", default_id)
    if job_id is None:
        job_id = new_id()
    if not valid_id(job_id):
        raise InvalidJob(source, "id", f"{job_id!r} is not a valid id (letters, digits, _ . -; "
                         "at most 96 characters, not starting with a dot)")
    rec["id"] = job_id
    rec.update(_fresh_system_fields(time.time()))
    return rec


def _fresh_system_fields(now: float) -> dict:
    return dict(state="CREATED", attempt=1, return_code=None, launcher=None, batch_job=None,
                host=None, created_at=now, state_timestamp=now, started_at=None,
                ended_at=None, error=None, retries={"errors": 0, "timeouts": 0},
                placement=None, history=[])


def user_view(rec: dict) -> dict:
    """What a submitter drops for ``rec``: its id and its user fields."""
    return {"id": rec["id"], **{k: rec[k] for k in USER_FIELDS if k in rec}}


def published_as_dropped(rec: dict, mtime: float) -> dict:
    """``rec`` with the system fields and READY step the site would have written, if it is
    a record the site published as dropped (it has no ``state``); else ``rec`` itself."""
    if "state" in rec:
        return rec
    return transition({**rec, **_fresh_system_fields(mtime)}, "READY", "site", t=mtime)


def transition(rec: dict, to: str, by: str, msg: str | None = None, t: float | None = None,
               **fields) -> dict:
    """A copy of ``rec`` moved to state ``to``, with the transition in its bounded history."""
    now = time.time() if t is None else t
    new = dict(rec)
    new.update(fields)
    entry = {"t": now, "from": rec.get("state"), "to": to, "by": by}
    if msg:
        entry["msg"] = msg
    new["history"] = (list(rec.get("history") or []) + [entry])[-HISTORY_MAX:]
    new["state"] = to
    new["state_timestamp"] = now
    return new
