"""Recovery tied to the scheduler, in-process and deterministic (no Slurm, no sleeping).

A launcher ``L`` "on another host" (its lease written by hand with ``host: elsewhere``, so
the site cannot check its pid) holds jobs in ``jobs/running/L/`` and then stops beating.
The site (``spoolbalsam.site.loop.Site`` with a ``BatchManager`` over a fake backend) is ticked
with explicit monotonic ``now`` values, so staleness needs no waiting:

* stale lease, scheduler says the allocation runs -> *suspect*: the jobs stay where they are;
* the scheduler says it ended -> every job still in ``running/L/`` is revoked to ``ready/``
  with ``attempt + 1`` and a RUN_TIMEOUT in its history -- except a job whose final verdict
  (JOB_FINISHED) is already in L's event log but whose rename never happened: it goes to
  ``done/``, it is not run again.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from queue_helpers import init_site, submit, write_app
from spoolbalsam.site import batch as batch_mod
from spoolbalsam import settings as settings_mod
from spoolbalsam.site.batch import BatchManager
from spoolbalsam.pbs.base import FINISHED, QUEUED, RUNNING, UNKNOWN, SchedStatus, SchedulerError
from spoolbalsam.site.loop import Site
from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import Store, read_job

L = "serial-elsewhere-0001"
STALE = 60.0          # lease_stale_sec
PERIOD = 5.0          # scheduler.sync_period_sec
T0 = 5000.0           # the site's monotonic clock, as the test drives it


class FakeBackend:
    name = "fake"

    def __init__(self):
        self.states: dict[str, SchedStatus] = {}
        self.fail_status = False
        self.submits = 0

    def submit(self, script, **kw):
        self.submits += 1
        sid = f"{700 + self.submits}"
        self.states[sid] = SchedStatus(QUEUED, "PENDING")
        return sid

    def status(self, ids):
        if self.fail_status:
            raise SchedulerError(["squeue"], 1, "slurm_load_jobs error: Socket timed out")
        return {i: self.states.get(i, SchedStatus(UNKNOWN, "")) for i in ids}

    def cancel(self, sched_id):
        pass


class World:
    """A site with one batch job (fake scheduler id) and launcher L holding three jobs."""

    def __init__(self, tmp_path: Path):
        self.root = init_site(tmp_path / "S", "slurm", "-A", "proj", settings={
            "lease_stale_sec": STALE,
            "scheduler": {"sync_period_sec": PERIOD, "allowed_projects": ["proj"],
                          "allowed_queues": {"debug": {"max_nodes": 4, "max_walltime": 60,
                                                       "max_queued_jobs": 4}}}},
            replace=("scheduler.allowed_queues",))
        write_app(self.root, "nap", {"command_template": "sleep 30",
                                     "retry": {"errors": 0, "timeouts": 3}})
        self.layout = Layout(self.root)
        self.store = Store(self.layout)
        self.fake = FakeBackend()
        self.ids = submit(self.root, [{"app": "nap", "workdir": f"n/{i}"} for i in range(4)])
        self.a, self.b, self.c, self.d = self.ids
        self.site = self.new_site()
        self.bid = batch_mod.create_request(self.layout, {
            "num_nodes": 1, "wall_time_min": 10, "queue": "debug", "project": "proj",
            "job_mode": "serial", "filter_tags": {}, "optional_params": {}})
        self.now = T0
        self.site.tick(self.now)
        rec = batch_mod.load(self.layout, self.bid)
        assert rec["state"] == "queued", rec
        self.sid = rec["scheduler_id"]
        assert self.where_all() == {j: "ready" for j in self.ids}

    def new_site(self) -> Site:
        """A Site as the site process builds it (a restart when called again)."""
        s = settings_mod.load(self.root / "settings.yml")
        machine = settings_mod.machine_from_settings(s)
        site = Site(self.layout, s, machine)
        site.batch = BatchManager(self.layout, s, machine, backend=self.fake)
        site.recover()
        return site

    # -- launcher L, written by hand as a launcher on host "elsewhere" would -----------------
    def start_launcher(self, claimed: list[str]) -> None:
        ldir = self.layout.launcher_dir(L)
        ldir.mkdir(parents=True)
        self.lease_seq = 0
        self.beat()
        for j in claimed:
            assert self.store.claim(self.layout.job_path("ready", j), L) is not None
            self.event(j, "RUNNING", host="x1001", started_at=1.0)

    def beat(self) -> None:
        self.lease_seq += 1
        fsio.write_json_atomic(self.layout.launcher_dir(L) / "lease.json", {
            "seq": self.lease_seq, "interval": 5, "host": "elsewhere", "pid": 4242,
            "mode": "serial", "batch_job": self.bid, "scheduler_id": self.sid,
            "nodes": ["x1001"], "state": "running"})

    def event(self, job: str, to: str, **details) -> None:
        ev = {"t": 1.7e9 + len(self.events()), "job": job, "attempt": 1, "to": to, "by": L,
              "launcher": L, "batch_job": self.bid, **details}
        with open(self.layout.launcher_dir(L) / "events.jsonl", "ab") as f:
            f.write(json.dumps(ev).encode() + b"\n")

    def events(self) -> list[dict]:
        p = self.layout.launcher_dir(L) / "events.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    # -- the site's clock --------------------------------------------------------------------
    def tick(self, dt: float) -> dict:
        self.now += dt
        return self.site.tick(self.now)

    def where_all(self) -> dict[str, str | None]:
        out = {}
        for j in self.ids:
            loc = self.store.locate(j)
            out[j] = (f"running/{loc[1].parent.name}" if loc and loc[0] == "running"
                      else loc[0] if loc else None)
        return out

    def record(self, j: str) -> dict:
        loc = self.store.locate(j)
        assert loc, f"job {j} is nowhere"
        return read_job(loc[1], loc[0])

    def site_events(self) -> list[dict]:
        self.site.events.flush(durable=False)
        p = self.layout.site_dir / "events.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    w.start_launcher([w.a, w.b, w.c])
    # c's final verdict is durable in L's log, but L died before renaming c to done/
    w.event(w.c, "RUN_DONE", return_code=0, ended_at=2.0, host="x1001")
    w.event(w.c, "JOB_FINISHED")
    w.fake.states[w.sid] = SchedStatus(RUNNING, "RUNNING", nodes=("x1001",))
    return w


def HELD(w: World) -> dict:
    """Where the jobs are while L holds three of them."""
    return {w.a: f"running/{L}", w.b: f"running/{L}", w.c: f"running/{L}", w.d: "ready"}


def end_allocation(w: World, status: SchedStatus, max_ticks: int = 10) -> int:
    """Say the allocation ended; tick (1 s steps) until L's jobs are gone; the ticks it took."""
    w.fake.states[w.sid] = status
    for n in range(1, max_ticks + 1):
        w.tick(1.0)
        if not (w.layout.running / L).exists():
            return n
    raise AssertionError(f"L's jobs not revoked {max_ticks} s after the scheduler said "
                         f"{status}: {w.where_all()}")


def test_stale_lease_while_the_allocation_runs_is_suspect_not_dead(world):
    w = world
    w.tick(1.0)
    assert w.where_all() == HELD(w)
    # the lease stops changing; the site's own clock runs far past lease_stale_sec
    for dt in (STALE / 2, STALE, 10 * STALE, 100 * STALE):
        w.tick(dt)
        assert w.where_all() == HELD(w), f"after {w.now - T0:g} s"
    assert batch_mod.load(w.layout, w.bid)["state"] == "running"
    assert (w.layout.launchers / L).is_dir() and not (w.layout.launchers / ".retired").exists()
    assert not any(e.get("retired") for e in w.site_events())
    # the lease beats again: still nothing happens
    w.beat()
    w.tick(1.0)
    assert w.where_all() == HELD(w)


def test_allocation_end_revokes_with_attempt_plus_one_and_settles_the_finished(world):
    w = world
    w.tick(1.0)
    w.tick(10 * STALE)                                   # suspect for a long time
    assert w.where_all() == HELD(w)

    ticks = end_allocation(w, SchedStatus(FINISHED, "CANCELLED", exit_code=0, signal=15))
    assert ticks <= PERIOD + 2, ticks                    # within about one sync period
    assert w.where_all() == {w.a: "ready", w.b: "ready", w.c: "done", w.d: "ready"}
    for j in (w.a, w.b):
        r = w.record(j)
        to = [h["to"] for h in r["history"]]
        assert r["attempt"] == 2 and r["state"] == "RESTART_READY", r
        assert "RUN_TIMEOUT" in to and to[-1] == "RESTART_READY", to
        assert r["retries"]["timeouts"] == 1, r
        timeout = [h for h in r["history"] if h["to"] == "RUN_TIMEOUT"][-1]
        assert timeout["by"] == "site" and L in timeout.get("msg", ""), timeout
    c = w.record(w.c)
    assert c["state"] == "JOB_FINISHED" and c["attempt"] == 1 and c["return_code"] == 0, c
    assert "RUN_TIMEOUT" not in [h["to"] for h in c["history"]]
    d = w.record(w.d)
    assert d["attempt"] == 1 and d["state"] == "READY", d
    # L is retired, with what was done recorded once
    assert not (w.layout.launchers / L).exists()
    assert (w.layout.launchers / ".retired" / L / "lease.json").exists()
    retired = [e for e in w.site_events() if e.get("launcher") == L and e.get("retired")]
    assert len(retired) == 1 and retired[0]["retired"] == "dead", retired
    assert retired[0]["revoked"] == 3, retired
    # more ticks change nothing
    before = {j: w.record(j) for j in w.ids}
    w.tick(PERIOD)
    w.tick(PERIOD)
    assert {j: w.record(j) for j in w.ids} == before


def test_a_zombie_rename_after_revocation_fails_and_the_next_attempt_wins(world):
    """L was only slow: its late rename of a revoked job must not resurrect attempt 1."""
    w = world
    w.tick(1.0)
    end_allocation(w, SchedStatus(FINISHED, "TIMEOUT", exit_code=0, signal=15))
    src = w.layout.running / L / f"{w.a}.json"
    assert not src.exists()
    assert Store(w.layout).move(src, w.layout.job_path("done", w.a)) is False
    assert w.where_all()[w.a] == "ready" and w.record(w.a)["attempt"] == 2


def test_scheduler_unreachable_is_not_an_ended_allocation(world):
    w = world
    w.tick(1.0)
    w.fake.fail_status = True
    for _ in range(20):
        w.tick(10 * STALE)
    assert w.where_all() == HELD(w)
    assert batch_mod.load(w.layout, w.bid)["state"] in ("queued", "running")


def test_a_lease_without_batch_job_is_never_revoked_by_the_scheduler(tmp_path):
    """A launcher started by hand on another node names no batch job: only a clean exit
    (or a human) can take its jobs back."""
    w = World(tmp_path)
    w.start_launcher([w.a])
    lease = json.loads((w.layout.launcher_dir(L) / "lease.json").read_text())
    lease.update(batch_job=None, scheduler_id=None, seq=lease["seq"] + 1)
    fsio.write_json_atomic(w.layout.launcher_dir(L) / "lease.json", lease)
    w.fake.states[w.sid] = SchedStatus(FINISHED, "COMPLETED", exit_code=0)
    for _ in range(10):
        w.tick(10 * STALE)
    assert w.where_all()[w.a] == f"running/{L}"
    assert batch_mod.load(w.layout, w.bid)["state"] == "finished"


def test_clean_exit_lease_retires_without_revoking(world):
    w = world
    w.tick(1.0)
    # L finishes c properly, hands a and b back to ready/ itself and says goodbye
    Store(w.layout).move(w.layout.running / L / f"{w.c}.json", w.layout.job_path("done", w.c))
    for j in (w.a, w.b):
        Store(w.layout).move(w.layout.running / L / f"{j}.json", w.layout.job_path("ready", j))
    (w.layout.running / L).rmdir()
    lease = json.loads((w.layout.launcher_dir(L) / "lease.json").read_text())
    lease.update(state="exited", seq=lease["seq"] + 1)
    fsio.write_json_atomic(w.layout.launcher_dir(L) / "lease.json", lease)
    w.tick(1.0)
    assert w.where_all() == {w.a: "ready", w.b: "ready", w.c: "done", w.d: "ready"}
    assert w.record(w.a)["attempt"] == 1                 # handed back, not revoked
    assert w.record(w.c)["state"] == "JOB_FINISHED"      # its verdict merged
    retired = [e for e in w.site_events() if e.get("launcher") == L and e.get("retired")]
    assert retired and retired[0]["retired"] == "exited" and retired[0]["revoked"] == 0


def test_site_restart_before_the_allocation_ends_keeps_the_finished_verdict(world):
    w = world
    w.tick(1.0)                                          # merges L's log: c is "unsettled"
    state = json.loads((w.layout.site_dir / "merged.json").read_text())
    assert state["offsets"].get(L) and w.c in state["pending"]   # the verdict is on disk
    w.site.events.close()
    w.site = w.new_site()                                # the site process restarts
    end_allocation(w, SchedStatus(FINISHED, "CANCELLED", exit_code=0, signal=15))
    assert w.where_all()[w.c] == "done", w.record(w.c)


def test_one_unknown_answer_does_not_end_a_running_allocation(world):
    w = world
    w.tick(1.0)
    w.fake.states[w.sid] = SchedStatus(UNKNOWN, "", reason="not known to Slurm any more")
    w.tick(PERIOD)                                       # one sync: one unknown answer
    w.fake.states[w.sid] = SchedStatus(RUNNING, "RUNNING", nodes=("x1001",))
    for _ in range(3):
        w.tick(PERIOD)
    assert batch_mod.load(w.layout, w.bid)["state"] == "running"
    assert w.where_all() == HELD(w)
