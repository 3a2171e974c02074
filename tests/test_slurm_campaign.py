"""Campaigns in a real (emulated) 2-node Slurm allocation, submitted through the site.

Needs Slurm with >= 2 emulated nodes (``bash tests/infra/slurm-up.sh 4`` as root). The site
runs ``--machine slurm`` with fake gpu tiles (``launcher.gpu_ids: 0..3``, 4 cores per node),
so packing is visible even without GPUs; ``spool queue submit`` asks the site for the
allocation, the site sbatches the job script, and the launcher inside drains the spool.

Every MPI job carries ``launch_params {overlap, overcommit}``: the emulated nodes have 2
real cpus (Slurm gives a ``-N 2`` batch job one cpu per node) while the site packs 4 per
node, so srun steps must be allowed to share cpus and to place 4 tasks on 2 cpus.
"""
from __future__ import annotations

import subprocess
import time
from collections import defaultdict

import pytest

from campaign_helpers import (campaign_summary, cli, diagnostics, gpu_conflicts, init_site,
                              max_concurrency, parse_kv_lines, read_job_out, reap_leftovers,
                              record_intervals, records, run_intervals, start_site,
                              starts_per_job, stop_site, submit, wait_until, write_app)
from sched_fixtures import require_slurm

pytestmark = pytest.mark.slurm

WHERE = ("sh -c 'echo rank=$SLURM_PROCID node=$SLURMD_NODENAME gpus=$CUDA_VISIBLE_DEVICES; "
         "sleep {{ secs }}'")
SRUN_SHARING = {"overlap": "", "overcommit": ""}


@pytest.fixture
def slurm_site(tmp_path):
    require_slurm(min_nodes=2)
    site = init_site(tmp_path / "S", "slurm", settings={
        "launcher": {"gpu_ids": ["0", "1", "2", "3"], "cpus_per_node": 4, "idle_ttl_sec": 3},
        "scheduler": {"sync_period_sec": 1,
                      "allowed_queues": {"debug": {"max_nodes": 4, "max_walltime": 60,
                                                   "max_queued_jobs": 4}},
                      "allowed_projects": ["spooltest"]},
    })
    write_app(site, "where", {"description": "say where each rank runs",
                              "command_template": WHERE})
    pid = start_site(site)
    try:
        yield site
    finally:
        _cancel_batch_jobs(site)
        stop_site(site, pid)
        reap_leftovers(site)


def _batch_records(site):
    from spoolbalsam.site import batch
    from spoolbalsam.spool.layout import Layout
    return batch.load_all(Layout(site))


def _cancel_batch_jobs(site):
    """scancel exactly the scheduler ids this site submitted that are not over yet."""
    for rec in _batch_records(site):
        if rec.get("scheduler_id") and rec.get("state") not in ("finished", "submit_failed"):
            subprocess.run(["scancel", str(rec["scheduler_id"])], capture_output=True, timeout=30)


def _queue_submit(site, mode: str) -> str:
    out = cli(site, "queue", "submit", "-n", 2, "-t", 10, "-j", mode).stdout
    assert out.startswith("Batch job "), out
    return out.split()[2]


def _run_campaign(site, ids, bid, timeout, stall=45.0):
    """Wait until every job is done and batch job ``bid`` finished; fail fast on failed jobs,
    on a batch job that ended early, and on no progress for ``stall`` seconds."""
    want = set(ids)
    last = {"done": -1, "at": time.monotonic()}

    def progress():
        c = {r["id"]: r["_dir"] for r in records(site, "done", "failed")}
        done = sum(1 for j in want if c.get(j) == "done")
        failed = sum(1 for j in want if c.get(j) == "failed")
        state = next((r["state"] for r in _batch_records(site) if r["id"] == bid), None)
        return done, failed, state

    def over(v):
        done, failed, state = v
        now = time.monotonic()
        if done != last["done"]:
            last.update(done=done, at=now)
        why = None
        if failed:
            why = f"{failed} job(s) failed"
        elif state in ("finished", "submit_failed") and done < len(want):
            why = f"batch job {bid} is {state} with {done}/{len(want)} done"
        elif state == "running" and done < len(want) and now - last["at"] > stall:
            why = f"no job finished for {stall:g} s ({done}/{len(want)} done)"
        if why:
            raise AssertionError(f"{why}\n{campaign_summary(site)}\n{diagnostics(site)}")
        return done == len(want) and state == "finished"

    t0 = time.monotonic()
    wait_until(progress, over, timeout, f"{len(want)} jobs done and batch job {bid} finished",
               site, interval=0.5)
    return time.monotonic() - t0


def _check_history_shows_finished(site, bid):
    out = cli(site, "queue", "ls", "--history").stdout
    rows = [ln.split() for ln in out.splitlines()[1:]]
    row = next((r for r in rows if r and r[0] == bid), None)
    assert row and row[2] == "finished", out
    rec = next(r for r in _batch_records(site) if r["id"] == bid)
    assert len(rec.get("nodes") or ()) == 2, rec
    return list(rec["nodes"])


def _check_mpi_job(site, rec, *, nodes: int, rpn: int):
    """job.out: every rank once, on the placement's hosts, each with its own gpu id."""
    out = read_job_out(site, rec)
    ctx = f"job {rec['workdir']} ({rec['id']}) job.out:\n{out}\nplacement {rec['placement']}"
    lines = parse_kv_lines(out)
    assert len(lines) == nodes * rpn, ctx
    assert sorted(int(d["rank"]) for d in lines) == list(range(nodes * rpn)), ctx
    hosts = rec["placement"]["hosts"]
    assert len(hosts) == nodes, ctx
    assert {d["node"] for d in lines} == set(hosts), ctx
    for i, host in enumerate(hosts):
        mine = [d for d in lines if d["node"] == host]
        assert len(mine) == rpn, ctx
        gpus = [d["gpus"] for d in mine]
        assert sorted(gpus) == sorted(rec["placement"]["gpus"][i]), ctx   # one distinct id each


def test_mixed_mpi_campaign_in_a_two_node_allocation(slurm_site):
    site = slurm_site
    big = submit(site, [{"app": "where", "workdir": f"big{i}", "num_nodes": 2,
                         "ranks_per_node": 2, "gpus_per_rank": 1, "launch_params": SRUN_SHARING,
                         "parameters": {"secs": "0.5"}} for i in range(2)])
    mid = submit(site, [{"app": "where", "workdir": f"mid{i}", "ranks_per_node": 4,
                         "gpus_per_rank": 1, "launch_params": SRUN_SHARING,
                         "parameters": {"secs": "0.5"}} for i in range(2)])
    tiles = submit(site, [{"app": "where", "workdir": f"tile/{i:03d}", "gpus_per_rank": 1,
                           "node_packing_count": 4, "launch_params": SRUN_SHARING,
                           "parameters": {"secs": "0.3"}} for i in range(100)])
    ids = big + mid + tiles
    bid = _queue_submit(site, "mpi")
    took = _run_campaign(site, ids, bid, timeout=150)
    print(f"mpi campaign: {len(ids)} jobs in {took:.1f} s")
    alloc = _check_history_shows_finished(site, bid)

    done = {r["id"]: r for r in records(site, "done")}
    starts = starts_per_job(site)
    assert starts == {(j, 1): 1 for j in ids}, \
        {k: v for k, v in starts.items() if v != 1 or k[0] not in ids}
    for j in ids:
        assert done[j]["batch_job"] == bid and done[j]["return_code"] == 0, done[j]
        assert set(done[j]["placement"]["hosts"]) <= set(alloc), (done[j]["placement"], alloc)
    assert len({done[j]["launcher"] for j in ids}) == 1       # one MPI-mode launcher

    # No two runs that overlapped in time on one host held the same gpu id -- as the
    # records tell it and as the launcher's own log tells it.
    assert not gpu_conflicts(record_intervals(done[j] for j in ids))
    assert not gpu_conflicts(run_intervals(site))

    for j in big:
        _check_mpi_job(site, done[j], nodes=2, rpn=2)
        assert sorted(done[j]["placement"]["hosts"]) == sorted(alloc)
    for j in mid:
        _check_mpi_job(site, done[j], nodes=1, rpn=4)
    for j in tiles:
        _check_mpi_job(site, done[j], nodes=1, rpn=1)
    tile_hosts = {done[j]["placement"]["hosts"][0] for j in tiles}
    assert tile_hosts == set(alloc), tile_hosts          # both nodes packed with tiles
    # packing: at some moment 4 tiles shared one node
    per_host = defaultdict(list)
    for run in record_intervals(done[j] for j in tiles):
        per_host[run["placement"]["hosts"][0]].append(run)
    assert max(max_concurrency(rs) for rs in per_host.values()) == 4


def test_serial_campaign_one_worker_per_node(slurm_site):
    site = slurm_site
    ids = submit(site, [{"app": "where", "workdir": f"s/{i:03d}", "gpus_per_rank": 1,
                         "node_packing_count": 4, "parameters": {"secs": "0.5"}}
                        for i in range(40)])
    bid = _queue_submit(site, "serial")
    took = _run_campaign(site, ids, bid, timeout=180)
    print(f"serial campaign: {len(ids)} jobs in {took:.1f} s")
    alloc = _check_history_shows_finished(site, bid)

    done = {r["id"]: r for r in records(site, "done")}
    assert starts_per_job(site) == {(j, 1): 1 for j in ids}
    hosts_of = defaultdict(set)
    for j in ids:
        rec = done[j]
        assert rec["batch_job"] == bid and rec["return_code"] == 0, rec
        hosts_of[rec["launcher"]].add(rec["host"])
        # serial mode runs single-rank jobs directly: the gpu variable is set, no srun rank
        lines = parse_kv_lines(read_job_out(site, rec))
        assert len(lines) == 1 and lines[0]["gpus"] == rec["placement"]["gpus"][0][0], rec
    assert set().union(*hosts_of.values()) == set(alloc), dict(hosts_of)   # both nodes ran jobs
    assert len(hosts_of) == 2, dict(hosts_of)                              # two workers ...
    assert all(len(h) == 1 for h in hosts_of.values()), dict(hosts_of)    # ... one per node
    assert not gpu_conflicts(record_intervals(done[j] for j in ids))
    assert not gpu_conflicts(run_intervals(site))


def test_two_rank_job_runs_without_launch_params(slurm_site):
    """The launcher assumes it owns whole nodes; so must the allocation.

    A 2-rank job on one emulated node (2 real cpus) needs no srun sharing flags -- if the
    batch job holds the whole node. ``sbatch -N 2`` alone gets one cpu per node on a
    shared partition, and then srun refuses the step ("More processors requested than
    permitted"): the batch job has to ask for its nodes exclusively.
    """
    site = slurm_site
    [job] = submit(site, [{"app": "where", "workdir": "two", "ranks_per_node": 2,
                           "parameters": {"secs": "0"}}])
    bid = _queue_submit(site, "mpi")
    try:
        _run_campaign(site, [job], bid, timeout=90)
    except AssertionError as e:
        out = site / "data" / "two" / "job.out"
        raise AssertionError(f"job.out: {out.read_text() if out.exists() else '(none)'}\n{e}")
    [rec] = [r for r in records(site, "done") if r["id"] == job]
    lines = parse_kv_lines(read_job_out(site, rec))
    assert sorted(d["rank"] for d in lines) == ["0", "1"], lines
