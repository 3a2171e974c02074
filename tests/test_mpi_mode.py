"""Real MPICH runs through the launcher on the local machine (hydra, ``-launcher fork``).

A site made as a user makes it (``spool site init S --machine local --gpus 8 --cpus 8``),
its site process running, jobs run by ``spool launcher -j mpi|serial -t 5 --idle-ttl 1``.
Each rank prints its rank, host, gpu mask and OMP_NUM_THREADS; the tests read job.out and
check every rank ran once with its own gpus, and that the record says the same.
"""
from __future__ import annotations

import socket

import pytest

from campaign_helpers import (by_id, diagnostics, exit_reason, finish_launcher,
                              gpu_conflicts, init_site, kill_group, max_concurrency,
                              parse_kv_lines, read_job_out, reap_leftovers, record_intervals,
                              records, run_intervals, run_launcher, start_launcher, start_site,
                              starts_per_job, stop_site, submit, wait_until, write_app)
from sched_fixtures import require_mpiexec

pytestmark = pytest.mark.mpi

RANKS_CMD = ("sh -c 'echo rank=$PMI_RANK host=$(hostname) gpus=$CUDA_VISIBLE_DEVICES "
             "omp=$OMP_NUM_THREADS job=$SPOOL_JOB_ID'")


@pytest.fixture
def mpi_site(tmp_path):
    require_mpiexec()
    site = init_site(tmp_path / "S", "local", "--gpus", "8", "--cpus", "8")
    write_app(site, "ranks", {"description": "print each rank's view",
                              "command_template": RANKS_CMD})
    write_app(site, "tile", {"command_template": "sh -c 'echo gpus=$CUDA_VISIBLE_DEVICES; "
                                                 "sleep {{ secs }}'"})
    pid = start_site(site)
    try:
        yield site
    finally:
        stop_site(site, pid)
        reap_leftovers(site)


def _wait_ready(site, ids, timeout=20):
    wait_until(lambda: sorted(r["id"] for r in records(site, "ready")),
               lambda got: set(ids) <= set(got), timeout, "the site to publish the jobs", site)


def _check_ranks(site, rec, *, ranks, gpus_per_rank, threads, prepend=False):
    """job.out has one line per rank; each rank has its own gpus; all agree with the record."""
    out = read_job_out(site, rec)
    lines = parse_kv_lines(out)
    ctx = f"job {rec['id']} job.out:\n{out}\nrecord placement {rec.get('placement')} " \
          f"affinity {rec.get('affinity')}"
    assert len(lines) == ranks, ctx
    assert sorted(int(d["rank"]) for d in lines) == list(range(ranks)), ctx
    host = socket.gethostname()
    assert {d["host"] for d in lines} == {host}, ctx
    assert {d["job"] for d in lines} == {rec["id"]}, ctx
    assert {d["omp"] for d in lines} == {str(threads)}, ctx
    if prepend:   # launch_params {prepend_rank: ""} reached hydra as -prepend-rank
        assert all(d.get("prefix") == d["rank"] for d in lines), ctx
    else:
        assert not any("prefix" in d for d in lines), ctx

    placement = rec["placement"]
    assert placement["hosts"] == [host], ctx
    job_gpus = placement["gpus"][0]
    assert len(job_gpus) == ranks * gpus_per_rank, ctx
    per_rank = {int(d["rank"]): d["gpus"].split(",") for d in lines}
    seen: set[str] = set()
    for r in range(ranks):
        mine = per_rank[r]
        assert len(mine) == gpus_per_rank, f"rank {r} got {mine}; {ctx}"
        assert not seen & set(mine), f"rank {r} shares gpus {seen & set(mine)}; {ctx}"
        seen |= set(mine)
        # rank r gets its own slice of the job's gpus, in order
        assert mine == job_gpus[r * gpus_per_rank:(r + 1) * gpus_per_rank], ctx
    assert seen == set(job_gpus), ctx
    aff = rec.get("affinity") or {}
    assert aff.get("variable") == "CUDA_VISIBLE_DEVICES", ctx
    assert aff.get("rank_masks") == [",".join(per_rank[r]) for r in range(ranks)], ctx


@pytest.mark.parametrize("mode", ["mpi", "serial"])
def test_four_rank_jobs_get_own_gpus_threads_and_launch_params(mpi_site, mode):
    """A 4-rank job (2 gpus per rank) really runs 4 ranks through mpiexec in both modes."""
    site = mpi_site
    plain, threaded = submit(site, [
        {"app": "ranks", "workdir": "plain", "ranks_per_node": 4, "gpus_per_rank": 2},
        {"app": "ranks", "workdir": "threaded", "ranks_per_node": 4, "gpus_per_rank": 2,
         "threads_per_rank": 2, "launch_params": {"prepend_rank": ""}},
    ])
    _wait_ready(site, [plain, threaded])

    rc, err = run_launcher(site, "-j", mode, "-t", 5, "--idle-ttl", 1, timeout=60)
    assert rc == 0, err + diagnostics(site)
    assert exit_reason(err).startswith("idle"), err

    recs = by_id(site)
    for job_id in (plain, threaded):
        assert recs[job_id]["state"] == "JOB_FINISHED", diagnostics(site)
        assert recs[job_id]["return_code"] == 0
    _check_ranks(site, recs[plain], ranks=4, gpus_per_rank=2, threads=1)
    _check_ranks(site, recs[threaded], ranks=4, gpus_per_rank=2, threads=2, prepend=True)
    # 4 ranks x 2 threads = all 8 cores: the threaded job's placement holds every core.
    assert sorted(recs[threaded]["placement"]["cpus"][0]) == list(range(8))
    assert len(recs[plain]["placement"]["cpus"][0]) == 4
    assert starts_per_job(site) == {(plain, 1): 1, (threaded, 1): 1}


def test_more_jobs_than_gpus_each_job_starts_once(mpi_site):
    """24 one-gpu jobs on 8 gpus: every job starts exactly once, no gpu is held twice.

    Guards against a launcher that offers the same ready file to the placer twice (the
    candidate list refilled from a bucket it still holds): the job would be started on two
    gpus at once and the first run's resources leaked.
    """
    site = mpi_site
    ids = submit(site, [{"app": "tile", "workdir": f"t/{i:02d}", "gpus_per_rank": 1,
                         "node_packing_count": 8, "parameters": {"secs": "0.3"}}
                        for i in range(24)])
    _wait_ready(site, ids)

    rc, err = run_launcher(site, "-j", "mpi", "-t", 5, "--idle-ttl", 1, timeout=90)
    assert rc == 0, err + diagnostics(site)

    starts = starts_per_job(site)
    twice = {k: n for k, n in starts.items() if n != 1}
    assert not twice, f"jobs started more than once: {twice}\n{err}"
    assert sorted(j for j, _ in starts) == sorted(ids)
    assert "24 launched, 0 of them as standbys, 24 finished" in (site / "log").joinpath(
        next(p.name for p in (site / "log").glob("launcher-*.log"))).read_text()

    done = records(site, "done")
    assert sorted(r["id"] for r in done) == sorted(ids), diagnostics(site)
    # Each done record carries its run (merged from the launcher's events by the site).
    unmerged = [r["id"] for r in done if not r.get("placement") or r.get("return_code") != 0
                or not r.get("started_at") or not r.get("launcher")]
    assert not unmerged, (f"{len(unmerged)} done record(s) lack their run details "
                          f"(placement, return_code, started_at, launcher): {unmerged}")
    runs = run_intervals(site)
    assert not gpu_conflicts(runs), gpu_conflicts(runs)
    assert not gpu_conflicts(record_intervals(done))
    assert 1 < max_concurrency(runs) <= 8
    for r in done:
        out = read_job_out(site, r).split()
        assert out == [f"gpus={r['placement']['gpus'][0][0]}"], (r["id"], out)


def test_jobs_waiting_for_a_busy_node_start_once_when_it_frees(mpi_site):
    """A job holding all 8 gpus runs; two one-gpu jobs arrive and wait; when the big one
    ends both start -- each exactly once, on different gpus.

    While they wait, the launcher keeps rescanning ready/; a candidate list that grows a
    second copy of the same file lets the placer start one job twice when 8 gpus free up
    at once (the first run's process and resources are then lost to the launcher).
    """
    site = mpi_site
    [big] = submit(site, [{"app": "tile", "workdir": "big", "gpus_per_rank": 8,
                           "parameters": {"secs": "2"}}])
    _wait_ready(site, [big])
    proc = start_launcher(site, "-j", "mpi", "-t", 5, "--idle-ttl", 1)
    try:
        wait_until(lambda: [r["id"] for r in records(site, "running")], lambda ids: big in ids,
                   20, "the 8-gpu job to be claimed", site, interval=0.02)
        small = submit(site, [{"app": "tile", "workdir": f"small{i}", "gpus_per_rank": 1,
                               "node_packing_count": 8, "parameters": {"secs": "0.5"}}
                              for i in range(2)])
        _wait_ready(site, small)
        assert big in [r["id"] for r in records(site, "running")], \
            "the 8-gpu job ended before the small ones were ready: make it sleep longer"
        _, err = finish_launcher(proc, site, 60)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err
    starts = starts_per_job(site)
    assert starts == {(big, 1): 1, (small[0], 1): 1, (small[1], 1): 1}, (
        f"starts per job: {starts}\n{err}\n{diagnostics(site)}")
    runs = run_intervals(site)
    assert not gpu_conflicts(runs), gpu_conflicts(runs)
    assert all(r["end"] is not None for r in runs), f"runs never reaped: {runs}"
    assert sorted(r["id"] for r in records(site, "done")) == sorted([big, *small])
