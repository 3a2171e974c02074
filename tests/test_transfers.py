"""Data staging (Balsam's transfers): slots, locations and items; bad input at submit time
and at intake; the site's staging states with a scripted backend (retries, backoff, limits,
batching); the local backend's copies; and whole campaigns with real site and launcher
processes, including a kill -9 of the site in the middle of a copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from spoolbalsam import settings as settings_mod
from spoolbalsam.apps import AppError, app_from_dict
from spoolbalsam.spool.query import Filter, counts as query_counts, select
from spoolbalsam.transfer import items as T
from spoolbalsam.transfer.base import BLOCKED, PERMANENT, TRANSIENT, Backend, Move, Outcome, TaskStatus
from spoolbalsam.transfer.local import LocalBackend, place

from helpers import (REPO, drop, edit_settings, ids_in, kill9, layout, locate, make_site,
                     pid_alive, reap_site_processes, record, rejected_entries, site_obj, spool,
                     start_launcher, start_site, stop_site, temps_under, wait_for, write_app)

SLOTS = {"input": {"required": True, "direction": "in", "local_path": "input.dat"},
         "result": {"direction": "out", "local_path": "result.txt"}}
CAT = {"command_template": "cat input.dat > result.txt; echo ran >> runs.log",
       "transfers": SLOTS}


# ---- slots, locations, items (pure) ----------------------------------------------------------
@pytest.mark.parametrize("slots, words", [
    ("input", ["mapping of slot name"]),
    ({"in put": {"direction": "in"}}, ["'in put'", "not a name"]),
    ({"x": {"direction": "sideways"}}, ["slot x", "direction", "'sideways'"]),
    ({"x": {"direction": "in", "local_path": "../../x"}}, ["slot x", "../../x", "leaves"]),
    ({"x": {"direction": "in", "local_path": "/etc/passwd"}}, ["slot x", "relative"]),
    ({"x": {"direction": "in", "required": "yes"}}, ["slot x", "required", "true or false"]),
    ({"x": {"direction": "in", "size": 3}}, ["slot x", "unknown key 'size'"]),
    ({"x": {"direction": "out", "local_path": "."}}, ["slot x", "recursive"]),
])
def test_a_malformed_app_transfers_field_is_one_line_naming_file_field_and_slot(slots, words):
    with pytest.raises(AppError) as e:
        app_from_dict({"command_template": "true", "transfers": slots}, "apps/A.yml", "A")
    msg = str(e.value)
    assert msg.startswith("apps/A.yml: field 'transfers': ") and "\n" not in msg
    for w in words:
        assert w in msg


def test_slots_get_balsams_defaults():
    app = app_from_dict({"command_template": "true", "transfers": {
        "d": {"direction": "in", "recursive": True}}}, "apps/A.yml", "A")
    assert app.transfers == {"d": {"required": False, "direction": "in", "local_path": ".",
                                   "description": "", "recursive": True}}


@pytest.mark.parametrize("url, words", [
    ("ftp://host/x", ["no known scheme"]),
    ("file://host/x", ["names host 'host'", "three slashes"]),
    ("file:///x?method=scp", ["method 'scp'"]),
    ("file:///x?speed=1", ["unknown URL option 'speed'"]),
    ("globus://not-a-uuid", ["not a Globus collection id"]),
])
def test_bad_locations_are_refused_naming_the_alias(url, words):
    with pytest.raises(settings_mod.SettingsError) as e:
        settings_mod.validate({"transfers": {"transfer_locations": {"home": url}}}, "settings.yml")
    msg = str(e.value)
    assert msg.startswith("settings.yml: transfers.transfer_locations: home: ")
    for w in words:
        assert w in msg


def test_balsam_settings_names_are_accepted():
    s = settings_mod.validate({"transfers": {"num_transfer_slots": 3, "transfer_batch_size": 7,
                                             "transfer_locations": {"h": "file:///tmp"}}}, "s.yml")
    assert s["transfers"]["max_concurrent_transfers"] == 3
    assert s["transfers"]["transfer_batch_size"] == 7
    with pytest.raises(settings_mod.SettingsError, match="globus_endpoint_id"):
        settings_mod.validate({"transfers": {"transfer_locations": {
            "g": "globus://9d6d994a-6d04-11e5-ba46-22000b92c6ec"}}}, "s.yml")


def _resolve(transfers, slots=SLOTS, locs=None):
    locs = locs or {"home": "file:///data/home", "any": "file://"}
    return T.resolve(T.check_job_transfers(transfers), T.check_slots(slots),
                     T.check_locations(locs), "w/1", "Cat")


@pytest.mark.parametrize("transfers, words", [
    ({"input": "home:/data/home/a", "output": "home:/data/home/b"},
     ["unknown transfer slot 'output'", "its slots: input, result"]),
    ({"result": "home:/data/home/r"}, ["missing required transfer slot(s) input"]),
    ({"input": "cloud:/a"}, ["unknown location alias 'cloud'", "known: any, home"]),
    ({"input": "home:/etc/passwd"}, ["/etc/passwd is outside location home"]),
    ({"input": "home:/data/home/../../etc/passwd"}, ["/etc/passwd is outside location home"]),
])
def test_resolve_refuses_what_cannot_be_staged(transfers, words):
    with pytest.raises(ValueError) as e:
        _resolve(transfers)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("value", ["home", "home:relative/x", ":/x", 3, "a b:/x"])
def test_a_job_transfer_value_must_be_alias_colon_absolute_path(value):
    with pytest.raises(ValueError):
        T.check_job_transfers({"input": value})


def test_items_record_what_moves_where():
    items = _resolve({"input": "home:/data/home/in/7.dat", "result": "any:/tmp/out/7.txt"})
    by = {i["name"]: i for i in items}
    assert by["input"]["source"] == "home:/data/home/in/7.dat"
    assert by["input"]["destination"] == "data/w/1/input.dat"
    assert by["input"]["state"] == "pending" and by["result"]["state"] == "awaiting_job"
    assert by["result"]["source"] == "data/w/1/result.txt"
    assert by["result"]["destination"] == "any:/tmp/out/7.txt"
    assert {i["attempts"] for i in items} == {0}
    # local_path "." keeps the remote name of a file, and means the workdir for a directory
    keep = _resolve({"f": "any:/x/y/data.h5", "d": "any:/x/dir"},
                    {"f": {"direction": "in"}, "d": {"direction": "in", "recursive": True}})
    assert {i["name"]: i["local"] for i in keep} == {"f": "data.h5", "d": "."}


# ---- bad input at submit time and at intake ----------------------------------------------------
@pytest.fixture
def xsite(tmp_path):
    """A site with the Cat app and two locations: remote/ (copy) and linked/ (hard links)."""
    remote = tmp_path / "remote"
    (remote / "in").mkdir(parents=True)
    (remote / "out").mkdir()
    root = make_site(tmp_path / "S", apps={"Cat": CAT}, settings={"transfers": {
        "transfer_locations": {"remote": f"file://{remote}",
                               "linked": f"file://{remote}?method=link"}}})
    try:
        yield root, remote
    finally:
        reap_site_processes(root)


def test_cli_refuses_bad_transfers_naming_the_field_and_writes_nothing(xsite):
    site, remote = xsite
    (remote / "in" / "a.dat").write_text("a\n")
    cases = [(["-s", "input=cloud:/x"], "unknown location alias 'cloud'"),
             (["-s", "input=remote:/etc/passwd"], "outside location remote"),
             (["-s", f"result=remote:{remote}/out/r"], "missing required transfer slot(s) input"),
             (["-s", f"input=remote:{remote}/in/a.dat", "-s", "log=remote:/x"],
              "unknown transfer slot 'log'"),
             (["-s", "input=remote"], "LOCATION_ALIAS:/absolute/path")]
    for args, words in cases:
        res = spool(site, "job", "create", "-a", "Cat", "-w", "w", *args, expect=1)
        assert "field 'transfers'" in res.stderr and words in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert os.listdir(site / "jobs" / "created") == []


def test_intake_rejects_bad_transfers_byte_for_byte_naming_file_and_field(xsite):
    site, remote = xsite
    bad = {"unknown-alias": {"input": "cloud:/x"},
           "unknown-slot": {"input": f"remote:{remote}/a", "log": f"remote:{remote}/b"},
           "missing-required": {"result": f"remote:{remote}/r"},
           "escapes": {"input": "remote:/etc/passwd"},
           "not-a-path": {"input": "remote:x"}}
    s = site_obj(site)
    for name, tr in bad.items():
        drop(site, f"{name}.json", {"app": "Cat", "workdir": name, "transfers": tr})
    s.tick()
    got = rejected_entries(site)
    assert set(got) == {f"{n}.json" for n in bad}
    for name, tr in bad.items():
        data, reason = got[f"{name}.json"]
        assert json.loads(data)["transfers"] == tr                   # kept byte for byte
        assert reason.startswith(f"jobs/created/{name}.json: field 'transfers': ")
        assert len(reason.strip().splitlines()) == 1


def test_an_app_whose_local_path_escapes_is_broken_and_its_jobs_are_refused(xsite):
    site, remote = xsite
    write_app(site, "Escape", {"command_template": "true", "transfers": {
        "x": {"direction": "in", "local_path": "../../x"}}})
    out = spool(site, "app", "ls").stdout
    assert "Escape" in out and "BROKEN" in out and "'transfers'" in out and "../../x" in out
    res = spool(site, "job", "create", "-a", "Escape", "-w", "w", expect=1)
    assert "app Escape is broken" in res.stderr and "leaves the job's workdir" in res.stderr


def test_python_api_apps_declare_transfers_and_jobs_fill_them(xsite, monkeypatch):
    site, remote = xsite
    monkeypatch.setenv("SPOOL_SITE", str(site))
    from spoolbalsam.api import ApplicationDefinition, Job
    from spoolbalsam.submit import SubmitError
    where = str(site)

    class Sim(ApplicationDefinition):
        site = where
        command_template = "cat input.nw"
        transfers = {"input_file": {"required": True, "direction": "in",
                                    "local_path": "input.nw", "description": "Input Deck",
                                    "recursive": False}}
    Sim.sync()
    assert "transfer input_file: in input.nw (required)  Input Deck" in spool(
        site, "app", "ls", "-v").stdout
    j = Job(workdir="api/1", app_id="Sim", site_name=str(site),
            transfers={"input_file": f"remote:{remote}/in/deck.nw"})
    j.save()
    assert json.loads((site / "jobs" / "created" / f"{j.id}.json").read_text())["transfers"] == \
        {"input_file": f"remote:{remote}/in/deck.nw"}
    with pytest.raises(SubmitError, match="unknown location alias 'laptop'"):
        Job(workdir="api/2", app_id="Sim", site_name=str(site),
            transfers={"input_file": "laptop:/path/to/input.dat"}).save()


# ---- the site's staging, step by step, with a scripted backend ----------------------------------
class Scripted(Backend):
    """A backend that does nothing by itself: the test ends its tasks."""
    scheme = "file"

    def __init__(self):
        super().__init__()
        self.submitted: list[tuple[str, str, list[Move]]] = []
        self.out: list[TaskStatus] = []
        self.cancelled: list[str] = []

    def submit(self, task_id, location, direction, moves):
        self.submitted.append((task_id, direction, moves))

    def poll(self):
        out, self.out = self.out, []
        return out

    def cancel(self, task_id):
        self.cancelled.append(task_id)

    def end(self, n: int, ok: bool = True, error: str = "", kind: str = TRANSIENT):
        task_id, _, moves = self.submitted[n]
        self.out.append(TaskStatus(task_id, "done" if ok else "error",
                                   [Outcome(m.key, ok, error or None, kind) for m in moves]))


def _stepper(site: Path, **conf):
    edit_settings(site, {"transfers": conf})
    s = site_obj(site)
    fake = Scripted()
    s.staging.backends["file"] = fake
    return s, fake


def test_transient_errors_retry_with_doubling_backoff_then_the_job_fails_naming_it(xsite):
    site, remote = xsite
    s, fake = _stepper(site, max_attempts=3, retry_backoff_sec=10)
    drop(site, "j.json", {"id": "j", "app": "Cat", "workdir": "j",
                          "transfers": {"input": f"remote:{remote}/in/a.dat"}})
    s.tick(100.0)
    assert locate(site, "j") == "stagein" and len(fake.submitted) == 1
    item = record(site, "j")["transfer_items"][0]
    assert (item["state"], item["attempts"], item["task_id"]) == ("active", 1, fake.submitted[0][0])
    fake.end(0, ok=False, error="No space left on device")
    s.tick(101.0)
    item = record(site, "j")["transfer_items"][0]
    assert (item["state"], item["attempts"], item["error"]) == ("pending", 1, "No space left on device")
    s.tick(110.9)
    assert len(fake.submitted) == 1                       # backoff: 10 s after the failure
    s.tick(111.0)
    assert len(fake.submitted) == 2
    fake.end(1, ok=False, error="No space left on device")
    s.tick(112.0)
    s.tick(131.9)
    assert len(fake.submitted) == 2                       # doubled: 20 s
    s.tick(132.0)
    assert len(fake.submitted) == 3
    fake.end(2, ok=False, error="No space left on device")
    s.tick(133.0)
    assert locate(site, "j") == "failed"
    rec = record(site, "j")
    assert rec["state"] == "FAILED" and rec["transfer_items"][0]["state"] == "error"
    assert rec["error"] == (f"stage-in of input (remote:{remote}/in/a.dat -> data/j/input.dat) "
                            "failed: No space left on device (gave up after 3 attempts)")


def test_a_permanent_error_fails_the_job_at_once_and_its_children_too(xsite):
    site, remote = xsite
    s, fake = _stepper(site)
    drop(site, "p.json", {"id": "p", "app": "Cat", "workdir": "p",
                          "transfers": {"input": f"remote:{remote}/in/none.dat"}})
    s.tick(1.0)
    drop(site, "c.json", {"id": "c", "app": "Cat", "workdir": "c", "parent_ids": ["p"],
                          "transfers": {"input": f"remote:{remote}/in/a.dat"}})
    s.tick(2.0)
    assert locate(site, "c") == "waiting"
    fake.end(0, ok=False, error=f"source {remote}/in/none.dat does not exist", kind=PERMANENT)
    s.tick(3.0)
    assert locate(site, "p") == "failed" and locate(site, "c") == "failed"
    assert f"{remote}/in/none.dat does not exist" in record(site, "p")["error"]
    assert record(site, "c")["error"] == "parent p failed"
    assert len(fake.submitted) == 1                       # the child never staged anything


def test_blocked_items_wait_without_using_attempts_and_say_what_to_do(xsite):
    site, remote = xsite
    s, fake = _stepper(site, max_attempts=1)
    drop(site, "j.json", {"id": "j", "app": "Cat", "workdir": "j",
                          "transfers": {"input": f"remote:{remote}/in/a.dat"}})
    s.tick(1.0)
    fake.end(0, ok=False, error="run `spool site globus-login -e X`", kind=BLOCKED)
    s.tick(2.0)
    item = record(site, "j")["transfer_items"][0]
    assert (item["state"], item["attempts"]) == ("pending", 0)
    assert "globus-login" in item["error"] and locate(site, "j") == "stagein"
    s.tick(2.0 + 59)
    assert len(fake.submitted) == 1
    s.tick(2.0 + 60)
    assert len(fake.submitted) == 2                       # retried, though max_attempts is 1
    fake.end(1)
    s.tick(63.0)
    assert locate(site, "j") == "ready"


def test_batches_respect_batch_size_and_concurrent_task_limit(xsite):
    site, remote = xsite
    s, fake = _stepper(site, transfer_batch_size=3, max_concurrent_transfers=2)
    for n in range(8):
        drop(site, f"j{n}.json", {"id": f"j{n}", "app": "Cat", "workdir": f"j{n}",
                                  "transfers": {"input": f"remote:{remote}/in/{n}.dat"}})
    s.tick(1.0)
    assert [len(m) for _, _, m in fake.submitted] == [3, 3]          # 2 tasks in flight
    fake.end(0)
    s.tick(2.0)
    assert [len(m) for _, _, m in fake.submitted] == [3, 3, 2]
    assert sorted(ids_in(site, "ready")) == ["j0", "j1", "j2"]
    assert all(r["state"] == "STAGED_IN" for r in select(s.layout, Filter(dirs=("ready",))))


def test_readers_see_staging_jobs_by_balsam_state_and_directory(xsite):
    site, remote = xsite
    s, fake = _stepper(site)
    drop(site, "j.json", {"id": "j", "app": "Cat", "workdir": "j",
                          "transfers": {"input": f"remote:{remote}/in/a.dat"}})
    s.tick(1.0)
    assert query_counts(s.layout)["stagein"] == 1
    for state in ("stagein", "STAGING_IN", "staging_in"):
        out = spool(site, "job", "ls", "--state", state).stdout
        assert "j " in out and "STAGING_IN" in out
    assert "No jobs match" in spool(site, "job", "ls", "--state", "ready").stdout
    shown = json.loads(spool(site, "job", "ls", "--json", "-i", "j").stdout)
    assert shown["_dir"] == "stagein" and shown["state"] == "STAGING_IN"
    assert shown["transfer_items"][0]["state"] == "active"
    assert [h["to"] for h in shown["history"]] == ["READY"]       # Balsam's state, recorded
    from spoolbalsam.api import Job
    assert [j.id for j in Job.objects.filter(state="STAGING_IN", site_name=str(site))] == ["j"]
    # the site's query index agrees with the directories
    from spoolbalsam.spool import index
    s.index.flush(s.offsets)
    assert index.verify(s.layout) == []
    assert index.load(s.layout).counts().get("STAGING_IN") == 1


# ---- the local backend --------------------------------------------------------------------------
def test_copy_goes_through_a_temp_and_replaces_whole(tmp_path):
    src = tmp_path / "src.dat"
    src.write_bytes(os.urandom(3 << 20))
    os.chmod(src, 0o640)
    dst = tmp_path / "w" / "sub" / "in.dat"
    dst.parent.mkdir(parents=True)
    (dst.parent / ".in.dat.spool-part-dead").write_text("left by a killed attempt")
    dst.write_text("old")
    place(Move("j/x", str(src), str(dst)), "copy")
    assert dst.read_bytes() == src.read_bytes() and (dst.stat().st_mode & 0o777) == 0o640
    assert temps_under(tmp_path / "w") == []


def test_recursive_copy_into_a_new_or_an_existing_directory(tmp_path):
    src = tmp_path / "tree"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "a" / "b" / "deep.txt").write_text("deep")
    (src / "link").symlink_to("top.txt")
    fresh = tmp_path / "w1" / "tree"
    place(Move("j/d", str(src), str(fresh), True), "copy")
    assert (fresh / "a" / "b" / "deep.txt").read_text() == "deep"
    assert os.readlink(fresh / "link") == "top.txt"
    work = tmp_path / "w2"                                # local_path "." : the workdir itself
    work.mkdir()
    (work / "job.out").write_text("keep me")
    (work / "a").mkdir()
    (work / "a" / "stale.txt").write_text("replaced")
    place(Move("j/d", str(src), str(work), True), "copy")
    assert (work / "job.out").read_text() == "keep me"
    assert (work / "top.txt").read_text() == "top" and not (work / "a" / "stale.txt").exists()
    assert temps_under(tmp_path) == []


def test_link_method_shares_the_inode(tmp_path):
    src = tmp_path / "big.dat"
    src.write_bytes(b"x" * 1000)
    dst = tmp_path / "w" / "big.dat"
    place(Move("j/x", str(src), str(dst)), "link")
    assert dst.stat().st_ino == src.stat().st_ino


def test_rsync_method(tmp_path):
    if shutil.which("rsync") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rsync is not installed (run-tests.sh installs it)")
        pytest.skip("rsync is not installed")
    src = tmp_path / "tree"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_text("f")
    place(Move("j/d", str(src), str(tmp_path / "w" / "tree"), True), "rsync")
    assert (tmp_path / "w" / "tree" / "a" / "f").read_text() == "f"
    assert temps_under(tmp_path / "w") == []


def test_a_missing_source_fails_only_its_own_item_naming_the_path(tmp_path):
    (tmp_path / "ok.dat").write_text("ok")
    b = LocalBackend(workers=1)
    try:
        moves = [Move("j1/input", str(tmp_path / "none.dat"), str(tmp_path / "w1" / "in")),
                 Move("j2/input", str(tmp_path / "ok.dat"), str(tmp_path / "w2" / "in")),
                 Move("j3/input", str(tmp_path), str(tmp_path / "w3" / "in"))]
        b.submit("t1", None, "in", moves)
        [st] = wait_for(b.poll, 10, "the task to end")
    finally:
        b.close()
    got = {o.key: o for o in st.outcomes}
    assert st.state == "error" and got["j2/input"].ok
    assert (tmp_path / "w2" / "in").read_text() == "ok"
    assert got["j1/input"].kind == PERMANENT
    assert got["j1/input"].error == f"source {tmp_path}/none.dat does not exist"
    assert got["j3/input"].kind == PERMANENT and "recursive: true" in got["j3/input"].error


# ---- whole campaigns, real processes ------------------------------------------------------------
def _history(rec: dict) -> list[str]:
    return [h["to"] for h in rec["history"]]


def shown(site: Path, job_id: str) -> dict:
    """The job as readers see it (launcher events the site has not merged yet applied)."""
    [rec] = select(layout(site), Filter(ids={job_id}))
    return rec


def test_stage_in_run_stage_out_and_children_wait_for_the_stage_out(xsite):
    site, remote = xsite
    (remote / "in" / "a.dat").write_text("payload 1\n")
    write_app(site, "After", {"command_template": "echo child"})
    # a slow stage-out (a bandwidth limit) shows the child is held until it is over
    edit_settings(site, {"transfers": {"local_bwlimit_mb": 4}})
    write_app(site, "Cat", {**CAT, "command_template": CAT["command_template"] +
                            "; head -c 2000000 /dev/zero > big.bin",
                            "transfers": {**SLOTS, "big": {"direction": "out",
                                                           "local_path": "big.bin"}}})
    spool(site, "job", "create", "-a", "Cat", "-w", "cat/1", "--id", "p",
          "-s", f"input=remote:{remote}/in/a.dat", "-s", f"result=remote:{remote}/out/r1.txt",
          "-s", f"big=remote:{remote}/out/big.bin")
    spool(site, "job", "create", "-a", "After", "-w", "after/1", "--id", "c", "-pid", "p")
    start_site(site)
    try:
        wait_for(lambda: locate(site, "p") == "ready", 20, "the stage-in")
        assert (site / "data" / "cat" / "1" / "input.dat").read_text() == "payload 1\n"
        start_launcher(site, idle_ttl=20)
        wait_for(lambda: locate(site, "p") == "stageout", 20, "the run to end")
        assert locate(site, "c") == "waiting"
        wait_for(lambda: locate(site, "c") == "done", 30, "the child to finish")
    finally:
        stop_site(site)
    p, c = shown(site, "p"), shown(site, "c")
    assert (remote / "out" / "r1.txt").read_text() == "payload 1\n"
    assert (remote / "out" / "big.bin").stat().st_size == 2_000_000
    assert _history(p) == ["READY", "STAGED_IN", "RUNNING", "RUN_DONE", "POSTPROCESSED",
                           "STAGED_OUT", "JOB_FINISHED"]
    assert [i["state"] for i in p["transfer_items"]] == ["done"] * 3
    finished = p["history"][-1]["t"]
    assert min(h["t"] for h in c["history"] if h["to"] == "RUNNING") > finished
    assert temps_under(remote) == []
    from spoolbalsam.spool import index
    assert index.verify(layout(site)) == []        # the query index followed every move


def test_a_missing_source_fails_the_job_naming_slot_and_path(xsite):
    site, remote = xsite
    spool(site, "job", "create", "-a", "Cat", "-w", "m/1", "--id", "m",
          "-s", f"input=remote:{remote}/in/missing.dat")
    start_site(site)
    try:
        wait_for(lambda: locate(site, "m") == "failed", 20, "the job to fail")
    finally:
        stop_site(site)
    rec = record(site, "m")
    assert rec["error"] == (f"stage-in of input (remote:{remote}/in/missing.dat -> "
                            f"data/m/1/input.dat) failed: source {remote}/in/missing.dat "
                            "does not exist")
    assert "input" in spool(site, "job", "ls", "--state", "FAILED").stdout.split("failed:")[0] \
        or "stage-in of input" in spool(site, "job", "ls", "--state", "FAILED").stdout
    (remote / "in" / "missing.dat").write_text("here now\n")
    spool(site, "job", "retry", "m")
    assert locate(site, "m") == "stagein"                 # retried: its inputs are staged again
    assert record(site, "m")["transfer_items"][0]["state"] == "pending"


def test_kill9_of_the_site_mid_copy_loses_nothing_and_stages_once(xsite):
    site, remote = xsite
    data = os.urandom(6 << 20)
    (remote / "in" / "big.dat").write_bytes(data)
    edit_settings(site, {"transfers": {"local_bwlimit_mb": 4}})      # ~1.5 s per copy
    spool(site, "job", "create", "-a", "Cat", "-w", "k/1", "--id", "k",
          "-s", f"input=remote:{remote}/in/big.dat")
    pid = start_site(site)
    workdir = site / "data" / "k" / "1"

    def half_copied():
        parts = [p for p in (workdir.iterdir() if workdir.exists() else ())
                 if ".spool-part-" in p.name]
        return parts and 0 < parts[0].stat().st_size < len(data)
    wait_for(half_copied, 20, "the copy to be under way", interval=0.005)
    assert not (workdir / "input.dat").exists()          # never seen half-copied
    kill9(pid)
    wait_for(lambda: not pid_alive(pid), 10, "the site to die")
    assert locate(site, "k") == "stagein"
    rec = record(site, "k")
    assert rec["transfer_items"][0]["state"] == "active"   # as the dead site left it
    start_site(site)
    try:
        wait_for(lambda: locate(site, "k") == "ready", 30, "the stage-in to finish")
        assert hashlib.sha256((workdir / "input.dat").read_bytes()).digest() == \
            hashlib.sha256(data).digest()
        assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []
        start_launcher(site, idle_ttl=10)
        wait_for(lambda: locate(site, "k") == "done", 30, "the job to finish")
    finally:
        stop_site(site)
    rec = shown(site, "k")
    assert _history(rec).count("STAGED_IN") == 1 and _history(rec).count("RUNNING") == 1
    assert (workdir / "runs.log").read_text() == "ran\n"            # it ran exactly once
    item = rec["transfer_items"][0]
    assert (item["state"], item["attempts"]) == ("done", 2)         # the crash cost one attempt
    assert (workdir / "result.txt").read_bytes() == data
    from spoolbalsam.spool import index
    assert index.verify(layout(site)) == []


def test_the_guide_workflow_with_staged_files_runs_end_to_end(tmp_path):
    """demo/staging.py: the Aurora guide's ensemble, each echo job with a greeting staged in
    from "Flare" and its job.out staged out to "home", run by a real site and launcher."""
    import subprocess
    import sys
    site = tmp_path / "demo-staging"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        res = subprocess.run([sys.executable, str(REPO / "demo" / "staging.py"), "--site",
                              str(site), "--timeout", "120"], capture_output=True, text=True,
                             timeout=240, env=env, cwd=tmp_path)
    finally:
        reap_site_processes(site)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    by_state = dict(ln.split() for ln in spool(site, "job", "ls", "--by-state").stdout.splitlines())
    assert by_state["done"] == "25" and by_state["failed"] == "0"
    home = tmp_path / "demo-staging-data" / "home" / "results"
    for n in range(24):
        assert (home / f"echo_hello{n}.out").read_text().startswith(
            f"Hello, world {n}!! (greeting {n}, staged in from Flare)")
    echo = [r for r in select(layout(site), Filter(states={"JOB_FINISHED"}))
            if r["app"] == "EchoHello"]
    assert len(echo) == 24 and all(
        [h["to"] for h in r["history"]][:2] == ["READY", "STAGED_IN"] for r in echo)
    assert "staged out: " in res.stdout and "(greeting 3, staged in from Flare)" in res.stdout


def test_a_site_made_before_stageout_existed_gets_its_buckets_at_start(xsite):
    site, remote = xsite
    shutil.rmtree(site / "jobs" / "stageout")
    site_obj(site).recover()
    assert len(os.listdir(site / "jobs" / "stageout")) == 256
