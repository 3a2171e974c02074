"""Shared helpers for the site/spool/launcher tests (owned by the spool test engineer).

Synchronisation rule: tests never ``sleep`` to wait for something; they poll a condition
with a deadline through ``wait_for``.  Every process a test starts is started in its own
session, and ``reap_site_processes`` kills -- by PID -- every process that belongs to a test
site (its path on the command line, or ``SPOOL_SITE=<site>`` in its environment: the site
process, launchers, local-backend batch scripts and the jobs they started).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml
from click.testing import CliRunner

from spoolbalsam.cli import cli
from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import Store, read_job

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent

APPS = {
    "EchoHello": {
        "description": "Say hello and show the gpu ids this job was given",
        "command_template": "echo Hello, {{ say_hello_to }}! SPOOL_GPU_IDS=$SPOOL_GPU_IDS "
                            "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES",
    },
    "Fail": {
        "description": "Print a line, then exit 3",
        "command_template": "echo failing attempt $SPOOL_ATTEMPT; exit 3",
        "retry": {"errors": 2, "timeouts": 5},
    },
    "Sleep": {"command_template": "sleep {{ secs }}"},
}


# ---- waiting ---------------------------------------------------------------------------
def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.02):
    """Poll ``cond`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ---- the CLI ---------------------------------------------------------------------------
def spool(site: Path | None, *args: str, expect: int | None = 0, input_bytes: bytes | None = None):
    """Run ``spool [--site SITE] ARGS`` in-process (``input_bytes`` on its stdin); assert the
    exit code unless expect=None."""
    argv = (["--site", str(site)] if site is not None else []) + [str(a) for a in args]
    res = CliRunner().invoke(cli, argv, catch_exceptions=False, input=input_bytes)
    if expect is not None:
        assert res.exit_code == expect, (f"spool {' '.join(argv)} -> {res.exit_code}\n"
                                         f"stdout: {res.stdout}\nstderr: {res.stderr}")
    return res


def spool_sub(site: Path | None, *args: str, timeout: float = 60, **kw):
    """``python -m spoolbalsam.cli ...`` as a real process (what a user types)."""
    argv = [PY, "-m", "spoolbalsam.cli"] + (["--site", str(site)] if site else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


# ---- sites -----------------------------------------------------------------------------
def write_app(site: Path, name: str, definition: dict) -> None:
    fsio.write_atomic(site / "apps" / f"{name}.yml", yaml.safe_dump(definition).encode())


def make_site(root: Path, *, gpus: int = 12, cpus: int = 4, settings: dict | None = None,
              apps: dict | None = None) -> Path:
    """``spool site init ROOT --machine local --gpus N --cpus M`` plus the test apps."""
    spool(None, "site", "init", str(root), "--machine", "local", "--gpus", str(gpus),
          "--cpus", str(cpus))
    for name, d in (APPS if apps is None else apps).items():
        write_app(root, name, d)
    if settings:
        edit_settings(root, settings)
    return root


def edit_settings(site: Path, changes: dict) -> None:
    """Merge ``changes`` (nested dicts merge) into settings.yml, as a user editing it would."""
    s = yaml.safe_load((site / "settings.yml").read_text())

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v
    merge(s, changes)
    fsio.write_atomic(site / "settings.yml", yaml.safe_dump(s, sort_keys=False).encode())


def site_info(site: Path) -> dict | None:
    try:
        return json.loads((site / "site" / "site.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def start_site(site: Path) -> int:
    res = spool(site, "site", "start")
    assert "Site started" in res.stdout, res.stdout
    info = site_info(site)
    assert info and pid_alive(info["pid"]), info
    return info["pid"]


def stop_site(site: Path) -> None:
    info = site_info(site)
    spool(site, "site", "stop", "--timeout", "20", expect=None)
    if info and pid_alive(info["pid"]):
        os.kill(info["pid"], signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1] not in (b"Z", b"X")
    except OSError:
        return False


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _belongs_to(pid: int, root: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return root in cmd or f"SPOOL_SITE={root}".encode() in env


def site_pids(site: Path) -> list[int]:
    root = str(Path(site).resolve())
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc")
            if p.isdigit() and int(p) != me and _belongs_to(int(p), root)]


def reap_site_processes(site: Path) -> None:
    """Kill (SIGKILL, by PID) every process that belongs to ``site``; started ones reaped."""
    for _ in range(3):
        pids = site_pids(site)
        if not pids:
            break
        for pid in pids:
            kill9(pid)
        for pid in pids:
            try:
                wait_for(lambda: not pid_alive(pid), 5, f"pid {pid} to die", 0.01)
            except AssertionError:
                pass
    for proc in list(STARTED):
        if proc.poll() is None:
            kill9(proc.pid)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        STARTED.remove(proc)


# ---- processes this test started ------------------------------------------------------
STARTED: list[subprocess.Popen] = []


def popen(argv: list[str], log: Path | None = None, **kw) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, **kw)
    if log:
        out.close()
    STARTED.append(proc)
    return proc


def start_launcher(site: Path, *extra: str, wall_min: float = 10, idle_ttl: float = 2.0,
                   mode: str = "serial") -> subprocess.Popen:
    argv = [PY, "-m", "spoolbalsam.cli", "--site", str(site), "launcher", "-j", mode,
            "-t", str(wall_min), "--idle-ttl", str(idle_ttl), *extra]
    return popen(argv, log=site / "log" / f"test-launcher-{len(STARTED)}.out")


def launcher_ids(site: Path) -> list[str]:
    return fsio.list_dirs(site / "launchers")


# ---- jobs ------------------------------------------------------------------------------
def job(app: str = "EchoHello", workdir: str = "w", **fields) -> dict:
    d = {"app": app, "workdir": workdir}
    if app == "EchoHello":
        d["parameters"] = {"say_hello_to": "world"}
    d.update(fields)
    return d


def drop(site: Path, name: str, content) -> Path:
    """Drop a file into jobs/created/ the documented way: dot-temp, then rename."""
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    created = site / "jobs" / "created"
    tmp = created / f".{name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, created / name)
    return created / name


def layout(site: Path) -> Layout:
    return Layout(Path(site).resolve())


def locate(site: Path, job_id: str) -> str | None:
    loc = Store(layout(site)).locate(job_id)
    return loc[0] if loc else None


def record(site: Path, job_id: str) -> dict:
    loc = Store(layout(site)).locate(job_id)
    assert loc, f"job {job_id} not found in {site}"
    return read_job(loc[1], loc[0])


def records(site: Path, state: str) -> list[dict]:
    """Records on disk in a state directory (done, ready, running, ...)."""
    return [read_job(p, state) for _, p in Store(layout(site)).iter_dir(state)]


def ids_in(site: Path, state: str) -> list[str]:
    return [p.name[:-5] for _, p in Store(layout(site)).iter_dir(state)]


def counts(site: Path) -> dict:
    from spoolbalsam.spool.query import counts as _counts
    return _counts(layout(site))


def rejected_entries(site: Path) -> dict[str, tuple[bytes, str]]:
    """Original dropped name -> (bytes kept, reason line) for every rejected drop."""
    out = {}
    rdir = site / "jobs" / "rejected"
    for p in sorted(rdir.iterdir()):
        if p.name.startswith(".") or p.name.endswith(".reason") or p.is_symlink() \
                or not p.is_file():
            continue                    # links, directories: see their own tests
        original = p.name.split("-", 1)[1]
        reason_file = p.with_name(p.name + ".reason")
        reason = reason_file.read_text() if reason_file.exists() else ""
        out.setdefault(original, (p.read_bytes(), reason))
    return out


def pending_drops(site: Path) -> list[str]:
    """Dropped files the site has not finished with: still in jobs/created/, or taken into
    site/intake/ (held as ``MS.SEQ~NAME``); original names."""
    held = [n.split("~", 1)[1] for n in fsio.list_names(site / "site" / "intake", suffix="")]
    return fsio.list_names(site / "jobs" / "created") + held


def temps_under(directory: Path) -> list[Path]:
    return [Path(r) / f for r, _, fs in os.walk(directory) for f in fs if f.startswith(".")]


def site_obj(site: Path):
    """The site process's ``Site`` object, in this process (for deterministic step tests)."""
    from spoolbalsam import settings as settings_mod
    from spoolbalsam.site.loop import Site
    s = settings_mod.load(site / "settings.yml")
    return Site(layout(site), s, settings_mod.machine_from_settings(s))
