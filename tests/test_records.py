"""Job records: field validation with one-line reasons, workdir confinement, ids, states,
bounded history, event merging and the retry policy."""
from __future__ import annotations

import posixpath
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolbalsam.spool import states as S
from spoolbalsam.spool.events import apply_event
from spoolbalsam.spool.ids import ID_RE, new_id, shard, valid_id
from spoolbalsam.spool.policy import after_failure, policy_for
from spoolbalsam.spool.record import (HISTORY_MAX, SYSTEM_FIELDS, InvalidJob, normalize,
                                      normalize_workdir, transition)

SRC = "jobs/created/j.json"


def base(**kw):
    d = {"app": "A", "workdir": "w"}
    d.update(kw)
    return d


def reason(raw) -> InvalidJob:
    with pytest.raises(InvalidJob) as ei:
        normalize(raw, SRC)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert msg.startswith(SRC), msg
    return ei.value


# ---- normalize ---------------------------------------------------------------------------
def test_defaults_are_balsams_and_system_fields_are_set():
    rec = normalize(base(), SRC, default_id="j1")
    assert rec["id"] == "j1"
    for k, v in dict(num_nodes=1, ranks_per_node=1, threads_per_rank=1, threads_per_core=1,
                     gpus_per_rank=0, node_packing_count=1, wall_time_min=0, parameters={},
                     tags={}, launch_params={}, parent_ids=[], data={}).items():
        assert rec[k] == v, k
    assert rec["state"] == "CREATED" and rec["attempt"] == 1
    assert rec["retries"] == {"errors": 0, "timeouts": 0} and rec["history"] == []
    core = {"id", "state", "attempt", "return_code", "launcher", "batch_job", "host",
            "created_at", "state_timestamp", "started_at", "ended_at", "error", "retries",
            "placement", "history"}
    assert core <= set(rec) and core <= set(SYSTEM_FIELDS)


def test_app_id_alias_and_ignored_site_fields():
    rec = normalize({"app_id": "A", "workdir": "w", "site_id": 3, "site_name": "x"}, SRC)
    assert rec["app"] == "A" and "site_id" not in rec


def test_explicit_id_wins_over_file_name_and_generated_ids_are_valid():
    assert normalize(base(id="sim-042"), SRC, default_id="j1")["id"] == "sim-042"
    gen = normalize(base(), SRC)["id"]
    assert valid_id(gen) and len(gen) == 26


@pytest.mark.parametrize("raw, field, words", [
    ([1, 2], None, "JSON object"),
    ("text", None, "JSON object"),
    ({"workdir": "w"}, "app", "required"),
    ({"app": "A"}, "workdir", "required"),
    (base(app=""), "app", "app name"),
    (base(num_nodes=0), "num_nodes", ">= 1"),
    (base(num_nodes="x"), "num_nodes", "integer"),
    (base(num_nodes=1.5), "num_nodes", "integer"),
    (base(num_nodes=True), "num_nodes", "integer"),
    (base(ranks_per_node=-1), "ranks_per_node", ">= 1"),
    (base(gpus_per_rank=-1), "gpus_per_rank", ">= 0"),
    (base(gpus_per_rank="x"), "gpus_per_rank", "number"),
    (base(node_packing_count=0), "node_packing_count", ">= 1"),
    (base(wall_time_min=-5), "wall_time_min", ">= 0"),
    (base(parameters=[1]), "parameters", "object"),
    (base(parameters={"not an identifier": 1}), "parameters", "identifier"),
    (base(tags={"k": {"nested": 1}}), "tags", "string or number"),
    (base(tags=["x"]), "tags", "object"),
    (base(parent_ids="p1"), "parent_ids", "list of job ids"),
    (base(parent_ids=["../x"]), "parent_ids", "list of job ids"),
    (base(retry={"errors": -1}), "retry", ">= 0"),
    (base(retry={"sometimes": 1}), "retry", "errors"),
    (base(workdir="/etc"), "workdir", "relative"),
    (base(workdir="~/x"), "workdir", "relative"),
    (base(workdir="../x"), "workdir", "leaves data/"),
    (base(workdir="a/../../x"), "workdir", "leaves data/"),
    (base(workdir="a/.."), "workdir", "leaves data/"),
    (base(workdir=""), "workdir", "required"),
    (base(workdir=5), "workdir", "required"),
    (base(colour="red"), "colour", "unknown field"),
    (base(state="READY"), "state", "set by spoolbalsam"),
    (base(attempt=3), "attempt", "set by spoolbalsam"),
    (base(return_code=0), "return_code", "set by spoolbalsam"),
    (base(id="../../etc/passwd"), "id", "not a valid id"),
    (base(id=".hidden"), "id", "not a valid id"),
    (base(id="x.json"), "id", "not a valid id"),
    (base(id=5), "id", "not a valid id"),
    (base(id="a" * 97), "id", "not a valid id"),
])
def test_every_bad_field_is_one_line_naming_file_and_field(raw, field, words):
    e = reason(raw)
    assert e.field == field
    if field:
        assert f"field {field!r}" in str(e)
    assert words in str(e), str(e)


def test_numbers_are_normalised():
    rec = normalize(base(num_nodes=2.0, gpus_per_rank=0.5, wall_time_min=3.0,
                         tags={"n": 5, "b": True}), SRC)
    assert rec["num_nodes"] == 2 and isinstance(rec["num_nodes"], int)
    assert rec["gpus_per_rank"] == 0.5 and rec["wall_time_min"] == 3
    assert rec["tags"] == {"n": "5", "b": "true"}
    assert normalize(base(parent_ids=["p", "p", "q"]), SRC)["parent_ids"] == ["p", "q"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "c.d", "..."]), min_size=1, max_size=7))
def test_an_accepted_workdir_always_stays_inside_data(parts):
    raw = "/".join(parts)
    try:
        norm = normalize_workdir(raw)
    except ValueError:
        return
    data = "/site/data"
    full = posixpath.normpath(posixpath.join(data, norm))
    assert full.startswith(data + "/"), (raw, norm)
    assert not norm.startswith("/") and ".." not in norm.split("/")


# ---- ids and states ------------------------------------------------------------------------
def test_ids_sort_by_creation_time_and_shard_is_stable():
    t = int(time.time() * 1000)
    ids = [new_id(t + k) for k in (0, 1, 5, 1000, 86_400_000)]
    assert ids == sorted(ids)
    assert all(ID_RE.match(i) for i in ids)
    assert len({new_id(t) for _ in range(1000)}) == 1000
    assert shard("j1") == shard("j1") and len(shard("j1")) == 2
    assert len({shard(f"j{i}") for i in range(5000)}) == 256


@pytest.mark.parametrize("text, expect", [
    ("JOB_FINISHED", ("done", "JOB_FINISHED")), ("job_finished", ("done", "JOB_FINISHED")),
    ("done", ("done", None)), ("RUN_ERROR", ("running", "RUN_ERROR")),
    ("RESTART_READY", ("ready", "RESTART_READY")), ("rejected", ("rejected", None)),
    ("AWAITING_PARENTS", ("waiting", "AWAITING_PARENTS")), ("  ready ", ("ready", None)),
])
def test_balsam_state_names_and_directory_names_are_accepted(text, expect):
    assert S.parse_state(text) == expect


def test_unknown_state_names_the_accepted_ones():
    with pytest.raises(ValueError, match="JOB_FINISHED"):
        S.parse_state("FINISHED_OK")


def test_every_balsam_state_has_a_directory():
    for name in ("CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED",
                 "RESTART_READY", "RUNNING", "RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT",
                 "POSTPROCESSED", "STAGED_OUT", "JOB_FINISHED", "FAILED"):
        assert S.STATE_DIR[name] in S.DIR_STATE
    assert S.fine_state("done", "READY") == "JOB_FINISHED"   # the directory is authoritative
    assert S.fine_state("ready", "RESTART_READY") == "RESTART_READY"


# ---- history and events --------------------------------------------------------------------
def test_history_is_bounded_and_keeps_the_latest():
    rec = normalize(base(), SRC)
    for i in range(HISTORY_MAX + 10):
        rec = transition(rec, "READY" if i % 2 else "RUNNING", "t", f"step {i}")
    assert len(rec["history"]) == HISTORY_MAX
    assert rec["history"][-1]["msg"] == f"step {HISTORY_MAX + 9}"


def test_apply_event_is_idempotent_and_ignores_zombie_attempts():
    rec = dict(normalize(base(), SRC, default_id="j1"), attempt=2)
    ev = {"t": 1.0, "job": "j1", "attempt": 2, "to": "RUN_DONE", "return_code": 0, "by": "L"}
    once = apply_event(rec, ev)
    assert once["state"] == "RUN_DONE" and once["return_code"] == 0
    assert apply_event(once, ev) is once                     # already merged
    zombie = {"t": 2.0, "job": "j1", "attempt": 1, "to": "JOB_FINISHED", "by": "L0"}
    assert apply_event(once, zombie) is once                 # an older attempt's verdict
    other = {"t": 3.0, "job": "j2", "attempt": 2, "to": "FAILED"}
    assert apply_event(once, other) is once


# ---- retry policy --------------------------------------------------------------------------
def test_retry_policy_retries_then_fails():
    class App:
        retry = {"errors": 2, "timeouts": 5}
    rec = dict(normalize(base(), SRC), attempt=1)
    pol = policy_for(App, rec)
    seen = []
    for _ in range(3):
        where, state, fields, msg = after_failure(rec, "errors", pol, "exit code 3")
        seen.append(state)
        rec = dict(rec, **fields)
    assert seen == ["RESTART_READY", "RESTART_READY", "FAILED"]
    assert rec["attempt"] == 3 and "retry policy spent" in rec["error"]
    # the job's own retry overrides the app's
    assert policy_for(App, dict(rec, retry={"errors": 0}))["errors"] == 0


def test_a_run_end_awaits_its_outcome_and_nothing_else():
    from spoolbalsam.spool.events import awaits_outcome
    ev = lambda to: {"job": "a", "to": to, "t": 1.0}   # noqa: E731
    assert not awaits_outcome([ev("RUNNING"), ev("RUN_DONE"), ev("JOB_FINISHED")])
    assert awaits_outcome([ev("RUNNING"), ev("RUN_DONE")])
    assert awaits_outcome([ev("RUN_DONE"), ev("POSTPROCESSED")])    # JOB_FINISHED to come
    assert not awaits_outcome([ev("RUN_ERROR"), ev("RESTART_READY")])
    assert not awaits_outcome([ev("RUNNING")])                     # nothing to hold
    assert awaits_outcome([ev("RUN_TIMEOUT")])
    assert not awaits_outcome([{"zombie": True, "job": "a"}])
