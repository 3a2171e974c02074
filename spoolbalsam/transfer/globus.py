"""The Globus backend: batched Globus Transfer tasks through ``globus-sdk``.

Install with ``pip install spoolbalsam[globus]``.  Locations are ``globus://COLLECTION_ID``
(``transfer.items``); the site's own collection is ``transfers.globus_endpoint_id``, and
``transfers.globus_endpoint_site_path`` is the site directory as that collection sees it.

What it does, as Balsam's site does
-----------------------------------
* One task per batch: a ``TransferData`` from the location to the site's collection
  (stage-in) or back (stage-out), one ``add_item`` per move (``recursive`` for directory
  slots), ``sync_level`` ``size``, checksums verified, data encrypted, no e-mails.  Its
  label names the site's task id.
* Tasks are polled with one ``task_list`` call (filtered by task id) per pass, every
  ``service_period`` seconds: ``ACTIVE``/``INACTIVE``/``SUCCEEDED``/``FAILED`` become
  ``active``/``inactive``/``done``/``error``.  A failed task fails (or retries) all of its
  items: Globus reports a task's fatal error, not one per file.
* A ``ConsentRequired`` answer (the collections need the user's consent for this app) is
  ``BLOCKED``: the items wait and their ``error`` says what to run, as Balsam's hint does:
  ``spool site globus-login -e COLLECTION ...``.  So is a missing or expired login.
* Network errors and 5xx answers are ``TRANSIENT``; other 4xx answers are ``PERMANENT``.
* Every call runs on the backend's own thread; the site's loop never waits on the network.
* After a site restart, a task whose Globus id the record holds is polled again
  (``resume``).  A task submitted just before a crash, before its id was recorded, is
  submitted again: with ``sync_level: size`` Globus skips what the first one copied.

Credentials: ``spool site globus-login`` runs Globus's native-app login once (with the
client id of your own registered app, ``transfers.globus_client_id``) and keeps the refresh
token in ``~/.spoolbalsam/globus-tokens.json`` (mode 0600; ``$SPOOL_GLOBUS_TOKENS``
overrides); the site refreshes access tokens from it.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import orjson

from .base import BLOCKED, PERMANENT, TRANSIENT, Backend, BackendError, Move, TaskStatus

log = logging.getLogger("spoolbalsam.transfer")
TRANSFER_SCOPE = "urn:globus:auth:scope:transfer.api.globus.org:all"
TRANSFER_RESOURCE = "transfer.api.globus.org"
STATE_MAP = {"ACTIVE": "active", "INACTIVE": "inactive", "SUCCEEDED": "done", "FAILED": "error"}
POLL_CHUNK = 100          # task ids per task_list filter
LOGIN_HINT = "spool site globus-login"


def tokens_path() -> Path:
    return Path(os.environ.get("SPOOL_GLOBUS_TOKENS") or
                Path.home() / ".spoolbalsam" / "globus-tokens.json")


def scopes_for(collections: list[str]) -> str:
    """The transfer scope, with data_access consent for each of ``collections`` (GCS v5
    mapped collections need it; others ignore it)."""
    if not collections:
        return TRANSFER_SCOPE
    deps = " ".join(f"*https://auth.globus.org/scopes/{c}/data_access" for c in collections)
    return f"{TRANSFER_SCOPE}[{deps}]"


def consent_hint(collections) -> str:
    flags = " ".join(f"-e {c}" for c in sorted(set(collections)) if c)
    return (f"Globus needs your consent for this site to use these collections: run "
            f"`{LOGIN_HINT} {flags}` on the site's host; the items are retried meanwhile")


def classify_api_error(e, collections=()) -> tuple[str, str]:
    """(kind, message) of a Globus API error."""
    info = getattr(e, "info", None)
    consent = getattr(info, "consent_required", None)
    if consent:
        return BLOCKED, consent_hint(collections)
    status = getattr(e, "http_status", None) or 0
    code = getattr(e, "code", None) or ""
    msg = f"Globus {status} {code}: {getattr(e, 'message', None) or e}"
    if status == 401 or code in ("AuthenticationFailed",):
        return BLOCKED, f"{msg}; log in again: `{LOGIN_HINT}`"
    if status >= 500 or status in (408, 409, 429) or code.startswith("ServiceUnavailable"):
        return TRANSIENT, msg
    return PERMANENT, msg


def classify_fatal(fatal: dict | None) -> tuple[str, str]:
    """(kind, message) of a FAILED task's ``fatal_error``."""
    fatal = fatal or {}
    code = str(fatal.get("code") or "FAILED")
    msg = f"Globus task failed: {code}: {fatal.get('description') or ''}".rstrip(": ")
    if "NOT_FOUND" in code or "PERMISSION_DENIED" in code:
        return PERMANENT, msg
    if "CONSENT" in code.upper():
        return BLOCKED, msg
    return TRANSIENT, msg


class GlobusBackend(Backend):
    scheme = "globus"

    def __init__(self, local_endpoint: str, client_factory: Callable[[], object],
                 period: float = 5.0, sync_level: str = "size"):
        super().__init__()
        self.local = str(uuid.UUID(str(local_endpoint)))
        self.factory = client_factory
        self.period = float(period)
        self.sync_level = sync_level
        self.client = None
        self.cmds: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.results: list[TaskStatus] = []
        self.active: dict[str, str] = {}          # site task id -> Globus task id
        self.reported: dict[str, str] = {}        # site task id -> last state reported
        self.collections: dict[str, list[str]] = {}   # site task id -> collections it uses
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="globus", daemon=True)
        self.thread.start()

    @classmethod
    def from_settings(cls, conf: dict) -> "GlobusBackend":
        if not conf.get("globus_endpoint_id"):
            raise ValueError("transfers.globus_endpoint_id is not set in settings.yml")
        client_id = conf.get("globus_client_id")
        return cls(conf["globus_endpoint_id"], lambda: transfer_client(client_id),
                   period=conf.get("service_period", 5))

    # ---- the site's calls -------------------------------------------------------------
    def submit(self, task_id: str, location, direction: str, moves: list[Move]) -> None:
        self.cmds.put(("submit", task_id, location.endpoint, direction, list(moves)))

    def poll(self) -> list[TaskStatus]:
        with self.lock:
            out, self.results = self.results, []
        return out

    def cancel(self, task_id: str) -> None:
        self.cmds.put(("cancel", task_id))

    def resume(self, task_id: str, external_id: str | None) -> bool:
        try:
            gid = str(uuid.UUID(str(external_id)))
        except (ValueError, TypeError):
            return False
        with self.lock:
            self.active[task_id] = gid
            self.reported[task_id] = "active"
        return True

    def busy(self) -> int:
        with self.lock:
            return len(self.active) + self.cmds.qsize()

    def close(self) -> None:
        self.stopping = True
        self.cmds.put(None)
        self.thread.join(5)

    # ---- the backend's thread -----------------------------------------------------------
    def _report(self, st: TaskStatus) -> None:
        with self.lock:
            self.results.append(st)
            self.reported[st.task_id] = st.state
            if st.state in ("done", "error"):
                self.active.pop(st.task_id, None)
                self.reported.pop(st.task_id, None)
                self.collections.pop(st.task_id, None)
        self.notify()

    def _run(self) -> None:
        next_poll = time.monotonic() + self.period
        while True:
            try:
                cmd = self.cmds.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                cmd = None
            if self.stopping:
                return
            try:
                if cmd is not None and cmd[0] == "submit":
                    self._submit(*cmd[1:])
                elif cmd is not None and cmd[0] == "cancel":
                    self._cancel(cmd[1])
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.period
                    self.poll_once()
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("globus backend: unexpected error; going on")

    def _client(self):
        if self.client is None:
            self.client = self.factory()
        return self.client

    def _submit(self, task_id: str, remote: str, direction: str, moves: list[Move]) -> None:
        src, dst = (remote, self.local) if direction == "in" else (self.local, remote)
        collections = sorted({remote, self.local})
        try:
            client = self._client()
            result = client.submit_transfer(self._transfer_data(task_id, src, dst, moves))
            gid = result["task_id"]
        except BackendError as e:
            return self._report(TaskStatus(task_id, "error", error=str(e), kind=e.kind))
        except Exception as e:  # noqa: BLE001 - classified below
            kind, msg = classify(e, collections)
            return self._report(TaskStatus(task_id, "error", error=msg, kind=kind))
        with self.lock:
            self.active[task_id] = gid
            self.collections[task_id] = collections
        log.info("globus task %s submitted for %s (%d items)", gid, task_id, len(moves))
        self._report(TaskStatus(task_id, "active", external_id=gid))

    def _transfer_data(self, task_id: str, src: str, dst: str, moves: list[Move]):
        import globus_sdk
        tdata = globus_sdk.TransferData(
            source_endpoint=src, destination_endpoint=dst, label=f"spoolbalsam {task_id}",
            sync_level=self.sync_level, verify_checksum=True, encrypt_data=True,
            preserve_timestamp=False, notify_on_succeeded=False, notify_on_failed=False,
            notify_on_inactive=False)
        for m in moves:
            tdata.add_item(m.src, m.dst, recursive=m.recursive)
        return tdata

    def _cancel(self, task_id: str) -> None:
        gid = self.active.get(task_id)
        if gid is None:
            return
        try:
            self._client().cancel_task(gid)
        except Exception as e:  # noqa: BLE001 - the next poll reports the task's state
            log.warning("globus: cancelling task %s failed: %s", gid, e)

    def poll_once(self) -> None:
        """One ``task_list`` call per ``POLL_CHUNK`` active tasks; report the changes."""
        with self.lock:
            active = dict(self.active)
        if not active:
            return
        by_gid = {gid: tid for tid, gid in active.items()}
        gids = list(by_gid)
        for start in range(0, len(gids), POLL_CHUNK):
            chunk = gids[start:start + POLL_CHUNK]
            try:
                docs = list(self._client().task_list(filter="task_id:" + ",".join(chunk),
                                                     limit=len(chunk)))
            except BackendError as e:
                log.warning("globus: cannot poll tasks: %s", e)
                return
            except Exception as e:  # noqa: BLE001 - classified; polled again next pass
                log.warning("globus: cannot poll tasks: %s", classify(e, ())[1])
                return
            for doc in docs:
                tid = by_gid.get(str(doc.get("task_id")))
                if tid is None:
                    continue
                state = STATE_MAP.get(str(doc.get("status", "")).upper())
                if state is None or (state == self.reported.get(tid) and state != "error"):
                    continue
                if state == "error":
                    kind, msg = classify_fatal(doc.get("fatal_error"))
                    self._report(TaskStatus(tid, "error", error=msg, kind=kind,
                                            external_id=doc.get("task_id")))
                elif state == "inactive":
                    why = doc.get("nice_status_short_description") or doc.get("nice_status")
                    hint = consent_hint(self.collections.get(tid, ()))
                    self._report(TaskStatus(tid, "inactive", external_id=doc.get("task_id"),
                                            error=f"Globus task paused ({why}); {hint}"))
                else:
                    self._report(TaskStatus(tid, state, external_id=doc.get("task_id")))


def classify(e: Exception, collections) -> tuple[str, str]:
    """(kind, message) of any exception from a Globus call."""
    try:
        from globus_sdk import GlobusAPIError, GlobusConnectionError
    except ImportError:                                   # pragma: no cover
        return TRANSIENT, str(e)
    if isinstance(e, GlobusAPIError):
        return classify_api_error(e, collections)
    if isinstance(e, GlobusConnectionError):
        return TRANSIENT, f"cannot reach Globus: {e}"
    return TRANSIENT, f"{type(e).__name__}: {e}"


# ---- credentials ---------------------------------------------------------------------------
def _save_tokens(data: dict) -> None:
    path = tokens_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def transfer_client(client_id: str | None):
    """A TransferClient authorised by the refresh token ``globus_login`` stored; a
    ``BLOCKED`` BackendError saying what to run if there is none."""
    import globus_sdk
    if not client_id:
        raise BackendError("transfers.globus_client_id is not set in settings.yml: register "
                           "a native app with Globus and put its client id there, then run "
                           f"`{LOGIN_HINT}`", BLOCKED)
    try:
        saved = orjson.loads(tokens_path().read_bytes())
    except (FileNotFoundError, ValueError):
        raise BackendError(f"not logged in to Globus: run `{LOGIN_HINT}` on the site's host",
                           BLOCKED) from None
    tok = saved.get(client_id) or {}
    if not tok.get("refresh_token"):
        raise BackendError(f"not logged in to Globus with client {client_id}: run "
                           f"`{LOGIN_HINT}`", BLOCKED)

    def on_refresh(resp):
        new = resp.by_resource_server.get(TRANSFER_RESOURCE)
        if new:
            data = orjson.loads(tokens_path().read_bytes())
            data[client_id] = {**data.get(client_id, {}),
                               "access_token": new["access_token"],
                               "expires_at_seconds": new["expires_at_seconds"]}
            _save_tokens(data)

    auth = globus_sdk.NativeAppAuthClient(client_id)
    authorizer = globus_sdk.RefreshTokenAuthorizer(
        tok["refresh_token"], auth, access_token=tok.get("access_token"),
        expires_at=tok.get("expires_at_seconds"), on_refresh=on_refresh)
    return globus_sdk.TransferClient(authorizer=authorizer)


def globus_login(client_id: str, collections: list[str], ask=input, say=print) -> None:
    """Globus's native-app login (one URL to open, one code to paste); keeps the refresh
    token for ``transfer_client``.  ``collections``: ask for data_access consent on them."""
    import globus_sdk
    auth = globus_sdk.NativeAppAuthClient(client_id)
    auth.oauth2_start_flow(requested_scopes=scopes_for(collections), refresh_tokens=True)
    url = auth.oauth2_get_authorize_url()
    say(f"Open this URL, log in, and paste the code it shows:\n\n  {url}\n")
    code = ask("Code: ").strip()
    tokens = auth.oauth2_exchange_code_for_tokens(code).by_resource_server.get(TRANSFER_RESOURCE)
    if not tokens or not tokens.get("refresh_token"):
        raise BackendError("Globus returned no refresh token for the Transfer service; the "
                           "site could not renew its access; log in again", PERMANENT)
    try:
        data = orjson.loads(tokens_path().read_bytes())
    except (FileNotFoundError, ValueError):
        data = {}
    data[client_id] = {"refresh_token": tokens["refresh_token"],
                       "access_token": tokens["access_token"],
                       "expires_at_seconds": tokens["expires_at_seconds"],
                       "collections": sorted(set(collections))}
    _save_tokens(data)
    say(f"Logged in; tokens kept in {tokens_path()}")
