"""Pure build/parse functions of the scheduler backends, on recorded outputs.

One test per file in tests/data/pbs and tests/data/slurm (and a test that no
file is left without one), the state tables, the argv builders, and the
backends' status logic with ``cmd.run`` replaced by a scripted fake.
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sched_fixtures import DATA_DIR
from spoolbalsam.pbs import base, cmd, pbs, slurm
from spoolbalsam.pbs.base import FINISHED, QUEUED, RUNNING, STATES, UNKNOWN, SchedStatus, SchedulerError

PBS_DATA = DATA_DIR / "pbs"
SLURM_DATA = DATA_DIR / "slurm"
SRV = "aurora-pbs-0001"


def read(path: Path) -> str:
    return path.read_text()


# ============================================================================ PBS files

def test_pbs_qsub_output():
    assert pbs.parse_qsub_output(read(PBS_DATA / "qsub-output.txt")) == f"1008.{SRV}"


def test_pbs_qstat_queued():
    st_ = pbs.parse_qstat_json(read(PBS_DATA / "qstat-queued.json"))
    assert list(st_) == [f"1008.{SRV}"]
    s = st_[f"1008.{SRV}"]
    assert (s.state, s.raw_state, s.exit_code, s.nodes) == (QUEUED, "Q", None, ())
    assert "Insufficient amount of resource" in s.reason


def test_pbs_qstat_held():
    s = pbs.parse_qstat_json(read(PBS_DATA / "qstat-held.json"))[f"1009.{SRV}"]
    assert (s.state, s.raw_state) == (QUEUED, "H")


def test_pbs_qstat_running():
    s = pbs.parse_qstat_json(read(PBS_DATA / "qstat-running.json"))[f"1010.{SRV}"]
    assert (s.state, s.raw_state, s.exit_code) == (RUNNING, "R", None)
    assert s.nodes == ("x4102c5s2b0n0", "x4102c5s3b0n0")
    assert s.start_time == "Mon Mar  3 10:31:05 2025"
    assert s.end_time is None


def test_pbs_qstat_finished_exit0():
    s = pbs.parse_qstat_json(read(PBS_DATA / "qstat-finished-exit0.json"))[f"1011.{SRV}"]
    assert (s.state, s.raw_state, s.exit_code, s.signal) == (FINISHED, "F", 0, None)
    assert s.end_time == "Mon Mar  3 10:44:40 2025"
    assert len(s.nodes) == 2


def test_pbs_qstat_finished_exit271_is_sigterm():
    s = pbs.parse_qstat_json(read(PBS_DATA / "qstat-finished-exit271.json"))[f"1012.{SRV}"]
    assert (s.state, s.signal, s.exit_code) == (FINISHED, 15, 143)
    assert "signal 15" in s.reason and "271" in s.reason


def test_pbs_qstat_empty_has_no_jobs_key():
    text = read(PBS_DATA / "qstat-empty.json")
    assert "Jobs" not in json.loads(text)
    assert pbs.parse_qstat_json(text) == {}


def test_pbs_qstat_mixed_states():
    st_ = pbs.parse_qstat_json(read(PBS_DATA / "qstat-mixed-states.json"))
    assert st_[f"1013.{SRV}"].state == RUNNING and st_[f"1013.{SRV}"].raw_state == "E"
    assert st_[f"1014[].{SRV}"].state == RUNNING and st_[f"1014[].{SRV}"].raw_state == "B"
    moved = st_[f"1015.{SRV}"]
    assert moved.state == UNKNOWN and "moved" in moved.reason


def test_pbs_qstat_partial_answer_with_unknown_on_stderr():
    found = pbs.parse_qstat_json(read(PBS_DATA / "qstat-partial.json"))
    found.update(pbs.classify_qstat_error(153, read(PBS_DATA / "qstat-partial.stderr")))
    assert found[f"1010.{SRV}"].state == RUNNING
    assert found[f"1007.{SRV}"].state == UNKNOWN


def test_pbs_qstat_invalid_escape_is_repaired(caplog):
    text = read(PBS_DATA / "qstat-invalid-escape.json")
    with pytest.raises(ValueError):
        json.loads(text)   # the recording really is invalid JSON
    with caplog.at_level(logging.WARNING):
        s = pbs.parse_qstat_json(text)[f"1016.{SRV}"]
    assert (s.state, s.nodes) == (RUNNING, ("x4102c5s2b0n0",))
    assert "repair" in caplog.text


def test_pbs_qstat_rc35_finished_without_history():
    v = pbs.classify_qstat_error(35, read(PBS_DATA / "qstat-rc35-finished.stderr"))
    assert v == {f"1011.{SRV}": v[f"1011.{SRV}"]} and v[f"1011.{SRV}"].state == FINISHED


def test_pbs_qstat_rc153_unknown():
    v = pbs.classify_qstat_error(153, read(PBS_DATA / "qstat-rc153-unknown.stderr"))
    assert v[f"1007.{SRV}"].state == UNKNOWN


def test_pbs_qstat_rc255_no_server_raises():
    with pytest.raises(SchedulerError) as err:
        pbs.classify_qstat_error(255, read(PBS_DATA / "qstat-rc255-no-server.stderr"))
    assert "rc=255" in str(err.value) and "cannot connect" in str(err.value)
    assert "\n" not in str(err.value)


def test_pbs_qdel_rc153_unknown_is_fine():
    assert pbs.classify_qdel_error(153, read(PBS_DATA / "qdel-rc153-unknown.stderr")) == "unknown"


def test_pbs_qdel_rc35_finished_is_fine():
    assert pbs.classify_qdel_error(35, read(PBS_DATA / "qdel-rc35-finished.stderr")) == "finished"


def test_pbs_qdel_rc168_exiting_is_fine():
    assert pbs.classify_qdel_error(168, read(PBS_DATA / "qdel-rc168-exiting.stderr")) == "exiting"


# ============================================================================ Slurm files

def test_slurm_sbatch_parsable():
    text = read(SLURM_DATA / "sbatch-parsable.txt")
    assert slurm.parse_sbatch_parsable(text) == text.strip()
    assert slurm.parse_sbatch_parsable("42;cluster\n") == "42"


def test_slurm_squeue_mixed():
    st_ = slurm.parse_squeue(read(SLURM_DATA / "squeue-mixed.txt"))
    by_raw = {s.raw_state: s for s in st_.values()}
    assert set(by_raw) == {"COMPLETED", "FAILED", "PENDING", "RUNNING"}
    assert by_raw["PENDING"].state == QUEUED and by_raw["PENDING"].nodes == ()
    assert by_raw["PENDING"].start_time is None and by_raw["PENDING"].reason == "Resources"
    assert by_raw["RUNNING"].state == RUNNING and by_raw["RUNNING"].nodes == ("n1", "n2", "n3", "n4")
    assert by_raw["RUNNING"].end_time is None
    assert by_raw["COMPLETED"].state == FINISHED and by_raw["COMPLETED"].nodes == ("n1", "n2")
    assert by_raw["FAILED"].state == FINISHED and by_raw["FAILED"].exit_code is None  # squeue has none


def test_slurm_squeue_timeout():
    (s,) = slurm.parse_squeue(read(SLURM_DATA / "squeue-timeout.txt")).values()
    assert (s.state, s.raw_state) == (FINISHED, "TIMEOUT")


def test_slurm_squeue_invalid_id():
    text = read(SLURM_DATA / "squeue-invalid-id.txt")
    assert "Invalid job id specified" in text and text.strip().endswith("rc=1")
    with pytest.raises(SchedulerError):
        slurm.parse_squeue(text)   # an error message is not a job line


def _one(text: str) -> SchedStatus:
    (s,) = slurm.parse_scontrol_show_job(text).values()
    return s


def test_slurm_scontrol_pending():
    s = _one(read(SLURM_DATA / "scontrol-pending.txt"))
    assert (s.state, s.raw_state, s.exit_code, s.start_time, s.nodes) == (QUEUED, "PENDING", None, None, ())
    assert s.reason == "Resources"


def test_slurm_scontrol_running():
    s = _one(read(SLURM_DATA / "scontrol-running.txt"))
    assert (s.state, s.exit_code, s.end_time) == (RUNNING, None, None)
    assert s.nodes == ("n1", "n2", "n3", "n4") and s.start_time


def test_slurm_scontrol_completed_2nodes():
    s = _one(read(SLURM_DATA / "scontrol-completed-2nodes.txt"))
    assert (s.state, s.raw_state, s.exit_code, s.signal) == (FINISHED, "COMPLETED", 0, None)
    assert s.nodes == ("n1", "n2") and s.end_time


def test_slurm_scontrol_failed_exit3():
    s = _one(read(SLURM_DATA / "scontrol-failed-exit3.txt"))
    assert (s.state, s.raw_state, s.exit_code) == (FINISHED, "FAILED", 3)
    assert s.reason == "NonZeroExitCode"


def test_slurm_scontrol_cancelled_running():
    s = _one(read(SLURM_DATA / "scontrol-cancelled-running.txt"))
    assert (s.state, s.raw_state, s.signal, s.exit_code) == (FINISHED, "CANCELLED", 15, 143)


def test_slurm_scontrol_cancelled_pending():
    s = _one(read(SLURM_DATA / "scontrol-cancelled-pending.txt"))
    assert (s.state, s.raw_state, s.exit_code, s.nodes) == (FINISHED, "CANCELLED", None, ())


def test_slurm_scontrol_timeout():
    s = _one(read(SLURM_DATA / "scontrol-timeout.txt"))
    assert (s.state, s.raw_state) == (FINISHED, "TIMEOUT")
    assert s.exit_code is None or s.signal is not None   # never a bare "0" for a killed job


def test_slurm_scontrol_invalid_id():
    text = read(SLURM_DATA / "scontrol-invalid-id.txt")
    assert "Invalid job id specified" in text
    with pytest.raises(SchedulerError):
        slurm.parse_scontrol_show_job(text)


def test_slurm_sacct_disabled():
    text = read(SLURM_DATA / "sacct-disabled.txt")
    assert slurm.sacct_disabled(1, text)
    assert not slurm.sacct_disabled(0, "5|COMPLETED|0:0|n1|x|y\n")


def test_slurm_sacct_accounting():
    st_ = slurm.parse_sacct(read(SLURM_DATA / "sacct-accounting.txt"))
    assert set(st_) == {"5", "6", "7"}            # step lines (5.batch, 5.0) are skipped
    assert (st_["5"].state, st_["5"].exit_code, st_["5"].nodes) == (FINISHED, 0, ("n1", "n2"))
    assert (st_["6"].raw_state, st_["6"].exit_code) == ("FAILED", 7)
    assert st_["7"].raw_state == "CANCELLED by 0" and st_["7"].state == FINISHED


def test_every_recorded_file_has_a_test():
    names = {p.name for p in PBS_DATA.iterdir()} | {p.name for p in SLURM_DATA.iterdir()}
    source = Path(__file__).read_text()
    untested = sorted(n for n in names if n not in source
                      and n not in ("README.md", "capture.sh") and not n.endswith(".stderr.rc"))
    # .stderr files are named in their test via read(PBS_DATA / name)
    assert untested == [], f"recorded outputs without a parser test: {untested}"


# ============================================================================ state tables

def test_every_documented_pbs_state_is_mapped():
    assert set("BEFHMQRSTUWX") <= set(pbs.PBS_STATES)
    assert set(pbs.PBS_STATES.values()) <= set(STATES)


def test_pbs_state_mapping_spot_checks():
    expect = {"Q": QUEUED, "H": QUEUED, "W": QUEUED, "T": QUEUED, "R": RUNNING, "E": RUNNING,
              "B": RUNNING, "S": RUNNING, "U": RUNNING, "F": FINISHED, "X": FINISHED, "M": UNKNOWN}
    assert {k: pbs.PBS_STATES[k] for k in expect} == expect


def test_unknown_pbs_state_is_unknown_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        s = pbs.job_status_from_attrs({"job_state": "Z"})
    assert s.state == UNKNOWN and s.raw_state == "Z"
    assert "unknown PBS job_state" in caplog.text


@given(st.text(min_size=1, max_size=3))
def test_any_pbs_state_code_never_raises(code):
    assert pbs.job_status_from_attrs({"job_state": code}).state in STATES


def test_every_squeue_state_is_mapped():
    documented = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE",
                  "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING",
                  "RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD", "REQUEUED", "RESIZING", "REVOKED",
                  "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED", "TIMEOUT"}
    assert documented == set(slurm.SLURM_STATES)


def test_unknown_slurm_state_is_unknown_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        (s,) = slurm.parse_squeue("12|WEIRD_NEW_STATE|None|n1|N/A|N/A\n").values()
    assert s.state == UNKNOWN and "WEIRD_NEW_STATE" in caplog.text


# ============================================================================ PBS details

@pytest.mark.parametrize("status,code,sig,hint", [
    (0, 0, None, ""), (3, 3, None, ""), (143, 143, None, ""), (265, 137, 9, "signal 9"),
    (271, 143, 15, "signal 15"), (254, 254, None, "execve"), (-3, -3, None, "JOB_EXEC_RETRY"),
    (-99, -99, None, "could not run")])
def test_pbs_exit_status(status, code, sig, hint):
    s = pbs.job_status_from_attrs({"job_state": "F", "Exit_status": status})
    assert (s.exit_code, s.signal) == (code, sig)
    assert hint in s.reason


def test_pbs_exit_status_not_an_int_raises():
    with pytest.raises(SchedulerError):
        pbs.job_status_from_attrs({"job_state": "F", "Exit_status": "lots"})


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"foo": 1}', '{"pbs_version": "1", "Jobs": []}',
                                  '{"pbs_version": "1", "Jobs": {"1.s": {"queue": "q"}}}'])
def test_pbs_qstat_garbage_raises(text):
    with pytest.raises(SchedulerError) as err:
        pbs.parse_qstat_json(text)
    assert "qstat" in str(err.value)


@pytest.mark.parametrize("text", ["", "qsub: Unknown queue\n", "Job submitted\n"])
def test_pbs_qsub_garbage_raises(text):
    with pytest.raises(SchedulerError):
        pbs.parse_qsub_output(text)


def test_pbs_qsub_array_id():
    assert pbs.parse_qsub_output("1014[].aurora-pbs-0001\n") == "1014[].aurora-pbs-0001"


def test_pbs_qstat_error_rules():
    assert pbs.classify_qstat_error(0, "") == {}
    with pytest.raises(SchedulerError):
        pbs.classify_qstat_error(2, "qstat: invalid option -- 'F'\nusage: ...")
    with pytest.raises(SchedulerError):
        pbs.classify_qstat_error(153, "")  # failure with nothing we understand


def test_pbs_history_unsupported_detection():
    assert pbs.history_unsupported(36, "qstat: job_history_enable not SET")
    assert pbs.history_unsupported(2, "qstat: invalid option -- 'x'")
    assert not pbs.history_unsupported(153, "qstat: Unknown Job Id 1.s")
    assert not pbs.history_unsupported(0, "")


def test_pbs_qdel_other_errors_raise():
    with pytest.raises(SchedulerError):
        pbs.classify_qdel_error(159, "qdel: Unauthorized Request  1008.s")


def test_pbs_match_ids_short_and_long_forms():
    found = {"1008.aurora-pbs-0001.hostmgmt.cm": SchedStatus(RUNNING, "R"),
             "1009.aurora-pbs-0001": SchedStatus(QUEUED, "Q")}
    got = pbs.match_ids(["1008.aurora-pbs-0001", "1009", "1010", "1009.other-server"], found)
    assert got == {"1008.aurora-pbs-0001": found["1008.aurora-pbs-0001.hostmgmt.cm"],
                   "1009": found["1009.aurora-pbs-0001"]}


def test_qsub_argv_exact():
    argv = pbs.qsub_argv("/s/batch/qlaunch00042.sh", queue="debug", project="demo", num_nodes=2,
                         wall_time_min=90, job_name="qlaunch00042", output="/s/batch/qlaunch00042.out",
                         extra={"filesystems": "home:flare", "-k": "doe"})
    assert argv == ["qsub", "-A", "demo", "-q", "debug", "-l", "select=2", "-l", "walltime=1:30:00",
                    "-l", "filesystems=home:flare", "-N", "qlaunch00042", "-j", "oe",
                    "-o", "/s/batch/qlaunch00042.out", "-k", "doe", "/s/batch/qlaunch00042.sh"]


def test_qsub_argv_extra_replaces_select():
    argv = pbs.qsub_argv("s.sh", queue=None, project=None, num_nodes=2, wall_time_min=5,
                         job_name="q", extra={"select": "2:system=aurora"})
    assert argv.count("-l") == 2 and "select=2:system=aurora" in argv and "-A" not in argv


@pytest.mark.parametrize("bad", [dict(num_nodes=0), dict(wall_time_min=0), dict(num_nodes=True),
                                 dict(job_name="two words"), dict(wall_time_min=1.5)])
def test_submit_args_validated(bad):
    kw = dict(queue="q", project="p", num_nodes=1, wall_time_min=5, job_name="q1")
    kw.update(bad)
    with pytest.raises(ValueError):
        pbs.qsub_argv("s.sh", **kw)
    with pytest.raises(ValueError):
        slurm.sbatch_argv("s.sh", **kw)


# ============================================================================ Slurm details

def test_sbatch_argv_exact():
    argv = slurm.sbatch_argv("/s/b/q.sh", queue="debug", project="m1234", num_nodes=2, wall_time_min=90,
                             job_name="qlaunch00042", output="/s/b/q.out",
                             extra={"qos": "regular", "-C": "gpu", "--exclusive": ""})
    assert argv == ["sbatch", "--parsable", "-N", "2", "-t", "1:30:00", "-J", "qlaunch00042",
                    "-p", "debug", "-A", "m1234", "-o", "/s/b/q.out", "--qos=regular", "-C", "gpu",
                    "--exclusive", "/s/b/q.sh"]


@pytest.mark.parametrize("text,expected", [
    ("n[1-3,5]", ("n1", "n2", "n3", "n5")), ("gpu[07-09],login1", ("gpu07", "gpu08", "gpu09", "login1")),
    ("x1000c0s[1-2]b0n0", ("x1000c0s1b0n0", "x1000c0s2b0n0")), ("", ()), ("(null)", ()),
    ("nid001234", ("nid001234",))])
def test_expand_hostlist(text, expected):
    assert slurm.expand_hostlist(text) == expected


def test_parse_key_values_keeps_spaces_and_equals():
    f = slurm.parse_key_values("JobId=3 JobName=my job TRES=cpu=4,node=4 Reason=None")
    assert f == {"JobId": "3", "JobName": "my job", "TRES": "cpu=4,node=4", "Reason": "None"}


@pytest.mark.parametrize("text", ["12|RUNNING|None\n", "abc|RUNNING|None|n1|N/A|N/A\n"])
def test_squeue_garbage_raises(text):
    with pytest.raises(SchedulerError):
        slurm.parse_squeue(text)


def test_scancel_rules():
    assert slurm.classify_scancel_error(1, "scancel: error: Kill job error on job id 9: "
                                           "Invalid job id specified") == "unknown"
    with pytest.raises(SchedulerError):
        slurm.classify_scancel_error(1, "scancel: error: Unable to contact slurm controller")


# ============================================================================ cmd.run

def test_cmd_run_rejects_strings_and_reports_failures(tmp_path):
    with pytest.raises(TypeError):
        cmd.run("echo hi")  # type: ignore[arg-type]
    assert cmd.run(["echo", "hi"]).stdout == "hi\n"
    with pytest.raises(SchedulerError) as err:
        cmd.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert err.value.rc == 3 and "boom" in str(err.value) and "rc=3" in str(err.value)
    with pytest.raises(SchedulerError) as err:
        cmd.run([str(tmp_path / "no-such-command")])
    assert err.value.rc == 127
    with pytest.raises(SchedulerError) as err:
        cmd.run(["sleep", "5"], timeout=0.2)
    assert "timed out" in str(err.value)
    assert cmd.run(["sh", "-c", "exit 4"], check=False).returncode == 4


def test_scheduler_error_is_one_line():
    e = SchedulerError(["qstat", "-f"], 2, "line one\nline two\n" + "x" * 1000)
    assert "\n" not in str(e) and str(e).startswith("qstat -f: rc=2: line one | line two")
    assert len(str(e)) < 400


def test_get_backend_names():
    assert base.get_backend("pbs").name == "pbs"
    assert base.get_backend("Slurm").name == "slurm"
    assert base.get_backend("local").name == "local"
    with pytest.raises(ValueError):
        base.get_backend("cobalt")


# ============================================================================ backends with a scripted cmd.run

class FakeRun:
    """Replaces cmd.run: answers by command name from a script of (rc, stdout, stderr)."""

    def __init__(self, answers):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.calls: list[list[str]] = []

    def __call__(self, argv, timeout=60, *, check=True, cwd=None, env=None):
        self.calls.append(list(argv))
        rc, out, err = self.answers[Path(argv[0]).name].pop(0)
        if check and rc != 0:
            raise SchedulerError(argv, rc, err + out)
        return subprocess.CompletedProcess(argv, rc, out, err)


def test_pbs_status_falls_back_when_history_unsupported(monkeypatch):
    running = read(PBS_DATA / "qstat-running.json")
    fake = FakeRun({"qstat": [(2, "", "qstat: invalid option -- 'x'\nusage: qstat ..."),
                              (35, running, read(PBS_DATA / "qstat-rc35-finished.stderr")),
                              (153, "", read(PBS_DATA / "qstat-rc153-unknown.stderr"))]})
    monkeypatch.setattr(cmd, "run", fake)
    b = pbs.PbsBackend()
    got = b.status([f"1010.{SRV}", "1011", f"1010.{SRV}"])
    assert fake.calls[0][1:5] == ["-f", "-F", "json", "-x"] and "-x" not in fake.calls[1]
    assert b.history is False
    assert got[f"1010.{SRV}"].state == RUNNING and got["1011"].state == FINISHED
    assert list(got) == [f"1010.{SRV}", "1011"]
    assert b.status(["1007"])["1007"].state == UNKNOWN
    assert "-x" not in fake.calls[2]


def test_pbs_status_unexplained_failure_raises(monkeypatch):
    fake = FakeRun({"qstat": [(255, "", read(PBS_DATA / "qstat-rc255-no-server.stderr"))]})
    monkeypatch.setattr(cmd, "run", fake)
    with pytest.raises(SchedulerError) as err:
        pbs.PbsBackend().status(["1008"])
    assert "qstat -f -F json -x 1008" in str(err.value)


def test_pbs_cancel_tolerates_gone_jobs(monkeypatch):
    fake = FakeRun({"qdel": [(0, "", ""), (35, "", read(PBS_DATA / "qdel-rc35-finished.stderr")),
                             (153, "", read(PBS_DATA / "qdel-rc153-unknown.stderr")),
                             (159, "", "qdel: Unauthorized Request 1008.s\n")]})
    monkeypatch.setattr(cmd, "run", fake)
    b = pbs.PbsBackend(bin_dir="/opt/pbs/bin")
    b.cancel("1")
    b.cancel("1011")
    b.cancel("1007")
    with pytest.raises(SchedulerError):
        b.cancel("1008")
    assert fake.calls[0] == ["/opt/pbs/bin/qdel", "1"]


def test_select_from_script():
    text = "#!/bin/bash\n#PBS -A demo\n#PBS -l select=2:system=aurora,place=scatter\necho\n"
    assert pbs.select_from_script(text, 2) == "2:system=aurora"
    assert pbs.select_from_script(text, 3) is None          # counts disagree: the caller wins
    assert pbs.select_from_script("#!/bin/bash\necho\n#PBS -l select=2\n", 2) is None
    assert pbs.select_from_script("#!/bin/bash\n#PBS -l select=1:ncpus=4+1:ngpus=1\n", 2) is None


def test_pbs_submit_repeats_the_scripts_select(monkeypatch, tmp_path):
    fake = FakeRun({"qsub": [(0, "7.srv\n", "")]})
    monkeypatch.setattr(cmd, "run", fake)
    script = tmp_path / "q.sh"
    script.write_text("#!/bin/bash\n#PBS -l select=2:system=aurora,place=scatter\ntrue\n")
    pbs.PbsBackend().submit(script, queue="debug", project="demo", num_nodes=2, wall_time_min=30,
                            job_name="q", cwd=tmp_path)
    assert "select=2:system=aurora" in fake.calls[0] and "select=2" not in fake.calls[0]


def test_pbs_submit_parses_id(monkeypatch, tmp_path):
    fake = FakeRun({"qsub": [(0, read(PBS_DATA / "qsub-output.txt"), ""), (0, "garbage\n", "")]})
    monkeypatch.setattr(cmd, "run", fake)
    script = tmp_path / "batch" / "qlaunch00001.sh"
    kw = dict(queue="debug", project="demo", num_nodes=1, wall_time_min=30, job_name="qlaunch00001",
              cwd=tmp_path)
    assert pbs.PbsBackend().submit(script, **kw) == f"1008.{SRV}"
    assert fake.calls[0][-3:] == ["-o", str(script.with_suffix(".out")), str(script)]
    with pytest.raises(SchedulerError) as err:
        pbs.PbsBackend().submit(script, **kw)
    assert "garbage" in str(err.value) and "qsub" in str(err.value)


def test_slurm_status_uses_scontrol_for_finished_and_remembers_no_sacct(monkeypatch):
    fake = FakeRun({
        "squeue": [(0, "7|COMPLETED|None|n[1-2]|t0|t1\n8|RUNNING|None|n3|t0|NONE\n", ""),
                   (1, "", "slurm_load_jobs error: Invalid job id specified\n")],
        "scontrol": [(0, read(SLURM_DATA / "scontrol-completed-2nodes.txt"), "")],
        "sacct": [(1, "", read(SLURM_DATA / "sacct-disabled.txt").splitlines()[0] + "\n")],
    })
    monkeypatch.setattr(cmd, "run", fake)
    b = slurm.SlurmBackend()
    got = b.status(["7", "8", "99"])
    assert (got["7"].state, got["7"].exit_code) == (FINISHED, 0)
    assert got["8"].state == RUNNING and got["99"].state == UNKNOWN
    assert b.use_sacct is False
    assert b.status(["99"])["99"].state == UNKNOWN
    assert [c[0] for c in fake.calls] == ["squeue", "scontrol", "sacct", "squeue"]


def test_slurm_status_rejects_bad_ids():
    with pytest.raises(ValueError):
        slurm.SlurmBackend().status(["7; rm -rf /"])
