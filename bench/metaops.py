"""Metadata operations per job on the whole W1 path, by process, counted with strace.

    python bench/metaops.py [--n 2000] [--dir D] [--keep] [--aurora-rate 2100]

One W1 run as ``throughput.py`` makes it (a fresh site, ``--n`` jobs of ``/bin/true``, two
slots, ``node_packing_count: 2``), with every process of it under ``strace -f -ff -y -ttt
--seccomp-bpf`` (only the calls below are stopped; the rest run at full speed):

* the submitter: a separate ``python`` that calls ``submit.submit_jobs`` (as a user's script
  would), traced from a marker ``stat`` it makes just before the call;
* the site process (``python -m spoolbalsam.site.service SITE``, with its inotify thread);
* the launcher (``spool launcher -j serial -t 30 --idle-ttl 2``, started when the jobs are
  written), its *starter* (its fork that spawns and reaps jobs: the process tree is rebuilt
  from the traced ``clone``/``fork`` calls) and the jobs: a job's process before its
  ``execve`` is the starter's spawn work (it creates ``job.out`` there), after it the
  program itself.

Counted: every call from the submitter's marker until every record in ``done/`` is merged
(so the site's start-up and the launcher's idle tail are left out).  A call counts as *on
the site's filesystem* when its path (or its descriptor's path, or its directory
descriptor's, from ``-y``) lies under the site directory; everything else (imports, the
shared libraries of ``/bin/true``, ``/proc``) is listed apart.  Failed calls count too: a
failed lookup costs a metadata server as much as one that succeeds.

Kinds: ``create`` (open with O_CREAT), ``open`` (a file, no O_CREAT), ``opendir`` (O_DIRECTORY),
``getdents`` (getdents64), ``stat`` (stat, lstat, newfstatat and statx of a path, access),
``fstat`` (of a descriptor, also newfstatat with AT_EMPTY_PATH), ``rename``, ``unlink``,
``rmdir``, ``mkdir``, ``fsync`` (fsync, fdatasync), ``syncfs``, ``setattr`` (utimensat,
ftruncate, truncate), ``link``.

Prints per-job counts (total / N) by kind and process, the failures, and what the total
implies for a metadata server at ``--aurora-rate`` jobs/s.  strace slows every traced call,
so the processes batch somewhat differently than untraced (the site merges more verdicts
per tick): the per-batch calls (``syncfs``, listings) are a little lower here than in a
fast run.  Asserts nothing; removes its temp dirs; stops only the processes it started.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import throughput as T  # noqa: E402


SYSCALLS = ("openat,open,creat,rename,renameat,renameat2,unlink,unlinkat,rmdir,mkdir,mkdirat,"
            "fsync,fdatasync,syncfs,stat,lstat,fstat,newfstatat,statx,getdents64,utimensat,"
            "ftruncate,truncate,access,faccessat,faccessat2,link,linkat,"
            "clone,clone3,fork,vfork,execve")
KINDS = ("create", "open", "opendir", "getdents", "stat", "fstat", "rename", "unlink", "rmdir",
         "mkdir", "fsync", "syncfs", "setattr", "link")
PROCS = ("submitter", "site", "launcher", "starter", "job spawn", "job program")
MARKER = "metaops-t0"
LINE = re.compile(r"^(\d+\.\d+) (\w+)\((.*)\) += (-?\d+|\?)(.*)$")
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
FD_PATH = re.compile(r"(?:^|, )(?:AT_FDCWD|\d+)<([^>]*)>")

SUBMITTER = """
import os, sys, orjson
from pathlib import Path
from spoolbalsam.spool.layout import Layout
from spoolbalsam.submit import submit_jobs
layout = Layout(Path(sys.argv[1]))
raws = orjson.loads(Path(sys.argv[2]).read_bytes())
try:
    os.stat(layout.root / {marker!r})          # the marker: counting starts here
except FileNotFoundError:
    pass
recs = submit_jobs(layout, raws, source="bench")
Path(sys.argv[3]).write_bytes(orjson.dumps([r["id"] for r in recs]))
"""


# ---- parsing strace output (pure) --------------------------------------------------------
def kind_of(call: str, args: str) -> str | None:
    """The kind of a traced call (see the module docstring), or None for the others."""
    if call in ("openat", "open"):
        if "O_CREAT" in args:
            return "create"
        return "opendir" if "O_DIRECTORY" in args else "open"
    if call == "creat":
        return "create"
    if call in ("newfstatat", "statx") and "AT_EMPTY_PATH" in args and '""' in args:
        return "fstat"
    if call == "unlinkat":
        return "rmdir" if "AT_REMOVEDIR" in args else "unlink"
    return {"rename": "rename", "renameat": "rename", "renameat2": "rename",
            "unlink": "unlink", "rmdir": "rmdir", "mkdir": "mkdir", "mkdirat": "mkdir",
            "fsync": "fsync", "fdatasync": "fsync", "syncfs": "syncfs",
            "stat": "stat", "lstat": "stat", "newfstatat": "stat", "statx": "stat",
            "access": "stat", "faccessat": "stat", "faccessat2": "stat",
            "fstat": "fstat", "getdents64": "getdents",
            "utimensat": "setattr", "ftruncate": "setattr", "truncate": "setattr",
            "link": "link", "linkat": "link"}.get(call)


def paths_of(args: str) -> list[str]:
    """The absolute paths a call's arguments name: each quoted path joined to the directory
    descriptor before it (``-y`` prints ``AT_FDCWD</cwd>`` and ``5</dir>``), or the path of
    a descriptor argument."""
    out = []
    strings = list(STRING.finditer(args))
    if not strings:
        m = FD_PATH.search(args)
        return [m.group(1)] if m else []
    for s in strings:
        text = s.group(1).encode().decode("unicode_escape")
        if text.startswith("/"):
            out.append(text)
            continue
        before = args[:s.start()]
        dirs = FD_PATH.findall(before)
        base = dirs[-1] if dirs else ""
        out.append(f"{base}/{text}" if text else base)
    return out


def parse_trace(path: Path) -> tuple[list[tuple[float, str, str, str]],
                                     list[tuple[float, int, bool]], str | None]:
    """(calls [(t, kind, path, result)], children [(t, pid, is_thread)], first exec'd program
    or None) of one ``strace -ff`` file."""
    calls, kids, program = [], [], None
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            t, call, args, ret = float(m.group(1)), m.group(2), m.group(3), m.group(4)
            if call in ("clone", "clone3", "fork", "vfork"):
                if ret.isdigit():
                    kids.append((t, int(ret), "CLONE_THREAD" in args))
                continue
            if call == "execve":
                if ret == "0" and program is None:
                    s = STRING.search(args)
                    program = s.group(1) if s else "?"
                    calls.append((t, "EXEC", "", ret))
                continue
            kind = kind_of(call, args)
            if kind is None:
                continue
            ps = paths_of(args)
            calls.append((t, kind, ps[0] if ps else "", ret))
    return calls, kids, program


def tree_roles(files: dict[int, Path], parsed: dict[int, tuple], root_role: str) -> dict[int, str]:
    """pid -> role for one traced tree: the root process (``root_role``) and its threads;
    for a launcher, its forked child that execs nothing is the starter, and the starter's
    children are jobs."""
    children = {pid for p in parsed.values() for _, pid, _ in p[1]}
    roots = [pid for pid in files if pid not in children]
    roles: dict[int, str] = {}
    stack = [(pid, root_role) for pid in roots]
    while stack:
        pid, role = stack.pop()
        roles[pid] = role
        for _, kid, thread in parsed.get(pid, ((), ()))[1]:
            if kid not in files:
                continue
            if thread:
                kid_role = role
            elif role == "launcher" and parsed[kid][2] is None:
                kid_role = "starter"
            elif role in ("starter", "launcher"):
                kid_role = "job"
            else:
                kid_role = role
            stack.append((kid, kid_role))
    return roles


JOB_PATH = re.compile(r"[0-9a-hjkmnp-tv-z]{26}|/data/|/spare/")


def scope_of(path: str, root: str) -> str:
    """``job`` (a path of one job: its record, drop, limbo copy, work directory, output, or a
    spare record file), ``shared`` (the site's directories, logs, leases, bell and index:
    their calls grow with ticks and passes, not with jobs) or ``elsewhere``."""
    if path != root and not path.startswith(root + "/"):
        return "elsewhere"
    return "job" if JOB_PATH.search(path[len(root):]) else "shared"


def count(prefix_files: dict[str, dict[int, Path]], site_root: str, t0: float,
          t1: float) -> dict[str, dict[str, Counter]]:
    """``{scope: {process: Counter(kind)}}`` of the calls between ``t0`` and ``t1``, scopes
    as ``scope_of`` says, plus ``failed``: the failed calls on the site's filesystem."""
    out: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    root = site_root.rstrip("/")
    for root_role, files in prefix_files.items():
        parsed = {pid: parse_trace(p) for pid, p in files.items()}
        roles = tree_roles(files, parsed, root_role)
        for pid, (calls, _, _) in parsed.items():
            role = roles.get(pid, root_role)
            execd = False
            for t, kind, path, ret in calls:
                if kind == "EXEC":
                    execd = True
                    continue
                if not (t0 <= t <= t1) or path.endswith(MARKER):
                    continue
                who = ("job program" if execd else "job spawn") if role == "job" else role
                scope = scope_of(path, root)
                out[scope][who][kind] += 1
                if scope != "elsewhere" and ret.startswith("-"):
                    out["failed"][who][kind] += 1
    return out


def marker_time(files: dict[int, Path]) -> float | None:
    for p in files.values():
        with open(p, errors="replace") as f:
            for line in f:
                if MARKER in line:
                    return float(line.split(" ", 1)[0])
    return None


# ---- the run ------------------------------------------------------------------------------
def strace(prefix: Path) -> list[str]:
    return ["strace", "-f", "-ff", "-qq", "-y", "-ttt", "-s", "4096", "--seccomp-bpf",
            "-e", f"trace={SYSCALLS}", "-o", str(prefix)]


def trace_files(out: Path, name: str) -> dict[int, Path]:
    return {int(p.name.rsplit(".", 1)[1]): p for p in out.glob(f"{name}.*")}


def run(n: int, tmp: Path, timeout: float, settings: dict) -> tuple[dict, dict]:
    import orjson
    root = tmp / "site"
    layout, raws = T.make_bench_site(root, n, 0.0, 2, settings)
    out = tmp / "trace"
    out.mkdir()
    (tmp / "jobs.json").write_bytes(orjson.dumps(raws))
    site = launcher = None
    info: dict = {}
    try:
        site = C.start(strace(out / "site") + [sys.executable, "-m", "spoolbalsam.site.service",
                                               str(root)], tmp / "site.out", cwd=root)
        T._wait_site_up(layout, site, timeout=60)
        # and its recovery (a check of every bucket) is over: not part of the path
        C.wait_for(lambda: "checked against the directories" in (layout.log / "site.log")
                   .read_text(), 60, "the site's recovery", "metaops")
        t_submit = time.perf_counter()
        subprocess.run(strace(out / "submitter") + [
            sys.executable, "-c", SUBMITTER.format(marker=MARKER), str(root),
            str(tmp / "jobs.json"), str(tmp / "ids.json")], check=True, cwd=root,
            env=C.child_env())
        launcher = C.start(strace(out / "launcher") + C.SPOOL + [
            "--site", str(root), "launcher", "-j", "serial", "-t", "30", "--idle-ttl", "2"],
            tmp / "launcher.out", cwd=root)
        ids = orjson.loads((tmp / "ids.json").read_bytes())
        end = time.perf_counter() + timeout
        watch = T.DoneWatcher(layout, ids)
        while watch.poll() and time.perf_counter() < end:
            time.sleep(0.05)
        pending, _ = T.wait_merged(layout, ids if not watch.left else [], 0.05, end, 30.0)
        t1 = time.time()
        info = {"wall": time.perf_counter() - t_submit, "not_done": watch.left,
                "unmerged": len(pending)}
        try:
            launcher.wait(30)
        except subprocess.TimeoutExpired:
            pass
    finally:
        C.stop(launcher)
        pid = T._site_pid(layout)
        if site is not None and pid and site.poll() is None:
            os.kill(pid, signal.SIGTERM)      # the site itself: strace then exits with it
            try:
                site.wait(30)
            except subprocess.TimeoutExpired:
                pass
        C.stop(site)
    files = {role: trace_files(out, role) for role in ("submitter", "site", "launcher")}
    t0 = marker_time(files["submitter"])
    if t0 is None:
        raise SystemExit("metaops: the submitter's marker is missing from its trace")
    info["traced_sec"] = t1 - t0
    return count(files, str(Path(root).resolve()), t0, t1), info


def table(title: str, counts: dict[str, Counter], n: int) -> float:
    """Print per-job counts by kind (rows) and process (columns); returns the total."""
    print(f"\n# {title}: calls per job (N = {n})")
    print(f"{'kind':10s}" + "".join(f"{p:>12s}" for p in PROCS) + f"{'all':>10s}")
    total = 0.0
    for kind in KINDS:
        row = [counts.get(p, Counter())[kind] / n for p in PROCS]
        if not any(row):
            continue
        total += sum(row)
        print(f"{kind:10s}" + "".join(f"{v:12.2f}" for v in row) + f"{sum(row):10.2f}")
    col = [sum(counts.get(p, Counter()).values()) / n for p in PROCS]
    print(f"{'all':10s}" + "".join(f"{v:12.2f}" for v in col) + f"{sum(col):10.2f}")
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dir", help="where to make the temp dir (default: system temp)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--aurora-rate", type=float, default=2100.0,
                    help="jobs/s to project onto (127,488 tiles / 60 s tasks ~ 2,100)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a settings.yml key, e.g. --set launcher.merge_verdicts=true "
                         "(what machines with a batch scheduler do)")
    a = ap.parse_args(argv)
    settings = dict(kv.split("=", 1) for kv in a.set)
    if shutil.which("strace") is None:
        print("# strace is not installed (apt-get install -y strace)")
        return 1
    print(f"# metaops: W1 /bin/true, N={a.n}, 2 slots, under strace, settings "
          f"{settings or 'default'}; {C.machine_line()}")
    C.byte_compile()
    with C.scratch("spool-metaops-", a.dir, a.keep) as top:
        counts, info = run(a.n, top, a.timeout, settings)
    print(f"# run: {info.get('wall', 0):.1f} s under strace ({info.get('traced_sec', 0):.1f} s "
          f"counted), not done {info.get('not_done')}, unmerged {info.get('unmerged')}")
    per_job = table("on the site's filesystem, naming one job (records, drops, limbo, "
                    "workdir, job.out, spares)", counts["job"], a.n)
    shared = table("on the site's filesystem, shared (directory listings, event logs, leases, "
                   "bell, index; they follow ticks and passes, not jobs)", counts["shared"], a.n)
    table("failed, on the site's filesystem (included above)", counts["failed"], a.n)
    table("elsewhere (imports, /proc, the program's libraries)", counts["elsewhere"], a.n)
    inside = {p: counts["job"][p] + counts["shared"][p] for p in PROCS}
    changing = sum(inside[p][k] for p in PROCS for k in
                   ("create", "rename", "unlink", "rmdir", "mkdir", "setattr", "link")) / a.n
    lookups = sum(inside[p][k] for p in PROCS for k in
                  ("open", "opendir", "getdents", "stat")) / a.n
    syncs = sum(inside[p][k] for p in PROCS for k in ("fsync", "syncfs")) / a.n
    r = a.aurora_rate
    total = per_job + shared
    print(f"\n# at {r:,.0f} jobs/s (Aurora: 127,488 tiles, 1-minute tasks), this run's mix")
    print(f"site filesystem calls        {total:7.2f} per job -> {total * r:12,.0f} /s")
    print(f"  naming one job             {per_job:7.2f} per job -> {per_job * r:12,.0f} /s")
    print(f"  namespace changes          {changing:7.2f} per job -> {changing * r:12,.0f} /s"
          "   (create, rename, unlink, rmdir, mkdir, setattr, link)")
    print(f"  lookups and listings       {lookups:7.2f} per job -> {lookups * r:12,.0f} /s"
          "   (open, opendir, getdents, stat)")
    print(f"  syncs                      {syncs:7.2f} per job -> {syncs * r:12,.0f} /s"
          "   (fsync, fdatasync, syncfs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
