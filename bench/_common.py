"""Small helpers shared by the benchmarks in this folder (not part of the package).

Processes: every benchmark starts its own children in a new session and stops them by the
PID it got from ``Popen`` (SIGTERM, then SIGKILL after a grace) -- never by name.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))     # run from a checkout without installing

# ``python -m spoolbalsam.cli`` is the ``spool`` console script without the wrapper (a
# pyenv shim, for one, is a bash script that adds ~0.1 s to every start).
SPOOL = [sys.executable, "-m", "spoolbalsam.cli"]


def byte_compile() -> None:
    """Byte-compile the checkout's package, as ``pip install`` does for a regular install.
    An editable install leaves it to the first import, and with PYTHONDONTWRITEBYTECODE set
    every process start (a launcher's, the site's) would compile every module again
    (~30 ms each)."""
    import compileall
    compileall.compile_dir(REPO / "spoolbalsam", quiet=1)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(argv: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=child_env(),
                                start_new_session=True)
    finally:
        out.close()


def stop(proc: subprocess.Popen | None, grace: float = 15.0) -> int | None:
    """SIGTERM our own child ``proc`` and wait; SIGKILL it after ``grace`` seconds."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def rmtree(path: Path) -> None:
    """Remove a (possibly million-file) tree; ``rm -rf`` is ~2x faster than shutil here."""
    if not path.exists():
        return
    if shutil.which("rm"):
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def scratch(prefix: str, where: str | None, keep: bool):
    """A fresh temp directory for one benchmark run (under ``where``, default the system
    temp dir); removed afterwards unless ``keep``, when its path is printed."""
    top = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    try:
        yield top
    finally:
        if keep:
            print(f"# kept {top}")
        else:
            rmtree(top)


def rmtree_parallel(path: Path, procs: int | None = None) -> None:
    """``rmtree`` with the children of ``path`` split over ``procs`` concurrent ``rm -rf``
    (one per cpu): deleting a million small files is bound by per-file kernel work."""
    procs = procs or os.cpu_count() or 1
    try:
        kids = sorted(str(p) for p in path.iterdir())
    except FileNotFoundError:
        return
    if shutil.which("rm") and procs > 1 and len(kids) > 1:
        ps = [subprocess.Popen(["rm", "-rf", "--", *kids[i::procs]]) for i in range(procs)]
        for p in ps:
            p.wait()
    rmtree(path)


def wait_for(cond, timeout: float, what: str, script: str):
    """Poll ``cond`` every 5 ms until it returns something true, and return that; exit
    with a message naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"{script}: timed out waiting for {what}")
        time.sleep(0.005)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min–max)``."""
    if not xs:
        return "n/a"
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}, "
            f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}, code {code_version()}")


def code_version() -> str:
    """``git describe`` of the checkout the benchmark runs (``-dirty`` if edited)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes used, inodes used) on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree
