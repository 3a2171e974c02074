"""Intake: every bad drop goes to rejected/ byte for byte with a one-line reason naming the
file and the field, the site keeps running, and valid drops from any language are taken in.

Most tests share one running site (module scope) and drop one file each; the tests that
need a site of their own (stalls, crashes) make one.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from spoolbalsam.spool import fsio
from spoolbalsam.spool.record import user_view

from helpers import (pending_drops, counts, drop, ids_in, job, locate, make_site, pid_alive, reap_site_processes,
                     record, rejected_entries, site_info, site_obj, spool, start_site, stop_site,
                     wait_for, start_launcher, temps_under)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = make_site(tmp_path_factory.mktemp("intake") / "S")
    start_site(root)
    try:
        yield root
    finally:
        stop_site(root)
        reap_site_processes(root)


def _rejected(site: Path, name: str) -> tuple[bytes, str]:
    return wait_for(lambda: rejected_entries(site).get(name), 20, f"{name} in rejected/")


E = {"app": "EchoHello", "parameters": {"say_hello_to": "x"}}

BAD = [
    ("invalid-json", b'{"app": "EchoHello", "workdir": ', None, "not valid JSON"),
    ("empty-file", b"", None, "not valid JSON"),
    ("not-utf8", b'{"app": "\xff\xfe"}', None, "not valid JSON"),
    ("not-an-object", b"[1, 2, 3]", None, "JSON object"),
    ("a-string", b'"hello"', None, "JSON object"),
    ("unknown-app", {"app": "NoSuchApp", "workdir": "w"}, "app", "NoSuchApp"),
    ("missing-required-param", {"app": "EchoHello", "workdir": "w"}, "parameters",
     "say_hello_to"),
    ("unknown-param", {**E, "workdir": "w", "parameters": {"say_hello_to": "x", "loud": 1}},
     "parameters", "loud"),
    ("num-nodes-0", {**E, "workdir": "w", "num_nodes": 0}, "num_nodes", ">= 1"),
    ("gpus-per-rank-neg", {**E, "workdir": "w", "gpus_per_rank": -1}, "gpus_per_rank", ">= 0"),
    ("num-nodes-x", {**E, "workdir": "w", "num_nodes": "x"}, "num_nodes", "integer"),
    ("gpus-per-rank-x", {**E, "workdir": "w", "gpus_per_rank": "x"}, "gpus_per_rank", "number"),
    # found by the fuzz soak: a job no allocation of the machine can hold waited forever
    ("too-many-nodes", {**E, "workdir": "w", "num_nodes": 10 ** 18}, "num_nodes",
     "gives at most 1024"),
    ("too-many-gpus", {**E, "workdir": "w", "gpus_per_rank": 13}, "gpus_per_rank", "12"),
    ("too-many-cores", {**E, "workdir": "w", "ranks_per_node": 8}, "ranks_per_node", "4"),
    ("workdir-abs", {**E, "workdir": "/etc"}, "workdir", "/etc"),
    ("workdir-up", {**E, "workdir": "../x"}, "workdir", "../x"),
    ("workdir-sneaky", {**E, "workdir": "a/../../x"}, "workdir", "a/../../x"),
    ("unknown-field", {**E, "workdir": "w", "colour": "red"}, "colour", "unknown field"),
    ("system-field", {**E, "workdir": "w", "state": "JOB_FINISHED"}, "state",
     "set by spoolbalsam"),
    ("system-attempt", {**E, "workdir": "w", "attempt": 7}, "attempt", "set by spoolbalsam"),
    ("missing-parent", {**E, "workdir": "w", "parent_ids": ["ghost-parent"]}, "parent_ids",
     "ghost-parent"),
    ("own-parent", {**E, "workdir": "w", "id": "selfish", "parent_ids": ["selfish"]},
     "parent_ids", "own parent"),
    ("bad-id", {**E, "workdir": "w", "id": "../../x"}, "id", "not a valid id"),
    # found by the fuzz soak: each of these stopped the site's intake for good (every tick
    # failed on the same file, and the files behind it waited forever)
    ("app-path", {**E, "workdir": "w", "app": "../EchoHello"}, "app", "not an app name"),
    ("app-huge", {**E, "workdir": "w", "app": "A" * 100_000}, "app", "not an app name"),
    ("deep-data", b'{"app": "EchoHello", "workdir": "w", "parameters": {"say_hello_to": "x"}, '
                  b'"data": {"d": ' + b"[" * 300 + b"]" * 300 + b"}}", None,
     "302 levels deep; a job may nest at most 64"),
    ("deep-param", b'{"app": "EchoHello", "workdir": "w", "parameters": {"say_hello_to": '
                   + b"[" * 990 + b"]" * 990 + b"}}", None, "levels deep"),
    ("huge-param", {**E, "workdir": "w", "parameters": {"say_hello_to": "x" * 200_000}},
     "parameters", "at most 131072"),
]


@pytest.fixture(scope="module")
def bad_drops(live):
    """Drop every bad file at once (one site batch) and wait until each is handled."""
    dropped = {}
    for name, content, _, _ in BAD:
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        drop(live, f"{name}.json", data)
        dropped[f"{name}.json"] = data
    wait_for(lambda: set(dropped) <= set(rejected_entries(live)), 30, "every bad drop rejected")
    return dropped


@pytest.mark.parametrize("name, content, field, words", BAD, ids=[b[0] for b in BAD])
def test_bad_drop_is_rejected_byte_for_byte_with_one_line_reason(live, bad_drops, name, content,
                                                                 field, words):
    fname = f"{name}.json"
    kept, reason = rejected_entries(live)[fname]
    assert kept == bad_drops[fname], "rejected/ must keep the dropped bytes unchanged"
    assert reason.endswith("\n") and reason.count("\n") == 1, repr(reason)
    assert f"jobs/created/{fname}" in reason, reason
    if field:
        assert f"field {field!r}" in reason, reason
    assert words in reason, reason
    assert not (live / "jobs" / "created" / fname).exists()
    assert fname[:-5] not in {r for st in ("waiting", "ready", "failed") for r in ids_in(live, st)}
    info = site_info(live)
    assert info and pid_alive(info["pid"]), "the site must keep running after bad input"


def test_site_still_takes_in_valid_jobs_after_bad_ones(live, bad_drops):
    drop(live, "after-bad.json", job(workdir="after/bad"))
    wait_for(lambda: locate(live, "after-bad") == "ready", 20, "a valid job after bad ones")


def test_rejected_drops_are_listed_with_their_reason(live):
    drop(live, "listed-bad.json", {"app": "NoSuchApp", "workdir": "w"})
    _rejected(live, "listed-bad.json")
    out = spool(live, "job", "ls", "--state", "rejected").stdout
    line = next(ln for ln in out.splitlines() if "listed-bad.json" in ln)
    assert "REJECTED" in line and "unknown app 'NoSuchApp'" in line
    js = [json.loads(ln) for ln in spool(live, "job", "ls", "--state", "REJECTED",
                                        "--json").stdout.splitlines()]
    hit = [r for r in js if r["id"].endswith("listed-bad.json")]
    assert hit and "unknown app" in hit[0]["error"]


def test_duplicate_id_is_rejected_and_the_existing_job_is_unchanged(live):
    drop(live, "dup1.json", job(workdir="dup/first"))
    wait_for(lambda: locate(live, "dup1") == "ready" and
             not (live / "jobs" / "created" / "dup1.json").exists(), 20, "dup1 taken in")
    path = live / "jobs" / "ready"
    before = record(live, "dup1")
    raw_before = next(path.rglob("dup1.json")).read_bytes()
    second = json.dumps(job(workdir="dup/second")).encode()
    drop(live, "dup1.json", second)
    kept, reason = _rejected(live, "dup1.json")
    assert kept == second
    assert "field 'id'" in reason and "already exists" in reason
    assert next(path.rglob("dup1.json")).read_bytes() == raw_before
    assert record(live, "dup1")["workdir"] == before["workdir"] == "dup/first"


def test_valid_drop_from_a_shell_script_is_taken_in(live):
    script = ('json=\'{"app": "EchoHello", "workdir": "sh/j1", '
              '"parameters": {"say_hello_to": "shell"}, "tags": {"from": "sh"}}\'\n'
              'printf \'%s\' "$json" > jobs/created/.shj1.tmp && '
              'mv jobs/created/.shj1.tmp jobs/created/shj1.json\n')
    subprocess.run(["bash", "-c", script], cwd=live, check=True)
    wait_for(lambda: locate(live, "shj1") == "ready", 20, "shj1 ready")
    rec = record(live, "shj1")
    assert rec["state"] == "READY" and rec["tags"] == {"from": "sh"}
    assert rec["parameters"] == {"say_hello_to": "shell"}


C_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char tmp[4096], dst[4096];
    snprintf(tmp, sizeof tmp, "%s/jobs/created/.cjob1.tmp", argv[1]);
    snprintf(dst, sizeof dst, "%s/jobs/created/cjob1.json", argv[1]);
    FILE *f = fopen(tmp, "w");
    if (!f) return 2;
    fputs("{\"app\": \"EchoHello\", \"workdir\": \"c/job1\", "
          "\"parameters\": {\"say_hello_to\": \"C\"}, \"num_nodes\": 1}", f);
    fflush(f); fsync(fileno(f)); fclose(f);
    return rename(tmp, dst) == 0 ? 0 : 3;
}
"""


def test_valid_drop_from_a_c_program_is_taken_in(live, tmp_path):
    src = tmp_path / "drop.c"
    src.write_text(C_SOURCE)
    exe = tmp_path / "drop"
    try:
        subprocess.run(["gcc", "-O0", "-o", str(exe), str(src)], check=True, capture_output=True)
    except FileNotFoundError:
        pytest.skip("gcc not available")
    subprocess.run([str(exe), str(live)], check=True)
    wait_for(lambda: locate(live, "cjob1") == "ready", 20, "cjob1 ready")
    assert record(live, "cjob1")["parameters"] == {"say_hello_to": "C"}


def test_job_create_file_goes_through_the_same_intake(live):
    out = spool(live, "job", "create", "-a", "EchoHello", "-w", "cli/j", "-p",
                "say_hello_to=cli", "--tag", "k=v", "-q").stdout.strip()
    wait_for(lambda: locate(live, out) == "ready", 20, "the created job to be ready")
    assert record(live, out)["tags"] == {"k": "v"}


def test_many_bad_and_good_drops_at_once_none_lost(live):
    names = []
    for i in range(60):
        if i % 3 == 0:
            drop(live, f"mix-bad-{i}.json", b"{oops")
        else:
            drop(live, f"mix-{i}.json", job(workdir=f"mix/{i}"))
        names.append(i)
    wait_for(lambda: not [n for n in pending_drops(live) if n.startswith("mix")], 30,
             "every mix file handled")
    rej = rejected_entries(live)
    for i in names:
        if i % 3 == 0:
            assert f"mix-bad-{i}.json" in rej
        else:
            assert locate(live, f"mix-{i}") == "ready"
    assert pid_alive(site_info(live)["pid"])


# ---- in-process step tests: exact interleavings --------------------------------------------
def test_two_files_with_the_same_id_in_one_batch(site):
    drop(site, "a.json", job(workdir="a", id="same"))
    drop(site, "b.json", job(workdir="b", id="same"))
    site_obj(site).intake()
    assert record(site, "same")["workdir"] == "a"
    kept, reason = rejected_entries(site)["b.json"]
    assert "submitted twice" in reason or "already exists" in reason


class Crash(BaseException):
    pass


def _crash_before_unlinking_created(monkeypatch, site: Path):
    """Simulate kill -9 of the site after it published the batch, before it removed the
    dropped files (which it holds in site/intake/ by then)."""
    created = str(site / "site" / "intake")
    real_unlink, real_give = fsio.unlink_quiet, fsio.Spares.give

    def unlink(p):
        if str(p).startswith(created):
            raise Crash()
        real_unlink(p)

    def give(spares, p):              # the site recycles a taken drop as a spare
        unlink(p) if str(p).startswith(created) else real_give(spares, p)
    monkeypatch.setattr(fsio, "unlink_quiet", unlink)
    monkeypatch.setattr(fsio.Spares, "give", give)


def test_crash_after_publish_before_unlink_takes_each_file_in_once(site, monkeypatch):
    for i in range(20):
        drop(site, f"c{i}.json", job(workdir=f"c/{i}"))
    _crash_before_unlinking_created(monkeypatch, site)
    with pytest.raises(Crash):
        site_obj(site).intake()
    monkeypatch.undo()
    assert len(ids_in(site, "ready")) == 20 and len(pending_drops(site)) == 20
    s2 = site_obj(site)
    s2.recover()
    s2.intake()
    assert sorted(ids_in(site, "ready")) == sorted(f"c{i}" for i in range(20))
    assert pending_drops(site) == [] and counts(site)["rejected"] == 0


def test_crash_after_publish_never_duplicates_a_file_named_without_a_valid_id(site,
                                                                              monkeypatch):
    drop(site, "my job.json", job(workdir="odd/1"))
    drop(site, "_underscore.json", job(workdir="odd/2"))
    _crash_before_unlinking_created(monkeypatch, site)
    with pytest.raises(Crash):
        site_obj(site).intake()
    monkeypatch.undo()
    s2 = site_obj(site)
    s2.recover()
    s2.intake()
    workdirs = sorted(r["workdir"] for r in
                      (json.loads(p.read_text()) for p in (site / "jobs" / "ready").rglob("*.json")))
    assert workdirs == ["odd/1", "odd/2"], workdirs


def test_a_directory_named_like_a_job_does_not_stall_the_site(site):
    (site / "jobs" / "created" / "adir.json").mkdir()
    drop(site, "after-dir.json", job(workdir="after/dir"))
    s = site_obj(site)
    s.tick()          # the site process logs a failed tick and retries the same forever
    assert locate(site, "after-dir") == "ready"


def test_a_file_dropped_again_under_the_same_name_during_intake_is_not_lost(site, monkeypatch):
    drop(site, "again.json", job(workdir="again/first"))
    second = json.dumps(job(workdir="again/second")).encode()
    real_commit = fsio.Batch.commit

    def commit(self):
        real_commit(self)
        drop(site, "again.json", second)     # the submitter drops again, same name
    monkeypatch.setattr(fsio.Batch, "commit", commit)
    s = site_obj(site)
    s.intake()
    monkeypatch.undo()
    s.intake()
    assert record(site, "again")["workdir"] == "again/first"
    assert rejected_entries(site).get("again.json", (None,))[0] == second, \
        "the second drop vanished"


def test_a_canonical_drop_is_published_as_is_and_reads_like_a_rewritten_one(site):
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.query import Filter, select
    from spoolbalsam.submit import submit_jobs
    lay = Layout(site)
    [api] = submit_jobs(lay, [job(workdir="as/is")])         # what spool job create writes
    inode = os.stat(lay.created / f"{api['id']}.json").st_ino
    drop(site, "hand.json", job(workdir="hand/made"))        # minimal: defaults left out
    hand_inode = os.stat(lay.created / "hand.json").st_ino
    site_obj(site).intake()
    published = lay.job_path("ready", api["id"])
    assert os.stat(published).st_ino == inode               # the very file, renamed
    assert json.loads(published.read_text()) == json.loads(json.dumps(user_view(api)))
    assert os.stat(lay.job_path("ready", "hand")).st_ino != hand_inode   # rewritten whole
    recs = {r["id"]: r for r in select(lay, Filter(ids={api["id"], "hand"}))}
    for r in recs.values():
        assert r["state"] == "READY" and r["attempt"] == 1 and r["return_code"] is None
        assert [(h["from"], h["to"], h["by"]) for h in r["history"]] == \
            [("CREATED", "READY", "site")]
    mtime = os.stat(published).st_mtime
    assert abs(recs[api["id"]]["history"][0]["t"] - mtime) < 1e-6
    # a job that becomes ready gets its work directory from the site (inputs can go there)
    assert (site / "data" / "as" / "is").is_dir() and (site / "data" / "hand" / "made").is_dir()
    assert not (site / "data" / "as" / "is" / "job.out").exists()


def test_a_job_published_as_dropped_keeps_its_ready_step_through_its_run(running_site):
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.submit import submit_jobs
    lay = Layout(running_site)
    [api] = submit_jobs(lay, [job(workdir="as/run")])
    wait_for(lambda: locate(running_site, api["id"]) == "ready", 20, "publication")
    t_ready = os.stat(lay.job_path("ready", api["id"])).st_mtime
    proc = start_launcher(running_site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 30, "launcher exit")
    wait_for(lambda: record(running_site, api["id"]).get("return_code") == 0, 20, "merge")
    rec = record(running_site, api["id"])
    assert [h["to"] for h in rec["history"]] == \
        ["READY", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert abs(rec["history"][0]["t"] - t_ready) < 1e-6 and rec["attempt"] == 1


def test_submit_chunks_grow_from_the_first_to_the_cap_and_cover_every_job():
    from spoolbalsam import submit
    for n in (0, 1, 31, 32, 33, 500, 2000, 100_000):
        cs = submit.chunks(n)
        assert [a for a, _ in cs] == ([0] if n else []) + [b for _, b in cs[:-1]]  # contiguous
        assert (cs[-1][1] if cs else 0) == n
        sizes = [b - a for a, b in cs]
        assert all(s <= submit.CHUNK for s in sizes)
        assert sizes[:1] in ([], [min(n, submit.FIRST_CHUNK)])
        assert all(b <= 2 * a for a, b in zip(sizes, sizes[1:]))
    assert len(submit.chunks(100_000)) <= 100_000 // submit.CHUNK + 6


def test_a_write_failure_midway_through_a_submit_says_which_jobs_are_in(site, monkeypatch):
    import errno
    from spoolbalsam import submit
    from spoolbalsam.spool.layout import Layout
    monkeypatch.setattr(submit, "CHUNK", 3)
    real_commit, calls = fsio.Batch.commit, []

    def commit(self):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_commit(self)
    monkeypatch.setattr(fsio.Batch, "commit", commit)
    with pytest.raises(submit.SubmitError) as e:
        submit.submit_jobs(Layout(site), [job(workdir=f"full/{i}") for i in range(8)])
    msg = str(e.value)
    assert "\n" not in msg and "jobs/created" in msg and "No space left" in msg
    assert "jobs 0-2 are submitted" in msg, msg
    assert len(fsio.list_names(site / "jobs" / "created")) == 3
    assert temps_under(site / "jobs" / "created") == []


def test_a_tick_that_took_in_a_burst_looks_again_without_waiting(site, monkeypatch):
    """Drops arriving in a burst are taken in back to back; the throttled wait (which
    groups launcher events into fewer merges) comes only once a tick finds few."""
    import threading
    from spoolbalsam.site import loop as site_mod
    from helpers import site_obj
    s = site_obj(site)
    stop, waits = threading.Event(), []
    script = iter([site_mod.INTAKE_BURST, 3 * site_mod.INTAKE_BURST, site_mod.INTAKE_BURST - 1,
                   0])

    def tick(now=None):
        n = next(script, None)
        if n is None:
            stop.set()
            return {}
        return {"intake": n, "merged": 0, "revoked": 0}

    class Wake:
        def wait(self, timeout):
            waits.append(timeout)

        def clear(self):
            pass
    monkeypatch.setattr(s, "recover", lambda: None)
    monkeypatch.setattr(s, "tick", tick)
    s.run(stop, Wake(), 1.0)
    # ticks took in 64, 192, 63, 0, then the last one (which stops): no wait after the
    # first two, one after each of the others
    assert len(waits) == 3


def test_links_and_oversized_files_are_rejected_unread_and_unfollowed(live, tmp_path):
    """Found by the fuzz soak: a dropped symlink was followed (a valid job file elsewhere
    became a job, published as a link to a file outside the site whose mtime the site then
    set), a dangling one stayed in site/intake for good, and a 50 MB file was read whole
    into the site's memory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "job.json"
    target.write_text(json.dumps(job(workdir="via/link")))
    before = os.stat(target)
    created = live / "jobs" / "created"
    links = {"lnk-job.json": str(target), "lnk-dangling.json": str(outside / "missing"),
             "lnk-dir.json": str(outside)}
    for name, to in links.items():
        os.symlink(to, created / name)
    big = b'{"app": "EchoHello", "workdir": "w", "data": {"x": "' + b"A" * (5 << 20) + b'"}}'
    drop(live, "too-big.json", big)
    for name, to in links.items():
        wait_for(lambda: name in rejected_entries_links(live), 20, f"{name} rejected")
        kept, reason = rejected_entries_links(live)[name]
        assert os.readlink(kept) == to, "the link itself is kept, as dropped"
        assert "symbolic link" in reason and f"jobs/created/{name}" in reason, reason
    kept, reason = _rejected(live, "too-big.json")
    assert kept == big and "a job file may have at most" in reason
    after = os.stat(target)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert locate(live, "lnk-job") is None
    drop(live, "after-links.json", job(workdir="after/links"))
    wait_for(lambda: locate(live, "after-links") == "ready", 20, "the site still takes jobs in")


def rejected_entries_links(site: Path) -> dict[str, tuple[Path, str]]:
    """Original name -> (the kept entry, its reason) for rejected drops that are links."""
    out = {}
    rdir = site / "jobs" / "rejected"
    for p in rdir.iterdir():
        if p.is_symlink():
            reason = p.with_name(p.name + ".reason")
            out[p.name.split("-", 1)[1]] = (p, reason.read_text() if reason.exists() else "")
    return out


def test_a_hard_linked_drop_is_rewritten_not_published_as_is(site, tmp_path):
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.submit import submit_jobs
    lay = Layout(site)
    [api] = submit_jobs(lay, [job(workdir="hard/link")])
    other = tmp_path / "other-name.json"
    os.link(lay.created / f"{api['id']}.json", other)
    site_obj(site).intake()
    published = lay.job_path("ready", api["id"])
    assert os.stat(published).st_ino != os.stat(other).st_ino, \
        "a record must not share its file with a name outside the spool"
