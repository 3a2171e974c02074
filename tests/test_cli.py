"""The spool command as a user types it: site init/start/stop, app ls, job create/ls/show/rm/
retry, queue submit/ls/term.  Errors are one line and write nothing."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from helpers import (drop, edit_settings, ids_in, job, locate, make_site, pid_alive,
                     reap_site_processes, record, site_info, spool, spool_sub, start_launcher,
                     start_site, stop_site, temps_under, wait_for)


def one_line_error(res) -> str:
    assert res.exit_code == 1, (res.exit_code, res.output)
    msg = res.stderr.strip()
    assert msg.startswith("spool: ") and "\n" not in msg, msg
    return msg


# ---- site ----------------------------------------------------------------------------------
def test_site_init_refuses_an_existing_site_and_a_non_empty_dir(tmp_path, site):
    before = (site / "settings.yml").read_bytes()
    msg = one_line_error(spool(None, "site", "init", str(site), expect=None))
    assert "already a site" in msg
    assert (site / "settings.yml").read_bytes() == before
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    msg = one_line_error(spool(None, "site", "init", str(full), expect=None))
    assert "not empty" in msg
    assert sorted(os.listdir(full)) == ["notes.txt"]
    msg = one_line_error(spool(None, "site", "init", str(tmp_path / "m"), "--machine", "cray1",
                               expect=None))
    assert "cray1" in msg and not (tmp_path / "m").exists()
    one_line_error(spool(None, "site", "init", str(tmp_path / "g"), "--gpus", "2",
                         "--gpu-ids", "0,1", expect=None))
    assert not (tmp_path / "g").exists()


def test_site_start_twice_refuses_and_stop_stops(site):
    pid = start_site(site)
    try:
        msg = one_line_error(spool(site, "site", "start", expect=None))
        assert "already running" in msg and str(pid) in msg
        # even a site process started behind the CLI's back refuses (the flock)
        res = spool_sub(None, "--site", str(site), "site", "start", "--foreground", timeout=30)
        assert res.returncode == 1 and "already running" in res.stderr
        assert site_info(site)["pid"] == pid and pid_alive(pid)
        out = spool(site, "site", "status").stdout
        assert f"running, pid {pid}" in out
    finally:
        out = spool(site, "site", "stop").stdout
    assert "Site stopped" in out
    assert not pid_alive(pid) and site_info(site) is None
    assert "not running" in spool(site, "site", "stop").stdout


def test_site_start_after_kill9_starts_again(site):
    pid = start_site(site)
    os.kill(pid, 9)
    wait_for(lambda: not pid_alive(pid), 10, "site dead")
    pid2 = start_site(site)
    assert pid2 != pid
    stop_site(site)


def test_commands_outside_a_site_say_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPOOL_SITE", raising=False)
    msg = one_line_error(spool(None, "job", "ls", expect=None))
    assert "not inside a spoolbalsam site" in msg
    msg = one_line_error(spool(tmp_path, "job", "ls", expect=None))
    assert "is not a spoolbalsam site" in msg


# ---- apps ----------------------------------------------------------------------------------
def test_app_ls_lists_apps_and_broken_ones(site):
    (site / "apps" / "Broken.yml").write_text("command_template: [1\n")
    out = spool(site, "app", "ls").stdout
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert set(rows) == {"Broken", "EchoHello", "Fail", "Sleep"}
    assert "say_hello_to" in rows["EchoHello"] and "secs" in rows["Sleep"]
    assert "BROKEN" in rows["Broken"] and "not valid YAML" in rows["Broken"]
    verbose = spool(site, "app", "ls", "-v").stdout
    assert "command: sleep {{ secs }}" in verbose and "retry: {'errors': 2" in verbose


# ---- job create ----------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["-p", "novalue"], "KEY=VALUE"),
    (["-p", "=x"], "empty KEY"),
    (["--tag", "novalue"], "KEY=VALUE"),
    (["-n", "0"], "num_nodes"),
    (["-g", "-1"], "gpus_per_rank"),
    (["-g", "13"], "gpus_per_rank"),
    (["-rpn", "5"], "ranks_per_node"),
    (["-t", "-3"], "wall_time_min"),
    (["-w", "/etc"], "workdir"),
    (["-w", "../up"], "workdir"),
    (["-a", "Nope"], "unknown app"),
    (["-p", "say_hello_to=x", "-p", "loud=1"], "unknown parameter"),
    (["-pid", "ghost"], "ghost"),
    (["--id", "../evil"], "'id'"),
])
def test_job_create_bad_flags_one_line_and_nothing_written(site, args, words):
    base = {"-a": "EchoHello", "-w": "cli/x"}
    argv = []
    for flag, val in base.items():
        if flag not in args:
            argv += [flag, val]
    argv += args
    if "-p" not in args and "EchoHello" in argv:
        argv += ["-p", "say_hello_to=x"]
    msg = one_line_error(spool(site, "job", "create", *argv, expect=None))
    assert words in msg, msg
    assert os.listdir(site / "jobs" / "created") == []
    assert not (site / "data" / "cli").exists()


def test_job_create_bad_types_refused_by_click_and_nothing_written(site):
    res = spool(site, "job", "create", "-a", "EchoHello", "-w", "x", "-n", "many", expect=None)
    assert res.exit_code == 2 and "'many' is not a valid integer" in res.stderr
    assert os.listdir(site / "jobs" / "created") == []


def test_job_create_writes_one_file_the_site_takes_in(running_site):
    site = running_site
    jid = spool(site, "job", "create", "-a", "EchoHello", "-w", "demo/echo1", "-p",
                "say_hello_to=world", "--tag", "workflow=demo", "-q").stdout.strip()
    wait_for(lambda: locate(site, jid) == "ready", 20, "created job ready")
    assert record(site, jid)["tags"] == {"workflow": "demo"}
    assert temps_under(site / "jobs") == []


# ---- listing, showing, removing, retrying ---------------------------------------------------
@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A site whose jobs have run: 3 done (tag workflow=demo), 1 done (other tag), 1 failed."""
    site = make_site(tmp_path_factory.mktemp("cli") / "S")
    start_site(site)
    try:
        for i in range(3):
            drop(site, f"d{i}.json", job(workdir=f"ls/d{i}", tags={"workflow": "demo"}))
        drop(site, "other.json", job(workdir="ls/other", tags={"workflow": "other"}))
        drop(site, "bad.json", job("Fail", "ls/bad", retry={"errors": 0}))
        drop(site, "junk.json", b"not json")
        wait_for(lambda: len(ids_in(site, "ready")) == 5, 20, "5 jobs ready")
        start_launcher(site, idle_ttl=1.5)
        wait_for(lambda: len(ids_in(site, "done")) == 4 and ids_in(site, "failed") == ["bad"],
                 30, "jobs run")
        wait_for(lambda: all(record(site, f"d{i}").get("return_code") == 0 for i in range(3))
                 and record(site, "other").get("return_code") == 0, 20, "records merged")
        yield site
    finally:
        stop_site(site)
        reap_site_processes(site)


def ls_json(site, *args) -> list[dict]:
    return [json.loads(ln) for ln in spool(site, "job", "ls", "--json", *args).stdout.splitlines()]


@pytest.mark.parametrize("state, expect", [
    ("JOB_FINISHED", {"d0", "d1", "d2", "other"}),
    ("done", {"d0", "d1", "d2", "other"}),
    ("job_finished", {"d0", "d1", "d2", "other"}),
    ("FAILED", {"bad"}),
    ("RUN_ERROR", set()),
    ("ready", set()),
    ("AWAITING_PARENTS", set()),
])
def test_job_ls_accepts_balsam_states_and_directories(ran, state, expect):
    assert {r["id"] for r in ls_json(ran, "--state", state)} == expect


def test_job_ls_tag_by_state_verbose_and_table(ran):
    assert {r["id"] for r in ls_json(ran, "--tag", "workflow=demo")} == {"d0", "d1", "d2"}
    assert ls_json(ran, "--tag", "workflow=none") == []
    rows = ls_json(ran)
    assert {r["id"] for r in rows} == {"d0", "d1", "d2", "other", "bad"}
    assert all(r["return_code"] == 0 for r in rows if r["id"] != "bad")
    by = dict(ln.split() for ln in spool(ran, "job", "ls", "--by-state").stdout.splitlines())
    assert by["done"] == "4" and by["failed"] == "1" and by["rejected"] == "1"
    by = dict(ln.split() for ln in spool(ran, "job", "ls", "--by-state", "--tag",
                                         "workflow=demo").stdout.splitlines())
    assert by == {"JOB_FINISHED": "3"}
    docs = list(yaml.safe_load_all(spool(ran, "job", "ls", "-v", "--state", "FAILED").stdout))
    assert [d["id"] for d in docs] == ["bad"] and docs[0]["return_code"] == 3
    table = spool(ran, "job", "ls").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "App", "Workdir", "State"]
    bad_row = next(ln for ln in table if ln.startswith("bad "))
    assert "FAILED" in bad_row and "exit code 3" in bad_row


def test_job_ls_unknown_state_is_one_line(ran):
    msg = one_line_error(spool(ran, "job", "ls", "--state", "FINISHED_OK", expect=None))
    assert "FINISHED_OK" in msg and "JOB_FINISHED" in msg


def test_job_show_has_the_record_and_its_history(ran):
    out = spool(ran, "job", "show", "d0").stdout
    assert "id: d0" in out and "return_code: 0" in out and "history:" in out
    hist = out.split("history:")[1]
    # (RUNNING is asserted deterministically in test_dependencies: the merge can lose it)
    for step in ("READY", "RUN_DONE", "JOB_FINISHED"):
        assert step in hist, hist
    msg = one_line_error(spool(ran, "job", "show", "nope", expect=None))
    assert "no job nope" in msg


def test_job_rm_removes_not_running_jobs_and_keeps_the_record(running_site):
    site = running_site
    drop(site, "gone.json", job(workdir="rm/gone"))
    drop(site, "stay.json", job(workdir="rm/stay"))
    wait_for(lambda: locate(site, "gone") == "ready" and locate(site, "stay") == "ready", 20,
             "two ready jobs")
    one_line_error(spool(site, "job", "rm", expect=None))           # says which jobs
    out = spool(site, "job", "rm", "--id", "gone", "-y").stdout
    assert "Removed 1 job" in out
    assert locate(site, "gone") is None and locate(site, "stay") == "ready"
    assert (site / "site" / "removed" / "gone.json").exists()
    assert "gone" not in {r["id"] for r in ls_json(site)}


def test_job_retry_puts_a_failed_job_back_and_it_runs_again(running_site):
    site = running_site
    drop(site, "again.json", job("Fail", "retry/again", retry={"errors": 0}))
    drop(site, "fine.json", job(workdir="retry/fine"))
    wait_for(lambda: len(ids_in(site, "ready")) == 2, 20, "ready")
    start_launcher(site, idle_ttl=1)
    wait_for(lambda: locate(site, "again") == "failed" and locate(site, "fine") == "done", 30,
             "first run")
    msg = one_line_error(spool(site, "job", "retry", "fine", expect=None))
    assert "only failed jobs" in msg
    assert "ready again (attempt 2)" in spool(site, "job", "retry", "again").stdout
    rec = record(site, "again")
    assert locate(site, "again") == "ready" and rec["state"] == "RESTART_READY"
    assert rec["retries"] == {"errors": 0, "timeouts": 0} and rec["error"] is None
    start_launcher(site, idle_ttl=1)
    wait_for(lambda: locate(site, "again") == "failed", 30, "second run")
    rec = record(site, "again")
    assert rec["attempt"] == 2
    assert (site / "data" / "retry" / "again" / "job.out").read_text() == "failing attempt 2\n"


# ---- queue ---------------------------------------------------------------------------------
def test_queue_submit_runs_a_local_launcher_then_ls_and_history(site):
    edit_settings(site, {"scheduler": {"sync_period_sec": 0.5}})
    start_site(site)
    try:
        drop(site, "q1.json", job(workdir="queue/q1"))
        wait_for(lambda: locate(site, "q1") == "ready", 20, "job ready")
        out = spool(site, "queue", "submit", "-n", "1", "-t", "10", "-j", "serial").stdout
        assert "Batch job 1" in out and "serial" in out
        wait_for(lambda: locate(site, "q1") == "done", 30, "the job run by the batch launcher")
        ls = spool(site, "queue", "ls").stdout.splitlines()
        assert len(ls) == 2 and ls[1].split()[0] == "1" and " local " in f" {ls[1]} "
        sched_id = ls[1].split()[1]
        assert sched_id.isdigit() and ls[1].split()[2] in ("queued", "running")
        assert "project: local" in spool(site, "queue", "ls", "-v").stdout
        assert "will be deleted" in spool(site, "queue", "term", "1").stdout
        wait_for(lambda: "finished" in spool(site, "queue", "ls", "--history").stdout, 30,
                 "the batch job to finish after term")
        assert "No active batch jobs" in spool(site, "queue", "ls").stdout
        assert not pid_alive(int(sched_id))
    finally:
        stop_site(site)


@pytest.mark.parametrize("args, words", [
    (["-n", "1", "-t", "10", "-j", "serial", "-q", "nowhere"], "nowhere"),
    (["-n", "0", "-t", "10", "-j", "serial"], "num_nodes"),
    (["-n", "1", "-t", "999999", "-j", "serial"], "max_walltime"),
    (["-n", "1", "-t", "10", "-j", "serial", "-x", "acct=1"], "acct"),
])
def test_queue_submit_refuses_bad_requests_and_writes_nothing(site, args, words):
    msg = one_line_error(spool(site, "queue", "submit", *args, expect=None))
    assert words in msg, msg
    assert os.listdir(site / "batch") == []


def test_job_create_with_an_id_still_waiting_for_intake_is_refused(site):
    spool(site, "job", "create", "-a", "EchoHello", "-w", "dup/first", "-p", "say_hello_to=a",
          "--id", "dupx")
    res = spool(site, "job", "create", "-a", "EchoHello", "-w", "dup/second", "-p",
                "say_hello_to=b", "--id", "dupx", expect=None)
    assert json.loads((site / "jobs" / "created" / "dupx.json").read_text())["workdir"] == \
        "dup/first", "the first submission was replaced"
    msg = one_line_error(res)
    assert "dupx" in msg
