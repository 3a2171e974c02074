"""``spool queue submit`` validation and the site's BatchManager -- no scheduler needed.

1. Every refused ``queue submit`` prints ONE line (``spool: ...``, exit 1) naming the limit
   and where to change it (the settings.yml path and its dotted key), and creates nothing
   in ``batch/``.
2. ``BatchManager`` in-process with a fake backend (submit/status/cancel): a refused
   submission is kept as ``submit_failed`` with the scheduler's error, and the site backs
   off; the scheduler's states drive queued -> running -> finished; a finished batch job
   lands in ``allocation_ended``; ``queue term`` cancels exactly once.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from queue_helpers import cli, init_site, submit, write_app
from spoolbalsam.site import batch as batch_mod
from spoolbalsam import settings as settings_mod
from spoolbalsam.site.batch import BatchManager
from spoolbalsam.pbs.base import FINISHED, QUEUED, RUNNING, UNKNOWN, SchedStatus, SchedulerError
from spoolbalsam.spool.layout import Layout

QUEUES = {"debug": {"max_nodes": 2, "max_walltime": 60, "max_queued_jobs": 1},
          "prod": {"max_nodes": 8, "max_walltime": 120, "max_queued_jobs": 5}}


def make(tmp_path: Path, machine: str = "slurm", project: str = "proj", **scheduler) -> Path:
    return init_site(tmp_path / "S", machine, "-A", project, settings={
        "scheduler": {"sync_period_sec": 5, "submit_backoff_sec": 30, "allowed_queues": QUEUES,
                      "allowed_projects": [project], **scheduler}},
        replace=("scheduler.allowed_queues",))


def batch_dirs(site: Path) -> list[str]:
    return sorted(p.name for p in (site / "batch").iterdir())


def refused(site: Path, *args, words: tuple[str, ...]) -> str:
    """``spool queue submit ARGS`` must fail with one line containing ``words``; nothing
    may appear in batch/."""
    before = batch_dirs(site)
    res = cli(site, "queue", "submit", *args, check=False)
    msg = res.stderr.strip()
    assert res.returncode == 1, (args, res.stdout, res.stderr)
    assert msg.startswith("spool: ") and "\n" not in msg, msg
    assert "Traceback" not in res.stderr and res.stdout == "", res
    for w in words:
        assert w in msg, (w, msg)
    assert batch_dirs(site) == before, f"{args} created {set(batch_dirs(site)) - set(before)}"
    return msg


# ----------------------------------------------------------------------------- 1. the CLI

@pytest.fixture
def slurm_site(tmp_path):
    return make(tmp_path)


def test_queue_not_allowed(slurm_site):
    s = slurm_site
    refused(s, "-n", 1, "-t", 10, "-j", "serial", "-q", "bigmem",
            words=("'bigmem'", "scheduler.allowed_queues", str(s / "settings.yml"), "debug, prod"))


def test_too_many_nodes(slurm_site):
    s = slurm_site
    refused(s, "-n", 3, "-t", 10, "-j", "mpi", "-q", "debug",
            words=("3 nodes", "max_nodes 2", "scheduler.allowed_queues.debug",
                   str(s / "settings.yml")))


def test_walltime_over_max(slurm_site):
    s = slurm_site
    refused(s, "-n", 1, "-t", 121, "-j", "mpi", "-q", "prod",
            words=("121 minutes", "max_walltime 120", "scheduler.allowed_queues.prod",
                   str(s / "settings.yml")))


def test_max_queued_jobs_reached(slurm_site):
    s = slurm_site
    ok = cli(s, "queue", "submit", "-n", 1, "-t", 10, "-j", "serial", "-q", "debug")
    assert ok.stdout.startswith("Batch job 1 ") and "site is not running" in ok.stderr, ok
    assert batch_dirs(s) == ["1"]
    refused(s, "-n", 1, "-t", 10, "-j", "serial", "-q", "debug",
            words=("debug", "max_queued_jobs", "scheduler.allowed_queues.debug",
                   str(s / "settings.yml")))
    # another queue is not affected; a finished batch job no longer counts
    assert cli(s, "queue", "submit", "-n", 1, "-t", 10, "-j", "serial", "-q", "prod").stdout
    from spoolbalsam.spool import fsio
    fsio.write_json_atomic(s / "batch" / "1" / "state.json", {"state": "finished"})
    assert cli(s, "queue", "submit", "-n", 1, "-t", 10, "-j", "serial", "-q", "debug").stdout
    assert batch_dirs(s) == ["1", "2", "3"]


def test_project_not_allowed_on_a_pbs_machine(tmp_path):
    s = make(tmp_path, machine="aurora", project="testproj")
    refused(s, "-n", 1, "-t", 10, "-j", "serial", "-q", "debug", "-A", "stolen",
            words=("'stolen'", "scheduler.allowed_projects", str(s / "settings.yml"),
                   "testproj"))
    # the allowed one passes
    assert cli(s, "queue", "submit", "-n", 1, "-t", 10, "-j", "serial", "-q", "debug",
               "-A", "testproj").stdout.startswith("Batch job 1 ")


def test_unknown_extra_param(slurm_site):
    s = slurm_site
    refused(s, "-n", 1, "-t", 10, "-j", "serial", "-x", "constraint=gpu",
            words=("constraint", "scheduler.optional_batch_job_params", str(s / "settings.yml")))


def test_bad_extra_param_syntax(slurm_site):
    s = slurm_site
    refused(s, "-n", 1, "-t", 10, "-j", "serial", "-x", "constraint",
            words=("'constraint'", "KEY=VALUE"))
    refused(s, "-n", 1, "-t", 10, "-j", "serial", "-x", "=gpu", words=("'=gpu'", "KEY"))


def test_declared_extra_param_is_accepted_and_rendered(tmp_path):
    s = make(tmp_path, optional_batch_job_params={"constraint": "cpu"})
    assert cli(s, "queue", "submit", "-n", 1, "-t", 10, "-j", "serial",
               "-x", "constraint=gpu").stdout.startswith("Batch job 1 ")
    req = batch_mod.load(Layout(s), "1")
    assert req["optional_params"] == {"constraint": "gpu"} and req["project"] == "proj"
    bm, _ = manager(s, FakeBackend())
    text = bm.render(req).read_text().splitlines()
    assert "#SBATCH --constraint=gpu" in text and "#SBATCH --constraint=cpu" not in text, text


@pytest.mark.parametrize("args, words", [
    (("-n", 0, "-t", 10), ("num_nodes", ">= 1")),
    (("-n", 1, "-t", 0), ("wall_time_min", "> 0")),
])
def test_nonsense_sizes(slurm_site, args, words):
    refused(slurm_site, *args, "-j", "serial", words=words)


# ----------------------------------------------------------------------------- 2. BatchManager

class FakeBackend:
    """submit/status/cancel as the contract says; scripted answers, every call recorded."""

    name = "fake"

    def __init__(self):
        self.submits: list[dict] = []
        self.status_calls: list[list[str]] = []
        self.cancels: list[str] = []
        self.submit_error: Exception | None = None
        self.states: dict[str, SchedStatus] = {}
        self.next_id = 100

    def submit(self, script, *, queue, project, num_nodes, wall_time_min, job_name, cwd,
               extra={}):
        self.submits.append({"script": Path(script), "queue": queue, "project": project,
                             "num_nodes": num_nodes, "wall_time_min": wall_time_min,
                             "job_name": job_name, "cwd": Path(cwd), "extra": dict(extra)})
        if self.submit_error is not None:
            raise self.submit_error
        self.next_id += 1
        sid = str(self.next_id)
        self.states[sid] = SchedStatus(QUEUED, "PENDING")
        return sid

    def status(self, ids):
        self.status_calls.append(list(ids))
        return {i: self.states.get(i, SchedStatus(UNKNOWN, "")) for i in ids}

    def cancel(self, sched_id):
        self.cancels.append(sched_id)


def manager(site: Path, backend) -> tuple[BatchManager, dict]:
    s = settings_mod.load(site / "settings.yml")
    return BatchManager(Layout(site), s, settings_mod.machine_from_settings(s), backend=backend), s


def request(site: Path, queue: str = "prod", **kw) -> str:
    req = {"num_nodes": 1, "wall_time_min": 10, "queue": queue, "project": "proj",
           "job_mode": "serial", "filter_tags": {}, "optional_params": {}, **kw}
    return batch_mod.create_request(Layout(site), req)


def state(site: Path, bid: str) -> dict:
    return batch_mod.load(Layout(site), bid)


REFUSAL = SchedulerError(["sbatch", "--parsable", "-A", "proj"], 1,
                         "sbatch: error: Batch job submission failed: Invalid account or "
                         "account/partition combination specified")


def test_submit_failure_is_kept_and_the_site_backs_off(slurm_site):
    fake = FakeBackend()
    fake.submit_error = REFUSAL
    bm, s = manager(slurm_site, fake)
    t0 = time.monotonic()              # the site's clock is monotonic; back-off is measured on it
    b1 = request(slurm_site)
    bm.tick(t0)
    rec = state(slurm_site, b1)
    assert rec["state"] == "submit_failed" and len(fake.submits) == 1, rec
    assert "Invalid account" in rec["errors"][0]["error"], rec["errors"]
    assert "sbatch" in rec["errors"][0]["error"]
    assert rec.get("scheduler_id") is None
    # a record readers see too: queue ls --history -v shows the error
    out = cli(slurm_site, "queue", "ls", "--history", "-v").stdout
    assert "submit_failed" in out and "Invalid account" in out, out
    assert "No active batch jobs" in cli(slurm_site, "queue", "ls").stdout

    # a new request inside the back-off window is not submitted, however often we tick
    fake.submit_error = None
    b2 = request(slurm_site)
    for dt in (0.5, 1, 5, 10, 20, 29):
        bm.tick(t0 + dt, force=True)
    assert len(fake.submits) == 1 and state(slurm_site, b2)["state"] == "pending_submission"
    # after it, the request goes out; the failed one is not retried
    bm.tick(t0 + s["scheduler"]["submit_backoff_sec"] + 1, force=True)
    assert len(fake.submits) == 2 and fake.submits[1]["job_name"] == f"qlaunch{int(b2):05d}"
    assert state(slurm_site, b2)["state"] == "queued"
    assert state(slurm_site, b1)["state"] == "submit_failed"


def test_back_off_follows_the_clock_given_to_tick(slurm_site):
    fake = FakeBackend()
    fake.submit_error = REFUSAL
    bm, s = manager(slurm_site, fake)
    t0 = 1.0e9                          # any monotonic origin
    request(slurm_site)
    bm.tick(t0)
    fake.submit_error = None
    request(slurm_site)
    bm.tick(t0 + 1, force=True)         # inside the 30 s back-off
    assert len(fake.submits) == 1


def test_submit_passes_the_request_to_the_backend(slurm_site):
    fake = FakeBackend()
    bm, _ = manager(slurm_site, fake)
    bid = request(slurm_site, queue="debug", num_nodes=2, wall_time_min=7, job_mode="mpi",
                  filter_tags={"campaign": "x"})
    bm.tick(time.monotonic())
    (sub,) = fake.submits
    script = slurm_site / "batch" / bid / "qlaunch00001.sh"
    assert sub == {"script": script, "queue": "debug", "project": "proj", "num_nodes": 2,
                   "wall_time_min": 7, "job_name": "qlaunch00001",
                   "cwd": slurm_site / "batch" / bid, "extra": {}}
    rec = state(slurm_site, bid)
    assert rec["state"] == "queued" and rec["scheduler_id"] == "101"
    assert rec["submit_script"] == str(script) and rec["submit_time"]
    text = script.read_text()
    assert "launcher -j mpi -t 7 --batch-job 1 --tag campaign=x" in text, text


def test_scheduler_states_drive_the_record_and_allocation_ended(slurm_site):
    fake = FakeBackend()
    bm, s = manager(slurm_site, fake)
    period = s["scheduler"]["sync_period_sec"]
    t = time.monotonic()
    bid = request(slurm_site)
    bm.tick(t)
    sid = state(slurm_site, bid)["scheduler_id"]
    lease = {"batch_job": bid, "scheduler_id": sid}
    assert not bm.allocation_ended(lease)

    # no status call before the sync period is up (nothing new in batch/)
    calls = len(fake.status_calls)
    bm.tick(t + period / 2)
    assert len(fake.status_calls) == calls

    fake.states[sid] = SchedStatus(RUNNING, "RUNNING", nodes=("n3",))
    t += period
    bm.tick(t)
    rec = state(slurm_site, bid)
    assert rec["state"] == "running" and rec["nodes"] == ["n3"] and rec["start_time"], rec
    assert not bm.allocation_ended(lease)

    fake.states[sid] = SchedStatus(FINISHED, "COMPLETED", exit_code=0, nodes=("n3",))
    t += period
    bm.tick(t)
    rec = state(slurm_site, bid)
    assert rec["state"] == "finished" and rec["exit_code"] == 0 and rec["end_time"], rec
    assert rec["raw_state"] == "COMPLETED"
    assert bid in bm.ended and bm.allocation_ended(lease)
    assert not bm.allocation_ended({"batch_job": "99"}) and not bm.allocation_ended({})
    # finished is final: no more status questions about it
    calls = len(fake.status_calls)
    bm.tick(t + 10 * period)
    assert all(sid not in c for c in fake.status_calls[calls:])
    # a new manager (the site restarted) knows it ended from the records alone
    bm2, _ = manager(slurm_site, FakeBackend())
    bm2.tick(time.monotonic())
    assert bm2.allocation_ended(lease)


def test_queue_term_cancels_once_and_ends_finished(slurm_site):
    fake = FakeBackend()
    bm, s = manager(slurm_site, fake)
    period = s["scheduler"]["sync_period_sec"]
    t = time.monotonic()
    bid = request(slurm_site)
    bm.tick(t)
    sid = state(slurm_site, bid)["scheduler_id"]
    out = cli(slurm_site, "queue", "term", sid).stdout
    assert "will be deleted" in out
    assert state(slurm_site, bid)["state"] == "pending_deletion"
    for k in range(1, 4):              # the scheduler takes a while to let go
        bm.tick(t + k * period)
    assert fake.cancels == [sid], fake.cancels
    assert state(slurm_site, bid)["state"] == "pending_deletion"
    fake.states[sid] = SchedStatus(FINISHED, "CANCELLED", exit_code=0, signal=15)
    bm.tick(t + 5 * period)
    rec = state(slurm_site, bid)
    assert rec["state"] == "finished" and rec["raw_state"] == "CANCELLED" and rec["cancel_sent"]
    assert fake.cancels == [sid] and bm.allocation_ended({"batch_job": bid})


def test_queue_term_before_submission_never_reaches_the_scheduler(slurm_site):
    fake = FakeBackend()
    fake.submit_error = REFUSAL
    bm, _ = manager(slurm_site, fake)
    t = time.monotonic()
    request(slurm_site)
    bm.tick(t)                         # fails: back-off starts
    b2 = request(slurm_site)
    cli(slurm_site, "queue", "term", b2)
    bm.tick(t + 1, force=True)
    assert state(slurm_site, b2)["state"] == "finished"
    assert len(fake.submits) == 1 and fake.cancels == []


def test_scheduler_status_failure_changes_nothing(slurm_site):
    fake = FakeBackend()
    bm, s = manager(slurm_site, fake)
    t = time.monotonic()
    bid = request(slurm_site)
    bm.tick(t)

    def broken(ids):
        raise SchedulerError(["squeue", "-h"], 1, "slurm_load_jobs error: Unable to contact "
                             "slurm controller (connect failure)")
    fake.status = broken
    for k in range(1, 6):
        bm.tick(t + k * s["scheduler"]["sync_period_sec"])
    assert state(slurm_site, bid)["state"] == "queued"
    assert not bm.allocation_ended({"batch_job": bid})


def test_rendered_script_records_exit_code_beside_itself(slurm_site):
    """base.py: every template writes the exit code to ``<script-stem>.ec`` beside the script
    (``exit_code_path(script)``), and the output goes to ``<script-stem>.out``."""
    from spoolbalsam.pbs.base import exit_code_path, output_path
    bm, _ = manager(slurm_site, FakeBackend())
    bid = request(slurm_site)
    bm.tick(time.monotonic())
    script = slurm_site / "batch" / bid / "qlaunch00001.sh"
    lines = script.read_text().splitlines()
    ec = [ln for ln in lines if ".ec" in ln]
    assert ec and all(str(exit_code_path(script)) in ln for ln in ec), ec
    outs = [ln for ln in lines if ln.startswith("#SBATCH -o")]
    assert all(ln == f"#SBATCH -o {output_path(script)}" for ln in outs), outs


# ----------------------------------------------------------------------------- elastic

def elastic_site(tmp_path, **elastic) -> Path:
    site = make(tmp_path)
    from queue_helpers import edit_settings
    edit_settings(site, {"elastic": {"enabled": True, "queue": "prod", "project": "proj",
                                     "job_mode": "serial", "min_num_nodes": 1,
                                     "max_num_nodes": 2, "min_wall_time_min": 1,
                                     "max_wall_time_min": 5, "max_queued_jobs": 1,
                                     "service_period_sec": 1, **elastic}})
    write_app(site, "true", {"command_template": "true"})
    submit(site, [{"app": "true", "workdir": f"e/{i}"} for i in range(10)])
    from spoolbalsam.site.loop import Site
    s = settings_mod.load(site / "settings.yml")
    assert Site(Layout(site), s, settings_mod.machine_from_settings(s)).intake() == 10
    return site


def test_elastic_submits_one_request_per_decision_and_respects_max_queued(tmp_path):
    site = elastic_site(tmp_path)
    fake = FakeBackend()
    bm, _ = manager(site, fake)
    t = time.monotonic()
    for k in range(10):
        bm.tick(t + k)
    recs = batch_mod.load_all(Layout(site))
    assert len(recs) == 1 and recs[0]["elastic"] is True, recs
    assert recs[0]["num_nodes"] == 2 and recs[0]["wall_time_min"] == 5, recs[0]
    assert recs[0]["state"] == "queued" and len(fake.submits) == 1


def test_elastic_scheduler_refusal_backs_off(tmp_path):
    site = elastic_site(tmp_path)
    fake = FakeBackend()
    fake.submit_error = REFUSAL
    bm, s = manager(site, fake)
    t = time.monotonic()
    for k in range(25):                # 25 service periods inside the 30 s back-off
        bm.tick(t + k)
    recs = batch_mod.load_all(Layout(site))
    assert len(fake.submits) == 1 and len(recs) == 1, [(r["id"], r["state"]) for r in recs]
    assert recs[0]["state"] == "submit_failed" and "Invalid account" in \
        recs[0]["errors"][0]["error"]


def test_elastic_with_a_project_not_allowed_does_not_flood_batch_dir(tmp_path):
    site = elastic_site(tmp_path, project="notallowed")
    fake = FakeBackend()
    bm, _ = manager(site, fake)
    t = time.monotonic()
    for k in range(25):
        bm.tick(t + k)
    recs = batch_mod.load_all(Layout(site))
    assert fake.submits == []
    assert recs and "scheduler.allowed_projects" in recs[0]["errors"][0]["error"], recs
    assert len(recs) <= 2, f"{len(recs)} batch requests in 25 s: " + ", ".join(
        f"{r['id']}:{r['state']}" for r in recs[:5])


def test_elastic_deletes_a_batch_job_queued_too_long_and_asks_again(tmp_path):
    site = elastic_site(tmp_path, max_queue_wait_time_min=10)
    fake = FakeBackend()
    bm, _ = manager(site, fake)
    t = time.monotonic()
    bm.tick(t)
    bm.tick(t + 1)
    (first,) = batch_mod.load_all(Layout(site))
    assert first["state"] == "queued" and first["elastic"] is True
    # it has waited 11 minutes in the scheduler's queue (wall clock, as submit_time is)
    from spoolbalsam.spool import fsio
    st = fsio.read_json(site / "batch" / first["id"] / "state.json")
    st["submit_time"] = time.time() - 11 * 60
    fsio.write_json_atomic(site / "batch" / first["id"] / "state.json", st)
    for k in range(2, 6):
        bm.tick(t + k * 5)
    recs = {r["id"]: r for r in batch_mod.load_all(Layout(site))}
    assert (site / "batch" / first["id"] / "term").exists()
    assert fake.cancels == [first["scheduler_id"]], fake.cancels
    assert recs[first["id"]]["state"] == "pending_deletion", recs[first["id"]]
    fresh = [r for r in recs.values() if r["id"] != first["id"]]
    assert len(fresh) == 1 and fresh[0]["state"] == "queued" and fresh[0]["elastic"], recs
