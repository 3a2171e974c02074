"""The launcher's job starter, driven directly: real processes, no site."""
from __future__ import annotations

import os
import select
import signal
import time

import pytest

from spoolbalsam.launch.starter import Starter

from helpers import pid_alive, wait_for

ENV = dict(os.environ)


@pytest.fixture
def starter():
    s = Starter()
    yield s
    if not s.dead:
        s.close()


def settle(starter: Starter, cond, timeout: float = 10.0, what: str = "the starter's reply"):
    """Pump replies until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        select.select([starter], [], [], 0.05)
        starter.pump()


def start(starter, key, argv, tmp_path, **kw):
    d = tmp_path / key
    return starter.start(key, argv, str(d), str(d / "job.out"), ENV, {"SPOOL_JOB_ID": key}, **kw)


def test_a_job_runs_in_its_workdir_with_its_output_and_environment(starter, tmp_path):
    c = start(starter, "a", ["sh", "-c", "pwd; echo $SPOOL_JOB_ID; echo err >&2; exit 3"], tmp_path)
    settle(starter, lambda: c.returncode is not None)
    assert c.returncode == 3 and c.pid and c.started_at <= c.ended_at
    assert (tmp_path / "a" / "job.out").read_text().split() == [str(tmp_path / "a"), "a", "err"]


def test_a_command_that_cannot_start_is_reported(starter, tmp_path):
    c = start(starter, "x", ["no-such-program-here"], tmp_path)
    settle(starter, lambda: c.error is not None)
    assert "no-such-program-here" in c.error and c.pid is None


def test_a_standby_starts_once_its_predecessor_is_reaped(starter, tmp_path):
    a = start(starter, "a", ["sleep", "0.3"], tmp_path)
    b = start(starter, "b", ["true"], tmp_path, after="a")
    c = start(starter, "c", ["true"], tmp_path, after="b")       # a chain
    settle(starter, lambda: c.returncode is not None)
    assert a.returncode == b.returncode == 0
    assert a.ended_at <= b.started_at and b.ended_at <= c.started_at


def test_a_standby_behind_a_job_that_could_not_start_starts_at_once(starter, tmp_path):
    a = start(starter, "a", ["no-such-program-here"], tmp_path)
    b = start(starter, "b", ["true"], tmp_path, after="a")
    settle(starter, lambda: b.returncode is not None)
    assert a.error and b.returncode == 0


def test_a_late_standby_is_dropped_with_the_ones_behind_it(starter, tmp_path):
    a = start(starter, "a", ["sleep", "0.3"], tmp_path)
    b = start(starter, "b", ["true"], tmp_path, after="a", by=time.time() + 0.05)
    c = start(starter, "c", ["true"], tmp_path, after="b")
    settle(starter, lambda: a.returncode is not None and c.dropped is not None)
    assert "wall time" in b.dropped and b.pid is None and c.pid is None
    assert not (tmp_path / "b" / "job.out").exists()


def test_a_kill_drops_a_waiting_standby_and_signals_a_running_job(starter, tmp_path):
    a = start(starter, "a", ["sleep", "30"], tmp_path)
    b = start(starter, "b", ["true"], tmp_path, after="a")
    settle(starter, lambda: a.pid is not None)
    b.signal(signal.SIGTERM)
    a.signal(signal.SIGTERM)
    settle(starter, lambda: a.returncode is not None and b.dropped is not None)
    assert a.returncode == -signal.SIGTERM and b.pid is None


def test_the_starter_kills_its_jobs_when_the_launcher_goes(starter, tmp_path):
    a = start(starter, "a", ["sleep", "30"], tmp_path)
    settle(starter, lambda: a.pid is not None)
    starter.close()                      # as when the launcher dies: end of file
    assert starter.returncode == 0
    wait_for(lambda: not pid_alive(a.pid), 10, "the job killed")


def test_the_launcher_kills_the_jobs_of_a_starter_that_died(starter, tmp_path):
    a = start(starter, "a", ["sleep", "30"], tmp_path)
    b = start(starter, "b", ["true"], tmp_path, after="a")
    settle(starter, lambda: a.pid is not None)
    os.kill(starter.pid, signal.SIGKILL)
    settle(starter, lambda: starter.dead)
    # b never reported a start: it may have started unseen, so it is never "dropped" (that
    # would send it back unchanged, to run again as the same attempt)
    assert a.returncode == -signal.SIGKILL and b.pid is None and not b.dropped
    assert b.returncode == -signal.SIGKILL and b.unreported
    wait_for(lambda: not pid_alive(a.pid), 10, "the job killed")
    assert starter.wait(10) == -signal.SIGKILL


def test_a_launcher_kills_the_unreported_runs_of_its_dead_starter(tmp_path):
    """Found by the kill soak: a starter killed after it started a standby and before it
    said so made the launcher send the job back unchanged; it ran again as the same
    attempt while (or after) the unseen first run ran.  The launcher now kills whatever
    runs of such jobs it finds by their environment, and their runs end as killed."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from spoolbalsam.launch.launcher import Launcher
    from spoolbalsam.spool.layout import Layout
    site = tmp_path / "S"
    env = dict(os.environ, SPOOL_SITE=str(site), SPOOL_JOB_ID="unseen")
    unseen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             env=dict(env, SPOOL_JOB_ID="seen"))
    try:
        runs = {j: SimpleNamespace(proc=SimpleNamespace(unreported=(j == "unseen")))
                for j in ("unseen", "seen")}
        Launcher._unreported(SimpleNamespace(layout=Layout(site), running=runs))
        assert unseen.wait(10) == -signal.SIGKILL
        assert other.poll() is None, "a job whose start was reported is not touched here"
        assert not runs["unseen"].proc.unreported
    finally:
        for p in (unseen, other):
            p.kill()
            p.wait()
