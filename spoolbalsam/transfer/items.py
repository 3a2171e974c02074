"""Transfer slots, locations and items: Balsam's transfer fields, checked and resolved.

Pure functions only (no I/O): the CLI, the Python API and the site's intake all check with
them, so a mistake is reported at submit time and again, identically, at intake.

An app declares *slots* (``apps/NAME.yml``, or ``ApplicationDefinition.transfers``)::

    transfers:
      input:  {required: true, direction: in,  local_path: input.dat, recursive: false,
               description: the input deck}
      result: {direction: out, local_path: results/}        # required: false by default

``local_path`` is relative to the job's workdir and may not leave it: the destination of a
stage-in, the source of a stage-out.  ``.`` keeps the remote file's name (stage-in of a
file) or means the workdir itself (a recursive item).

A site names its *locations* in settings.yml (``transfers.transfer_locations``)::

    home:  file:///home/me/campaign            # this host's filesystems: the local backend
    flare: file:///lus/flare/projects/P?method=link
    alcf:  globus://9d6d994a-6d04-11e5-ba46-22000b92c6ec        # a Globus collection

A ``file:`` location's path, if given, confines the job paths that may name it; its
``method`` (``copy``, ``link`` or ``rsync``) overrides ``transfers.local_method``.  A
``globus://`` location's optional path confines the same way.

A job fills slots (``transfers`` in the job file, ``--stage-data`` on the CLI)::

    "transfers": {"input": "home:/home/me/campaign/in/7.dat"}

and the site's intake resolves them into the record's ``transfer_items`` (``resolve``),
one per filled slot, each::

    {name, direction, location, remote, local, recursive,
     source, destination,                  # what moves where, for people reading the record
     state, task_id, attempts, error}

``state`` is Balsam's: ``pending`` (to be submitted), ``active`` (a backend task runs it),
``inactive`` (its task is paused by the service), ``done``, ``error`` (given up: the job
failed, ``error`` says why), and ``awaiting_job`` for a stage-out item until the job has run.
"""
from __future__ import annotations

import posixpath
import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

IN, OUT = "in", "out"
SLOT_KEYS = ("required", "direction", "local_path", "description", "recursive")
METHODS = ("copy", "link", "rsync")
SCHEMES = ("file", "globus")

PENDING, ACTIVE, INACTIVE, DONE, ERROR, AWAITING = (
    "pending", "active", "inactive", "done", "error", "awaiting_job")
ITEM_STATES = (PENDING, ACTIVE, INACTIVE, DONE, ERROR, AWAITING)

_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SLOT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


# ---- slots (the app's side) -----------------------------------------------------------------
def check_local_path(value, direction: str) -> str:
    """``local_path`` normalised; ValueError if it is absolute or leaves the workdir."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"local_path must be a path relative to the job's workdir, got {value!r}")
    if value.startswith(("/", "~")):
        raise ValueError(f"local_path {value!r} must be relative to the job's workdir "
                         "(no leading / or ~)")
    norm = posixpath.normpath(value.strip())
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"local_path {value!r} leaves the job's workdir; give a path inside "
                         "it, like input.dat or inputs/")
    return norm


def check_slots(raw) -> dict[str, dict]:
    """An app's ``transfers`` mapping with defaults filled in; ValueError naming the slot."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"must be a mapping of slot name -> {{direction, local_path, ...}}, "
                         f"got {type(raw).__name__}")
    out = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not _SLOT.match(name):
            raise ValueError(f"slot name {name!r} is not a name (letters, digits, _ . -)")
        if not isinstance(spec, dict):
            raise ValueError(f"slot {name}: give a mapping with {', '.join(SLOT_KEYS)}")
        unknown = sorted(set(spec) - set(SLOT_KEYS))
        if unknown:
            raise ValueError(f"slot {name}: unknown key {unknown[0]!r}; known: "
                             f"{', '.join(SLOT_KEYS)}")
        direction = spec.get("direction")
        if direction not in (IN, OUT):
            raise ValueError(f"slot {name}: direction must be 'in' or 'out', got {direction!r}")
        for key in ("required", "recursive"):
            if not isinstance(spec.get(key, False), bool):
                raise ValueError(f"slot {name}: {key} must be true or false, "
                                 f"got {spec[key]!r}")
        desc = spec.get("description", "")
        if desc is None:
            desc = ""
        if not isinstance(desc, str):
            raise ValueError(f"slot {name}: description must be a string")
        try:
            local = check_local_path(spec.get("local_path", "."), direction)
        except ValueError as e:
            raise ValueError(f"slot {name}: {e}") from None
        recursive = spec.get("recursive", False)
        if direction == OUT and local == "." and not recursive:
            raise ValueError(f"slot {name}: a stage-out of local_path '.' (the workdir) must "
                             "be recursive: true")
        out[name] = {"required": spec.get("required", False), "direction": direction,
                     "local_path": local, "description": desc, "recursive": recursive}
    return out


# ---- locations (the site's side) -------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    alias: str
    url: str
    scheme: str                 # file | globus
    endpoint: str | None        # the Globus collection id
    root: str | None            # job paths must lie under it (None: anywhere)
    method: str | None          # file: copy | link | rsync (None: transfers.local_method)

    def confines(self, path: str) -> bool:
        if self.root is None or path == self.root:
            return True
        return path.startswith(self.root.rstrip("/") + "/")


def parse_location(alias: str, url) -> Location:
    """One ``transfer_locations`` entry; ValueError saying what a valid one looks like."""
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise ValueError(f"alias {alias!r} is not a name (letters, digits, _ . -)")
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{alias}: give a URL, like file:///path or globus://COLLECTION_ID")
    parts = urlparse(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{alias}: {url!r} has no known scheme; use file:///path (this host's "
                         "filesystems) or globus://COLLECTION_ID[/path]")
    query = parse_qs(parts.query, keep_blank_values=True)
    root = posixpath.normpath(parts.path) if parts.path not in ("", "/") else None
    if scheme == "file":
        if parts.netloc:
            raise ValueError(f"{alias}: {url!r} names host {parts.netloc!r}; a file: location "
                             "is a path on this host: file:///path (three slashes)")
        unknown = sorted(set(query) - {"method"})
        if unknown:
            raise ValueError(f"{alias}: unknown URL option {unknown[0]!r}; known: method")
        method = query.get("method", [None])[-1]
        if method is not None and method not in METHODS:
            raise ValueError(f"{alias}: method {method!r} is not one of {', '.join(METHODS)}")
        return Location(alias, url, "file", None, root, method)
    try:
        endpoint = str(uuid.UUID(parts.netloc))
    except ValueError:
        raise ValueError(f"{alias}: {url!r}: {parts.netloc!r} is not a Globus collection id "
                         "(a UUID): globus://COLLECTION_ID[/path]") from None
    if query:
        raise ValueError(f"{alias}: a globus:// location takes no options")
    return Location(alias, url, "globus", endpoint, root, None)


def check_locations(raw) -> dict[str, Location]:
    """``transfers.transfer_locations`` parsed; ValueError naming the alias."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("must be a mapping of alias -> URL")
    return {alias: parse_location(alias, url) for alias, url in raw.items()}


# ---- a job's transfers -----------------------------------------------------------------------
def split_remote(value) -> tuple[str, str]:
    """``"ALIAS:/abs/path"`` -> (alias, normalised path); ValueError otherwise."""
    if not isinstance(value, str) or ":" not in value or "\0" in value:
        raise ValueError(f"{value!r} must be LOCATION_ALIAS:/absolute/path")
    alias, _, path = value.partition(":")
    if not _ALIAS.match(alias):
        raise ValueError(f"{value!r}: {alias!r} is not a location alias")
    if not path.startswith("/"):
        raise ValueError(f"{value!r}: the path after {alias}: must be absolute")
    return alias, posixpath.normpath(path)


def check_job_transfers(raw) -> dict[str, str]:
    """A job's ``transfers`` field (shape only: slots and aliases are checked by ``resolve``)."""
    if not isinstance(raw, dict):
        raise ValueError(f"must be an object of slot -> \"ALIAS:/path\", got {type(raw).__name__}")
    out = {}
    for slot, value in raw.items():
        if not isinstance(slot, str) or not _SLOT.match(slot):
            raise ValueError(f"slot name {slot!r} is not a name")
        try:
            alias, path = split_remote(value)
        except ValueError as e:
            raise ValueError(f"slot {slot}: {e}") from None
        out[slot] = f"{alias}:{path}"
    return out


def resolve(transfers: dict, slots: dict, locations: dict[str, Location], workdir: str,
            app_name: str) -> list[dict]:
    """The transfer items of a job: ``transfers`` (checked shape) against the app's ``slots``
    and the site's ``locations``.  ValueError, one line, on an unknown slot or alias, a
    missing required slot, a path outside its location, or a location no backend serves."""
    unknown = sorted(set(transfers) - set(slots))
    if unknown:
        known = ", ".join(sorted(slots)) or "none"
        raise ValueError(f"unknown transfer slot {unknown[0]!r} for app {app_name} "
                         f"(its slots: {known})")
    missing = sorted(n for n, s in slots.items() if s["required"] and n not in transfers)
    if missing:
        raise ValueError(f"missing required transfer slot(s) {', '.join(missing)} of app "
                         f"{app_name}; give them as {missing[0]}=ALIAS:/path")
    items = []
    for name in sorted(transfers):
        slot = slots[name]
        alias, remote = split_remote(transfers[name])
        loc = locations.get(alias)
        if loc is None:
            known = ", ".join(sorted(locations)) or "none yet"
            raise ValueError(f"slot {name}: unknown location alias {alias!r} (known: {known}); "
                             "add it to transfers.transfer_locations in settings.yml")
        if not loc.confines(remote):
            raise ValueError(f"slot {name}: {remote} is outside location {alias} "
                             f"({loc.root})")
        local = slot["local_path"]
        if slot["direction"] == IN and local == "." and not slot["recursive"]:
            local = posixpath.basename(remote) or "."
        where = posixpath.normpath(posixpath.join("data", workdir, local))
        here, there = where, f"{alias}:{remote}"
        src, dst = (there, here) if slot["direction"] == IN else (here, there)
        items.append({"name": name, "direction": slot["direction"], "location": alias,
                      "remote": remote, "local": local, "recursive": slot["recursive"],
                      "source": src, "destination": dst,
                      "state": PENDING if slot["direction"] == IN else AWAITING,
                      "task_id": None, "attempts": 0, "error": None})
    return items


# ---- reading a record's items ------------------------------------------------------------------
def items_of(rec: dict) -> list[dict]:
    return list(rec.get("transfer_items") or ())


def stage_in_left(rec: dict) -> bool:
    """True if the record has a stage-in item not yet done."""
    return any(i["direction"] == IN and i["state"] != DONE for i in items_of(rec))


def has_stage_out(rec: dict) -> bool:
    return any(i["direction"] == OUT for i in items_of(rec))


def stage_out_left(rec: dict) -> bool:
    return any(i["direction"] == OUT and i["state"] != DONE for i in items_of(rec))


def retry_transfers(rec: dict) -> tuple[dict, str]:
    """A failed job sent back to run again (``spool job retry``): its items that had not
    finished start over (stage-in ``pending``, stage-out ``awaiting_job``, attempts 0), and
    the directory it goes to -- ``stagein`` if it has inputs left to stage, else ``ready``."""
    if not rec.get("transfer_items"):
        return rec, "ready"
    items = []
    for i in rec["transfer_items"]:
        i = dict(i)
        if i["direction"] == OUT or i["state"] != DONE:
            i.update(state=PENDING if i["direction"] == IN else AWAITING, task_id=None,
                     attempts=0, error=None)
        items.append(i)
    new = {**rec, "transfer_items": items}
    return new, "stagein" if stage_in_left(new) else "ready"
