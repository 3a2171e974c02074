"""Helpers for the launcher integration tests (MPI mode, limits, Slurm campaigns).

Everything here drives spoolbalsam the way a user does: ``python -m spoolbalsam.cli`` as a
real process (so ``PYTHONPATH`` decides which code runs, also inside batch jobs), the site
process started with ``spool site start``, jobs published through the Python API
(``spoolbalsam.submit.submit_jobs``, the same files ``spool job create`` drops), and records
read back through ``spoolbalsam.spool.query.select`` (which overlays unmerged launcher events).

Waiting is always ``wait_until``: poll a condition with a deadline; on timeout the failure
message carries the last values seen and the site's diagnostics (site log, launcher logs,
batch job outputs, job counts).

Cleanup only touches processes the test made: the site process whose pid the test's own
``spool site start`` reported, launcher processes the test started (their process group),
and any leftover process whose environment says ``SPOOL_SITE=<this test's site>``.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

PY = sys.executable


# ----------------------------------------------------------------------------- the CLI

def cli(site: Path | None, *args: Any, timeout: float = 60, check: bool = True,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m spoolbalsam.cli [--site SITE] ARGS`` as a real process."""
    argv = [PY, "-m", "spoolbalsam.cli"] + (["--site", str(site)] if site else [])
    argv += [str(a) for a in args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[2:])} -> rc {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def init_site(path: Path, machine: str, *init_args: str, settings: dict | None = None) -> Path:
    """``spool site init PATH --machine MACHINE ARGS``, then deep-merge ``settings`` into its
    settings.yml (edited as YAML, as a user would) and check the result loads."""
    cli(None, "site", "init", path, "--machine", machine, *init_args)
    if settings:
        edit_settings(path, settings)
    return path


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and v:
            _merge(dst[k], v)
        else:
            dst[k] = v


def edit_settings(site: Path, changes: dict) -> dict:
    path = site / "settings.yml"
    data = yaml.safe_load(path.read_text())
    _merge(data, changes)
    tmp = path.with_name(".settings.yml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    from spoolbalsam import settings as settings_mod
    return settings_mod.load(path)        # a typo in a test's settings fails here, clearly


def write_app(site: Path, name: str, definition: dict) -> None:
    path = site / "apps" / f"{name}.yml"
    tmp = path.with_name(f".{name}.yml.tmp")
    tmp.write_text(yaml.safe_dump(definition, sort_keys=False))
    os.replace(tmp, path)


def submit(site: Path, jobs: list[dict]) -> list[str]:
    """Publish jobs in ``jobs/created/`` through the Python API; their ids."""
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.submit import submit_jobs
    return [r["id"] for r in submit_jobs(Layout(site), jobs, source="test")]


# ----------------------------------------------------------------------------- the site process

def site_pid(site: Path) -> int | None:
    try:
        return int(json.loads((site / "site" / "site.pid").read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def start_site(site: Path) -> int:
    out = cli(site, "site", "start").stdout
    pid = site_pid(site)
    assert pid and f"pid {pid}" in out, f"site start said {out!r}, pid file {pid}"
    return pid


def stop_site(site: Path, pid: int | None) -> None:
    """``spool site stop``; if that fails, SIGKILL the pid our own start reported."""
    try:
        cli(site, "site", "stop", "--timeout", "20", timeout=40, check=False)
    except subprocess.TimeoutExpired:
        pass
    if pid and _alive(pid) and _cmdline_has(pid, str(site)):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def site_is_running(site: Path) -> bool:
    pid = site_pid(site)
    return bool(pid and _alive(pid) and _cmdline_has(pid, str(site)))


def reap_leftovers(site: Path) -> list[int]:
    """SIGKILL processes whose environment holds SPOOL_SITE=<site> (jobs a failed test left).

    All are stopped (SIGSTOP) before any is killed, as in a node crash: none of them sees
    another die and reacts (a launcher's starter would kill its jobs itself)."""
    key = f"SPOOL_SITE={site}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if key in env:
            try:
                os.kill(int(d.name), signal.SIGSTOP)
                found.append(int(d.name))
            except ProcessLookupError:
                pass
    killed = []
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


# ----------------------------------------------------------------------------- launchers

def start_launcher(site: Path, *args: Any, env: dict | None = None) -> subprocess.Popen:
    """``spool launcher ARGS`` in its own session (stdout/stderr captured)."""
    argv = [PY, "-m", "spoolbalsam.cli", "--site", str(site), "launcher"] + [str(a) for a in args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)


def finish_launcher(proc: subprocess.Popen, site: Path, timeout: float) -> tuple[str, str]:
    """Wait (with a deadline) for a launcher we started; (stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"launcher did not exit within {timeout:g} s\nstderr: {err}\n"
                             + diagnostics(site))
    return out, err


def run_launcher(site: Path, *args: Any, timeout: float = 60) -> tuple[int, str]:
    proc = start_launcher(site, *args)
    _, err = finish_launcher(proc, site, timeout)
    return proc.returncode, err


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def exit_reason(stderr: str) -> str:
    """The reason ``spool launcher`` printed when it finished."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("launcher finished:")]
    assert lines, f"no 'launcher finished:' line in the launcher's stderr: {stderr!r}"
    return lines[-1].split(":", 1)[1].strip()


# ----------------------------------------------------------------------------- reading

def records(site: Path, *states: str) -> list[dict]:
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.query import Filter, select
    flt = Filter.from_states(list(states)) if states else Filter()
    return list(select(Layout(site), flt))


def by_id(site: Path) -> dict[str, dict]:
    return {r["id"]: r for r in records(site)}


def counts(site: Path) -> dict[str, int]:
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.query import counts as _counts
    return _counts(Layout(site))


def launcher_events(site: Path) -> list[dict]:
    """Every event of every launcher, live or retired, in log order per launcher."""
    out = []
    paths = glob.glob(str(site / "launchers" / "*" / "events.jsonl"))
    paths += glob.glob(str(site / "launchers" / ".retired" / "*" / "events.jsonl"))
    for p in sorted(paths):
        with open(p, "rb") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass          # a torn last line of a live log
    return out


def starts_per_job(site: Path) -> dict[tuple[str, int], int]:
    """How many times each (job, attempt) was started, from the launchers' own logs."""
    n: dict[tuple[str, int], int] = {}
    for ev in launcher_events(site):
        if ev.get("to") == "RUNNING":
            key = (ev["job"], ev.get("attempt", 1))
            n[key] = n.get(key, 0) + 1
    return n


def run_intervals(site: Path) -> list[dict]:
    """One entry per start in the launcher logs: job, attempt, launcher, placement, start, end.

    Taken from the logs rather than the records so that a job started twice (a bug) shows
    up as two runs instead of being hidden behind the record's last placement.
    """
    starts: list[dict] = []
    open_runs: dict[tuple[str, str, int], list[dict]] = {}
    for ev in launcher_events(site):
        key = (ev.get("launcher") or ev.get("by"), ev.get("job"), ev.get("attempt", 1))
        if ev.get("to") == "RUNNING":
            run = {"job": ev["job"], "attempt": ev.get("attempt", 1), "launcher": key[0],
                   "placement": ev.get("placement"), "start": ev.get("started_at", ev["t"]),
                   "end": None}
            starts.append(run)
            open_runs.setdefault(key, []).append(run)
        elif ev.get("to") in ("RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT") and open_runs.get(key):
            for run in open_runs[key]:
                if run["placement"] == ev.get("placement") or len(open_runs[key]) == 1:
                    run["end"] = ev.get("ended_at", ev["t"])
            open_runs[key] = [r for r in open_runs[key] if r["end"] is None]
    return starts


def record_intervals(recs: Iterable[dict]) -> list[dict]:
    """Runs as the done records tell them: placement and RUNNING -> RUN_DONE times."""
    out = []
    for r in recs:
        hist = r.get("history") or []
        t_run = [h["t"] for h in hist if h.get("to") == "RUNNING"]
        t_end = [h["t"] for h in hist if h.get("to") in ("RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT")]
        start = r.get("started_at") or (t_run[-1] if t_run else None)
        end = r.get("ended_at") or (t_end[-1] if t_end else None)
        out.append({"job": r["id"], "attempt": r.get("attempt", 1), "launcher": r.get("launcher"),
                    "placement": r.get("placement"), "start": start, "end": end})
    return out


def gpu_conflicts(runs: list[dict]) -> list[str]:
    """Pairs of runs that overlapped in time on one host and held the same gpu id."""
    held: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        p = run["placement"] or {}
        for host, gpus in zip(p.get("hosts", ()), p.get("gpus", ())):
            for g in gpus:
                held.setdefault((host, str(g)), []).append(run)
    bad = []
    for (host, gpu), rs in held.items():
        rs = sorted(rs, key=lambda r: r["start"])
        for a, b in zip(rs, rs[1:]):
            a_end = a["end"] if a["end"] is not None else float("inf")
            if b["start"] < a_end:
                bad.append(f"{host} gpu {gpu}: job {a['job']} [{a['start']:.3f}, {a_end:.3f}] "
                           f"overlaps job {b['job']} from {b['start']:.3f}")
    return bad


def max_concurrency(runs: list[dict]) -> int:
    points = []
    for r in runs:
        points.append((r["start"], 1))
        points.append((r["end"] if r["end"] is not None else float("inf"), -1))
    best = cur = 0
    for _, d in sorted(points, key=lambda x: (x[0], x[1])):     # ends before starts at a tie
        cur += d
        best = max(best, cur)
    return best


# ----------------------------------------------------------------------------- waiting

def wait_until(fn: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str,
               site: Path | None = None, interval: float = 0.1) -> Any:
    """``sched_fixtures.poll_until``; on timeout the failure also shows the site's logs."""
    from sched_fixtures import poll_until
    try:
        return poll_until(fn, done, timeout, interval, what)
    except AssertionError as e:
        if site is None:
            raise
        raise AssertionError(f"{e}\n{diagnostics(site)}") from None


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"({e})"
    return "\n".join(text.splitlines()[-lines:])


def diagnostics(site: Path, lines: int = 25) -> str:
    """What a human needs to see when a campaign test fails."""
    parts = [f"==== diagnostics for {site}"]
    try:
        parts.append(f"counts: {counts(site)}; site process running: {site_is_running(site)}")
    except Exception as e:  # noqa: BLE001 - diagnostics must never raise
        parts.append(f"counts: ({e})")
    for name in ("site.log", "site.out"):
        parts.append(f"---- log/{name}\n{_tail(site / 'log' / name, lines)}")
    for p in sorted((site / "log").glob("launcher-*.log")) + sorted((site / "log").glob("serial-*.log")):
        parts.append(f"---- log/{p.name}\n{_tail(p, lines)}")
    for p in sorted((site / "batch").glob("*/qlaunch*.out")):
        parts.append(f"---- {p.relative_to(site)}\n{_tail(p, lines)}")
    for p in sorted((site / "batch").glob("*/state.json")):
        parts.append(f"---- {p.relative_to(site)}: {_tail(p, 5)}")
    try:
        failed = records(site, "failed")
        for r in failed[:5]:
            parts.append(f"---- failed job {r['id']} ({r.get('workdir')}): {r.get('error')}")
    except Exception as e:  # noqa: BLE001
        parts.append(f"(failed jobs unreadable: {e})")
    return "\n".join(parts)


def campaign_summary(site: Path) -> str:
    """Jobs not finished (by workdir and directory) and jobs the launchers started twice."""
    recs = by_id(site)
    pending = sorted(f"{r.get('workdir')}:{r['_dir']}" for r in recs.values()
                     if r["_dir"] not in ("done", "failed"))
    twice = {recs.get(j, {}).get("workdir", j): n for (j, _), n in starts_per_job(site).items()
             if n > 1}
    return (f"unfinished jobs ({len(pending)}): {pending[:20]}\n"
            f"jobs started more than once by a launcher: {twice or 'none'}")


def read_job_out(site: Path, rec: dict) -> str:
    return (site / "data" / rec["workdir"] / "job.out").read_text(errors="replace")


def parse_kv_lines(text: str) -> list[dict[str, str]]:
    """``[3] rank=3 host=vm gpus=6,7`` -> {"prefix": "3", "rank": "3", ...}; other lines skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        d: dict[str, str] = {}
        if line.startswith("[") and "]" in line:
            d["prefix"], line = line[1:line.index("]")], line[line.index("]") + 1:].strip()
        fields = [f for f in line.split() if "=" in f]
        if not fields:
            continue
        for f in fields:
            k, _, v = f.partition("=")
            d[k] = v
        out.append(d)
    return out
