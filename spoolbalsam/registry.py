"""The user's registry of known sites: ``~/.spoolbalsam/sites.json``, name -> site path.

It lets a Balsam-style script name its site (``site = "test_aurora"``,
``Job(site_name="test_aurora")``) from any directory.  ``spool site init`` registers each
new site; the Python API looks names up here after the current directory and
``$SPOOL_SITE``.

Guarantees
----------
* ``register(name, path)`` makes ``lookup(name)`` return ``path`` (a later registration of
  the same name replaces the earlier one: the newest site of that name wins).
* The file is always whole: it is rewritten with ``fsio.write_json_atomic``.  Concurrent
  registrations on one host are serialised with a flock on ``sites.json.lock``; across
  hosts (a home directory on NFS) two simultaneous ``site init`` may lose one entry, which
  only means that site must be named by path or registered again.
* ``lookup(name)`` returns only a directory that is still a site (has its ``.spool-site``
  marker); a stale entry is ignored, never an error.  A missing or unreadable registry
  reads as empty: the registry is a convenience, never needed for correctness.
* ``$SPOOL_REGISTRY`` names another file (tests, shared project registries).
"""
from __future__ import annotations

import os
from pathlib import Path

from .spool import fsio
from .spool.layout import MARKER


def registry_path() -> Path:
    env = os.environ.get("SPOOL_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".spoolbalsam" / "sites.json"


def _read(path: Path) -> dict[str, str]:
    try:
        data = fsio.read_json(path)
    except (FileNotFoundError, ValueError, OSError):
        return {}
    if not isinstance(data, dict):
        return {}
    sites = data.get("sites", data)
    return {k: v for k, v in sites.items() if isinstance(k, str) and isinstance(v, str)}


def register(name: str, path: str | os.PathLike) -> Path:
    """Record site ``name`` at ``path`` (made absolute); returns the registry file."""
    import portalocker

    if not name or not isinstance(name, str):
        raise ValueError(f"site name must be a non-empty string, got {name!r}")
    reg = registry_path()
    reg.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(path).expanduser().resolve())
    with open(reg.with_name(reg.name + ".lock"), "a") as lock:
        portalocker.lock(lock, portalocker.LOCK_EX)
        sites = _read(reg)
        sites[name] = root
        fsio.write_json_atomic(reg, {"sites": dict(sorted(sites.items()))})
    return reg


def unregister(name: str) -> bool:
    """Forget ``name``; False if it was not registered."""
    import portalocker

    reg = registry_path()
    if not reg.exists():
        return False
    with open(reg.with_name(reg.name + ".lock"), "a") as lock:
        portalocker.lock(lock, portalocker.LOCK_EX)
        sites = _read(reg)
        if sites.pop(name, None) is None:
            return False
        fsio.write_json_atomic(reg, {"sites": sites})
    return True


def lookup(name: str) -> Path | None:
    """The registered path of site ``name`` if it is still a site, else None."""
    path = _read(registry_path()).get(name)
    if path and (Path(path) / MARKER).exists():
        return Path(path)
    return None


def known() -> dict[str, Path]:
    """Every registered site that still exists, by name."""
    return {n: Path(p) for n, p in _read(registry_path()).items() if (Path(p) / MARKER).exists()}
