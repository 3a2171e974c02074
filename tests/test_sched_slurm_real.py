"""The Slurm backend against a real Slurm (tests/infra/slurm-up.sh, 4 emulated nodes).

Skipped when no controller answers -- except with CI=true, where that is a
failure (see sched_fixtures.require_slurm). Jobs are real rendered job scripts;
the tests wait only by polling with deadlines.
"""
from __future__ import annotations

import shlex
import subprocess

import pytest

from sched_fixtures import (make_job_script, pbs_emulator, poll_until, require_slurm,  # noqa: F401
                            site, slurm_backend)
from spoolbalsam.pbs.base import FINISHED, QUEUED, RUNNING, UNKNOWN, SchedulerError, read_exit_code
from spoolbalsam.pbs.slurm import SlurmBackend, expand_hostlist

pytestmark = pytest.mark.slurm
EMULATED_NODES = {f"n{i}" for i in range(1, 65)} | {"localhost"}


def gated_launcher(site, code=0, extra=""):
    """A launcher that says it started, then waits for a 'go' file and exits with ``code``."""
    started, go = site / "started", site / "go"
    body = (f"{extra} touch {shlex.quote(str(started))}; "
            f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done; exit {code}")
    return "bash -c " + shlex.quote(body), started, go


def submit(backend, script, site, **kw):
    args = dict(queue="debug", project=None, num_nodes=1, wall_time_min=5, job_name=script.stem,
                cwd=site)
    args.update(kw)
    return backend.submit(script, **args)


def state_of(backend, sid):
    return lambda: backend.status([sid])[sid]


def test_held_job_is_queued_then_runs_and_finishes_with_exit_code(slurm_backend, site):
    launcher, started, go = gated_launcher(site, code=3, extra='echo "in $SPOOL_SITE";')
    script = make_job_script(site, "slurm", launcher, queue="debug")
    sid = submit(slurm_backend, script, site, extra={"hold": ""})
    assert sid.isdigit()

    queued = slurm_backend.status([sid])[sid]
    assert (queued.state, queued.raw_state, queued.nodes) == (QUEUED, "PENDING", ())
    assert "Held" in queued.reason

    subprocess.run(["scontrol", "release", sid], check=True, capture_output=True)
    running = poll_until(state_of(slurm_backend, sid), lambda s: s.state == RUNNING, 30,
                         what="released job to run")
    assert running.raw_state == "RUNNING" and len(running.nodes) == 1
    assert set(running.nodes) <= EMULATED_NODES and running.start_time
    poll_until(started.exists, bool, 30, what="launcher to start")

    go.touch()
    final = poll_until(state_of(slurm_backend, sid), lambda s: s.state == FINISHED, 30,
                       what="job to finish")
    assert (final.raw_state, final.exit_code, final.signal) == ("FAILED", 3, None)
    assert final.end_time and final.nodes == running.nodes
    assert read_exit_code(script.with_suffix(".ec")) == 3
    assert f"in {site}" in script.with_suffix(".out").read_text()


def test_successful_job_completes_with_zero(slurm_backend, site):
    script = make_job_script(site, "slurm", "true")
    sid = submit(slurm_backend, script, site)
    final = poll_until(state_of(slurm_backend, sid), lambda s: s.state == FINISHED, 30)
    assert (final.raw_state, final.exit_code) == ("COMPLETED", 0)
    assert read_exit_code(script.with_suffix(".ec")) == 0


def test_cancel_running_job(slurm_backend, site):
    launcher, started, _go = gated_launcher(site)
    script = make_job_script(site, "slurm", launcher)
    sid = submit(slurm_backend, script, site)
    poll_until(started.exists, bool, 30, what="launcher to start")
    assert slurm_backend.status([sid])[sid].state == RUNNING

    slurm_backend.cancel(sid)
    final = poll_until(state_of(slurm_backend, sid), lambda s: s.state == FINISHED, 30,
                       what="cancelled job to finish")
    assert final.raw_state == "CANCELLED"
    # The script traps SIGTERM, passes it on and records the launcher's own exit code.
    assert poll_until(lambda: read_exit_code(script.with_suffix(".ec")), lambda c: c is not None,
                      15, what=".ec file") == 143
    slurm_backend.cancel(sid)   # finished: not an error


def test_multinode_job_nodelist(slurm_backend, site):
    report = site / "nodes.txt"
    launcher = "bash -c " + shlex.quote(
        f'echo "$SLURM_JOB_NODELIST" > {shlex.quote(str(report))}; '
        f'srun -N 2 -n 2 printenv SLURMD_NODENAME | sort >> {shlex.quote(str(report))}')
    script = make_job_script(site, "slurm", launcher, num_nodes=2)
    sid = submit(slurm_backend, script, site, num_nodes=2)
    final = poll_until(state_of(slurm_backend, sid), lambda s: s.state == FINISHED, 60,
                       what="2-node job to finish")
    assert final.exit_code == 0, script.with_suffix(".out").read_text()
    assert len(final.nodes) == 2 and set(final.nodes) <= EMULATED_NODES
    nodelist, *per_task = report.read_text().split()
    assert expand_hostlist(nodelist) == final.nodes
    assert sorted(per_task) == sorted(final.nodes)   # srun really ran on both nodes


def test_unknown_ids(slurm_backend):
    got = slurm_backend.status(["999999", "999998"])
    assert {s.state for s in got.values()} == {UNKNOWN}
    slurm_backend.cancel("999999")   # unknown: not an error


def test_mixed_known_and_unknown_ids_in_one_call(slurm_backend, site):
    script = make_job_script(site, "slurm", "true")
    sid = submit(slurm_backend, script, site)
    got = poll_until(lambda: slurm_backend.status([sid, "999999"]),
                     lambda g: g[sid].state == FINISHED, 30)
    assert got["999999"].state == UNKNOWN and got[sid].exit_code == 0


def test_sacct_is_asked_once_when_accounting_is_disabled(site):
    require_slurm()
    require = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True)
    disabled = "accounting storage is disabled" in (require.stdout + require.stderr)
    backend = SlurmBackend()
    assert backend.status(["999997"])["999997"].state == UNKNOWN
    assert backend.use_sacct is (False if disabled else True)


def test_submit_to_missing_partition_raises(slurm_backend, site):
    script = make_job_script(site, "slurm", "true")
    with pytest.raises(SchedulerError) as err:
        submit(slurm_backend, script, site, queue="no-such-partition")
    assert "sbatch" in str(err.value) and "rc=" in str(err.value)


# ----------------------------------------------------------------------------- one contract, every backend

@pytest.fixture(params=["local", "slurm", "pbs"])
def any_backend(request, tmp_path, monkeypatch):
    """(backend, machine template, unknown id) for each implementation of the protocol."""
    if request.param == "local":
        from spoolbalsam.pbs.local import LocalBackend
        return LocalBackend(state_dir=tmp_path / "local-state"), "local", "999999999"
    if request.param == "slurm":
        require_slurm(min_nodes=2)
        return SlurmBackend(), "slurm", "999999"
    backend = request.getfixturevalue("pbs_emulator")
    return backend, "aurora", "999999.pbs-emulator"


def test_contract_lifecycle(any_backend, site):
    backend, machine, unknown = any_backend
    launcher, started, go = gated_launcher(site, code=3)
    script = make_job_script(site, machine, launcher, project="demo", queue="debug")
    sid = backend.submit(script, queue="debug", project="demo", num_nodes=1, wall_time_min=5,
                         job_name=script.stem, cwd=site, extra={})
    poll_until(started.exists, bool, 30, what="launcher to start")
    got = backend.status([sid, unknown, sid])
    assert list(got) == [sid, unknown]                       # every id once, keyed as asked
    assert got[sid].state == RUNNING and got[unknown].state == UNKNOWN
    go.touch()
    final = poll_until(state_of(backend, sid), lambda s: s.state == FINISHED, 30)
    assert final.exit_code == 3 and read_exit_code(script.with_suffix(".ec")) == 3
    backend.cancel(sid)
    backend.cancel(unknown)
    assert backend.status([]) == {}


def test_contract_cancel_running(any_backend, site):
    backend, machine, _ = any_backend
    launcher, started, _go = gated_launcher(site)
    script = make_job_script(site, machine, launcher, project="demo", queue="debug")
    sid = backend.submit(script, queue="debug", project="demo", num_nodes=1, wall_time_min=5,
                         job_name=script.stem, cwd=site, extra={})
    poll_until(started.exists, bool, 30, what="launcher to start")
    backend.cancel(sid)
    poll_until(state_of(backend, sid), lambda s: s.state == FINISHED, 30)
    assert poll_until(lambda: read_exit_code(script.with_suffix(".ec")), lambda c: c is not None,
                      15, what=".ec file") == 143
