"""The soak's campaigns at the test suite's sizes (``python bench/soak/soak.py --quick``):
50 kill -9 trials, 4 racing launchers over 5,000 jobs, 1,000 fuzzed drops, and (as root)
a site whose disk fills up.  The full sizes run from the soak script, not here; the
README's Reliability table has their figures.  Each campaign checks its invariants from
the site's files alone (``bench/soak/check.py``, ``ledger.py``) and reports every problem.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak"
sys.path.insert(0, str(SOAK))

import check  # noqa: E402
import diskfull  # noqa: E402
import fuzz  # noqa: E402
import kills  # noqa: E402
import ledger  # noqa: E402
import race  # noqa: E402


def _held(res, trials: int) -> None:
    problems = "\n".join(res.problems[:30])
    assert res.failed == 0 and not res.problems, f"{res.name}: {res.failed} failed\n{problems}"
    assert res.trials >= trials and res.held == res.trials, (res.trials, res.held, res.notes)


def test_fifty_kill9_trials_lose_and_double_nothing(tmp_path):
    res = kills.run(tmp_path, 50, per_site=25, seed=14)
    _held(res, 50)
    # a site or a launcher is always there to kill; a hook child or a starter may have
    # ended before the moment came (then the trial killed nothing)
    assert res.kills.get("site", 0) + res.kills.get("launcher", 0) >= 24, res.kills
    assert sum(v for k, v in res.kills.items() if "not found" not in k) >= 30, res.kills


def test_four_racing_launchers_run_5000_jobs_exactly_once(tmp_path):
    res = race.run(tmp_path, 4, 5000)
    _held(res, 5000)


def test_a_thousand_fuzzed_drops_are_all_rejected_and_the_site_stays_up(tmp_path):
    res = fuzz.run(tmp_path, 1000, seed=14)
    _held(res, 1000)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("merge_verdicts", [False, True], ids=["site-merges", "launcher-merges"])
def test_a_site_whose_disk_fills_up_finishes_with_nothing_lost(tmp_path, merge_verdicts):
    res = diskfull.run(tmp_path, 200, seed=14, merge_verdicts=merge_verdicts)
    if any(n.startswith("not run") for n in res.notes):
        pytest.skip(res.notes[0])
    _held(res, 200)


# ---- the checkers themselves: each must catch what it is there to catch -------------------
def test_the_ledger_sees_an_overlap_a_double_run_and_a_missing_run():
    ok = ledger.parse("start 1 10\nend 1 10\n", "j")
    assert ledger.check_job(ok, "j", 1, strict=True) == []
    overlap = ledger.parse("start 1 10\nstart 2 11\nend 1 10\nend 2 11\n", "j")
    assert any("while attempt 1" in p for p in ledger.check_job(overlap, "j", 2, strict=False))
    seen_alive = ledger.parse("start 1 10\noverlap 2 11 10\nstart 2 11\nend 2 11\n", "j")
    assert any("still alive" in p for p in ledger.check_job(seen_alive, "j", 2, strict=False))
    twice = ledger.parse("start 1 10\nend 1 10\nstart 1 12\nend 1 12\n", "j")
    assert ledger.check_job(twice, "j", 1, strict=False)
    rerun = ledger.parse("start 1 10\nend 1 10\nstart 2 12\nend 2 12\n", "j")
    assert ledger.check_job(rerun, "j", 2, strict=False)                 # not revoked
    assert ledger.check_job(rerun, "j", 2, strict=False, ended_early={1}) == []
    assert ledger.check_job(ledger.parse("", "j"), "j", 1, strict=True)


def test_the_site_check_sees_a_double_record_a_temp_a_torn_record_and_a_lost_job(tmp_path):
    from spoolbalsam.spool import fsio
    from spoolbalsam.spool.layout import Layout
    lay = Layout(tmp_path / "S")
    lay.make()
    for j in ("a", "b"):
        fsio.write_json_atomic(lay.job_path("done", j), {"id": j, "state": "JOB_FINISHED",
                                                         "return_code": 0})
    assert check.check_site(lay.root, {"a", "b"}, final=True) == []
    fsio.write_json_atomic(lay.job_path("ready", "a"), {"id": "a"})
    lay.job_path("failed", "c").write_bytes(b'{"id": "c", ')
    (lay.job_path("done", "b").parent / ".b.json.elsewhere.1.00000001").write_bytes(b"{")
    found = "\n".join(check.check_site(lay.root, {"a", "b", "lost"}, final=True))
    for words in ("job a has 2 visible records", "is not valid JSON", "temp file left",
                  "job lost is lost"):
        assert words in found, found
