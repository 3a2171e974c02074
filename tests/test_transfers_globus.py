"""The Globus backend against RECORDED Globus Transfer API responses -- no live service.

What these tests are: globus-sdk's own recorded responses (``globus_sdk.testing``:
``transfer.get_submission_id``, ``transfer.submit_transfer``, ``transfer.task_list``,
``transfer.cancel_task``) served by the
``responses`` library in place of the Transfer service, plus two shapes edited from them
and labelled so below (a FAILED task with a ``fatal_error``; a ConsentRequired 403 in the
error format Globus documents).  They check what spoolbalsam sends (the TransferData
document: endpoints, items, sync level, checksums, encryption, label; the ``task_list``
filter) and how it reads what comes back (task states, fatal errors, consent hints), and
that the site's staging drives the backend end to end.

What they are not: a test against the real Globus service.  Authentication
(``spool site globus-login``), real collections, real file movement and the service's
actual error texts are not exercised here.
"""
from __future__ import annotations

import json
import os
from urllib.parse import parse_qs, urlparse

import pytest

from spoolbalsam.transfer.base import BLOCKED, PERMANENT, TRANSIENT, Move
from spoolbalsam.transfer.items import parse_location

from helpers import edit_settings, locate, make_site, record, reap_site_processes, site_obj, drop, wait_for

try:
    import globus_sdk
    import responses
    from globus_sdk.testing import RegisteredResponse, get_last_request, load_response
    from globus_sdk.testing.data.transfer.task_list import TASK_LIST_DOC
except ImportError as e:                                       # pragma: no cover
    if os.environ.get("CI") == "true":
        raise RuntimeError("globus-sdk and responses are in the test extra; install them") from e
    pytest.skip(f"globus-sdk not installed ({e})", allow_module_level=True)

from spoolbalsam.transfer.globus import GlobusBackend

pytestmark = pytest.mark.recorded

SITE_EP = "9d6d994a-6d04-11e5-ba46-22000b92c6ec"
REMOTE_EP = "543aade1-db97-4a4b-9bdf-0b58e78dfa69"


@pytest.fixture(autouse=True)
def recorded():
    responses.start()
    load_response("transfer.get_submission_id")     # submit_transfer asks for one first
    try:
        yield
    finally:
        responses.stop()
        responses.reset()


def client():
    # no SDK-level retries: spoolbalsam's own retry and backoff are what is tested
    from globus_sdk.transport import RetryConfig
    return globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("recorded"),
                                     retry_config=RetryConfig(max_retries=0))


@pytest.fixture
def backend():
    b = GlobusBackend(SITE_EP, client, period=3600)     # polled by hand (poll_once)
    try:
        yield b
    finally:
        b.close()


def calls(path: str) -> list:
    return [c for c in responses.calls if urlparse(c.request.url).path == path]


def task_list_with(doc_changes: dict, task_id: str) -> None:
    """EDITED from the recorded ``transfer.task_list`` response: one task, fields changed."""
    doc = {**TASK_LIST_DOC, "DATA": [{**TASK_LIST_DOC["DATA"][0], "task_id": task_id,
                                      **doc_changes}]}
    responses.upsert(responses.GET, "https://transfer.api.globus.org/v0.10/task_list", json=doc)


def test_a_batch_is_one_transfer_task_with_balsams_options(backend):
    meta = load_response("transfer.submit_transfer").metadata
    moves = [Move("j1/input", f"/remote/in/{n}.dat", f"/site/data/w{n}/input.dat") for n in range(3)]
    moves.append(Move("j9/tree", "/remote/tree", "/site/data/w9", True))
    backend.submit("globus-abc", parse_location("alcf", f"globus://{REMOTE_EP}"), "in", moves)
    [st] = wait_for(backend.poll, 10, "the submission")
    assert (st.task_id, st.state, st.external_id) == ("globus-abc", "active", meta["task_id"])
    body = json.loads(get_last_request().body)
    assert body["DATA_TYPE"] == "transfer"
    assert (body["source_endpoint"], body["destination_endpoint"]) == (REMOTE_EP, SITE_EP)
    assert [(d["source_path"], d["destination_path"], d.get("recursive", False))
            for d in body["DATA"]] == [(m.src, m.dst, m.recursive) for m in moves]
    assert body["sync_level"] == 1 and body["verify_checksum"] is True  # 1: "size"
    assert body["encrypt_data"] is True and body["notify_on_succeeded"] is False
    assert body["label"] == "spoolbalsam globus-abc"
    assert body["submission_id"] == meta["submission_id"]   # fetched, as the service wants
    assert backend.busy() == 1


def test_stage_out_goes_from_the_site_collection(backend):
    load_response("transfer.submit_transfer")
    backend.submit("globus-out", parse_location("alcf", f"globus://{REMOTE_EP}"), "out",
                   [Move("j/result", "/site/data/w/result.txt", "/remote/out/r.txt")])
    wait_for(backend.poll, 10, "the submission")
    body = json.loads(get_last_request().body)
    assert (body["source_endpoint"], body["destination_endpoint"]) == (SITE_EP, REMOTE_EP)


def test_polling_reads_task_states_with_one_filtered_task_list_call(backend):
    gid = load_response("transfer.task_list").metadata["tasks"][0]["task_id"]
    assert backend.resume("globus-t", gid)                # as after a site restart
    backend.poll_once()
    [st] = backend.poll()
    assert (st.task_id, st.state) == ("globus-t", "done")   # the recording says SUCCEEDED
    [call] = calls("/v0.10/task_list")
    assert parse_qs(urlparse(call.request.url).query)["filter"] == [f"task_id:{gid}"]
    assert backend.busy() == 0
    backend.poll_once()
    assert len(calls("/v0.10/task_list")) == 1             # nothing left to poll


def test_resume_refuses_an_id_that_is_not_globuss():
    b = GlobusBackend(SITE_EP, client, period=3600)
    try:
        assert not b.resume("globus-x", None) and not b.resume("globus-x", "file-123")
    finally:
        b.close()


@pytest.mark.parametrize("code, kind", [("FILE_NOT_FOUND", PERMANENT),
                                        ("PERMISSION_DENIED", PERMANENT),
                                        ("ENDPOINT_ERROR", TRANSIENT)])
def test_a_failed_task_reports_its_fatal_error_classified(backend, code, kind):
    gid = "8e39b7d8-7b4c-11ee-8c99-0242ac120002"
    task_list_with({"status": "FAILED", "fatal_error": {"code": code,
                                                        "description": "recorded shape"}}, gid)
    backend.resume("globus-f", gid)
    backend.poll_once()
    [st] = backend.poll()
    assert (st.state, st.kind) == ("error", kind)
    assert st.error == f"Globus task failed: {code}: recorded shape"


def test_an_inactive_task_is_reported_with_a_hint(backend):
    gid = "8e39b7d8-7b4c-11ee-8c99-0242ac120003"
    task_list_with({"status": "INACTIVE", "nice_status": "PERMISSION_DENIED"}, gid)
    backend.resume("globus-i", gid)
    backend.submit("globus-i2", parse_location("a", f"globus://{REMOTE_EP}"), "in", [])
    backend.poll_once()
    states = [st for st in backend.poll() if st.task_id == "globus-i"]
    assert states and states[-1].state == "inactive" and "globus-login" in states[-1].error


def test_consent_required_is_blocked_with_balsams_hint(backend):
    # EDITED shape: a 403 ConsentRequired error as Globus documents it (code and
    # required_scopes); not recorded from the live service.
    RegisteredResponse(
        service="transfer", method="POST", path="/v0.10/transfer", status=403,
        json={"code": "ConsentRequired", "message": "Missing required data_access consent",
              "request_id": "rec0nsent", "resource": "/v0.10/transfer",
              "required_scopes": ["urn:globus:auth:scope:transfer.api.globus.org:all"
                                  f"[*https://auth.globus.org/scopes/{REMOTE_EP}/data_access]"]},
    ).add()
    backend.submit("globus-c", parse_location("alcf", f"globus://{REMOTE_EP}"), "in",
                   [Move("j/input", "/remote/a", "/site/data/w/a")])
    [st] = wait_for(backend.poll, 10, "the refusal")
    assert (st.state, st.kind) == ("error", BLOCKED)
    assert f"spool site globus-login -e {REMOTE_EP} -e {SITE_EP}" in st.error


def test_a_bad_request_is_permanent_and_a_server_error_transient(backend):
    load_response("transfer.submit_transfer", case="failure")       # recorded 400
    loc = parse_location("alcf", f"globus://{REMOTE_EP}")
    backend.submit("globus-b", loc, "in", [Move("j/input", "/remote/a", "/site/a")])
    [st] = wait_for(backend.poll, 10, "the refusal")
    assert (st.state, st.kind) == ("error", PERMANENT)
    assert "400 ClientError.BadRequest.NoTransferItems" in st.error
    responses.upsert(responses.POST, "https://transfer.api.globus.org/v0.10/transfer",
                      status=503, json={"code": "ServiceUnavailable", "message": "down"})
    backend.submit("globus-s", loc, "in", [Move("j/input", "/remote/a", "/site/a")])
    [st] = wait_for(backend.poll, 10, "the refusal")
    assert (st.state, st.kind) == ("error", TRANSIENT)


def test_cancel_calls_the_cancel_endpoint(backend):
    gid = load_response("transfer.cancel_task").metadata["task_id"]
    backend.resume("globus-x", gid)
    backend.cancel("globus-x")
    wait_for(lambda: calls(f"/v0.10/task/{gid}/cancel"), 10, "the cancel call")


def test_the_site_stages_in_through_globus_end_to_end(tmp_path):
    """The site's staging with the Globus backend, the service replaced by recordings."""
    site = make_site(tmp_path / "S", apps={"Cat": {
        "command_template": "cat input.dat",
        "transfers": {"input": {"required": True, "direction": "in",
                                "local_path": "input.dat"}}}})
    try:
        edit_settings(site, {"transfers": {
            "transfer_locations": {"alcf": f"globus://{REMOTE_EP}/projects"},
            "globus_endpoint_id": SITE_EP, "globus_endpoint_site_path": "/u/me/S",
            "service_period": 0.01}})
        s = site_obj(site)
        s.staging.backends["globus"] = GlobusBackend(SITE_EP, client, period=0.01)
        meta = load_response("transfer.submit_transfer").metadata
        drop(site, "g.json", {"id": "g", "app": "Cat", "workdir": "g/1",
                              "transfers": {"input": "alcf:/projects/in/a.dat"}})
        wait_for(lambda: s.tick() is not None and
                 record(site, "g")["transfer_items"][0]["task_id"] == f"globus:{meta['task_id']}",
                 10, "the task's Globus id in the record")
        body = json.loads(calls("/v0.10/transfer")[0].request.body)
        assert body["DATA"][0]["source_path"] == "/projects/in/a.dat"
        assert body["DATA"][0]["destination_path"] == "/u/me/S/data/g/1/input.dat"
        task_list_with({"status": "SUCCEEDED"}, meta["task_id"])
        wait_for(lambda: s.tick() is not None and locate(site, "g") == "ready", 10,
                 "the job to be staged in")
        assert record(site, "g")["state"] == "STAGED_IN"
    finally:
        s.staging.close()
        reap_site_processes(site)


# ---- credentials ----------------------------------------------------------------------------
def test_globus_login_keeps_the_refresh_token_private_and_the_site_uses_it(tmp_path, monkeypatch):
    from urllib.parse import unquote

    from globus_sdk.testing import get_response_set

    from spoolbalsam.transfer.globus import globus_login, transfer_client
    monkeypatch.setenv("SPOOL_GLOBUS_TOKENS", str(tmp_path / "g" / "tokens.json"))
    client_id = "c0ffee00-0000-4000-8000-000000000001"
    recorded = get_response_set("auth.oauth2_exchange_code_for_tokens").lookup("default")
    # EDITED from the recorded token response: a refresh token added (login asks for one)
    RegisteredResponse(service="auth", method="POST", path="/v2/oauth2/token",
                       json={**recorded.json, "refresh_token": "transfer_refresh_token"}).add()
    said: list[str] = []
    globus_login(client_id, [REMOTE_EP], ask=lambda prompt: "the-code", say=said.append)
    url = unquote(said[0])
    assert f"client_id={client_id}" in url and \
        f"transfer.api.globus.org:all[*https://auth.globus.org/scopes/{REMOTE_EP}/data_access]" in url
    token_file = tmp_path / "g" / "tokens.json"
    assert (token_file.stat().st_mode & 0o777) == 0o600
    saved = json.loads(token_file.read_text())[client_id]
    assert saved["refresh_token"] == "transfer_refresh_token" and saved["collections"] == [REMOTE_EP]
    load_response("transfer.get_submission_id")
    transfer_client(client_id).get_submission_id()
    assert get_last_request().headers["Authorization"] == "Bearer transfer_access_token"


def test_without_a_login_the_backend_is_blocked_with_the_command_to_run(tmp_path, monkeypatch):
    from spoolbalsam.transfer.base import BackendError
    from spoolbalsam.transfer.globus import transfer_client
    monkeypatch.setenv("SPOOL_GLOBUS_TOKENS", str(tmp_path / "none.json"))
    with pytest.raises(BackendError) as e:
        transfer_client("c0ffee00-0000-4000-8000-000000000001")
    assert e.value.kind == BLOCKED and "spool site globus-login" in str(e.value)
    with pytest.raises(BackendError, match="globus_client_id is not set"):
        transfer_client(None)


def test_site_globus_login_needs_a_client_id(tmp_path):
    from helpers import spool
    site = make_site(tmp_path / "S", apps={})
    res = spool(site, "site", "globus-login", expect=1)
    assert "transfers.globus_client_id: is not set" in res.stderr
