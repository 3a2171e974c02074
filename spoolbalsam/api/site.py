"""Which site a call means, found the way Balsam users expect, and the ``Site`` model.

``resolve(site)`` turns what a script gives (a site name, a path, a ``Site``, or nothing)
into a ``Layout``:

* a ``Site`` -> its directory; a path (contains ``/``, starts with ``~`` or ``.``) -> that
  directory, which must be a site;
* a name -> the first site *of that name* found in: the current directory and its parents,
  ``$SPOOL_SITE``, the user's registry (``spoolbalsam.registry``,
  ``~/.spoolbalsam/sites.json``), and finally ``./NAME``;
* nothing -> ``$SPOOL_SITE``, else the current directory walked up
  (``spool.layout.find_site``), else the site this process last named explicitly, else the
  only registered site.

Every failure is a ``Site.DoesNotExist`` whose one line says where it looked and what to do.
A site's name is the first line of its ``.spool-site`` marker; its ``id`` is its absolute
path (stable, and usable wherever Balsam takes a site id).
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import registry
from ..spool.layout import MARKER, Layout, SiteNotFound, find_site
from .query import DoesNotExist, MultipleObjectsReturned

_last_used: Layout | None = None


def site_name(root: Path) -> str:
    try:
        return (root / MARKER).read_text().splitlines()[0].strip() or root.name
    except (OSError, IndexError):
        return root.name


def _is_site(root: Path) -> bool:
    return (root / MARKER).exists()


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.startswith(("~", "."))


def _by_name(name: str) -> Layout | None:
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if _is_site(d):
            if site_name(d) == name:
                return Layout(d)
            break                       # the nearest site only, like find_site
    env = os.environ.get("SPOOL_SITE")
    if env:
        root = Path(env).expanduser().resolve()
        if _is_site(root) and site_name(root) == name:
            return Layout(root)
    found = registry.lookup(name)
    if found is not None and site_name(found) == name:
        return Layout(found.resolve())
    local = here / name
    if _is_site(local) and site_name(local) == name:
        return Layout(local)
    return None


def resolve(site=None) -> Layout:
    """The ``Layout`` of the site meant by ``site`` (see the module docstring)."""
    global _last_used
    if isinstance(site, Layout):
        return site
    if isinstance(site, Site):
        return Layout(site.path)
    if site is not None and not isinstance(site, (str, os.PathLike)):
        raise Site.DoesNotExist(f"a site is given by name, path or Site object, got "
                                f"{type(site).__name__} {site!r}")
    if site is None:
        try:
            return find_site()
        except SiteNotFound as e:
            if _last_used is not None:
                return _last_used
            known = registry.known()
            if len(known) == 1:
                return Layout(next(iter(known.values())).resolve())
            raise Site.DoesNotExist(str(e).replace("pass --site DIR", "name the site "
                                                   "(site = \"NAME\" / site_name=)")) from None
    text = os.fspath(site)
    if isinstance(site, os.PathLike) or _looks_like_path(text):
        root = Path(text).expanduser().resolve()
        if not _is_site(root):
            raise Site.DoesNotExist(f"{root} is not a spoolbalsam site (no {MARKER}); create "
                                    f"it with `spool site init {text}`")
        layout = Layout(root)
    else:
        layout = _by_name(text)
        if layout is None:
            raise Site.DoesNotExist(
                f"no site named {text!r}: not the current directory's site, not $SPOOL_SITE, "
                f"not in {registry.registry_path()}; cd into it, set SPOOL_SITE=/path/to/site, "
                f"or create it with `spool site init -n {text} DIR`")
    _last_used = layout
    return layout


class SiteDoesNotExist(DoesNotExist):
    pass


class SiteMultipleObjectsReturned(MultipleObjectsReturned):
    pass


class SiteManager:
    """``Site.objects``: the sites this user can name from here."""

    def all(self) -> list["Site"]:
        roots: list[Path] = []
        env = os.environ.get("SPOOL_SITE")
        for candidate in (_cwd_site(), Path(env).expanduser().resolve() if env else None,
                          *(p.resolve() for p in registry.known().values())):
            if candidate is not None and _is_site(candidate) and candidate not in roots:
                roots.append(candidate)
        return [Site(r) for r in roots]

    def filter(self, name: str | None = None, id: str | None = None,
               path: str | os.PathLike | None = None) -> list["Site"]:
        out = []
        for s in self.all():
            if name is not None and s.name != name:
                continue
            if id is not None and s.id != str(id):
                continue
            if path is not None and s.path != Path(path).expanduser().resolve():
                continue
            out.append(s)
        return out

    def get(self, name: str | None = None, *, id: str | None = None,
            path: str | os.PathLike | None = None) -> "Site":
        """``Site.objects.get("test_aurora")``: the site that name resolves to."""
        if name is not None and id is None and path is None:
            return Site(resolve(name).root)
        if id is not None and path is None and name is None:
            path = id
        if path is not None:
            root = Path(path).expanduser().resolve()
            if not _is_site(root) or (name is not None and site_name(root) != name):
                raise Site.DoesNotExist(f"{root} is not a spoolbalsam site"
                                        + (f" named {name!r}" if name else ""))
            return Site(root)
        found = self.filter()
        if not found:
            raise Site.DoesNotExist("no spoolbalsam site found here, in $SPOOL_SITE or in "
                                    f"{registry.registry_path()}")
        if len(found) > 1:
            raise Site.MultipleObjectsReturned(
                f"{len(found)} sites are known ({', '.join(s.name for s in found)}); "
                "say which: Site.objects.get(NAME)")
        return found[0]

    def count(self) -> int:
        return len(self.all())


def _cwd_site() -> Path | None:
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if _is_site(d):
            return d
    return None


class Site:
    """A site: ``id`` (its absolute path), ``name``, ``path``, and its settings."""

    DoesNotExist = SiteDoesNotExist
    MultipleObjectsReturned = SiteMultipleObjectsReturned
    objects = SiteManager()

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        self.name = site_name(self.path)

    @property
    def id(self) -> str:
        return str(self.path)

    @property
    def layout(self) -> Layout:
        return Layout(self.path)

    @property
    def settings(self) -> dict:
        from .. import settings as settings_mod
        return settings_mod.load(self.path / "settings.yml")

    @property
    def allowed_queues(self) -> dict:
        return self.settings["scheduler"]["allowed_queues"]

    @property
    def allowed_projects(self) -> list:
        return self.settings["scheduler"]["allowed_projects"]

    @property
    def optional_batch_job_params(self) -> dict:
        return self.settings["scheduler"]["optional_batch_job_params"]

    def refresh_from_db(self) -> None:
        if not _is_site(self.path):
            raise Site.DoesNotExist(f"{self.path} is no longer a spoolbalsam site")
        self.name = site_name(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, Site) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Site(name={self.name!r}, path={str(self.path)!r})"
