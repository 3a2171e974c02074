"""``spool queue`` end to end on an Aurora site -- through the PBS *EMULATOR*, not real PBS.

No PBS server can be installed here, so ``tests/pbs_emulator/{qsub,qstat,qdel}`` translate
PBS Pro's commands onto the real test Slurm (``bash tests/infra/slurm-up.sh 4``): qsub reads
the ``#PBS`` directives and sbatches a wrapper that sets ``PBS_JOBID`` and writes a
``PBS_NODEFILE``; ``qstat -f -F json`` answers in PBS Pro's JSON shape; ``qdel`` scancels.
The emulator directory is put first on PATH *of the site process* (the one that runs
qsub/qstat/qdel), so the unmodified ``PbsBackend`` drives it.

The site is ``--machine aurora`` with ``launcher: {mpi_flavour: hydra, cpus_per_node: 4,
gpu_ids: [0.0, 0.1, 1.0, 1.1]}`` (no PALS here) and submits ``-q debug -A testproj``.
What is checked is spoolbalsam's side: the Aurora job script, the PBS id and states, the
nodes the launcher took from ``$PBS_NODEFILE``, the jobs' hosts and tile masks, qdel.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from queue_helpers import (batch_record, batch_state, cancel_site_batch_jobs, cli,
                           emulator_env, init_site, launcher_leases, locations, queue_rows,
                           queue_submit, reap_leftovers, records, running_dir_jobs, slurm_id,
                           start_site, stop_site, submit, tally, wait_until, write_app,
                           xfail_on_scheduler_race)
from sched_fixtures import require_slurm

pytestmark = pytest.mark.slurm

PROJECT = "testproj"
TILES = ["0.0", "0.1", "1.0", "1.1"]
WHERE = {"description": "say where it ran and which tiles it saw",
         "command_template": "echo job {{ i }} pbs=$PBS_JOBID mask=$ZE_AFFINITY_MASK "
                             "ids=$SPOOL_GPU_IDS hier=$ZE_FLAT_DEVICE_HIERARCHY; sleep 0.3"}
NAP = {"description": "sleep until cancelled", "command_template": "sleep 30"}


@pytest.fixture
def aurora_site(tmp_path):
    require_slurm(min_nodes=2)
    site = init_site(tmp_path / "S", "aurora", "-A", PROJECT, settings={
        "lease_interval_sec": 1,
        "launcher": {"mpi_flavour": "hydra", "cpus_per_node": 4, "gpu_ids": TILES,
                     "idle_ttl_sec": 3, "sigterm_grace_sec": 2},
        "scheduler": {"sync_period_sec": 1,
                      "allowed_queues": {"debug": {"max_nodes": 2, "max_walltime": 60,
                                                   "max_queued_jobs": 1}},
                      "allowed_projects": [PROJECT]},
    }, replace=("scheduler.allowed_queues",))
    write_app(site, "where", WHERE)
    write_app(site, "nap", NAP)
    emu_home = tmp_path / "pbs-emulator"
    pid = start_site(site, env=emulator_env(emu_home))
    try:
        yield site, emu_home
    finally:
        cancel_site_batch_jobs(site)       # scancel of the emulated jobs' Slurm ids
        stop_site(site, pid)
        reap_leftovers(site)


def test_campaign_through_the_pbs_emulator(aurora_site):
    site, emu_home = aurora_site
    ids = submit(site, [{"app": "where", "workdir": f"w/{i:02d}", "parameters": {"i": str(i)},
                         "node_packing_count": 4, "gpus_per_rank": 1} for i in range(12)])
    bid = queue_submit(site, "-n", 1, "-t", 5, "-q", "debug", "-A", PROJECT, "-j", "serial")

    # the Aurora job script, as rendered and kept beside the record
    script = site / "batch" / bid / "qlaunch00001.sh"
    rec = wait_until(lambda: batch_record(site, bid), lambda r: r.get("scheduler_id"), 30,
                     "the batch job to be qsub'd", site)
    sid = rec["scheduler_id"]
    assert re.fullmatch(r"\d+\.pbs-emulator", sid), sid
    assert rec["submit_script"] == str(script)
    lines = script.read_text().splitlines()
    for want in ("#PBS -l select=1:system=aurora,place=scatter", "#PBS -l walltime=0:05:00",
                 f"#PBS -A {PROJECT}", "#PBS -q debug", "#PBS -l filesystems=home:flare"):
        assert want in lines, (want, lines[:12])
    # qsub kept system=aurora (the backend repeats the script's select on the command line)
    meta = json.loads((emu_home / "jobs" / f"{slurm_id(sid)}.json").read_text())
    assert meta["Resource_List"]["select"] == "1:system=aurora", meta["Resource_List"]
    assert meta["Resource_List"]["walltime"] == "00:05:00" and meta["queue"] == "debug"
    assert meta["Account_Name"] == PROJECT and meta["Job_Name"] == "qlaunch00001"

    wait_until(lambda: (queue_rows(site).get(bid) or ["", "", "?"])[2],
               lambda s: s == "running", 30, "queue ls to show it running", site)

    def progress():
        return tally(locations(site, ids)), batch_state(site, bid)
    wait_until(progress, lambda v: v == ({"done": 12}, "finished"), 60,
               "12 jobs done and the PBS job finished", site)

    rec = batch_record(site, bid)
    assert rec["raw_state"] == "F" and rec["exit_code"] == 0, rec
    (node,) = rec["nodes"]                       # exec_host of the PBS job
    # the launcher's nodes came from $PBS_NODEFILE, which the emulator wrote for this job
    nodefile = (emu_home / "nodefiles" / sid).read_text().split()
    assert nodefile == [node], (nodefile, node)
    leases = [ls for ls in launcher_leases(site).values() if ls.get("batch_job") == bid]
    assert len(leases) == 1, launcher_leases(site)
    lease = leases[0]
    assert lease["nodes"] == [node] and lease["scheduler_id"] == sid, lease
    assert lease["state"] == "exited" and lease["finished"] == 12, lease

    recs = records(site, ids)
    seen_tiles = set()
    for j in ids:
        r = recs[j]
        assert r["state"] == "JOB_FINISHED" and r["host"] == node and r["batch_job"] == bid, r
        out = (site / "data" / r["workdir"] / "job.out").read_text()
        f = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        assert f["pbs"] == sid and f["hier"] == "COMPOSITE", out
        assert f["mask"] in TILES and f["ids"] == f["mask"], out
        assert r["placement"]["gpus"] == [[f["mask"]]], r["placement"]
        seen_tiles.add(f["mask"])
    assert len(seen_tiles) >= 2, seen_tiles      # packed: several tiles used

    assert bid not in queue_rows(site)
    hist = queue_rows(site, "--history")
    assert hist[bid][1:3] == [sid, "finished"], hist
    verbose = cli(site, "queue", "ls", "--history", "-v").stdout
    assert f"submit_script: {script}" in verbose and f"nodes: ['{node}']" in verbose, verbose
    assert running_dir_jobs(site) == {}


def test_queue_term_qdels_the_pbs_job(aurora_site):
    site, emu_home = aurora_site
    ids = submit(site, [{"app": "nap", "workdir": "nap"}])
    bid = queue_submit(site, "-n", 1, "-t", 5, "-q", "debug", "-A", PROJECT, "-j", "serial")
    wait_until(lambda: (batch_state(site, bid), sum(map(len, running_dir_jobs(site).values()))),
               lambda v: v == ("running", 1), 45, "the job running in the PBS job", site)
    sid = batch_record(site, bid)["scheduler_id"]

    out = cli(site, "queue", "term", sid).stdout
    assert f"({sid}) will be deleted" in out, out
    wait_until(lambda: batch_state(site, bid), lambda s: s == "finished", 45,
               "the PBS job to finish after queue term (qdel)", site)
    rec = batch_record(site, bid)
    assert rec["cancel_sent"] is True and rec["raw_state"] == "F", rec
    # the emulator's qstat -x says it is over; Slurm underneath says CANCELLED
    env = emulator_env(emu_home)
    q = subprocess.run(["qstat", "-f", "-F", "json", "-x", sid], capture_output=True,
                       text=True, env=env, timeout=30)
    assert json.loads(q.stdout)["Jobs"][sid]["job_state"] == "F", q.stdout
    sc = subprocess.run(["scontrol", "show", "job", "-o", slurm_id(sid)], capture_output=True,
                        text=True, timeout=30).stdout
    assert "JobState=CANCELLED" in sc, sc
    assert queue_rows(site, "--history")[bid][1:3] == [sid, "finished"]
    # the job it held goes back to ready/ for the next allocation
    wait_until(lambda: (locations(site, ids), running_dir_jobs(site)),
               lambda v: set(v[0].values()) <= {"ready", "failed"} and not v[1], 30,
               "the job out of running/", site)
    xfail_on_scheduler_race(site, ids)
    assert set(locations(site, ids).values()) == {"ready"}
    assert records(site, ids)[ids[0]]["attempt"] == 2
