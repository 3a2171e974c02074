"""Shared helpers and fixtures for the scheduler tests (import them from test files).

``require_slurm()`` / ``require_mpiexec()``: skip the test when the component is
missing -- except under ``CI=true``, where a missing component is a FAILURE, not
a skip. In CI (or with ``SPOOL_SLURM_AUTOSTART=1``) ``require_slurm`` first runs
``tests/infra/slurm-up.sh`` itself (idempotent, ~5 s from clean, ~0.1 s when
already up); ``require_mpiexec`` likewise runs ``tests/infra/install-mpi.sh`` in
CI (or with ``SPOOL_MPI_AUTOINSTALL=1``).

``poll_until(fn, done, timeout)`` is the only way these tests wait: it calls
``fn`` until ``done(value)`` holds or the deadline passes, and on timeout fails
with every distinct value it saw.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from spoolbalsam.pbs.script import render_job_script, write_job_script

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
INFRA_DIR = TESTS_DIR / "infra"
PBS_EMULATOR_DIR = TESTS_DIR / "pbs_emulator"
DATA_DIR = TESTS_DIR / "data"

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _missing(what: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true but {what}", pytrace=False)
    pytest.skip(what)


# ----------------------------------------------------------------------------- Slurm

def slurm_nodes() -> list[tuple[str, str]]:
    """``[(node, state), ...]`` from sinfo, or [] when no controller answers."""
    if shutil.which("sinfo") is None:
        return []
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                              text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return []
    if proc.returncode != 0:
        return []
    return [tuple(line.split(None, 1)) for line in proc.stdout.splitlines()  # type: ignore[misc]
            if len(line.split(None, 1)) == 2]


def _slurm_ready(min_nodes: int) -> bool:
    if shutil.which("sbatch") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return False
    usable = {n for n, s in slurm_nodes() if s.rstrip("*~#") in ("idle", "mixed", "allocated")}
    return len(usable) >= min_nodes


_SLURM_READY: dict[int, bool] = {}   # per session: probing a dead controller costs seconds


def require_slurm(min_nodes: int = 1) -> None:
    """Skip (or, with CI=true, fail) unless a Slurm controller with ``min_nodes`` nodes answers."""
    if _SLURM_READY.get(min_nodes):
        return
    if min_nodes in _SLURM_READY:
        _missing(f"no running Slurm controller with {min_nodes} usable node(s); "
                 "run: bash tests/infra/slurm-up.sh")
    _SLURM_READY[min_nodes] = False
    _require_slurm(min_nodes)
    _SLURM_READY[min_nodes] = True


def _require_slurm(min_nodes: int) -> None:
    autostart = in_ci() or os.environ.get("SPOOL_SLURM_AUTOSTART") == "1"
    if _slurm_ready(min_nodes) if shutil.which("sbatch") else False:
        return
    if autostart and os.geteuid() == 0:
        nodes = str(max(4, min_nodes))
        proc = subprocess.run(["bash", str(INFRA_DIR / "slurm-up.sh"), nodes],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            _missing(f"tests/infra/slurm-up.sh failed (rc {proc.returncode}): "
                     f"{proc.stderr.strip()[-800:]}")
        if _slurm_ready(min_nodes):
            return
    if shutil.which("sbatch") is None:
        _missing("Slurm is not installed (no sbatch); run: bash tests/infra/slurm-up.sh")
    _missing(f"no running Slurm controller with {min_nodes} usable node(s); "
             "run: bash tests/infra/slurm-up.sh")


# ----------------------------------------------------------------------------- MPI

def require_mpiexec() -> str:
    """Path of ``mpiexec``; skip (fail under CI=true) when there is none that runs."""
    exe = shutil.which("mpiexec")
    if exe is None and (in_ci() or os.environ.get("SPOOL_MPI_AUTOINSTALL") == "1"):
        subprocess.run(["bash", str(INFRA_DIR / "install-mpi.sh")], capture_output=True,
                       text=True, timeout=900)
        exe = shutil.which("mpiexec")
    if exe is None:
        _missing("no mpiexec on PATH; run: bash tests/infra/install-mpi.sh")
        raise AssertionError("unreachable")
    proc = subprocess.run([exe, "-n", "1", "true"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        _missing(f"{exe} -n 1 true failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return exe


# ----------------------------------------------------------------------------- waiting

def poll_until(fn: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0,
               interval: float = 0.05, what: str = "condition") -> T:
    """Call ``fn`` until ``done(value)``; return that value, or fail listing what was seen."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        value = fn()
        if not seen or seen[-1] != value:
            seen.append(value)
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; saw: "
                                 + " -> ".join(repr(v) for v in seen[-8:]))
        time.sleep(interval)


# ----------------------------------------------------------------------------- sites and scripts

def make_site(root: Path) -> Path:
    """A minimal site directory (only what the job scripts touch)."""
    site = root / "site"
    (site / "batch").mkdir(parents=True, exist_ok=True)
    return site


def make_job_script(site: Path, machine: str, launcher_cmd: str, *, job_name: str = "qlaunch00001",
                    num_nodes: int = 1, wall_time_min: int = 5, **ctx: Any) -> Path:
    """Render ``machine``'s template into ``SITE/batch/<job_name>.sh`` and return its path."""
    script = site / "batch" / f"{job_name}.sh"
    text = render_job_script(machine, job_name=job_name, num_nodes=num_nodes,
                             wall_time_min=wall_time_min, site_path=str(site),
                             launcher_cmd=launcher_cmd, script_path=str(script), **ctx)
    return write_job_script(script, text)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


@pytest.fixture
def slurm_backend() -> Any:
    require_slurm(min_nodes=2)
    from spoolbalsam.pbs.slurm import SlurmBackend
    return SlurmBackend()


@pytest.fixture
def pbs_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A PbsBackend whose qsub/qstat/qdel are the EMULATOR over the real test Slurm.

    Each test gets its own emulator state directory (so job ids from other
    tests are invisible); history is on unless the test sets
    ``PBS_EMULATOR_HISTORY=0``.
    """
    require_slurm(min_nodes=2)
    monkeypatch.setenv("PBS_EMULATOR_HOME", str(tmp_path / "pbs-emulator"))
    monkeypatch.setenv("PBS_EMULATOR_HISTORY", "1")
    monkeypatch.setenv("PATH", f"{PBS_EMULATOR_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    from spoolbalsam.pbs.pbs import PbsBackend
    return PbsBackend(bin_dir=str(PBS_EMULATOR_DIR))
