"""Checking a job against the site: app, parameters, resources, id, parents.

``check_job`` is the one validation every path uses: the site's intake of dropped files,
``spool job create`` and the Python API (which check before writing, so the user hears at
once) all call it; the site re-checks on intake, since anything can write ``created/``.
It decides where a valid job goes: ``ready``, ``stagein`` (its inputs are to be staged
in first), ``waiting`` (a parent not done yet) or ``failed`` (a parent failed).  A job with
``transfers`` gets its ``transfer_items`` here (``transfer.items.resolve``) against the
app's slots and the site's ``locations``.  Every refusal is an ``InvalidJob`` naming the
source and the field.
"""
from __future__ import annotations

import functools

from ..spool import states as S
from ..spool import fsio
from ..spool.record import InvalidJob, transition
from ..spool.store import BULK
from ..transfer import items as transfer_items


RESOURCE_FIELDS = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core",
                   "gpus_per_rank", "node_packing_count")

MAX_COMMAND = 128 * 1024   # MAX_ARG_STRLEN: a command run by ``sh -c`` is one argument


def resource_problem(rec: dict, machine) -> tuple[str, str] | None:
    """(field, reason) if the job can never fit one node of ``machine``."""
    if machine is None:
        return None
    queues = getattr(machine, "queues", None) or {}
    biggest = None
    if queues:
        q = max(queues, key=lambda n: queues[n].max_nodes)
        biggest = (q, queues[q].max_nodes)
    return _resource_problem(tuple(rec.get(f) for f in RESOURCE_FIELDS), machine.name,
                             machine.cpus_per_node, len(machine.gpu_ids), biggest)


@functools.lru_cache(maxsize=4096)
def _resource_problem(values: tuple, name: str, cpus: int, gpus: int,
                      biggest: tuple | None = None) -> tuple[str, str] | None:
    """``resource_problem`` of one shape of job on one shape of node (the jobs of a
    campaign come in a few shapes)."""
    from ..launch.resources import Request
    try:
        req = Request.from_job(dict(zip(RESOURCE_FIELDS, values)))
    except ValueError as e:
        return "node_packing_count", str(e)
    if biggest and req.num_nodes > biggest[1]:
        return ("num_nodes", f"asks {req.num_nodes} nodes; the largest queue of machine "
                f"{name} ({biggest[0]}) gives at most {biggest[1]}")
    if req.cpus_per_node > cpus:
        return ("ranks_per_node", f"asks {req.cpus_per_node} cores per node (ranks x threads / "
                f"threads_per_core); nodes of machine {name} have {cpus}")
    if req.gpus_per_node > gpus:
        return ("gpus_per_rank", f"asks {req.gpus_per_node} GPUs per node (ranks x gpus_per_rank); "
                f"nodes of machine {name} have {gpus}")
    return None


def check_job(rec: dict, source: str, apps, store, machine, published: dict | None = None,
              limbo: dict | None = None, intake: bool = False,
              minted: bool = False, locations: dict | None = None) -> tuple[dict | None, str]:
    """(record in its first state, directory) — or (None, dir) if it is already in the site
    from this very file (``intake_digest`` matches: a crash after publishing).  ``store``
    answers ``locate(job_id, limbo)``: a ``Store``, or the site, which asks its query index
    first (``Site.locate``).  ``intake``:
    the caller is the site taking the job in, not a submitter checking before the drop.
    ``minted``: the caller has just generated the id (``ids.new_id``, 80 random bits), so it
    is not looked up; the site's intake looks up every id it takes in.  ``locations``: the
    site's transfer locations (``settings.transfer_locations``)."""
    published = published if published is not None else {}
    job_id = rec["id"]
    if job_id in published:
        raise InvalidJob(source, "id", f"{job_id!r} was submitted twice in the same batch")
    found = None if minted else store.locate(job_id, limbo)
    # At intake a job found in created/ is another drop of the same id, not yet taken in:
    # the first taken in wins.  A job of a bulk drop is taken in already (or is being).
    if found and found[0] == "created" and (not intake or found[1].name.endswith(BULK)):
        raise InvalidJob(source, "id", f"job {job_id} was already submitted and waits for the "
                         "site to take it in (jobs/created/); choose another id")
    if found and found[0] != "created":
        try:
            existing = fsio.read_json(found[1])
        except (FileNotFoundError, ValueError):
            existing = {}
        if rec.get("intake_digest") and existing.get("intake_digest") == rec["intake_digest"]:
            return None, found[0]
        raise InvalidJob(source, "id", f"job {job_id} already exists (in jobs/{found[0]}/); "
                         "submit without an id to get a fresh one")
    app = apps.get(rec["app"])
    if app is None:
        err = apps.errors.get(rec["app"])
        if err:
            raise InvalidJob(source, "app", f"app {rec['app']} is broken: {err}")
        known = ", ".join(apps.names()) or "none yet"
        raise InvalidJob(source, "app", f"unknown app {rec['app']!r} (known: {known}); "
                         f"add apps/{rec['app']}.yml")
    problem = app.check_parameters(rec["parameters"])
    if problem:
        raise InvalidJob(source, "parameters", problem)
    if app.command_template:
        try:
            app.check_render(rec["parameters"])
        except Exception as e:  # jinja2 errors: the app's template with these values
            raise InvalidJob(source, "parameters", f"app {app.name} cannot render: {e}") from None
        # the command holds every value (quoted): their size alone says it cannot be run
        size = sum(len(str(v).encode(errors="surrogatepass")) for v in rec["parameters"].values())
        if size > MAX_COMMAND:
            raise InvalidJob(source, "parameters", f"make a command of over {size} bytes; the "
                             f"kernel passes at most {MAX_COMMAND} in one argument (put large "
                             "inputs in a file in the job's workdir)")
    bad = resource_problem(rec, machine)
    if bad:
        raise InvalidJob(source, bad[0], bad[1])
    if rec.get("transfers") or app.transfers:
        try:
            items = transfer_items.resolve(rec.get("transfers") or {}, app.transfers,
                                           locations or {}, rec["workdir"], app.name)
        except ValueError as e:
            raise InvalidJob(source, "transfers", str(e)) from None
        rec = {**rec, "transfer_items": items} if items else rec
    failed_parent, waiting = None, False
    for p in rec["parent_ids"]:
        if p == job_id:
            raise InvalidJob(source, "parent_ids", "a job cannot be its own parent")
        where = published.get(p)
        if where is None:
            where = store.where(p, limbo)
        if where is None:
            raise InvalidJob(source, "parent_ids", f"parent {p} does not exist in this site")
        if where == "failed":
            failed_parent = p
        elif where != "done":
            waiting = True
    if failed_parent:
        msg = f"parent {failed_parent} failed"
        return transition(rec, S.FAILED, "site", msg, error=msg), "failed"
    if waiting:
        return transition(rec, S.AWAITING_PARENTS, "site"), "waiting"
    return transition(rec, S.READY, "site"), first_dir(rec)


def first_dir(rec: dict) -> str:
    """Where a job whose parents are all done goes: ``stagein`` while it has inputs to
    stage in (launchers never look there), else ``ready``."""
    return "stagein" if transfer_items.stage_in_left(rec) else "ready"


def parents_first(items: list, rec=lambda item: item) -> tuple[list, list]:
    """``items`` (records, or tuples holding one: ``rec`` picks it) ordered so that a
    parent among them comes before its children (Kahn's algorithm, in linear time; parents
    outside ``items`` are the site's business): ``(ordered, stuck)``, where ``stuck`` are
    the items in or behind a cycle of parents, in their given order."""
    ids = {rec(it)["id"] for it in items}
    waiting_on = [sum(1 for p in rec(it)["parent_ids"] if p in ids) for it in items]
    children: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        for p in rec(it)["parent_ids"]:
            if p in ids:
                children.setdefault(p, []).append(i)
    order = [i for i, n in enumerate(waiting_on) if n == 0]
    k = 0
    while k < len(order):
        for c in children.get(rec(items[order[k]])["id"], ()):
            waiting_on[c] -= 1
            if waiting_on[c] == 0:
                order.append(c)
        k += 1
    stuck = [it for i, it in enumerate(items) if waiting_on[i] > 0]
    return [items[i] for i in order], stuck
