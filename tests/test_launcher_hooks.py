"""Python apps' hooks through a real launcher: a slow hook never holds up the other jobs,
and a hook still running when the launcher stops sends its job back for another attempt."""
from __future__ import annotations

import os
import signal
import time

import pytest

from spoolbalsam.api import ApplicationDefinition

from helpers import (drop, edit_settings, ids_in, job, record, start_launcher, wait_for)


def _wait_gate(job_view, what: str) -> None:
    """Mark that the hook has begun, then wait (at most 60 s) for the test's gate file."""
    wd = os.getcwd()
    open(os.path.join(wd, f"{what}.began"), "w").close()
    gate = job_view.parameters["gate"]
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)


class GatedPost(ApplicationDefinition):
    command_template = "echo ran {{ gate }}"

    def postprocess(self):
        _wait_gate(self.job, "post")
        self.job.data = {"post": "done"}


class GatedPre(ApplicationDefinition):
    command_template = "echo ran {{ gate }}"

    def preprocess(self):
        _wait_gate(self.job, "pre")
        self.job.data = {"pre": "done"}


def _sync(site) -> None:
    for cls in (GatedPost, GatedPre):
        cls.site = str(site)
        cls.sync()


def _others_finish_while_the_hook_waits(site, tmp_path, app: str, hook: str) -> dict:
    """One job of ``app`` whose ``hook`` waits for a gate, six plain jobs dropped once the
    hook has begun: all six finish while the hook still waits, and the hooked job is still
    in running/.  Then the gate opens; the hooked job's record, once finished."""
    _sync(site)
    gate = tmp_path / f"open-{hook}"
    drop(site, "gated.json", job(app=app, workdir="hooks/gated", id="gated",
                                 parameters={"gate": str(gate)}, node_packing_count=4))
    wait_for(lambda: "gated" in ids_in(site, "ready"), 20, "the gated job ready")
    start_launcher(site, idle_ttl=30)
    wait_for(lambda: (site / f"data/hooks/gated/{hook}.began").exists(), 60, f"its {hook}")
    for i in range(6):
        drop(site, f"q{i}.json", job(workdir=f"hooks/q{i}", id=f"q{i}", node_packing_count=4))
    wait_for(lambda: {f"q{i}" for i in range(6)} <= set(ids_in(site, "done")), 60,
             "the other jobs done while the hook runs")
    assert "gated" in ids_in(site, "running")          # the hooked job waits for its hook
    if hook == "pre":
        assert not (site / "data/hooks/gated/job.out").exists()   # not started before it
    gate.touch()
    wait_for(lambda: record(site, "gated").get("state") == "JOB_FINISHED", 60, "the hooked job")
    return record(site, "gated")


def test_a_slow_postprocess_holds_up_no_other_job(running_site, tmp_path):
    rec = _others_finish_while_the_hook_waits(running_site, tmp_path, "GatedPost", "post")
    assert rec["data"] == {"post": "done"} and rec["return_code"] == 0
    assert [h["to"] for h in rec["history"]][-3:] == ["RUN_DONE", "POSTPROCESSED",
                                                      "JOB_FINISHED"]


def test_a_slow_preprocess_holds_up_no_other_job(running_site, tmp_path):
    rec = _others_finish_while_the_hook_waits(running_site, tmp_path, "GatedPre", "pre")
    assert rec["data"] == {"pre": "done"} and rec["return_code"] == 0
    steps = [h["to"] for h in rec["history"]]
    assert steps.index("PREPROCESSED") < steps.index("RUNNING")


def test_a_hook_running_when_the_launcher_stops_sends_its_job_back(running_site, tmp_path):
    site = running_site
    _sync(site)
    edit_settings(site, {"launcher": {"sigterm_grace_sec": 1}})
    drop(site, "cut.json", job(app="GatedPost", workdir="hooks/cut", id="cut",
                               parameters={"gate": str(tmp_path / "never")}))
    wait_for(lambda: "cut" in ids_in(site, "ready"), 20, "the gated job ready")
    proc = start_launcher(site, idle_ttl=30)
    wait_for(lambda: (site / "data/hooks/cut/post.began").exists(), 60, "its postprocess")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    wait_for(lambda: "cut" in ids_in(site, "ready"), 20, "the job back in ready/")
    rec = record(site, "cut")
    assert rec["attempt"] == 2 and rec["state"] == "RESTART_READY", rec
    assert "postprocess stopped" in rec["history"][-1].get("msg", ""), rec["history"][-1]
    assert not [p for p in (site / "data/hooks/cut").iterdir() if p.name.startswith(".spool-hook")]


def _hook_child(site, job_id: str) -> int | None:
    """The pid of the process running a hook of ``job_id`` (its environment says so)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
            env = open(f"/proc/{d}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"spoolbalsam.api.child\0hook" in cmd and f"SPOOL_JOB_ID={job_id}".encode() in env:
            return int(d)
    return None


@pytest.mark.parametrize("app, hook", [("GatedPost", "post"), ("GatedPre", "pre")])
def test_a_hook_killed_from_outside_sends_its_job_back_for_another_attempt(
        running_site, tmp_path, app, hook):
    """Found by the kill soak: a hook child killed with SIGKILL (the OOM killer, an
    operator) failed its job for good, though the hook never gave a verdict.  It is now
    treated as a job killed from outside: another attempt, counted as a timeout."""
    site = running_site
    _sync(site)
    gate = tmp_path / "gate"
    drop(site, "hk.json", job(app=app, workdir="hooks/hk", id="hk",
                              parameters={"gate": str(gate)}))
    wait_for(lambda: "hk" in ids_in(site, "ready"), 20, "the gated job ready")
    start_launcher(site, idle_ttl=30)
    wait_for(lambda: (site / f"data/hooks/hk/{hook}.began").exists(), 60, f"its {hook}")
    pid = wait_for(lambda: _hook_child(site, "hk"), 10, "the hook's process")
    (site / f"data/hooks/hk/{hook}.began").unlink()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (site / f"data/hooks/hk/{hook}.began").exists(), 60, "the next attempt")
    gate.touch()
    wait_for(lambda: record(site, "hk").get("state") == "JOB_FINISHED", 60, "the job finished")
    rec = record(site, "hk")
    assert rec["attempt"] == 2 and rec["retries"]["timeouts"] == 1, rec
    assert any("killed by signal SIGKILL" in (h.get("msg") or "") for h in rec["history"])
    assert not [p for p in (site / "data/hooks/hk").iterdir() if p.name.startswith(".spool-hook")]
