"""A site on disk: the directory *is* the database.

::

    SITE/
      .spool-site                 marker (site name); how the CLI finds the site
      settings.yml                machine, scheduler, queues, launcher settings
      apps/NAME.yml | NAME.py     app definitions
      jobs/created/ID.json        intake: anyone drops files here (write .ID.tmp, then rename)
      jobs/created/NAME.jsonl     a bulk drop: one job per line (``site.bulk``)
      jobs/waiting/BB/ID.json     AWAITING_PARENTS            BB = shard(ID), 256 buckets
      jobs/stagein/BB/ID.json     READY, inputs being staged in (site only; never claimed)
      jobs/ready/BB/ID.json       runnable
      jobs/ready.bell             grows a byte whenever jobs come into ready/ (``bell``)
      jobs/running/L/ID.json      claimed by launcher L (the directory names the owner)
      jobs/stageout/BB/ID.json    POSTPROCESSED, outputs being staged out (spool.states)
      jobs/done/BB/ID.json        JOB_FINISHED
      jobs/failed/BB/ID.json      FAILED
      jobs/rejected/NAME          refused drops, byte for byte, + NAME.reason (one line)
      launchers/L/lease.json      L's heartbeat: a counter only L rewrites
      launchers/L/events.jsonl    L's event log (only L appends)
      launchers/L/limbo/          L's private hand-over area for moves with a rewrite
      launchers/L/spare/          records L replaced, reused as its next ones (fsio.Spares)
      launchers/L/stop            a stop request for L (written by `spool launcher stop`)
      launchers/L/kill/           kill requests for L's jobs, one file per request (``kills``)
      launchers/L/kill.bell       grows a byte after each request (L looks at its stat)
      launchers/L/kill.closed/    kill/ as the site renamed it to take L's jobs back
      site/site.pid               host + pid of the running site process
      site/events.jsonl           the site's event log
      site/merged.json            how far the site has merged each launcher's events
      site/limbo/                 the site's private hand-over area
      site/spare/                 replaced records the site reuses as temps (fsio.Spares)
      site/intake/                dropped files the site has taken and not yet finished
      site/index/                 the query index: CURRENT, G.base, G.log (``spool.index``)
      site/hints/                 notes from CLI/API processes naming jobs they moved (``hints``)
      batch/ID/                   one batch job: request.json, state.json, qlaunch script
      data/WORKDIR/job.out        each job's working directory and output
      log/                        site and launcher logs

Why shards: at a million jobs a flat ``ready/`` makes every listing slow on Lustre and makes
every launcher race for the same names; 256 buckets keep each directory at ~4k entries
and let a launcher list one random bucket at a time (see ``bench/claim_scaling.py``).
``created/`` and ``rejected/`` stay flat because people look into them by hand and the
site drains ``created/`` continuously.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .ids import SHARDS, shard
from .states import SHARDED_DIRS

MARKER = ".spool-site"
LAUNCHER_DESTINATIONS = ("done", "failed", "stageout")


class SiteNotFound(Exception):
    pass


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def state_dir(self, name: str) -> Path:
        return self.root / "jobs" / name

    def job_path(self, state: str, job_id: str, launcher: str | None = None) -> Path:
        """Where job ``job_id`` lives in ``state`` (a directory name)."""
        return Path(self.job_file(state, job_id, launcher))

    def job_file(self, state: str, job_id: str, launcher: str | None = None) -> str:
        """``job_path`` as a string (for hot paths that only hand it to the kernel)."""
        if state == "running":
            return f"{self.root}/jobs/running/{launcher}/{job_id}.json"
        if state in SHARDED_DIRS:
            return f"{self.root}/jobs/{state}/{shard(job_id)}/{job_id}.json"
        return f"{self.root}/jobs/{state}/{job_id}.json"

    @property
    def created(self) -> Path:
        return self.root / "jobs" / "created"

    @property
    def rejected(self) -> Path:
        return self.root / "jobs" / "rejected"

    @property
    def running(self) -> Path:
        return self.root / "jobs" / "running"

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def batch(self) -> Path:
        return self.root / "batch"

    @property
    def launchers(self) -> Path:
        return self.root / "launchers"

    def launcher_dir(self, launcher: str) -> Path:
        return self.root / "launchers" / launcher

    @property
    def site_dir(self) -> Path:
        return self.root / "site"

    @property
    def settings(self) -> Path:
        return self.root / "settings.yml"

    def workdir(self, rel: str) -> Path:
        return self.root / "data" / rel

    def make(self) -> None:
        """The tree, with every bucket of the launchers' destinations (``done/``,
        ``failed/``, ``stageout/``): no launcher creates a directory in its loop.  The site creates the
        buckets of ``waiting/`` and ``ready/`` as it first publishes into them, so an idle
        launcher's pass over ``ready/`` lists only buckets that have held work.  (Any
        writer that finds a bucket missing creates it.)"""
        for sub in ("jobs/created", "jobs/waiting", "jobs/ready", "jobs/running",
                    "jobs/rejected", "apps", "data", "log", "batch", "launchers", "site/limbo",
                    "site/intake"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for state in LAUNCHER_DESTINATIONS:
            for n in range(SHARDS):
                (self.root / "jobs" / state / f"{n:02x}").mkdir(parents=True, exist_ok=True)


def find_site(explicit: str | os.PathLike | None = None, cwd: Path | None = None) -> Layout:
    """The site named by ``explicit``, else ``$SPOOL_SITE``, else the cwd walked upwards."""
    given = explicit or os.environ.get("SPOOL_SITE")
    if given:
        root = Path(given).expanduser().resolve()
        if not (root / MARKER).exists():
            raise SiteNotFound(f"{root} is not a spoolbalsam site (no {MARKER}); "
                               f"create one with `spool site init {given}`")
        return Layout(root)
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / MARKER).exists():
            return Layout(d)
    raise SiteNotFound("not inside a spoolbalsam site; cd into one, set SPOOL_SITE, "
                       "pass --site DIR, or create one with `spool site init DIR`")
