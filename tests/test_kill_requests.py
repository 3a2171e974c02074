"""The kill-request protocol (``spool.kills``) step by step, without timing: the mailbox a
launcher looks at, the site closing it before a revoke, and the KILLED state."""
from __future__ import annotations

import subprocess

from spoolbalsam.spool import fsio, kills
from spoolbalsam.spool import states as S
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.query import Filter
from spoolbalsam.spool.store import Store

from helpers import drop, job, layout, locate, record, site_obj


def _launcher(root, name="L") -> tuple[Layout, kills.Mailbox]:
    lay = Layout(root)
    lay.launcher_dir(name).mkdir(parents=True)
    return lay, kills.Mailbox.open(lay.launcher_dir(name))


def test_a_quiet_mailbox_costs_one_stat_and_a_ring_is_seen_at_the_next_look(tmp_path, monkeypatch):
    lay, box = _launcher(tmp_path)
    listings = []
    real = fsio.list_names
    monkeypatch.setattr(fsio, "list_names", lambda d, *a: listings.append(d) or real(d, *a))
    assert box.look(0.0) == [] and len(listings) == 1        # the first look lists once
    for i in range(1, 50):
        assert box.look(i * kills.LOOK_SEC) == []
    assert len(listings) == 1                                 # quiet: no listing, only stats
    assert kills.send(lay, "L", {"j1": 1, "j2": 3}, "alice@login1", "spool job kill", t=0) == kills.SENT
    assert box.look(49.5 * kills.LOOK_SEC) == []              # within LOOK_SEC of the last look
    [req] = box.look(51 * kills.LOOK_SEC)
    assert req.jobs == {"j1": 1, "j2": 3} and req.by == "alice@login1"
    assert req.describe().startswith("killed by alice@login1 at 19") and req.describe().endswith(
        "(spool job kill)")
    assert req.wants("j2", 3) and not req.wants("j2", 2) and not req.wants("j2", 4)
    assert not req.wants("j3", 1)
    assert box.look(60 * kills.LOOK_SEC) == []                # handed out once
    box.done(req)
    assert fsio.list_names(box.directory) == []
    # a request that rang no bell (written by hand) is found by the periodic listing
    fsio.write_json_atomic(box.directory / "by-hand.json", {"jobs": {"j3": 1}, "by": "x@y",
                                                            "t": 0, "why": "by hand"})
    n = len(listings)
    assert box.look(70 * kills.LOOK_SEC) == [] and len(listings) == n
    [req] = box.look(51 * kills.LOOK_SEC + kills.FULL_LOOK_SEC)
    assert req.jobs == {"j3": 1} and len(listings) == n + 1


def test_send_never_creates_a_mailbox(tmp_path):
    lay = Layout(tmp_path)
    assert kills.send(lay, "gone", {"j": 1}, "a@b", "k") == kills.CLOSED_NOW   # retired launcher
    assert not lay.launcher_dir("gone").exists()
    lay.launcher_dir("old").mkdir(parents=True)                # alive, without a mailbox
    assert kills.send(lay, "old", {"j": 1}, "a@b", "k") == kills.NO_MAILBOX
    assert not (lay.launcher_dir("old") / kills.DIRNAME).exists()


def test_close_is_the_commit_point_for_requests(tmp_path):
    lay, box = _launcher(tmp_path)
    assert kills.send(lay, "L", {"a": 1}, "u@h", "k") == kills.SENT
    asked = kills.close(lay.launcher_dir("L"))
    assert set(asked) == {"a"} and asked["a"].wants("a", 1)
    # after the close a writer learns its request was not taken, and nothing is left behind
    assert kills.send(lay, "L", {"b": 1}, "u@h", "k") == kills.CLOSED_NOW
    assert not (lay.launcher_dir("L") / kills.DIRNAME).exists()
    assert set(kills.close(lay.launcher_dir("L"))) == {"a"}   # closing again reads the same
    assert [p.name for p in (lay.launcher_dir("L") / kills.CLOSED).iterdir()
            if p.name.startswith(".")] == []


def test_the_site_revokes_a_killed_job_into_failed_and_the_others_into_ready(site):
    """A dead launcher (its pid gone) held three jobs; requests named one at its attempt and
    one at an older attempt.  Only the first ends KILLED; the others get their next attempt."""
    for name in ("a", "b", "c"):
        drop(site, f"{name}.json", job("Sleep", f"r/{name}", id=name, parameters={"secs": 1}))
    st = site_obj(site)
    st.intake()
    lay = layout(site)
    store = Store(lay)
    dead = subprocess.Popen(["true"])
    dead.wait()
    ldir = lay.launcher_dir("L")
    ldir.mkdir(parents=True)
    kills.Mailbox.open(ldir)
    fsio.write_json_atomic(ldir / "lease.json", {"seq": 1, "host": fsio.HOST, "pid": dead.pid,
                                                  "state": "running"})
    for name in ("a", "b", "c"):
        assert store.claim(lay.job_path("ready", name), "L")
    assert kills.send(lay, "L", {"a": 1, "b": 0}, "u@h", "spool job kill") == kills.SENT
    assert st.check_launchers(0.0) == 3
    a = record(site, "a")
    assert locate(site, "a") == "failed" and a["state"] == S.KILLED and a["attempt"] == 1
    assert a["error"].startswith("killed by u@h at ") and "launcher L dead" in a["error"]
    for name in ("b", "c"):
        assert locate(site, name) == "ready" and record(site, name)["attempt"] == 2
    assert (lay.launchers / ".retired" / "L" / kills.CLOSED).is_dir()


def test_killed_is_a_state_of_failed_that_every_filter_knows():
    from spoolbalsam.api.query import DONE_STATES, fine_states
    assert S.parse_state("killed") == ("failed", S.KILLED)
    assert S.STATE_DIR[S.KILLED] == "failed" and S.fine_state("failed", S.KILLED) == S.KILLED
    assert S.fine_state("ready", S.KILLED) == S.READY          # the directory decides
    assert S.ALL_STATES[-1] == S.KILLED                        # the others keep their positions
    # FAILED (like the directory name) means every job in failed/, killed ones too
    assert Filter.from_states(["FAILED"]).states == {S.FAILED, S.KILLED}
    assert Filter.from_states(["KILLED"]).states == {S.KILLED}
    assert fine_states("failed") == {S.FAILED, S.KILLED} and S.KILLED in DONE_STATES
