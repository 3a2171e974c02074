"""Job-script templates: rendered for every machine, checked as text, and run for real.

Text checks: every directive precedes the first command, walltime is H:MM:SS,
machine specifics (select/system/place/filesystems), values that reach the
shell are quoted, bad values are refused. Run checks (local backend): the
script cds to the site, exports SPOOL_SITE, runs the launcher and records its
exit code in ``<script>.ec`` -- also when cancelled with SIGTERM.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sched_fixtures import make_job_script, poll_until, site  # noqa: F401  (site is a fixture)
from spoolbalsam.pbs import local as local_mod
from spoolbalsam.pbs.base import FINISHED, RUNNING, UNKNOWN, read_exit_code
from spoolbalsam.pbs.local import LocalBackend, local_status, parse_proc_stat
from spoolbalsam.pbs.script import (MACHINE_TEMPLATES, check_directives, directive_lines,
                                    job_script_context, render_job_script, walltime_hms)

PREFIX = {"pbs": "#PBS", "slurm": "#SBATCH", "local": None}
LAUNCHER = "/opt/venv/bin/spool launcher -j mpi -t 88 --tag 'k=v w'"


def ctx(**over):
    base = dict(job_name="qlaunch00042", project="datascience", queue="debug", num_nodes=2,
                wall_time_min=90, site_path="/lus/flare/projects/demo/my site", launcher_cmd=LAUNCHER)
    base.update(over)
    return base


def first_command_index(lines):
    """Index of the first line that is not the shebang, blank, or a comment (own scan)."""
    for i, line in enumerate(lines):
        s = line.strip()
        if (i == 0 and s.startswith("#!")) or not s or s.startswith("#"):
            continue
        return i
    return len(lines)


# ----------------------------------------------------------------------------- walltime

@pytest.mark.parametrize("minutes,hms", [(1, "0:01:00"), (30, "0:30:00"), (59, "0:59:00"), (60, "1:00:00"),
                                         (90, "1:30:00"), (125, "2:05:00"), (1440, "24:00:00"),
                                         (4320, "72:00:00")])
def test_walltime_hms(minutes, hms):
    assert walltime_hms(minutes) == hms


@given(st.integers(min_value=1, max_value=10 ** 6))
def test_walltime_round_trip(minutes):
    h, m, s = walltime_hms(minutes).split(":")
    assert s == "00" and len(m) == 2 and int(m) < 60
    assert int(h) * 60 + int(m) == minutes


@pytest.mark.parametrize("bad", [0, -5, 1.5, "90", True, None])
def test_walltime_rejects(bad):
    with pytest.raises(ValueError):
        walltime_hms(bad)


# ----------------------------------------------------------------------------- every template

@pytest.mark.parametrize("machine", sorted(MACHINE_TEMPLATES))
def test_directives_precede_first_command(machine):
    scheduler = MACHINE_TEMPLATES[machine][1]
    text = render_job_script(machine, **ctx())
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    first = first_command_index(lines)
    assert first < len(lines)
    prefix = PREFIX[scheduler]
    if prefix:
        before = [ln for ln in lines[:first] if ln.startswith(prefix + " ")]
        after = [ln for ln in lines[first:] if ln.strip().startswith(prefix)]
        assert len(before) >= 4 and after == []
    else:
        assert not any(ln.startswith(("#PBS", "#SBATCH")) for ln in lines)


@pytest.mark.parametrize("machine", sorted(MACHINE_TEMPLATES))
def test_values_reaching_the_shell_are_quoted(machine):
    text = render_job_script(machine, **ctx(site_path="/tmp/a site/$HOME/`x`"))
    q = shlex.quote("/tmp/a site/$HOME/`x`")
    assert f"cd {q} " in text
    assert f"export SPOOL_SITE={q}\n" in text
    assert shlex.quote("/tmp/a site/$HOME/`x`/batch/qlaunch00042.ec") in text
    assert f"\n{LAUNCHER} &\n" in text          # launcher_cmd is already quoted by the caller
    assert "export SPOOL_BATCH_JOB=qlaunch00042\n" in text


@pytest.mark.parametrize("machine", sorted(MACHINE_TEMPLATES))
def test_rendered_script_is_valid_bash(machine, tmp_path):
    path = tmp_path / "s.sh"
    path.write_text(render_job_script(machine, **ctx(python_env_activate="source /opt/venv/bin/activate")))
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("machine", sorted(MACHINE_TEMPLATES))
def test_walltime_and_counts_in_directives(machine):
    text = render_job_script(machine, **ctx(wall_time_min=90, num_nodes=3))
    scheduler = MACHINE_TEMPLATES[machine][1]
    if scheduler == "pbs":
        assert "#PBS -l walltime=1:30:00\n" in text
        assert f"#PBS -l select=3:system={machine},place=scatter\n" in text
    elif scheduler == "slurm":
        assert "#SBATCH -t 1:30:00\n" in text and "#SBATCH -N 3\n" in text
    assert "3 node(s), 90 min" in text


# ----------------------------------------------------------------------------- machine specifics

def test_aurora_directives_exact():
    text = render_job_script("aurora", **ctx())
    directives = [ln for ln in text.splitlines() if ln.startswith("#PBS")]
    assert directives == ["#PBS -N qlaunch00042", "#PBS -A datascience", "#PBS -q debug",
                          "#PBS -l select=2:system=aurora,place=scatter", "#PBS -l walltime=1:30:00",
                          "#PBS -l filesystems=home:flare", "#PBS -k doe", "#PBS -j oe"]


def test_polaris_defaults():
    text = render_job_script("polaris", **ctx())
    assert "#PBS -l select=2:system=polaris,place=scatter\n" in text
    assert "#PBS -l filesystems=home:grand:eagle\n" in text


def test_filesystems_override_and_template_file_name():
    text = render_job_script("job-aurora.sh.j2", **ctx(filesystems="home:flare:daos_user"))
    assert "#PBS -l filesystems=home:flare:daos_user\n" in text


def test_slurm_directives_exact():
    text = render_job_script("slurm", **ctx(site_path="/global/cfs/demo", project="m1234",
                                            queue="regular", optional_params={"qos": "debug", "-C": "gpu"}))
    directives = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert directives == ["#SBATCH -J qlaunch00042", "#SBATCH -N 2", "#SBATCH --exclusive",
                          "#SBATCH -t 1:30:00",
                          "#SBATCH -A m1234", "#SBATCH -p regular",
                          "#SBATCH -o /global/cfs/demo/batch/qlaunch00042.out",
                          "#SBATCH --qos=debug", "#SBATCH -C gpu"]


def test_slurm_without_account_or_partition_or_quotable_output():
    text = render_job_script("slurm", **ctx(project=None, queue=None))
    assert "#SBATCH -A" not in text and "#SBATCH -p" not in text
    assert "#SBATCH -o" not in text   # the site path has a space: only the command line gets -o


def test_pbs_optional_params():
    assert directive_lines("pbs", {"mig_count": 2, "-m": "n", "-W": "depend=afterok:1008"}) == [
        "#PBS -l mig_count=2", "#PBS -m n", "#PBS -W depend=afterok:1008"]
    text = render_job_script("aurora", **ctx(optional_params={"mig_count": 2}))
    assert text.index("#PBS -l mig_count=2") < text.index("\ncd ")


def test_python_env_activate_runs_before_launcher():
    text = render_job_script("aurora", **ctx(python_env_activate="source /opt/venv/bin/activate"))
    assert text.index("source /opt/venv/bin/activate") < text.index(LAUNCHER)


def test_exit_code_file_follows_script_path():
    c = job_script_context("slurm", **ctx(script_path="/s/batch/qlaunch00042.sh"))
    assert c["exit_code_file"] == "/s/batch/qlaunch00042.ec"
    assert c["exit_code_tmp"] == "/s/batch/.qlaunch00042.ec.tmp"


@pytest.mark.parametrize("machine,bad", [
    ("aurora", dict(project=None)), ("aurora", dict(queue="")), ("aurora", dict(project="a b")),
    ("polaris", dict(queue="debug;rm")), ("aurora", dict(site_path="relative/site")),
    ("aurora", dict(launcher_cmd="spool launcher\nrm -rf /")), ("aurora", dict(launcher_cmd="")),
    ("slurm", dict(job_name="9starts-with-digit")), ("slurm", dict(job_name="has space")),
    ("slurm", dict(num_nodes=0)), ("slurm", dict(wall_time_min=0)), ("slurm", dict(job_mode="cobalt")),
    ("slurm", dict(python_env_activate="a\nb")), ("slurm", dict(optional_params={"qos": "a b"})),
    ("slurm", dict(optional_params={"bad key": "x"})), ("local", dict(optional_params={"qos": "x"})),
    ("aurora", dict(filesystems="home flare"))])
def test_bad_values_are_refused(machine, bad):
    with pytest.raises(ValueError):
        render_job_script(machine, **ctx(**bad))


def test_unknown_machine():
    with pytest.raises(ValueError):
        render_job_script("theta", **ctx())


def test_check_directives_catches_late_directive():
    check_directives("#!/bin/bash\n#PBS -N a\n\n# note\necho hi\n", "#PBS")
    with pytest.raises(ValueError, match="ignored"):
        check_directives("#!/bin/bash\n#PBS -N a\necho hi\n#PBS -V\n", "#PBS")
    with pytest.raises(ValueError):
        check_directives("echo no shebang\n", None)


# ----------------------------------------------------------------------------- run for real (local backend)

@pytest.fixture
def backend(tmp_path):
    return LocalBackend(state_dir=tmp_path / "local-state")


def submit(backend, script, site):
    return backend.submit(script, queue=None, project=None, num_nodes=1, wall_time_min=5,
                          job_name=script.stem, cwd=site.parent)


def test_local_script_runs_launcher_and_records_exit_code(backend, site):
    launcher = ("bash -c " + shlex.quote('echo "pwd=$(pwd) site=$SPOOL_SITE mode=$SPOOL_JOB_MODE"; exit 7'))
    script = make_job_script(site, "local", launcher, job_mode="serial")
    sid = submit(backend, script, site)
    assert sid.isdigit()
    final = poll_until(lambda: backend.status([sid])[sid], lambda s: s.state == FINISHED, 20,
                       what="local job to finish")
    assert final.exit_code == 7
    assert read_exit_code(script.with_suffix(".ec")) == 7
    out = script.with_suffix(".out").read_text()
    assert f"pwd={site} site={site} mode=serial" in out
    assert not list(site.joinpath("batch").glob(".*.tmp"))   # the temp was renamed away


def test_local_status_running_then_cancel_records_sigterm(backend, site):
    marker = site / "started"
    launcher = "bash -c " + shlex.quote(f"touch {shlex.quote(str(marker))}; exec sleep 60")
    script = make_job_script(site, "local", launcher)
    sid = submit(backend, script, site)
    poll_until(lambda: marker.exists(), bool, 20, what="launcher to start")
    running = backend.status([sid])[sid]
    assert running.state == RUNNING and running.raw_state in ("S", "R")
    backend.cancel(sid)
    final = poll_until(lambda: backend.status([sid])[sid], lambda s: s.state == FINISHED, 20,
                       what="cancelled job to finish")
    assert final.exit_code == 143 and final.signal == signal.SIGTERM
    assert read_exit_code(script.with_suffix(".ec")) == 143   # the script still wrote it
    backend.cancel(sid)   # already finished: no error


def test_local_status_from_another_backend_object(backend, site, tmp_path):
    script = make_job_script(site, "local", "true")
    sid = submit(backend, script, site)
    other = LocalBackend(state_dir=tmp_path / "local-state")   # e.g. a later CLI call
    final = poll_until(lambda: other.status([sid])[sid], lambda s: s.state == FINISHED, 20)
    assert final.exit_code == 0
    assert LocalBackend(state_dir=tmp_path / "elsewhere").status([sid])[sid].state == UNKNOWN
    assert backend.status(["not-a-pid"])["not-a-pid"].state == UNKNOWN


def test_local_script_killed_hard_reports_wait_status(backend, site):
    marker = site / "started"
    script = make_job_script(site, "local", "bash -c " + shlex.quote(f"touch {marker}; sleep 60"))
    sid = submit(backend, script, site)
    poll_until(lambda: marker.exists(), bool, 20)
    os.killpg(int(sid), signal.SIGKILL)   # no chance to write .ec
    final = poll_until(lambda: backend.status([sid])[sid], lambda s: s.state == FINISHED, 20)
    assert final.signal == signal.SIGKILL and final.exit_code == 137
    assert read_exit_code(script.with_suffix(".ec")) is None


def test_parse_proc_stat_with_hostile_command_name():
    text = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3"
    assert parse_proc_stat(text) == ("S", 987654)
    with pytest.raises(Exception):
        parse_proc_stat("garbage")


def test_local_status_decisions():
    rec = {"pid": 10, "start_ticks": 500, "host": "h"}
    alive = "10 (bash) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 0"
    reused = alive.replace(" 500 ", " 999 ")
    zombie = alive.replace(" S ", " Z ")
    assert local_status(rec, alive, None).state == RUNNING
    assert local_status(rec, reused, 3).state == FINISHED and local_status(rec, reused, 3).exit_code == 3
    assert local_status(rec, zombie, None, 0).exit_code == 0
    assert local_status(rec, None, None).exit_code is None
    assert "without writing" in local_status(rec, None, None).reason
    assert local_status(rec, None, None, -9).signal == 9
    assert local_status(None, alive, None).state == UNKNOWN


def test_local_cancel_never_signals_a_recycled_pid(backend, site, monkeypatch):
    script = make_job_script(site, "local", "true")
    sid = submit(backend, script, site)
    poll_until(lambda: backend.status([sid])[sid], lambda s: s.state == FINISHED, 20)
    record = backend._load(int(sid))
    record["start_ticks"] = -1   # pretend the pid now belongs to someone else
    backend._write_record(int(sid), record)
    sent = []
    monkeypatch.setattr(local_mod.os, "killpg", lambda *a: sent.append(a))
    backend.cancel(sid)
    assert sent == []
