"""settings.yml: one file per site, loaded with a safe loader and checked key by key.

Every error is one line naming the file and the dotted key (``settings.yml: launcher.idle_ttl_sec:
must be a number``).  Keys left out take the defaults below; unknown keys are errors, so a typo
never silently does nothing.  ``spool site init`` renders ``templates/settings.yml.j2``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

DEFAULTS: dict = {
    "site_name": "",
    "machine": "local",
    "watch": "auto",                  # auto | inotify | poll  (auto: poll on NFS/Lustre/GPFS/DAOS)
    "poll_interval_sec": 1.0,         # how often the site looks at the small things when polling
    "claim_mode": "rename",           # rename | token (O_EXCL token first; for DAOS relaxed mode)
    "lease_interval_sec": 5.0,        # launcher heartbeat period
    "lease_stale_sec": 60.0,          # unchanged this long (site's monotonic clock) -> suspect
    "filter_tags": {},
    "launcher": {
        "idle_ttl_sec": 30.0,         # exit after this long with nothing running and nothing ready
        "error_tail_num_lines": 10,
        "sigterm_grace_sec": 10.0,    # SIGTERM -> SIGKILL at walltime end
        "walltime_margin_min": 1.0,   # stop starting/kill jobs this long before the walltime
        "cpus_per_node": None,        # null: the machine's value (local: os.cpu_count())
        "gpu_ids": None,              # null: the machine's; local machine: e.g. ["0", ..., "11"]
        "tile_hierarchy": None,       # Aurora: COMPOSITE | FLAT
        "mpi_flavour": None,          # pals | hydra | srun
        "max_mpiexec_per_batch_job": None,
        "max_concurrent_mpiruns": None,
        "prefetch": None,             # ready candidates read ahead (null: 2 x the allocation's cores, 16..4096)
        "default_launch_params": {},  # launch_params every job gets (its own win), e.g. srun overlap
        "merge_verdicts": None,       # a launcher publishes its finished jobs' records itself (null: on
                                      # machines with a batch scheduler, not on local)
    },
    "scheduler": {
        "sync_period_sec": 10.0,
        "allowed_queues": {},         # name: {max_nodes, max_walltime, max_queued_jobs}
        "allowed_projects": [],
        "optional_batch_job_params": {},
        "submit_backoff_sec": 60.0,
    },
    "index": {
        "check_period_sec": 600.0,    # the background check of the query index covers every bucket once in this time
        "compact_min": 50000,         # index log entries before a new generation (and >= a quarter of the jobs)
    },
    "elastic": {
        "enabled": False,
        "project": "",
        "queue": "",
        "job_mode": "mpi",
        "min_num_nodes": 1,
        "max_num_nodes": 1,
        "min_wall_time_min": 10,
        "max_wall_time_min": 60,
        "max_queued_jobs": 1,
        "max_queue_wait_time_min": 60,
        "service_period_sec": 30,
    },
    "transfers": {                    # Balsam's transfers section (spoolbalsam.transfer)
        "transfer_locations": {},     # alias: file:///path[?method=...] | globus://COLLECTION[/path]
        "max_concurrent_transfers": 5,   # tasks in flight (also accepted: num_transfer_slots)
        "transfer_batch_size": 100,   # items per task
        "num_items_query_limit": 2000,   # pending items considered per pass
        "service_period": 5,          # seconds between Globus passes (local: every tick)
        "local_method": "copy",       # copy | link | rsync, for file:// locations
        "local_bwlimit_mb": None,     # MB/s per local task (null: no limit)
        "max_attempts": 5,            # submissions of an item before its job fails
        "retry_backoff_sec": 5,       # first retry delay; doubles each time, capped at 10 min
        "globus_endpoint_id": None,   # the site's own Globus collection
        "globus_endpoint_site_path": None,   # the site directory as that collection sees it
        "globus_client_id": None,     # a Globus native app (thick client) id, for site globus-login
    },
}
CHOICES = {"watch": ("auto", "inotify", "poll"), "claim_mode": ("rename", "token"),
           "elastic.job_mode": ("mpi", "serial"),
           "launcher.tile_hierarchy": (None, "COMPOSITE", "FLAT"),
           "launcher.mpi_flavour": (None, "pals", "hydra", "srun"),
           "transfers.local_method": ("copy", "link", "rsync")}
def _whole(lo: int):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"must be a whole number >= {lo}, got {v!r}")
        return v
    return check


def _id_list(v):
    if not isinstance(v, list) or not all(isinstance(g, (str, int)) and not isinstance(g, bool)
                                          for g in v):
        raise ValueError(f"must be a list of GPU ids like [\"0\", \"1\"], got {v!r}")
    if len(set(map(str, v))) != len(v):
        raise ValueError(f"lists a GPU id twice: {v!r}")
    return [str(g) for g in v]


def _uuid(v):
    import uuid
    try:
        return str(uuid.UUID(str(v)))
    except ValueError:
        raise ValueError(f"must be a Globus id (a UUID), got {v!r}") from None


def _abs_path(v):
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError(f"must be an absolute path, got {v!r}")
    return v.rstrip("/") or "/"


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"must be true, false or null, got {v!r}")
    return v


def _positive(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ValueError(f"must be a number > 0, got {v!r}")
    return v


# Keys with a type of their own (checked whenever a value is given; null keeps the default
# meaning "the machine's value" or "none").
OPTIONAL = {"launcher.cpus_per_node": _whole(1), "launcher.gpu_ids": _id_list,
            "launcher.max_mpiexec_per_batch_job": _whole(1),
            "launcher.max_concurrent_mpiruns": _whole(1), "launcher.prefetch": _whole(1),
            "launcher.merge_verdicts": _bool,
            "transfers.max_concurrent_transfers": _whole(1),
            "transfers.transfer_batch_size": _whole(1),
            "transfers.num_items_query_limit": _whole(1),
            "transfers.max_attempts": _whole(1),
            "transfers.local_bwlimit_mb": _positive,
            "transfers.globus_endpoint_id": _uuid, "transfers.globus_client_id": _uuid,
            "transfers.globus_endpoint_site_path": _abs_path}
FREE_MAPPINGS = {"filter_tags", "scheduler.allowed_queues", "scheduler.optional_batch_job_params",
                 "launcher.default_launch_params", "transfers.transfer_locations"}
ALIASES = {"transfers": {"num_transfer_slots": "max_concurrent_transfers"}}


class SettingsError(ValueError):
    pass


def _check(value, default, key: str, source: str):
    def bad(msg):
        return SettingsError(f"{source}: {key}: {msg}")
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise bad(f"{value!r} is not one of {', '.join(map(str, CHOICES[key]))}")
        return value
    if key in OPTIONAL and value is not None:
        try:
            return OPTIONAL[key](value)
        except ValueError as e:
            raise bad(str(e)) from None
    if key in FREE_MAPPINGS:
        if not isinstance(value, dict):
            raise bad("must be a mapping")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad("must be a mapping")
        out = copy.deepcopy(default)
        for k, v in value.items():
            if k not in default:
                raise bad(f"unknown key {k!r}; known: {', '.join(default)}")
            out[k] = _check(v, default[k], f"{key}.{k}" if key else k, source)
        return out
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad(f"must be a number >= 0, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise bad(f"must be a string, got {value!r}")
    elif isinstance(default, list) and not isinstance(value, list):
        raise bad(f"must be a list, got {value!r}")
    return value


def validate(raw: object, source: str) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: must be a YAML mapping of settings")
    raw = _unalias(raw, source)
    s = _check(raw, DEFAULTS, "", source)
    for qname, q in s["scheduler"]["allowed_queues"].items():
        if not isinstance(q, dict) or set(q) - {"max_nodes", "max_walltime", "max_queued_jobs"}:
            raise SettingsError(f"{source}: scheduler.allowed_queues.{qname}: give max_nodes, "
                                "max_walltime (minutes) and max_queued_jobs")
    try:
        machine_from_settings(s)
    except ValueError as e:
        raise SettingsError(f"{source}: machine/launcher: {e}") from None
    _check_transfers(s["transfers"], source)
    return s


def _unalias(raw: dict, source: str) -> dict:
    """Balsam's other names for keys (``num_transfer_slots``) mapped to ours."""
    out = dict(raw)
    for section, names in ALIASES.items():
        sub = out.get(section)
        if not isinstance(sub, dict):
            continue
        sub = dict(sub)
        for alias, key in names.items():
            if alias in sub:
                if key in sub:
                    raise SettingsError(f"{source}: {section}.{alias}: is another name for "
                                        f"{section}.{key}; give only one of them")
                sub[key] = sub.pop(alias)
        out[section] = sub
    return out


def _check_transfers(t: dict, source: str) -> None:
    from .transfer.items import check_locations
    try:
        locations = check_locations(t["transfer_locations"])
    except ValueError as e:
        raise SettingsError(f"{source}: transfers.transfer_locations: {e}") from None
    globus = sorted(a for a, loc in locations.items() if loc.scheme == "globus")
    if globus and not t["globus_endpoint_id"]:
        raise SettingsError(f"{source}: transfers.globus_endpoint_id: required by the Globus "
                            f"location {globus[0]}: give the id of the site's own Globus "
                            "collection (the one that sees this site's data/)")


def transfer_locations(s: dict):
    """The site's transfer locations, parsed (settings already validated)."""
    from .transfer.items import check_locations
    return check_locations(s["transfers"]["transfer_locations"])


def load(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"{path}: missing; recreate it with `spool site init`") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise SettingsError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    return validate(raw, str(path))


def render_default(site_name: str, machine: str, **extra) -> str:
    """settings.yml text for a new site, from templates/settings.yml.j2."""
    import jinja2

    from .machines import get_machine
    from .paths import TEMPLATES_DIR
    m = get_machine(machine)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("settings.yml.j2").render(site_name=site_name, machine=m, **extra)


MACHINE_KEYS = ("cpus_per_node", "gpu_ids", "tile_hierarchy", "mpi_flavour",
                "max_mpiexec_per_batch_job", "max_concurrent_mpiruns", "default_launch_params")


def machine_from_settings(s: dict):
    """The site's machine with the ``launcher:`` overrides of settings.yml applied."""
    from .machines import get_machine
    overrides = {k: s["launcher"][k] for k in MACHINE_KEYS if s["launcher"].get(k) not in (None, {})}
    return get_machine(s["machine"]).with_overrides(**overrides)
