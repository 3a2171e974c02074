"""The ``spool`` command: a click group per noun (site, app, job, queue) plus ``launcher``.

Errors print one line naming the file, the field or the job and what to do next, and exit
1; set ``SPOOL_TRACEBACK=1`` for the Python traceback.  The site is found from ``--site``,
``$SPOOL_SITE`` or the current directory walked upwards.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

from . import settings as settings_mod
from .spool import fsio, hints
from .spool.layout import MARKER, Layout, SiteNotFound, find_site
from .spool.lease import pid_alive


class UserError(click.ClickException):
    def show(self, file=None):
        click.echo(f"spool: {self.format_message()}", err=True)


def _kv(values, what: str) -> dict:
    out = {}
    for v in values:
        if "=" not in v:
            raise UserError(f"{what} {v!r} must look like KEY=VALUE")
        k, _, val = v.partition("=")
        if not k:
            raise UserError(f"{what} {v!r} has an empty KEY")
        out[k] = val
    return out


def _site(ctx) -> Layout:
    try:
        return find_site(ctx.obj.get("site"))
    except SiteNotFound as e:
        raise UserError(str(e)) from None


def _settings(layout: Layout) -> dict:
    try:
        return settings_mod.load(layout.settings)
    except settings_mod.SettingsError as e:
        raise UserError(str(e)) from None


def _print_json(doc) -> None:
    """One JSON document on stdout."""
    import orjson
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")


def _print_json_line(obj) -> None:
    """One JSON object on its own line (a listing prints one per item)."""
    import orjson
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--site", envvar="SPOOL_SITE", help="Site directory (default: $SPOOL_SITE or cwd).")
@click.pass_context
def cli(ctx, site):
    """spoolbalsam: a filesystem-native job spooler. The site directory is the database."""
    ctx.ensure_object(dict)
    ctx.obj["site"] = site


# ---------------------------------------------------------------------------------------
@cli.group()
def site():
    """Create, start and stop a site."""


@site.command("init")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("-n", "--name", help="Site name (default: the directory name).")
@click.option("-m", "--machine", default="local", show_default=True,
              help="Machine: local, aurora, polaris, slurm.")
@click.option("--gpu-ids", help="local machine: GPU ids to hand out, e.g. 0,1,2,3.")
@click.option("--gpus", type=int, help="local machine: that many GPU ids 0..N-1.")
@click.option("--cpus", type=int, help="local machine: cores to pack jobs onto.")
@click.option("-A", "--project", "projects", multiple=True, help="Allowed project (repeat).")
def site_init(path, name, machine, gpu_ids, gpus, cpus, projects):
    """Create a site directory with settings.yml rendered for MACHINE."""
    from .machines import get_machine
    root = Path(path).resolve()
    if (root / MARKER).exists():
        raise UserError(f"{root} is already a site; edit {root / 'settings.yml'} instead")
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; choose a new directory")
    try:
        get_machine(machine)
    except ValueError as e:
        raise UserError(str(e)) from None
    if gpus is not None and gpu_ids:
        raise UserError("give --gpus or --gpu-ids, not both")
    ids = [str(i) for i in range(gpus)] if gpus else (gpu_ids.split(",") if gpu_ids else [])
    if (ids or cpus) and machine != "local":
        raise UserError("--gpus/--gpu-ids/--cpus describe the local machine; for "
                        f"{machine} edit launcher: in settings.yml")
    layout = Layout(root)
    layout.make()
    name = name or root.name
    text = settings_mod.render_default(name, machine, gpu_ids=ids, cpus_per_node=cpus,
                                       projects=list(projects) or (["local"] if machine == "local" else []))
    settings_mod.validate(__import__("yaml").safe_load(text), "settings.yml")
    fsio.write_atomic(layout.settings, text.encode())
    fsio.write_atomic(root / MARKER, f"{name}\n".encode())
    from .registry import register
    try:
        register(name, root)          # so the Python API finds the site by its name
    except OSError as e:
        click.echo(f"spool: note: could not record site {name} in the site registry: {e}", err=True)
    click.echo(f"Created site {name} ({machine}) at {root}")
    click.echo(f"Next: cd {path}; add apps/NAME.yml; spool site start")


@site.command("start")
@click.option("--foreground", is_flag=True, help="Run in this terminal (logs to stderr).")
@click.pass_context
def site_start(ctx, foreground):
    """Start the site process (one per site; a second start refuses)."""
    from .site import service
    layout = _site(ctx)
    _settings(layout)
    info = service.running_site(layout)
    if info:
        raise UserError(f"site already running (pid {info['pid']} on {info['host']}); "
                        "`spool site stop` first")
    if foreground:
        service.setup_logging(None)
        try:
            service.serve(layout)
        except service.AlreadyRunning as e:
            raise UserError(str(e)) from None
        return
    layout.log.mkdir(exist_ok=True)
    with open(layout.log / "site.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spoolbalsam.site.service", str(layout.root)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=layout.root)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = service.running_site(layout)
        if info and info.get("pid") == proc.pid:
            click.echo(f"Site started (pid {proc.pid}); log: {layout.log / 'site.log'}")
            return
        if proc.poll() is not None:
            tail = (layout.log / "site.out").read_text(errors="replace").strip().splitlines()[-3:]
            raise UserError("site process exited at once: " + " | ".join(tail))
        time.sleep(0.02)
    raise UserError(f"site process {proc.pid} did not report in 15 s; see {layout.log}/site.log")


@site.command("globus-login")
@click.option("-e", "--endpoint-id", "endpoints", multiple=True,
              help="A Globus collection to consent to (repeat); default: the site's own "
                   "and every globus:// location.")
@click.pass_context
def site_globus_login(ctx, endpoints):
    """Log in to Globus for this site's transfers (needs spoolbalsam[globus])."""
    layout = _site(ctx)
    conf = _settings(layout)["transfers"]
    if not conf["globus_client_id"]:
        raise UserError(f"{layout.settings}: transfers.globus_client_id: is not set; register "
                        "a native app with Globus (app.globus.org, \"thick client\") and put "
                        "its client id there")
    try:
        from .transfer.globus import globus_login
    except ImportError as e:
        raise UserError(f"Globus support is not installed ({e}): pip install "
                        "'spoolbalsam[globus]'") from None
    if not endpoints:
        from .transfer.items import check_locations
        endpoints = [conf["globus_endpoint_id"]] if conf["globus_endpoint_id"] else []
        endpoints += [loc.endpoint for loc in check_locations(conf["transfer_locations"]).values()
                      if loc.scheme == "globus"]
    try:
        globus_login(conf["globus_client_id"], list(endpoints), ask=lambda p: click.prompt(p),
                     say=click.echo)
    except Exception as e:  # noqa: BLE001 - globus-sdk's errors: one line for the user
        raise UserError(f"Globus login failed: {type(e).__name__}: {e}") from None


@site.command("stop")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def site_stop(ctx, timeout):
    """Stop the site process (SIGTERM; it finishes its current step)."""
    from .site import service
    layout = _site(ctx)
    info = service.running_site(layout)
    if not info:
        click.echo("Site is not running.")
        return
    if info["host"] != fsio.HOST:
        raise UserError(f"the site runs on host {info['host']}; stop it there")
    os.kill(info["pid"], 15)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the process removes its pid file and then exits: wait for both
        if not service.running_site(layout) and not pid_alive(info["pid"], info.get("pid_start")):
            click.echo(f"Site stopped (pid {info['pid']}).")
            return
        time.sleep(0.05)
    raise UserError(f"site pid {info['pid']} still running after {timeout:g} s")


@site.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_context
def site_status(ctx, as_json):
    """Is the site running, and how many jobs are in each state."""
    from .site import service
    from .spool import index
    from .spool.query import counts
    layout = _site(ctx)
    info = service.running_site(layout)
    s = _settings(layout)
    if as_json:
        try:
            table = index.load(layout, overlay=False)
            idx = {"jobs": len(table), "last_change": table.t}
        except index.IndexUnreadable as e:
            idx = {"jobs": None, "error": str(e)}
        _print_json({"site": s["site_name"], "machine": s["machine"], "root": str(layout.root),
                     "site_process": info, "query_index": idx, "counts": counts(layout)})
        return
    click.echo(f"site {s['site_name']} ({s['machine']}) at {layout.root}")
    click.echo(f"site process: {'running, pid %s on %s' % (info['pid'], info['host']) if info else 'stopped'}")
    try:
        table = index.load(layout, overlay=False)
        click.echo(f"query index: {len(table)} jobs, last change {_fmt_time(table.t)}")
    except index.IndexUnreadable as e:
        click.echo(f"query index: none ({e}); counts come from the directories")
    for k, v in counts(layout).items():
        click.echo(f"  {k:9s} {v}")


@site.command("reindex")
@click.option("--check", is_flag=True,
              help="Compare the index with a full scan of the records instead; exit 1 if "
                   "they differ (run it on a quiet site: jobs in flight show as differences).")
@click.option("--timeout", default=600.0, show_default=True,
              help="Seconds to wait for a running site to rebuild.")
@click.pass_context
def site_reindex(ctx, check, timeout):
    """Rebuild the query index from the job records (or --check it)."""
    from .site import service
    from .spool import index
    layout = _site(ctx)
    if check:
        try:
            diffs = index.verify(layout)
        except index.IndexUnreadable as e:
            raise UserError(f"no index to check: {e}") from None
        for line in diffs[:50]:
            click.echo(line)
        if diffs:
            raise UserError(f"the index differs from the records in {len(diffs)} place(s); "
                            "rebuild it with `spool site reindex`")
        click.echo("The index agrees with the records.")
        return
    request = index.index_dir(layout) / "REBUILD"
    info = service.running_site(layout)
    if info is None:
        with service.site_lock(layout) as got:
            if got:
                rows = index.Keeper(layout).rebuild()
                click.echo(f"Index rebuilt from the records: {rows} jobs.")
                return
        info = service.running_site(layout) or {}
    fsio.write_atomic(request, b"requested\n")
    deadline = time.monotonic() + timeout
    while request.exists():
        if time.monotonic() > deadline:
            raise UserError(f"the site (pid {info.get('pid', '?')}) has not rebuilt the index "
                            f"in {timeout:g} s; see {layout.log}/site.log")
        time.sleep(0.05)
    click.echo("Index rebuilt from the records by the running site.")


# ---------------------------------------------------------------------------------------
@cli.group()
def app():
    """List the site's apps."""


@app.command("ls")
@click.option("-v", "--verbose", is_flag=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per app, one per line; a broken app as {name, error}.")
@click.pass_context
def app_ls(ctx, verbose, as_json):
    """List apps (apps/NAME.yml) and their parameters."""
    from .apps import AppRegistry
    layout = _site(ctx)
    reg = AppRegistry(layout.apps)
    names = reg.names()
    if as_json:
        for name in names:
            a = reg.get(name)
            _print_json_line({"name": name, "error": reg.errors.get(name)} if a is None else {
                "name": name, "description": a.description, "parameters": a.parameters,
                "command_template": a.command_template,
                "environment_variables": a.environment_variables,
                "shell_preamble": a.shell_preamble, "cleanup_files": a.cleanup_files,
                "retry": a.retry,
                "python_class": a.python_class})
        return
    if not names:
        click.echo(f"No apps yet: write {layout.apps}/NAME.yml (see the README)")
        return
    click.echo(f"{'Name':24s} {'Parameters':40s} Description")
    for name in names:
        a = reg.get(name)
        if a is None:
            click.echo(f"{name:24s} BROKEN: {reg.errors.get(name)}")
            continue
        params = ", ".join(p + ("" if v.get("required") else f"={v.get('default')}")
                           for p, v in a.parameters.items())
        click.echo(f"{name:24s} {params:40s} {a.description}")
        if verbose:
            click.echo(f"    command: {a.command_template}")
            for k, v in a.environment_variables.items():
                click.echo(f"    env {k}={v}")
            if a.shell_preamble:
                click.echo(f"    preamble: {a.shell_preamble}")
            click.echo(f"    retry: {a.retry}")
            for slot, t in a.transfers.items():
                click.echo(f"    transfer {slot}: {t['direction']} {t['local_path']}"
                           f"{' (required)' if t['required'] else ''}"
                           f"{' recursive' if t['recursive'] else ''}"
                           f"{'  ' + t['description'] if t['description'] else ''}")


# ---------------------------------------------------------------------------------------
@cli.group()
def job():
    """Create, list and remove jobs."""


@job.command("create")
@click.option("-a", "--app", "app_name", help="App name.")
@click.option("-w", "--workdir", help="Working directory under data/.")
@click.option("-p", "--param", multiple=True, help="Parameter KEY=VALUE (repeat).")
@click.option("--tag", "-tag", multiple=True, help="Tag KEY=VALUE (repeat).")
@click.option("-n", "--num-nodes", type=int, default=1, show_default=True)
@click.option("-rpn", "--ranks-per-node", type=int, default=1, show_default=True)
@click.option("-tpr", "--threads-per-rank", type=int, default=1, show_default=True)
@click.option("-tpc", "--threads-per-core", type=int, default=1, show_default=True)
@click.option("-g", "--gpus-per-rank", type=float, default=0, show_default=True)
@click.option("-npc", "--node-packing-count", type=int, default=1, show_default=True)
@click.option("-lp", "--launch-param", multiple=True, help="Launch parameter KEY=VALUE.")
@click.option("-t", "--wall-time-min", type=float, default=0, show_default=True)
@click.option("-pid", "--parent-id", multiple=True, help="Parent job id (repeat).")
@click.option("-s", "--stage-data", multiple=True,
              help="Transfer item SLOT=ALIAS:/absolute/path (repeat); see the app's slots.")
@click.option("--id", "job_id", help="Choose the job id (default: a fresh time-sorted id).")
@click.option("-f", "--file", "jobs_file", type=click.File("rb"),
              help="Many jobs: a file of one JSON job per line (- for stdin), with the fields "
                   "of a dropped file; all are checked before any is submitted.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the new id(s).")
@click.pass_context
def job_create(ctx, app_name, workdir, param, tag, num_nodes, ranks_per_node, threads_per_rank,
               threads_per_core, gpus_per_rank, node_packing_count, launch_param, wall_time_min,
               parent_id, stage_data, job_id, jobs_file, quiet):
    """Create one job, or many with --file (checked now, taken in by the site)."""
    from .submit import SubmitError, submit_jobs
    layout = _site(ctx)
    if jobs_file is not None:
        given = [o for o, v in (("-a", app_name), ("-w", workdir), ("-p", param), ("--tag", tag),
                                ("-pid", parent_id), ("--id", job_id), ("-lp", launch_param),
                                ("-s", stage_data)) if v]
        if given:
            raise UserError(f"--file gives every job's fields itself; drop {' '.join(given)}")
        name = getattr(jobs_file, "name", "<stdin>")
        name = "stdin" if name == "<stdin>" else name
        raws, names = _read_jobs_file(jobs_file, name)
        try:
            recs = submit_jobs(layout, raws, source=name, names=names)
        except SubmitError as e:
            raise UserError(str(e)) from None
        if quiet:
            click.echo("\n".join(r["id"] for r in recs))
        else:
            click.echo(f"Added {len(recs)} job(s) from {name}"
                       + (f" ({recs[0]['id']} ... {recs[-1]['id']})" if len(recs) > 1 else ""))
        return
    missing = [o for o, v in (("-a/--app", app_name), ("-w/--workdir", workdir)) if not v]
    if missing:
        raise UserError(f"give {' and '.join(missing)} (or --file for many jobs)")
    raw = {"app": app_name, "workdir": workdir, "parameters": _kv(param, "parameter"),
           "tags": _kv(tag, "tag"), "num_nodes": num_nodes, "ranks_per_node": ranks_per_node,
           "threads_per_rank": threads_per_rank, "threads_per_core": threads_per_core,
           "gpus_per_rank": gpus_per_rank, "node_packing_count": node_packing_count,
           "launch_params": _kv(launch_param, "launch param"), "wall_time_min": wall_time_min,
           "parent_ids": list(parent_id)}
    if stage_data:
        raw["transfers"] = _kv(stage_data, "stage-data item")
    if job_id:
        raw["id"] = job_id
    try:
        [rec] = submit_jobs(layout, [raw], source="spool job create")
    except SubmitError as e:
        raise UserError(str(e)) from None
    click.echo(rec["id"] if quiet else f"Added job {rec['id']} ({app_name} in data/{rec['workdir']})")


def _read_jobs_file(f, name: str) -> tuple[list, list[str]]:
    """The jobs of a JSON-lines file and a name for each (``FILE line N``)."""
    import orjson
    raws, names = [], []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            raws.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            raise UserError(f"{name} line {n}: not valid JSON: {e}; give one JSON job per "
                            "line") from None
        names.append(f"{name} line {n}")
    if not raws:
        raise UserError(f"{name}: no jobs in it; give one JSON job per line")
    return raws, names


def _job_filter(state, exclude_state, tag, app_name, workdir, ids, parent=None):
    from .spool.query import Filter
    try:
        flt = Filter.from_states(list(state), tags=_kv(tag, "tag"), app=app_name,
                                 workdir_contains=workdir, ids=set(ids) if ids else None,
                                 parent_id=parent)
        for s in exclude_state:
            from .spool.states import parse_state
            d, f = parse_state(s)
            flt.exclude_states.add(f or __import__("spoolbalsam.spool.states", fromlist=["x"]).DIR_STATE[d])
    except ValueError as e:
        raise UserError(str(e)) from None
    return flt


def _fmt_time(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


@job.command("ls")
@click.option("-s", "--state", multiple=True, help="Balsam state (JOB_FINISHED, RUN_ERROR, …) or directory (ready, done, rejected, …).")
@click.option("-ns", "--exclude-state", multiple=True)
@click.option("-t", "--tag", "-tag", multiple=True, help="KEY=VALUE; all must match.")
@click.option("-a", "--app", "app_name")
@click.option("-w", "--workdir", help="Workdir contains this.")
@click.option("-i", "--id", "ids", multiple=True)
@click.option("--by-state", is_flag=True, help="Counts per state.")
@click.option("-c", "--count", "count_only", is_flag=True, help="Only the number of matching jobs.")
@click.option("--limit", type=click.IntRange(min=0), help="At most this many jobs (a page).")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many first.")
@click.option("-r", "--reverse", is_flag=True, help="Newest first.")
@click.option("-v", "--verbose", is_flag=True, help="Whole records.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.option("--watch", is_flag=True, help="Live progress instead of a list: `spool watch`.")
@click.pass_context
def job_ls(ctx, state, exclude_state, tag, app_name, workdir, ids, by_state, count_only, limit,
           offset, reverse, verbose, as_json, watch):
    """List jobs, oldest first (right even while the site is stopped)."""
    import itertools

    from .spool.query import count, counts, ordered
    layout = _site(ctx)
    if watch:
        given = [name for name, v in (("--state", state), ("--exclude-state", exclude_state),
                                      ("--workdir", workdir), ("--id", ids),
                                      ("--by-state", by_state), ("--count", count_only),
                                      ("--limit", limit is not None), ("--offset", offset),
                                      ("--reverse", reverse), ("--verbose", verbose)) if v]
        if given:
            raise UserError(f"--watch shows counts for --tag/--app; it does not take "
                            f"{', '.join(given)}")
        _watch(layout, tag, app_name, None, False, as_json)
        return
    plain = not (state or exclude_state or tag or app_name or workdir or ids)
    if by_state and plain:
        for k, v in counts(layout).items():
            click.echo(f"{k:10s} {v}")
        return
    flt = _job_filter(state, exclude_state, tag, app_name, workdir, ids)
    if by_state or count_only:
        tally = count(layout, flt)
        if count_only:
            click.echo(sum(tally.values()))
            return
        for k, v in sorted(tally.items()):
            click.echo(f"{k:18s} {v}")
        return
    recs = itertools.islice(ordered(layout, flt, reverse=reverse), offset,
                            None if limit is None else offset + limit)
    out = sys.stdout
    if as_json:
        import orjson
        for rec in recs:
            out.write(orjson.dumps({k: v for k, v in rec.items() if k != "_path"}).decode() + "\n")
        return
    if verbose:
        import yaml
        for rec in recs:
            rec.pop("_path", None)
            out.write("---\n" + yaml.safe_dump(rec, sort_keys=False))
        return
    first = next(recs, None)
    if first is None:
        click.echo("No jobs match." if not plain or offset else "No jobs yet.")
        return
    out.write(f"{'ID':28s} {'App':14s} {'Workdir':28s} {'State':17s} Tags\n")
    for r in itertools.chain([first], recs):
        tags = " ".join(f"{k}={v}" for k, v in (r.get("tags") or {}).items())
        extra = f"  {r['error']}" if r["state"] in ("FAILED", "KILLED", "REJECTED") and r.get("error") else ""
        out.write(f"{r['id']:28s} {r.get('app', ''):14s} {r.get('workdir', ''):28s} "
                  f"{r['state']:17s} {tags}{extra.splitlines()[0] if extra else ''}\n")


@cli.command("watch")
@click.option("-t", "--tag", "-tag", multiple=True, help="Watch the jobs with these tags (KEY=VALUE).")
@click.option("-a", "--app", "app_name", help="Watch the jobs of this app.")
@click.option("-i", "--interval", type=float,
              help="Seconds between updates (default: 1 on a terminal, 10 otherwise).")
@click.option("--forever", is_flag=True, help="Keep watching when nothing is left to run.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per update.")
@click.pass_context
def watch_cmd(ctx, tag, app_name, interval, forever, as_json):
    """Live progress: done, failed, running and pending jobs, rate and ETA.

    Redraws in place on a terminal and prints one line per update otherwise.  Exits when
    nothing is left to run or stage (--forever: never), or on Ctrl-C.
    """
    _watch(_site(ctx), tag, app_name, interval, forever, as_json)


def _watch(layout: Layout, tag, app_name, interval, forever, as_json) -> None:
    from . import progress
    from .spool.query import Filter
    if interval is not None and not interval > 0:
        raise UserError(f"--interval {interval:g}: must be a number of seconds > 0")
    tags = _kv(tag, "tag")
    flt = Filter(tags=tags, app=app_name) if (tags or app_name) else None
    what = " ".join([f"{k}={v}" for k, v in tags.items()] + ([f"app {app_name}"] if app_name else []))
    title = f"spool watch  {layout.root.name}" + (f"  {what}" if what else "")
    code = progress.watch(layout, flt=flt, title=title, interval=interval, forever=forever,
                          json_lines=as_json)
    if code:
        sys.exit(code)


@job.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="The record as one JSON document.")
@click.pass_context
def job_show(ctx, job_id, as_json):
    """One job's whole record and history."""
    import yaml

    from .spool.query import Filter, select
    layout = _site(ctx)
    recs = list(select(layout, Filter(ids={job_id})))
    if not recs:
        raise UserError(f"no job {job_id} in {layout.root}; list them with `spool job ls`")
    rec = recs[0]
    if as_json:
        _print_json({k: v for k, v in rec.items() if k != "_path"})
        return
    hist = rec.pop("history", [])
    rec.pop("_path", None)
    click.echo(yaml.safe_dump(rec, sort_keys=False).rstrip())
    click.echo("history:")
    for h in hist:
        click.echo(f"  {_fmt_time(h.get('t'))} {h.get('from') or '-':>16s} -> {h.get('to'):16s} "
                   f"by {h.get('by')}{'  ' + h['msg'] if h.get('msg') else ''}")


@job.command("rm")
@click.option("-i", "--id", "ids", multiple=True)
@click.option("-s", "--state", multiple=True)
@click.option("-t", "--tag", "-tag", multiple=True)
@click.option("--all", "all_", is_flag=True, help="Every job not running.")
@click.option("-y", "--yes", is_flag=True)
@click.pass_context
def job_rm(ctx, ids, state, tag, all_, yes):
    """Remove jobs that are not running (their data/ directories stay)."""
    from .spool.query import select
    layout = _site(ctx)
    if not (ids or state or tag or all_):
        raise UserError("say which jobs: --id, --state, --tag, or --all")
    flt = _job_filter(state, (), tag, None, None, ids)
    flt.dirs = tuple(d for d in flt.dirs if d not in ("running",))
    recs = list(select(layout, flt))
    if not recs:
        click.echo("No jobs match.")
        return
    if not yes:
        click.confirm(f"Really remove {len(recs)} job(s)?", abort=True)
    trash = layout.site_dir / "removed"
    trash.mkdir(parents=True, exist_ok=True)
    from .spool.store import Store
    store = Store(layout)
    removed, busy = [], []
    for r in recs:
        path = Path(r["_path"])
        if not store.own_name(r["_dir"], path, r["id"]):
            loc = store.locate_own(r["id"])       # held mid-move by another: wait for it
            if loc is None:
                continue
            if loc[0] == "running" or not store.own_name(loc[0], loc[1], r["id"]):
                busy.append(r["id"])
                continue
            path = loc[1]
        # race: a launcher may claim a ready job at this moment; the rename decides.
        if fsio.rename_quiet(path, trash / f"{r['id']}.json"):
            removed.append(r["id"])
    hints.send(layout, removed, "spool job rm")
    click.echo(f"Removed {len(removed)} job(s); their records are kept in {trash}")
    if busy:
        raise UserError(f"{len(busy)} job(s) were busy (running, or being moved), not "
                        f"removed: {', '.join(busy[:5])}{' ...' if len(busy) > 5 else ''}")


@job.command("retry")
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def job_retry(ctx, ids):
    """Put failed jobs back to ready (attempt + 1, retry counts reset)."""
    from .spool.record import transition
    from .spool.store import Store, read_job
    from .spool.states import RESTART_READY
    from .transfer.items import retry_transfers
    layout = _site(ctx)
    store = Store(layout)
    limbo = layout.site_dir / "limbo-cli"
    for job_id in ids:
        loc = store.locate_own(job_id)
        if loc and not store.own_name(loc[0], loc[1], job_id):
            raise UserError(f"job {job_id} is being moved by another process (held at "
                            f"{loc[1]}); try again")
        if not loc or loc[0] != "failed":
            where = f"in jobs/{loc[0]}/" if loc else "nowhere"
            raise UserError(f"job {job_id} is {where}; only failed jobs can be retried")
        rec = read_job(loc[1], loc[0])
        new = transition(rec, RESTART_READY, "spool job retry", "retried by user",
                         attempt=rec.get("attempt", 1) + 1, error=None,
                         retries={"errors": 0, "timeouts": 0})
        new, dest = retry_transfers(new)
        if store.move_rewrite(loc[1], layout.job_path(dest, job_id), new, limbo):
            hints.send(layout, [job_id], "spool job retry")
            click.echo(f"Job {job_id} is ready again (attempt {new['attempt']})")


@job.command("kill")
@click.argument("ids", nargs=-1)
@click.option("-t", "--tag", "-tag", multiple=True, help="Kill the jobs with these tags (KEY=VALUE; all must match).")
@click.option("-s", "--state", multiple=True, help="Kill the jobs in this state (ready, RUNNING, …).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before killing by --tag/--state.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for launchers to stop running jobs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.pass_context
def job_kill(ctx, ids, tag, state, yes, timeout, as_json):
    """Stop running jobs and cancel pending ones; they end in failed/ as KILLED.

    A running job is stopped by the launcher that runs it (its whole process tree, on
    whichever node); a created, waiting or ready job is cancelled without running.  One
    line per job: killed, cancelled, already finished, or not found (exit 1 if any is not
    found or could not be killed).  `spool job retry ID` brings a killed job back.
    """
    from . import kill as kill_mod
    layout = _site(ctx)
    if timeout < 0:
        raise UserError(f"--timeout {timeout:g}: must be >= 0 seconds")
    if not (ids or tag or state):
        raise UserError("say which jobs: IDs, --tag KEY=VALUE or --state STATE")
    named = list(ids)
    if tag or state:
        flt = _job_filter(state, (), tag, None, None, ())
        if not any(d in kill_mod.KILLABLE_DIRS for d in flt.dirs):
            raise UserError(f"--state {' '.join(state)}: only jobs not yet in done/ or "
                            "failed/ can be killed")
        found = [i for i in kill_mod.killable(layout, flt) if i not in named]
        if found and not yes:
            click.confirm(f"Really kill {len(found)} job(s)?", abort=True)
        named += found
        if not named:
            if not as_json:
                click.echo("No jobs match.")
            return

    def show(o):
        if as_json:
            import orjson
            click.echo(orjson.dumps(o.to_json()).decode())
        else:
            click.echo(o.line())
    try:
        report = kill_mod.kill(layout, named, timeout=timeout, on_outcome=show)
    except KeyboardInterrupt:
        click.echo("spool: interrupted; the jobs not confirmed above may still run", err=True)
        sys.exit(130)
    for child, parent in report.children_failed:
        if as_json:
            import orjson
            click.echo(orjson.dumps({"id": child, "outcome": "failed", "state": "FAILED",
                                     "message": f"parent {parent} failed"}).decode())
        else:
            click.echo(f"{child} failed: it was waiting for {parent}")
    bad = [o for o in report.outcomes if not o.ok]
    if bad:
        kinds = sorted({o.outcome.replace("_", " ") for o in bad})
        raise UserError(f"{len(bad)} of {len(report.outcomes)} job(s) {' or '.join(kinds)}")


# ---------------------------------------------------------------------------------------
@cli.group()
def queue():
    """Batch jobs: submit, list, terminate."""


@queue.command("submit")
@click.option("-n", "--num-nodes", type=int, required=True)
@click.option("-t", "--wall-time-min", type=int, required=True)
@click.option("-q", "--queue", "queue_name", help="Scheduler queue (default: the machine's first).")
@click.option("-A", "--project", help="Project to charge.")
@click.option("-j", "--job-mode", type=click.Choice(["mpi", "serial"]), required=True)
@click.option("--tag", "-tag", multiple=True, help="Run only jobs with these tags.")
@click.option("-x", "--extra-param", multiple=True, help="KEY=VALUE for the job template.")
@click.pass_context
def queue_submit(ctx, num_nodes, wall_time_min, queue_name, project, job_mode, tag, extra_param):
    """Ask for an allocation; the site submits it to the scheduler."""
    from .site import batch
    from .site import service
    layout = _site(ctx)
    s = _settings(layout)
    machine = settings_mod.machine_from_settings(s)
    queue_name = queue_name or next(iter(s["scheduler"]["allowed_queues"] or machine.queues))
    req = {"num_nodes": num_nodes, "wall_time_min": wall_time_min, "queue": queue_name,
           "project": project or (s["scheduler"]["allowed_projects"] or [""])[0],
           "job_mode": job_mode, "filter_tags": _kv(tag, "tag"),
           "optional_params": _kv(extra_param, "extra param")}
    try:
        batch.validate_request(req, s, machine, str(layout.settings), batch.load_all(layout))
    except batch.BatchRequestError as e:
        raise UserError(str(e)) from None
    bid = batch.create_request(layout, req)
    click.echo(f"Batch job {bid} ({batch.job_name(bid)}): {num_nodes} node(s), {wall_time_min} min, "
               f"{job_mode} mode, queue {queue_name}")
    if not service.running_site(layout):
        click.echo("Note: the site is not running; it submits batch jobs. Run `spool site start`.",
                   err=True)


@queue.command("ls")
@click.option("-h", "--history", is_flag=True, help="Finished batch jobs too.")
@click.option("-v", "--verbose", is_flag=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per batch job (request and state), one per line.")
@click.pass_context
def queue_ls(ctx, history, verbose, as_json):
    """List batch jobs (active ones; --history for all)."""
    from .site import batch
    layout = _site(ctx)
    recs = [r for r in batch.load_all(layout) if history or r["state"] not in batch.FINAL]
    if as_json:
        for r in recs:
            _print_json_line(r)
        return
    if not recs:
        click.echo("No batch jobs." if history else "No active batch jobs (--history for all).")
        return
    click.echo(f"{'ID':>4s} {'Sched ID':14s} {'State':18s} {'Queue':14s} {'Nodes':>5s} "
               f"{'Min':>5s} {'Mode':6s} Tags")
    for r in recs:
        tags = " ".join(f"{k}={v}" for k, v in (r.get("filter_tags") or {}).items())
        click.echo(f"{r['id']:>4s} {str(r.get('scheduler_id') or '-'):14s} {r['state']:18s} "
                   f"{str(r.get('queue')):14s} {r['num_nodes']:>5d} {r['wall_time_min']:>5g} "
                   f"{r['job_mode']:6s} {tags}")
        if verbose:
            for key in ("project", "submit_script", "submit_time", "start_time", "end_time",
                        "exit_code", "nodes"):
                if r.get(key) not in (None, ""):
                    val = _fmt_time(r[key]) if key.endswith("_time") else r[key]
                    click.echo(f"       {key}: {val}")
            for e in r.get("errors") or ():
                click.echo(f"       error {_fmt_time(e['t'])}: {e['error']}")


@queue.command("term")
@click.argument("ident")
@click.pass_context
def queue_term(ctx, ident):
    """Ask the site to delete a batch job (by scheduler id or batch id)."""
    from .site import batch
    layout = _site(ctx)
    for r in batch.load_all(layout):
        if ident in (r["id"], str(r.get("scheduler_id"))):
            if r["state"] in batch.FINAL:
                raise UserError(f"batch job {r['id']} is already {r['state']}")
            fsio.write_atomic(layout.batch / r["id"] / "term", b"requested\n")
            click.echo(f"Batch job {r['id']} ({r.get('scheduler_id') or 'not submitted'}) will be deleted")
            return
    raise UserError(f"no batch job {ident}; see `spool queue ls --history`")


# ---------------------------------------------------------------------------------------
@cli.command("report")
@click.option("-t", "--tag", "-tag", multiple=True, help="Only jobs with tag KEY=VALUE (repeat; all must match).")
@click.option("-o", "--out", type=click.Path(dir_okay=False),
              help="PNG to write [default: report.png]; an explicit --out that cannot be "
                   "written is an error.")
@click.option("--no-png", is_flag=True, help="Print only; write no PNG.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report's numbers as one JSON document (times in minutes from "
                   "the campaign start).")
@click.pass_context
def report_cmd(ctx, tag, out, no_png, as_json):
    """The campaign: jobs finished over time, nodes and tiles busy against the allocation,
    jobs per state, run time per app, failures by reason.

    Prints a one-screen summary (or --json) and writes a four-panel PNG.  Without
    matplotlib it still prints, and says how to get the PNG.
    """
    from .report import plot
    from .gcpause import paused
    from .report.gather import gather
    from .report.numbers import report
    from .report.text import summary
    layout = _site(ctx)
    tags = _kv(tag, "tag")
    _settings(layout)
    path = Path(out or "report.png")
    if not no_png and path.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the report is a PNG; give a name ending in .png")
    if not no_png and not path.resolve().parent.is_dir():
        raise UserError(f"--out {out}: directory {path.resolve().parent} does not exist")
    with paused():
        doc = report(gather(layout, tags))
    if as_json:
        import orjson
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        click.echo(summary(doc))
    if no_png:
        return
    if not plot.available():
        click.echo(f"spool: no PNG written: matplotlib is not installed; {plot.INSTALL_HINT}",
                   err=True)
        if out:
            sys.exit(1)
        return
    try:
        plot.write_png(doc, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    if not as_json:
        click.echo(f"PNG         {path} (4 panels)")


# ---------------------------------------------------------------------------------------
@cli.command("launcher")
@click.option("-j", "--job-mode", type=click.Choice(["mpi", "serial"]), required=True)
@click.option("-t", "--wall-time-min", type=float, required=True)
@click.option("--tag", "-tag", multiple=True, help="Run only jobs with these tags.")
@click.option("--batch-job", help="The batch job this launcher serves.")
@click.option("--idle-ttl", type=float, help="Exit after this many idle seconds.")
@click.option("--max-jobs", type=int, help="Stop after launching this many jobs.")
@click.option("--worker", is_flag=True, hidden=True, help="Serial-mode worker on one node.")
@click.pass_context
def launcher_cmd(ctx, job_mode, wall_time_min, tag, batch_job, idle_ttl, max_jobs, worker):
    """Run jobs in this allocation until the walltime or the work runs out."""
    from .launch.entry import run_launcher
    layout = _site(ctx)
    s = _settings(layout)
    reason = run_launcher(layout, s, mode=job_mode, wall_time_min=wall_time_min,
                          filter_tags=_kv(tag, "tag"), batch_job=batch_job, idle_ttl=idle_ttl,
                          max_jobs=max_jobs, worker=worker)
    click.echo(f"launcher finished: {reason}", err=True)


def main() -> None:
    try:
        cli(prog_name="spool")
    except Exception as e:  # noqa: BLE001 - every failure is one line unless asked
        if os.environ.get("SPOOL_TRACEBACK"):
            raise
        click.echo(f"spool: {e} (set SPOOL_TRACEBACK=1 for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
