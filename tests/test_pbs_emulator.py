"""The PBS backend end to end through the PBS EMULATOR (tests/pbs_emulator) on the real test Slurm.

No real PBS can be installed here; the emulator gives PBS Pro's commands,
outputs, return codes and job environment on top of Slurm, so these tests run
the real qsub/qstat/qdel code paths of spoolbalsam.pbs.pbs. Marked ``slurm``:
skipped without a Slurm controller, failed under CI=true.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from sched_fixtures import (PBS_EMULATOR_DIR, make_job_script, pbs_emulator, poll_until,  # noqa: F401
                            require_mpiexec, site)
from spoolbalsam.pbs.base import FINISHED, QUEUED, RUNNING, UNKNOWN, SchedulerError, read_exit_code
from spoolbalsam.pbs.pbs import PbsBackend, parse_qstat_json

pytestmark = pytest.mark.slurm
SERVER = "pbs-emulator"


def emu(cmd, *args, cwd=None, stdin=None):
    return subprocess.run([str(PBS_EMULATOR_DIR / cmd), *args], capture_output=True, text=True,
                          cwd=cwd, input=stdin)


def submit(backend, script, site, **kw):
    args = dict(queue="debug", project="demo", num_nodes=1, wall_time_min=10, job_name=script.stem,
                cwd=site, extra={"filesystems": "home:flare"})
    args.update(kw)
    return backend.submit(script, **args)


def gated(site, code=0, before=""):
    started, go = site / "started", site / "go"
    body = (f"{before} touch {shlex.quote(str(started))}; "
            f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done; exit {code}")
    return "bash -c " + shlex.quote(body), started, go


def state_of(backend, sid):
    return lambda: backend.status([sid])[sid]


def test_pbs_backend_lifecycle_with_pbs_environment(pbs_emulator, site):
    env_file = site / "pbs-env.txt"
    report = (f'echo "$PBS_JOBID|$PBS_JOBNAME|$PBS_O_WORKDIR|$(pwd)|$SPOOL_SITE" > {shlex.quote(str(env_file))}; '
              f'cat "$PBS_NODEFILE" >> {shlex.quote(str(env_file))};')
    launcher, started, go = gated(site, code=5, before=report)
    script = make_job_script(site, "aurora", launcher, num_nodes=2, project="demo", queue="debug")
    sid = submit(pbs_emulator, script, site, num_nodes=2, extra={"filesystems": "home:flare", "-h": ""})
    assert sid.endswith(f".{SERVER}") and sid.split(".")[0].isdigit()

    held = pbs_emulator.status([sid])[sid]
    assert (held.state, held.raw_state) == (QUEUED, "H")
    subprocess.run(["scontrol", "release", sid.split(".")[0]], check=True, capture_output=True)

    running = poll_until(state_of(pbs_emulator, sid), lambda s: s.state == RUNNING, 30,
                         what="released PBS job to run")
    assert running.raw_state == "R" and len(running.nodes) == 2 and running.start_time
    poll_until(started.exists, bool, 30, what="launcher to start")
    go.touch()
    final = poll_until(state_of(pbs_emulator, sid), lambda s: s.state == FINISHED, 30,
                       what="PBS job to finish")
    assert (final.raw_state, final.exit_code, final.signal) == ("F", 5, None)
    assert final.nodes == running.nodes and final.end_time
    assert read_exit_code(script.with_suffix(".ec")) == 5

    first, *nodefile = env_file.read_text().split()
    jobid, jobname, workdir, pwd, spool_site = first.split("|")
    assert (jobid, jobname, workdir) == (sid, script.stem, str(site))
    assert pwd == str(site) == spool_site          # PBS starts in $HOME; the script cds to the site
    assert tuple(nodefile) == running.nodes        # one PBS_NODEFILE line per node


def test_qdel_running_job(pbs_emulator, site):
    launcher, started, _go = gated(site)
    script = make_job_script(site, "aurora", launcher, project="demo", queue="debug")
    sid = submit(pbs_emulator, script, site)
    poll_until(started.exists, bool, 30, what="launcher to start")
    pbs_emulator.cancel(sid)
    final = poll_until(state_of(pbs_emulator, sid), lambda s: s.state == FINISHED, 30,
                       what="deleted job to finish")
    assert final.raw_state == "F" and final.exit_code == 143
    assert read_exit_code(script.with_suffix(".ec")) == 143
    pbs_emulator.cancel(sid)       # qdel: Job has finished (rc 35) -> fine
    pbs_emulator.cancel(f"999999.{SERVER}")   # qdel: Unknown Job Id (rc 153) -> fine


def test_history_off_site_reports_unknown_and_ec_decides(pbs_emulator, site, monkeypatch):
    monkeypatch.setenv("PBS_EMULATOR_HISTORY", "0")
    script = make_job_script(site, "polaris", "bash -c 'exit 4'", project="demo", queue="debug")
    sid = submit(pbs_emulator, script, site, extra={"filesystems": "home:grand:eagle"})
    gone = poll_until(state_of(pbs_emulator, sid), lambda s: s.state not in (QUEUED, RUNNING), 30,
                      what="job to leave the queue")
    assert gone.state == UNKNOWN and "Unknown Job Id" in gone.reason
    assert read_exit_code(script.with_suffix(".ec")) == 4


def test_plain_qstat_without_x_uses_rc35_rule(pbs_emulator, site):
    backend = PbsBackend(bin_dir=str(PBS_EMULATOR_DIR), history=False)
    script = make_job_script(site, "aurora", "true", project="demo", queue="debug")
    sid = submit(backend, script, site)
    final = poll_until(state_of(backend, sid), lambda s: s.state == FINISHED, 30)
    assert final.raw_state == "F" and final.exit_code is None and "no history" in final.reason
    assert read_exit_code(script.with_suffix(".ec")) == 0


def test_short_ids_are_matched(pbs_emulator, site):
    script = make_job_script(site, "aurora", "true", project="demo", queue="debug")
    sid = submit(pbs_emulator, script, site)
    seq = sid.split(".")[0]
    got = poll_until(lambda: pbs_emulator.status([seq]), lambda g: g[seq].state == FINISHED, 30)
    assert got[seq].exit_code == 0


def test_emulator_output_shapes(pbs_emulator, site):
    script = make_job_script(site, "aurora", "true", project="demo", queue="debug")
    sid = submit(pbs_emulator, script, site)
    poll_until(state_of(pbs_emulator, sid), lambda s: s.state == FINISHED, 30)

    full = emu("qstat", "-f", "-F", "json", "-x", sid)
    assert full.returncode == 0, full.stderr
    doc = json.loads(full.stdout)
    assert {"timestamp", "pbs_version", "pbs_server"} <= set(doc)
    job = doc["Jobs"][sid]
    assert job["job_state"] == "F" and job["Exit_status"] == 0
    assert job["Job_Name"] == script.stem and job["queue"] == "debug" and job["project"] == "demo"
    assert job["Resource_List"]["nodect"] == 1 and job["Resource_List"]["walltime"] == "00:10:00"
    assert job["Resource_List"]["filesystems"] == "home:flare"
    assert job["exec_host"].endswith("/0*1") and job["stime"]
    assert parse_qstat_json(full.stdout)[sid].exit_code == 0

    no_x = emu("qstat", "-f", "-F", "json", sid)
    assert no_x.returncode == 35
    assert no_x.stderr.strip() == (f"qstat: {sid} Job has finished, use -x or -H to obtain "
                                   "historical job information")
    assert "Jobs" not in json.loads(no_x.stdout)

    unknown = emu("qstat", "-f", "-F", "json", "-x", "999999")
    assert unknown.returncode == 153
    assert unknown.stderr.strip() == f"qstat: Unknown Job Id 999999.{SERVER}"
    assert "Jobs" not in json.loads(unknown.stdout)

    both = emu("qstat", "-f", "-F", "json", "-x", sid, "999999")
    assert both.returncode == 153 and list(json.loads(both.stdout)["Jobs"]) == [sid]

    qdel = emu("qdel", "999999")
    assert (qdel.returncode, qdel.stderr.strip()) == (153, f"qdel: Unknown Job Id 999999.{SERVER}")


def test_emulator_qsub_reads_directives_and_command_line_wins(pbs_emulator, site):
    script = site / "plain.sh"
    script.write_text("#!/bin/bash\n#PBS -N fromscript\n#PBS -l select=2:ncpus=1\n"
                      "#PBS -l walltime=0:05:00\n#PBS -q debug\necho hi\n#PBS -N ignored\n")
    out = emu("qsub", "-N", "fromcli", "-l", "walltime=00:07:00", str(script), cwd=site)
    assert out.returncode == 0, out.stderr
    sid = out.stdout.strip()
    job = json.loads(emu("qstat", "-f", "-F", "json", "-x", sid).stdout)["Jobs"][sid]
    assert job["Job_Name"] == "fromcli"
    assert job["Resource_List"]["nodect"] == 2 and job["Resource_List"]["walltime"] == "00:07:00"
    assert job["Variable_List"]["PBS_O_WORKDIR"] == str(site)
    table = emu("qstat", "-x", sid)   # -x: the job may have finished already
    assert table.stdout.splitlines()[0].split() == ["Job", "id", "Name", "User", "Time", "Use", "S", "Queue"]
    pbs_emulator.cancel(sid)


def test_emulator_rejects_bad_input_and_backend_raises(pbs_emulator, site):
    script = make_job_script(site, "aurora", "true", project="demo", queue="debug")
    bad = emu("qsub", "-l", "walltime=soon", str(script), cwd=site)
    assert bad.returncode != 0 and "walltime" in bad.stderr
    with pytest.raises(SchedulerError) as err:
        submit(pbs_emulator, script, site, extra={"select": "x:y"})
    assert "qsub" in str(err.value)
    assert os.environ["PBS_EMULATOR_HOME"].startswith(str(site.parent))


@pytest.mark.mpi
def test_mpiexec_spans_the_pbs_nodefile_hosts(pbs_emulator, site):
    """What the Aurora launcher does: hosts from $PBS_NODEFILE, one rank per node."""
    mpiexec = require_mpiexec()
    out = site / "ranks.txt"
    launcher = "bash -c " + shlex.quote(
        f'{shlex.quote(mpiexec)} -n 2 -ppn 1 -hosts "$(paste -sd, "$PBS_NODEFILE")" '
        "bash -c 'echo \"$PMI_RANK $PMI_SIZE\"' > " + shlex.quote(str(out)))
    script = make_job_script(site, "aurora", launcher, num_nodes=2, project="demo", queue="debug")
    sid = submit(pbs_emulator, script, site, num_nodes=2)
    final = poll_until(state_of(pbs_emulator, sid), lambda s: s.state == FINISHED, 60,
                       what="MPI job to finish")
    assert final.exit_code == 0, script.with_suffix(".out").read_text()
    assert sorted(out.read_text().splitlines()) == ["0 2", "1 2"]
