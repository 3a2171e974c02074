"""The query index (``spool.index``): a cache that agrees with a full scan of the records.

Layers: the table and its files without a site; a site object ticked in this process
(deterministic moves, hints, the background check); and real processes: a campaign with
launchers, CLI moves and ``kill -9`` of the site, after which the index equals a full scan.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from spoolbalsam.spool import fsio, hints, index
from spoolbalsam.spool import states as S
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.query import Filter, count, counts, ordered, page, select

from helpers import (drop, ids_in, job, kill9, layout, pid_alive, site_info, site_obj, spool,
                     start_launcher, start_site, stop_site, wait_for, write_app)


def rec(job_id: str, app: str = "A", tags: dict | None = None, created: float = 0.0) -> dict:
    return {"id": job_id, "app": app, "tags": tags or {}, "created_at": created}


def table_rows(t: index.Table) -> dict[str, dict]:
    return {t.ids[r]: t.describe(r) for r in range(len(t)) if t.state[r] != index.CODE["REMOVED"]}


# ---- the table and its files, no site ----------------------------------------------------------
def test_log_lines_and_generations_round_trip(tmp_path):
    lay = Layout(tmp_path)
    k = index.Keeper(lay, compact_min=100)
    k._write_generation(1)
    for i in range(6):
        k.add(rec(f"j{i}", tags={"k": str(i % 2)}, created=i), S.READY)
    k.flush({"L1": 100})
    k.moved("j1", S.RUNNING, 1)
    k.moved("j2", S.JOB_FINISHED, 1)
    k.put("j3", S.RESTART_READY, 2, rec("j3", app="B", tags={"k": "x"}))
    k.moved("j4", index.REMOVED, 1)
    k.flush({"L1": 250})
    seen = index.load(lay, overlay=False)
    assert table_rows(seen) == table_rows(k)
    assert seen.offsets == {"L1": 250} and seen.gen == 1
    assert seen.counts() == {S.READY: 2, S.RUNNING: 1, S.JOB_FINISHED: 1, S.RESTART_READY: 1}
    # a new generation: removed rows are dropped, rows renumbered, the old files deleted
    k.compact()
    assert (tmp_path / "site" / "index" / "CURRENT").read_text() == "2\n"
    assert sorted(os.listdir(tmp_path / "site" / "index")) == ["2.base", "2.log", "CURRENT"]
    again = index.load(lay, overlay=False)
    assert table_rows(again) == table_rows(k) == table_rows(seen)
    assert len(again) == 5 and "j4" not in again.ids
    k.moved("j0", S.JOB_FINISHED, 1)         # changes after the switch go to the new log
    k.flush({"L1": 300})
    assert index.load(lay, overlay=False).describe(again.ids.index("j0"))["state"] == S.JOB_FINISHED


def test_a_reader_starts_over_when_a_generation_switch_races_it(tmp_path, monkeypatch):
    lay = Layout(tmp_path)
    k = index.Keeper(lay)
    k._write_generation(1)
    for i in range(3):
        k.add(rec(f"j{i}"), S.READY)
    k.flush({})
    real = index.Table.load_base
    switched = []

    def racing(self, data):          # the site switches generations while a reader reads
        if not switched:
            switched.append(1)
            k.moved("j0", S.JOB_FINISHED, 1)
            k.flush({})
            k.compact()
        return real(self, data)
    monkeypatch.setattr(index.Table, "load_base", racing)
    seen = index.load(lay, overlay=False)
    assert switched and seen.gen == 1                 # it had generation 1 open: all of it
    assert seen.describe(seen.ids.index("j0"))["state"] == S.JOB_FINISHED
    assert table_rows(seen) == table_rows(k)
    # and a reader that read CURRENT just before the switch, a generation now deleted,
    # starts over
    monkeypatch.setattr(index.Table, "load_base", real)
    calls = []
    real_cur = index._current_generation
    monkeypatch.setattr(index, "_current_generation",
                        lambda lay: calls.append(1) or (1 if len(calls) == 1 else real_cur(lay)))
    assert index.load(lay, overlay=False).gen == 2 and len(calls) == 2


def test_tag_sets_match_exact_pairs_only(tmp_path):
    k = index.Keeper(Layout(tmp_path))
    k.add(rec("a", tags={"x": 'k":"v'}), S.READY)          # a value that looks like a pair
    k.add(rec("b", tags={"k": "v", "x": "1"}), S.READY)
    k.add(rec("c", tags={"k": "vv"}), S.READY)
    k.add(rec("d", app="Other", tags={"k": "v"}), S.JOB_FINISHED)
    ids = k.ids
    assert [ids[r] for r in k.rows_matching(tags={"k": "v"})] == ["b", "d"]
    assert [ids[r] for r in k.rows_matching({S.READY}, {"k": "v"})] == ["b"]
    assert [ids[r] for r in k.rows_matching(None, {"k": "v"}, "Other")] == ["d"]
    assert k.rows_matching(tags={"k": "nope"}) == [] and k.rows_matching(app="Nope") == []
    assert k.count_matching(None, {"k": "v"}) == {S.READY: 1, S.JOB_FINISHED: 1}


def test_an_unreadable_base_is_rebuilt_from_the_records_and_readers_fall_back(site):
    s = site_obj(site)
    for i in range(5):
        drop(site, f"j{i}.json", job(workdir=f"w/{i}", tags={"n": str(i)}))
    s.recover()
    s.tick()
    base = next((site / "site" / "index").glob("*.base"))
    base.write_bytes(base.read_bytes()[:40])                  # a torn base (power loss)
    with pytest.raises(index.IndexUnreadable):
        index.load(layout(site))
    assert counts(layout(site))["ready"] == 5                 # from the directories
    assert count(layout(site), Filter(tags={"n": "3"})) == {S.READY: 1}
    keeper = index.Keeper.open(layout(site))
    assert len(keeper) == 5 and index.verify(layout(site)) == []


# ---- a site ticked in this process --------------------------------------------------------------
def _campaign(site: Path, n: int = 40) -> list[str]:
    ids = [f"j{i:03d}" for i in range(n)]
    for i, j in enumerate(ids):
        drop(site, f"{j}.json", job(workdir=f"w/{j}", tags={"batch": str(i % 4), "all": "yes"}))
    return ids


def test_counts_tags_and_pages_agree_with_a_full_scan(site, monkeypatch):
    s = site_obj(site)
    s.recover()
    ids = _campaign(site)
    s.tick()
    lay = layout(site)
    scan = list(index.scan(lay))
    assert len(scan) == len(ids) and index.verify(lay) == []
    want = sum(1 for r in scan if r["tags"]["batch"] == "2")
    assert count(lay, Filter(tags={"batch": "2"})) == {S.READY: want}
    assert counts(lay)["ready"] == len(ids)
    full = sorted(scan, key=lambda r: (r["created_at"], r["id"]))
    assert [r["id"] for r in page(lay, Filter(), 5, 7)] == [r["id"] for r in full[5:12]]
    assert [r["id"] for r in page(lay, Filter(), 0, 3, key="id")] == sorted(ids)[:3]
    # a page reads the records of that page, not every record
    from spoolbalsam.spool import query
    reads = []
    real = query.read_record
    monkeypatch.setattr(query, "read_record", lambda *a: reads.append(a) or real(*a))
    got = page(lay, Filter(tags={"batch": "1"}), 0, 4)
    assert len(got) == 4 and all(r["tags"]["batch"] == "1" for r in got)
    assert len(reads) == 4


def test_hints_and_moves_by_other_processes_reach_the_index(site):
    s = site_obj(site)
    s.recover()
    ids = _campaign(site, 6)
    s.tick()
    lay = layout(site)
    spool(site, "job", "rm", "-i", ids[0], "-y")                  # CLI: rename + hint
    from spoolbalsam.api import Job
    job1 = Job.objects.get(id=ids[1], site_name=str(site))
    job1.tags = {"batch": "changed"}
    job1.save()                                                   # API: rewrite + hint
    # readers apply pending hints, so the counts are right before the site has run
    assert index.load(lay).describe(index.load(lay).ids.index(ids[1]))["tags"] == {"batch": "changed"}
    assert counts(lay)["ready"] == 5
    assert hints.pending(lay)
    s.tick()
    assert hints.pending(lay) == []
    seen = index.load(lay, overlay=False)
    assert seen.state[seen.ids.index(ids[0])] == index.CODE["REMOVED"]
    assert count(lay, Filter(tags={"batch": "changed"})) == {S.READY: 1}
    assert index.verify(lay) == []


def test_the_background_check_corrects_a_job_moved_by_hand_after_two_looks(site):
    s = site_obj(site)
    s.recover()
    ids = _campaign(site, 4)
    s.tick()
    lay = layout(site)
    # by hand, against the rules: a record moved from ready/ to done/ with no event
    src = Path(lay.job_file("ready", ids[0]))
    dst = Path(lay.job_file("done", ids[0]))
    os.rename(src, dst)
    b = int(src.parent.name, 16)
    assert s.index.reconcile([b]) == 1                   # forward of the index: corrected now
    s.index.flush(s.offsets)
    assert index.verify(lay) == []
    # and back, which puts the directory *behind* the index: a verdict logged before its
    # rename looks like this for a moment, so one look is not enough
    os.rename(dst, src)
    assert s.index.reconcile([b]) == 0
    assert s.index.reconcile([b]) == 1
    s.index.flush(s.offsets)
    assert index.verify(lay) == []


def test_a_verdict_logged_before_its_rename_is_not_undone_by_one_look(site):
    s = site_obj(site)
    s.recover()
    [j] = _campaign(site, 1)
    s.tick()
    # the index learnt JOB_FINISHED from an event while the file is still in running/L/
    lay = layout(site)
    (lay.running / "L1").mkdir(parents=True)
    os.rename(lay.job_file("ready", j), lay.job_file("running", j, "L1"))
    s.index.moved(j, S.JOB_FINISHED, 1)
    b = int(Path(lay.job_file("done", j)).parent.name, 16)
    assert s.index.reconcile([b]) == 0
    os.rename(lay.job_file("running", j, "L1"), lay.job_file("done", j))   # the rename lands
    assert s.index.reconcile([b]) == 0
    assert s.index.describe(s.index.row[j])["state"] == S.JOB_FINISHED


# ---- real processes: launchers, CLI moves, kill -9 of the site ------------------------------------
FLAKY = {"command_template": 'test "$(( $(printf %d "\'$SPOOL_JOB_ID") % 3 ))" != 0 || exit 3'}


def test_index_equals_a_full_scan_after_a_campaign_with_moves_and_kill9_of_the_site(site):
    """Random CLI moves (rm, retry, create) while launchers run jobs, the site killed with -9
    at random moments (also during new generations: a tiny compact_min makes them frequent)
    and restarted; at the end the index, as the restarted site leaves it, equals the scan."""
    from helpers import edit_settings
    edit_settings(site, {"index": {"compact_min": 25}})
    write_app(site, "Flaky", FLAKY)
    rng = random.Random(1234)
    lay = layout(site)
    start_site(site)
    made: list[str] = []
    for i in range(120):
        parent = [rng.choice(made)] if made and rng.random() < 0.2 else []
        j = f"x{i:03d}"
        drop(site, f"{j}.json", job("Flaky", f"f/{j}", tags={"grp": str(i % 3)},
                                    parent_ids=parent, node_packing_count=4))
        made.append(j)
    launchers = [start_launcher(site, idle_ttl=3)]
    kills = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and kills < 6:
        time.sleep(rng.uniform(0.05, 0.4))
        action = rng.random()
        if action < 0.35:
            info = site_info(site)
            if info and pid_alive(info["pid"]):
                kill9(info["pid"])
                kills += 1
                wait_for(lambda: not pid_alive(info["pid"]), 10, "site gone")
                start_site(site)
        elif action < 0.55:
            failed = ids_in(site, "failed")
            if failed:
                spool(site, "job", "retry", rng.choice(failed), expect=None)
        elif action < 0.7:
            ready = ids_in(site, "ready")
            if ready:
                spool(site, "job", "rm", "-i", rng.choice(ready), "-y", expect=None)
        else:
            j = f"y{len(made)}"
            drop(site, f"{j}.json", job("Flaky", f"f/{j}", tags={"grp": "late"},
                                        node_packing_count=4))
            made.append(j)
        if all(p.poll() is not None for p in launchers):
            launchers.append(start_launcher(site, idle_ttl=3))
    assert kills >= 3
    for p in launchers:
        wait_for(lambda: p.poll() is not None, 60, "launchers done")
    info = site_info(site)
    kill9(info["pid"])                      # one last crash, then the recovery is checked
    wait_for(lambda: not pid_alive(info["pid"]), 10, "site gone")
    start_site(site)
    wait_for(lambda: not hints.pending(lay) and not fsio.list_names(lay.created), 20,
             "hints and drops consumed")
    stop_site(site)
    assert index.verify(lay) == []
    assert len(index.load(lay)) > 0
    assert int((lay.site_dir / "index" / "CURRENT").read_text()) >= 3   # generations switched
    res = spool(site, "site", "reindex", "--check")
    assert "agrees" in res.stdout


def test_counts_are_right_while_the_site_is_stopped(site):
    """A launcher runs jobs with the site stopped: readers apply its unmerged events."""
    start_site(site)
    for i in range(6):
        drop(site, f"s{i}.json", job(workdir=f"s/{i}", node_packing_count=4))
    lay = layout(site)
    wait_for(lambda: index.available(lay) and counts(lay)["ready"] == 6, 20, "taken in")
    stop_site(site)
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 60, "launcher done")
    assert len(ids_in(site, "done")) == 6
    assert index.load(lay, overlay=False).dir_counts()["ready"] == 6     # the site's last word
    assert counts(lay)["done"] == 6 and counts(lay)["ready"] == 0        # what readers see
    assert count(lay, Filter.from_states(["JOB_FINISHED"])) == {S.JOB_FINISHED: 6}
    assert [r["id"] for r in ordered(lay, Filter.from_states(["done"]))] == \
        [r["id"] for r in sorted(select(lay, Filter.from_states(["done"]), use_index=False),
                                 key=lambda r: (r["created_at"], r["id"]))]


def test_the_running_site_folds_launcher_events_into_the_index(site):
    """No restart here: what the index says comes from the events, not the start-up check."""
    start_site(site)
    for i in range(5):
        drop(site, f"e{i}.json", job(workdir=f"e/{i}", node_packing_count=4))
    lay = layout(site)
    wait_for(lambda: index.available(lay) and counts(lay)["ready"] == 5, 20, "taken in")
    proc = start_launcher(site, idle_ttl=1)
    wait_for(lambda: proc.poll() is not None, 60, "launcher done")
    wait_for(lambda: index.load(lay, overlay=False).dir_counts()["done"] == 5, 20,
             "the site's own index line saying done")
    seen = index.load(lay, overlay=False)
    assert all(seen.describe(r)["state"] == S.JOB_FINISHED for r in range(5))
    stop_site(site)
    assert index.verify(lay) == []


def test_a_site_crash_between_a_move_and_its_index_line_is_repaired_at_recovery(site):
    """The site releases a child, then dies before the tick's index line: the restarted
    site's check against the directories finds the child where it really is."""
    s = site_obj(site)
    s.recover()
    drop(site, "p.json", job(workdir="p"))
    drop(site, "c.json", job(workdir="c", parent_ids=["p"]))
    s.tick()
    lay = layout(site)
    os.rename(lay.job_file("ready", "p"), lay.job_file("done", "p"))   # as a launcher would
    s.index.moved("p", S.JOB_FINISHED, 1)
    s._release_children("p")                    # c -> ready, in the index in memory only
    assert ids_in(site, "ready") == ["c"]
    s.index.log.close()                         # "kill -9": the tick's line never written
    def state_of_c():
        t = index.load(lay, overlay=False)
        return t.describe(t.ids.index("c"))["state"]
    assert state_of_c() == S.AWAITING_PARENTS
    again = site_obj(site)
    again.recover()
    assert index.verify(lay) == []
    assert state_of_c() == S.READY


def test_pages_in_both_directions_match_the_sorted_records(site):
    s = site_obj(site)
    s.recover()
    ids = _campaign(site, 30)
    s.tick()
    lay = layout(site)
    full = sorted(index.scan(lay), key=lambda r: (r["created_at"], r["id"]))
    assert [r["id"] for r in page(lay, Filter(), 3, 5, reverse=True)] == \
        [r["id"] for r in full[::-1][3:8]]
    res = spool(site, "job", "ls", "--limit", "2", "--reverse", "--json")
    import json as _json
    assert [_json.loads(x)["id"] for x in res.stdout.splitlines()] == [full[-1]["id"], full[-2]["id"]]
    from spoolbalsam.api import Job
    got = Job.objects.filter(site_name=str(site), tags={"batch": "3"}).order_by("-id")[1:3]
    assert [j.id for j in got] == sorted((j for j in ids if int(j[1:]) % 4 == 3), reverse=True)[1:3]


def test_a_site_whose_directory_is_deleted_stops(site, tmp_path):
    pid = start_site(site)
    import shutil
    shutil.rmtree(site, ignore_errors=True)        # the site may write while it goes
    assert not (site / ".spool-site").exists()
    wait_for(lambda: not pid_alive(pid), 30, "the site process to stop by itself")


def test_verdicts_launchers_merge_themselves_reach_the_index(site):
    """With ``launcher.merge_verdicts`` the site moves and rewrites no finished job: what the
    index says of them comes from the launchers' events alone.  Jobs finish, fail, and
    release a child; the site is killed once meanwhile; the index equals a full scan."""
    from helpers import edit_settings
    edit_settings(site, {"launcher": {"merge_verdicts": True}})
    write_app(site, "Flaky", FLAKY)
    lay = layout(site)
    start_site(site)
    ids = [f"{'abcdef'[i % 6]}{i:02d}" for i in range(24)]     # c.. and f.. fail (FLAKY)
    for j in ids:
        drop(site, f"{j}.json", job("Flaky", f"m/{j}", retry={"errors": 0},
                                    node_packing_count=4))
    drop(site, "kid.json", job(workdir="m/kid", parent_ids=["a00"], node_packing_count=4))
    wait_for(lambda: index.available(lay) and counts(lay)["waiting"] == 1, 20, "taken in")
    proc = start_launcher(site, idle_ttl=2)
    wait_for(lambda: len(ids_in(site, "done")) + len(ids_in(site, "failed")) >= 8, 60,
             "some jobs finished")
    info = site_info(site)
    kill9(info["pid"])
    wait_for(lambda: not pid_alive(info["pid"]), 10, "site gone")
    start_site(site)
    wait_for(lambda: proc.poll() is not None, 120, "launcher done")
    finished = set(ids_in(site, "done")) | set(ids_in(site, "failed"))
    assert finished == set(ids) | {"kid"}
    assert sorted(ids_in(site, "failed")) == sorted(j for j in ids if j[0] in "cf")
    wait_for(lambda: index.load(lay, overlay=False).dir_counts().get("running", 0) == 0
             and sum(index.load(lay, overlay=False).dir_counts().values()) == 25, 20,
             "the site's own index lines")
    stop_site(site)
    assert index.verify(lay) == []
    seen = index.load(lay, overlay=False)
    by_id = {seen.ids[r]: seen.describe(r)["state"] for r in range(len(seen))}
    for j in finished:
        rec = fsio.read_json(lay.job_path("done" if j in ids_in(site, "done") else "failed", j))
        assert by_id[j] == rec["state"], j          # the launcher's own record, as indexed
