"""The soak's processes: a site and its launchers started the way the README says, found
again by PID, killed with SIGKILL, and all of them ended at the finish.

Only processes that belong to a soak site are ever signalled: the site process whose pid
the site's own pid file names, the launchers this module started (by the PID ``Popen``
gave), their children (``/proc/PID/stat`` says whose child a process is), and -- at
cleanup -- any process whose environment holds ``SPOOL_SITE=<the soak site>`` or whose
command line names it.  Nothing is ever looked up by name.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import _common  # noqa: E402  (bench/_common.py: REPO on sys.path, SPOOL, child_env)

from spoolbalsam.spool import fsio  # noqa: E402
from spoolbalsam.spool.lease import pid_alive  # noqa: E402

SPOOL = _common.SPOOL


def run_cli(*args, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(SPOOL + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=_common.child_env(), stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"spool {' '.join(map(str, args))} -> {proc.returncode}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def write_yaml(path: Path, data: dict) -> None:
    fsio.write_atomic(path, yaml.safe_dump(data, sort_keys=False).encode())


def make_site(root: Path, apps: dict[str, dict], cpus: int = 4,
              settings: dict | None = None) -> Path:
    """``spool site init ROOT --machine local --cpus N`` plus ``apps`` and ``settings``."""
    run_cli("site", "init", root, "--machine", "local", "--cpus", cpus)
    for name, d in apps.items():
        write_yaml(root / "apps" / f"{name}.yml", d)
    if settings:
        s = yaml.safe_load((root / "settings.yml").read_text())
        for k, v in settings.items():
            if isinstance(v, dict) and isinstance(s.get(k), dict):
                s[k].update(v)
            else:
                s[k] = v
        write_yaml(root / "settings.yml", s)
    return root


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def kill9(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


class SiteProcs:
    """One soak site and every process of it that the soak started."""

    def __init__(self, root: Path, launcher_args: tuple = ("-j", "serial", "-t", "60",
                                                           "--idle-ttl", "30")):
        self.root = Path(root)
        self.launcher_args = launcher_args
        self.launchers: list[subprocess.Popen] = []
        self.site_starts = 0
        self.launcher_starts = 0

    # ---- the site process ----------------------------------------------------------------
    def site_pid(self) -> int | None:
        try:
            info = json.loads((self.root / "site" / "site.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        pid = info.get("pid")
        if pid and pid_alive(pid, info.get("pid_start")):
            return pid
        return None

    def start_site(self) -> int:
        """``spool site start``, as the README says after a crash."""
        run_cli("--site", self.root, "site", "start")
        self.site_starts += 1
        pid = self.site_pid()
        if pid is None:
            raise RuntimeError(f"spool site start reported no live site in {self.root}")
        return pid

    def stop_site(self) -> None:
        run_cli("--site", self.root, "site", "stop", "--timeout", "30", check=False, timeout=60)
        pid = self.site_pid()
        if pid:
            kill9(pid)

    # ---- launchers -----------------------------------------------------------------------
    def start_launcher(self, *extra: str) -> subprocess.Popen:
        """A new ``spool launcher`` in its own session, as an allocation would start one."""
        argv = SPOOL + ["--site", str(self.root), "launcher", *self.launcher_args, *extra]
        log = self.root / "log" / f"soak-launcher-{self.launcher_starts}.out"
        proc = _common.start(argv, log)
        self.launchers.append(proc)
        self.launcher_starts += 1
        return proc

    def live_launchers(self) -> list[subprocess.Popen]:
        alive = []
        for p in self.launchers:
            if p.poll() is None:
                alive.append(p)
        self.launchers = alive + [p for p in self.launchers if p.poll() is not None][-50:]
        return alive

    def starters(self) -> list[int]:
        """The launchers' forked children (their starters)."""
        ours = {p.pid for p in self.live_launchers()}
        cmd = {pid: _cmdline(pid) for pid in ours}
        return [pid for pid in all_pids() if proc_ppid(pid) in ours
                and _cmdline(pid) == cmd.get(proc_ppid(pid))]

    def hook_children(self) -> list[int]:
        """Processes running a Python app's hook for this site."""
        key = f"SPOOL_SITE={self.root}".encode()
        return [pid for pid in all_pids() if "spoolbalsam.api.child hook" in _cmdline(pid)
                and key in _environ(pid)]

    def belonging(self) -> list[int]:
        """Every process of this site (environment or command line), not ourselves."""
        key, root, me = f"SPOOL_SITE={self.root}".encode(), str(self.root), os.getpid()
        return [pid for pid in all_pids() if pid != me and
                (key in _environ(pid) or root in _cmdline(pid))]

    def job_processes(self) -> list[int]:
        """Processes of jobs of this site (SPOOL_JOB_ID and SPOOL_SITE in the environment)."""
        key = f"SPOOL_SITE={self.root}".encode()
        out = []
        for pid in all_pids():
            env = _environ(pid)
            if key in env and any(v.startswith(b"SPOOL_JOB_ID=") for v in env):
                out.append(pid)
        return out

    def end_all(self) -> None:
        """Stop the site and the launchers politely, then SIGKILL whatever is left."""
        for p in self.live_launchers():
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while self.live_launchers() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.site_pid():
            self.stop_site()
        for _ in range(3):
            left = self.belonging()
            if not left:
                break
            for pid in left:
                os.kill(pid, signal.SIGSTOP) if pid_alive(pid) else None
            for pid in left:
                kill9(pid)
            time.sleep(0.1)
        for p in self.launchers:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def vm_hwm_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB, from /proc/PID/status."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def wait_for(cond, timeout: float, interval: float = 0.02):
    """``cond()`` once it is true, or None after ``timeout`` seconds (no exit)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(interval)
