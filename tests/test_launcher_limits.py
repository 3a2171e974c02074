"""The launcher's limits, with real processes on the local machine.

(a) the mpiexec budget (``launcher.max_mpiexec_per_batch_job`` in settings.yml): the launcher
    stops claiming at the limit, lets its jobs finish, exits naming the budget, and leaves the
    rest in ready/ untouched for the next launcher;
(b) the walltime: a job runs only if its ``wall_time_min`` fits the time left; near the end
    running jobs get SIGTERM, are recorded RUN_TIMEOUT and go back to ready/ (attempt + 1);
(c) ``max_concurrent_mpiruns``: never more MPI runs at once than the limit.
"""
from __future__ import annotations

import time

import pytest

from campaign_helpers import (by_id, cli, diagnostics, edit_settings, exit_reason, init_site,
                              max_concurrency, reap_leftovers, record_intervals, records,
                              run_intervals, run_launcher, start_site, starts_per_job, stop_site,
                              submit, wait_until, write_app)
from sched_fixtures import require_mpiexec

pytestmark = pytest.mark.mpi

TERM_AWARE = ("sh -c 'echo started; trap \"echo got TERM; exit 143\" TERM; "
              "sleep {{ secs }} & wait'")


def _site(tmp_path, launcher_settings: dict):
    site = init_site(tmp_path / "S", "local", "--gpus", "8", "--cpus", "8")
    edit_settings(site, {"launcher": launcher_settings})
    write_app(site, "quick", {"command_template": "sh -c 'echo ok rank=$PMI_RANK; "
                                                  "sleep {{ secs }}'"})
    write_app(site, "term", {"command_template": TERM_AWARE})
    return site


@pytest.fixture
def limits_site(tmp_path, request):
    """A started local site; the test's ``launcher:`` settings come from the param."""
    require_mpiexec()
    site = _site(tmp_path, request.param)
    pid = start_site(site)
    try:
        yield site
    finally:
        stop_site(site, pid)
        reap_leftovers(site)


def _ready_ids(site) -> list[str]:
    """Job ids `spool job ls --state ready` prints."""
    out = cli(site, "job", "ls", "--state", "ready").stdout
    return sorted(line.split()[0] for line in out.splitlines()[1:] if line.strip()
                  and not line.startswith("No jobs"))


def _wait_ready(site, ids, timeout=20):
    wait_until(lambda: sorted(r["id"] for r in records(site, "ready")),
               lambda got: set(ids) <= set(got), timeout, "the site to publish the jobs", site)


def _ready_bytes(site) -> dict[str, bytes]:
    return {r["id"]: open(r["_path"], "rb").read() for r in records(site, "ready")}


# ----------------------------------------------------------------------------- (a) budget

@pytest.mark.parametrize("limits_site", [{"max_mpiexec_per_batch_job": 3}], indirect=True)
def test_mpiexec_budget_stops_the_launcher_and_leaves_the_rest_untouched(limits_site):
    site = limits_site
    ids = submit(site, [{"app": "quick", "workdir": f"q{i}", "ranks_per_node": 2,
                         "node_packing_count": 4, "parameters": {"secs": "0.3"}}
                        for i in range(6)])
    _wait_ready(site, ids)
    before = _ready_bytes(site)

    rc, err = run_launcher(site, "-j", "mpi", "-t", 5, "--idle-ttl", 1, timeout=60)
    assert rc == 0, err
    reason = exit_reason(err)
    assert "mpiexec budget" in reason and "3" in reason, reason

    done1 = sorted(r["id"] for r in records(site, "done"))
    left = _ready_ids(site)
    assert len(done1) == 3, diagnostics(site)
    assert sorted(done1 + left) == sorted(ids)
    assert sum(starts_per_job(site).values()) == 3, starts_per_job(site)
    # The three left over were never claimed: byte for byte what the site published.
    for job_id in left:
        rec = by_id(site)[job_id]
        assert rec["state"] == "READY" and rec["attempt"] == 1, rec
        assert open(rec["_path"], "rb").read() == before[job_id], f"job {job_id} was rewritten"

    rc, err = run_launcher(site, "-j", "mpi", "-t", 5, "--idle-ttl", 1, timeout=60)
    assert rc == 0, err
    assert sorted(r["id"] for r in records(site, "done")) == sorted(ids), diagnostics(site)
    assert _ready_ids(site) == []
    starts = starts_per_job(site)
    assert starts == {(j, 1): 1 for j in ids}, starts
    for r in records(site, "done"):
        lines = (site / "data" / r["workdir"] / "job.out").read_text().split("\n")
        assert sorted(ln for ln in lines if ln) == ["ok rank=0", "ok rank=1"], (r["id"], lines)


@pytest.mark.parametrize("limits_site", [{"max_mpiexec_per_batch_job": 2}], indirect=True)
def test_mpiexec_budget_in_serial_mode_counts_only_multi_rank_jobs(limits_site):
    """Serial mode starts single-rank jobs directly (free) and multi-rank ones through mpiexec
    (counted): with a budget of 2, all 4 single-rank jobs and 2 of 3 multi-rank jobs run, the
    third waits in ready/ -- and the launcher still exits (it must not spin until walltime)."""
    site = limits_site
    multi = submit(site, [{"app": "quick", "workdir": f"m{i}", "ranks_per_node": 2,
                           "node_packing_count": 4, "parameters": {"secs": "0.2"}}
                          for i in range(3)])
    single = submit(site, [{"app": "quick", "workdir": f"s{i}", "node_packing_count": 4,
                            "parameters": {"secs": "0.2"}} for i in range(4)])
    _wait_ready(site, multi + single)

    t0 = time.monotonic()
    rc, err = run_launcher(site, "-j", "serial", "-t", 5, "--idle-ttl", 1, timeout=45)
    took = time.monotonic() - t0
    assert rc == 0, err
    assert took < 30, f"launcher took {took:.0f} s to give up on a job it may not start\n{err}"
    done = {r["id"] for r in records(site, "done")}
    assert set(single) <= done, diagnostics(site)
    assert len(done & set(multi)) == 2, diagnostics(site)
    assert _ready_ids(site) == sorted(set(multi) - done)


# ----------------------------------------------------------------------------- (b) walltime

@pytest.mark.parametrize("limits_site", [{"walltime_margin_min": 1, "sigterm_grace_sec": 3}],
                         indirect=True)
def test_walltime_sigterms_running_jobs_and_never_starts_jobs_that_cannot_fit(limits_site):
    """``-t 1.1`` with a 1-minute margin: the launcher stops ~6 s in."""
    site = limits_site
    share = {"node_packing_count": 4}          # all four could share the node
    long_job, fits, later, too_long = submit(site, [
        {"app": "term", "workdir": "long", "parameters": {"secs": "60"}, **share},
        {"app": "quick", "workdir": "fits", "wall_time_min": 0.05, "parameters": {"secs": "0"},
         **share},
        {"app": "quick", "workdir": "later", "wall_time_min": 1.0, "parameters": {"secs": "0"},
         **share},
        {"app": "quick", "workdir": "toolong", "wall_time_min": 5, "parameters": {"secs": "0"},
         **share},
    ])
    _wait_ready(site, [long_job, fits, later, too_long])
    before = _ready_bytes(site)

    t0 = time.monotonic()
    rc, err = run_launcher(site, "-j", "serial", "-t", 1.1, "--idle-ttl", 60, timeout=40)
    took = time.monotonic() - t0
    assert rc == 0, err
    assert "walltime" in exit_reason(err), err
    assert 5 <= took < 6 + 3 + 10, f"launcher ran {took:.1f} s\n{err}"

    recs = by_id(site)
    # The running job was stopped with SIGTERM (its trap ran), recorded RUN_TIMEOUT, and is
    # ready again for the next allocation with attempt 2.
    lj = recs[long_job]
    assert lj["_dir"] == "ready" and lj["state"] == "RESTART_READY", lj
    assert lj["attempt"] == 2 and lj["retries"]["timeouts"] == 1, lj
    assert [h["to"] for h in lj["history"]][-3:] == ["RUNNING", "RUN_TIMEOUT", "RESTART_READY"], \
        lj["history"]
    assert (site / "data" / "long" / "job.out").read_text().split("\n")[:2] == \
        ["started", "got TERM"]
    assert lj["return_code"] == 143, lj
    assert lj["ended_at"] - lj["started_at"] < 20, lj
    assert long_job in _ready_ids(site)

    # A job whose wall_time_min fits ran; the two that do not fit the time left never started.
    assert recs[fits]["state"] == "JOB_FINISHED", diagnostics(site)
    started = {j for j, _ in starts_per_job(site)}
    assert started == {long_job, fits}, started
    for job_id in (later, too_long):
        assert recs[job_id]["_dir"] == "ready" and recs[job_id]["attempt"] == 1
        assert open(recs[job_id]["_path"], "rb").read() == before[job_id]


# ----------------------------------------------------------------------------- (c) concurrency

@pytest.mark.parametrize("limits_site", [{"max_concurrent_mpiruns": 2}], indirect=True)
def test_max_concurrent_mpiruns_is_never_exceeded(limits_site):
    site = limits_site
    ids = submit(site, [{"app": "quick", "workdir": f"c{i}", "gpus_per_rank": 1,
                         "node_packing_count": 8, "parameters": {"secs": "0.4"}}
                        for i in range(6)])
    _wait_ready(site, ids)

    rc, err = run_launcher(site, "-j", "mpi", "-t", 5, "--idle-ttl", 1, timeout=60)
    assert rc == 0, err
    done = records(site, "done")
    assert sorted(r["id"] for r in done) == sorted(ids), diagnostics(site)
    assert starts_per_job(site) == {(j, 1): 1 for j in ids}, starts_per_job(site)
    # 8 gpus would allow 6 at once; the limit allows 2 -- and 2 did run together.
    assert max_concurrency(run_intervals(site)) == 2, run_intervals(site)
    recorded = record_intervals(done)
    assert all(r["start"] and r["end"] for r in recorded), recorded
    assert max_concurrency(recorded) == 2, recorded
