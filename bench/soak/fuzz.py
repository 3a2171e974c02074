"""Campaign 3: fuzzed drops into a running site.

``n`` hostile files are dropped into ``jobs/created/`` of a running site, one valid job
after every ``VALID_EVERY`` of them, while a launcher runs the valid ones.  The hostile
kinds (``KINDS``): truncated JSON, a wrong type in each field, huge strings, deep nesting,
NUL and non-UTF-8 bytes, empty files, symlinks (to a file outside the site -- a valid job
there --, to a directory outside, to /dev/zero, dangling), directories and FIFOs named
``*.json``, a 50 MB file, workdirs ``../../etc`` and ``/abs``, parents missing or in a
cycle, unknown apps and fields, duplicate ids.  The valid jobs carry shell in their
parameters (``$(touch M)``, backticks, ``; rm -rf D``, newlines, pipes) that would leave a
marker file or remove a victim directory if it ever reached a shell unquoted.

Checked: the site process is the same one, alive, from first drop to last; every hostile
drop is in ``rejected/`` once, as dropped (bytes, link target, directory listing, FIFO),
beside a one-line reason naming it; every valid job is in ``done/``, merged, return code
0; no marker file exists and the victim is untouched; the directory outside the site
(the symlinks' targets) is unchanged; the site's peak RSS (``VmHWM``) stays under
``RSS_LIMIT_MB``; and ``check.check_site`` finds nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import time
from pathlib import Path

import check
import procs
from kills import Result
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.record import InvalidJob, normalize

VALID_EVERY = 10
SEED = "seed0"             # a job taken in before the fuzzing: the duplicate ids name it
RSS_LIMIT_MB = 150
BIG_MB = 50
APPS = {
    "Echo": {"command_template": "echo {{ msg }}"},
    "EchoShell": {"command_template": "echo {{ msg }} > out.txt && cat out.txt"},
}
FIELDS = ["app", "workdir", "parameters", "tags", "num_nodes", "ranks_per_node",
          "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count",
          "launch_params", "wall_time_min", "parent_ids", "retry", "id"]
WRONG = [None, True, 1.5, -3, "x", [], {}, [1, "a"], {"a": [1]}, 10 ** 18, "", " "]
KINDS = ("truncated", "wrong-type", "huge-string", "deep", "nul", "non-utf8", "empty",
         "symlink-file", "symlink-job", "symlink-dir", "symlink-dangling", "symlink-dev",
         "dir", "dir-full", "fifo", "workdir-up", "workdir-abs", "parent-missing",
         "parent-cycle", "unknown-app", "unknown-field", "system-field", "not-object",
         "surrogate", "dup-id", "huge-param")


def _good(i: int, rng: random.Random, markers: Path, victim: Path) -> dict:
    m = markers / f"PWNED-{i}"
    payloads = [f"$(touch {m})", f"`touch {m}`", f"; touch {m}", f"x; rm -rf {victim}",
                f"a\ntouch {m}\n", f"| touch {m}", f"&& touch {m}", f"'$(touch {m})'",
                f'"; touch {m}; "', "${IFS}touch${IFS}PWNED-rel", "héllo wörld ✓ עברית",
                f"$(touch PWNED-rel-{i})", "-n", "--help", "*", "~", "$HOME"]
    return {"id": f"ok{i:05d}", "app": rng.choice(list(APPS)), "workdir": f"fz/ok{i:05d}",
            "parameters": {"msg": rng.choice(payloads)}, "node_packing_count": 4}


def _hostile(i: int, kind: str, rng: random.Random, outside: Path, existing: list[str]):
    """(name, what to create: ("bytes", b) | ("symlink", target) | ("dir", [names]) |
    ("fifo",) | ("big",)), for hostile drop number ``i``."""
    name = f"fz{i:05d}-{kind}.json"
    base = {"app": "Echo", "workdir": f"fz/bad{i}", "parameters": {"msg": "hi"}}
    dump = lambda d: json.dumps(d).encode()  # noqa: E731
    if kind == "truncated":
        data = dump(dict(base, tags={"k": "v" * rng.randint(0, 50)}))
        return name, ("bytes", data[:rng.randint(1, len(data) - 1)])
    if kind == "wrong-type":
        field = FIELDS[i % len(FIELDS)]
        value = WRONG[(i // len(FIELDS)) % len(WRONG)]
        bad = dict(base)
        bad[field] = value
        if field in ("id", "workdir", "app") and isinstance(value, str) and value.strip():
            bad[field] = "../" + value          # a string that is valid there is no hostile
        if field in ("tags", "launch_params") and value == {}:
            bad[field] = {"k": [1]}
        if field in ("parameters",) and value in ({},):
            bad[field] = {"msg": "x", "1bad": "y"}
        if field == "parent_ids" and value == []:
            bad[field] = ["../up"]
        if field == "retry" and value == {}:
            bad[field] = {"errors": -1}
        try:                                    # a value that happens to be valid there
            normalize(bad, "fuzz")              # (1.5 minutes, 10**18 ranks...) is wrapped
            bad[field] = [bad[field], {"x": None}]
        except InvalidJob:
            pass
        return name, ("bytes", dump(bad))
    if kind == "huge-string":
        n = rng.randint(200_000, 900_000)
        where = rng.choice(["app", "workdir", "id", "tag", "field"])
        bad = dict(base)
        if where == "tag":
            bad["tags"] = {"k" * 10: [1] * 3, "big": "x" * n}
        elif where == "field":
            bad["x" * n] = 1
        elif where == "workdir":
            bad["workdir"] = "../" + "w" * n
        else:
            bad[where] = "A" * n if where == "app" else "B" * n
        return name, ("bytes", dump(bad))
    if kind == "huge-param":
        return name, ("bytes", dump(dict(base, parameters={"msg": "p" * rng.randint(200_000,
                                                                                     900_000)})))
    if kind == "deep":
        depth = rng.choice([900, 2000, 100_000])
        where = rng.choice(["data", "parameters"])
        nest = "[" * depth + "]" * depth
        text = json.dumps(base)[:-1] + (f', "data": {{"d": {nest}}}}}' if where == "data"
                                        else "")
        if where == "parameters":
            text = json.dumps(dict(base, parameters={}))[:-1]
            text = text.replace('"parameters": {}', f'"parameters": {{"msg": {nest}}}') + "}"
        return name, ("bytes", text.encode())
    if kind == "nul":
        field = rng.choice(["app", "workdir", "id", "param", "tag"])
        bad = dict(base)
        if field == "param":
            bad["parameters"] = {"msg": "a\u0000b"}
        elif field == "tag":
            bad["tags"] = {"k": "a\u0000b"}
        else:
            bad[field] = "a\u0000b"
        return name, ("bytes", dump(bad))
    if kind == "non-utf8":
        return name, ("bytes", b'{"app": "Echo", "workdir": "w\xff\xfe", "parameters": '
                               b'{"msg": "\xc3\x28"}}')
    if kind == "empty":
        return name, ("bytes", b"")
    if kind == "symlink-file":
        return name, ("symlink", str(outside / "secret.txt"))
    if kind == "symlink-job":
        return name, ("symlink", str(outside / "valid-job.json"))
    if kind == "symlink-dir":
        return name, ("symlink", str(outside))
    if kind == "symlink-dangling":
        return name, ("symlink", str(outside / f"missing-{i}"))
    if kind == "symlink-dev":
        return name, ("symlink", "/dev/zero")
    if kind == "dir":
        return name, ("dir", [])
    if kind == "dir-full":
        return name, ("dir", ["a.json", ".hidden", "sub"])
    if kind == "fifo":
        return name, ("fifo",)
    if kind == "workdir-up":
        return name, ("bytes", dump(dict(base, workdir="../../etc")))
    if kind == "workdir-abs":
        return name, ("bytes", dump(dict(base, workdir=rng.choice(["/abs", "/etc/x", "~/x"]))))
    if kind == "parent-missing":
        return name, ("bytes", dump(dict(base, parent_ids=[f"ghost{i}"])))
    if kind == "parent-cycle":
        # two files naming each other as parents, dropped together (see ``run``)
        return name, ("bytes", dump(dict(base, id=f"cyc{i}a", parent_ids=[f"cyc{i}b"])))
    if kind == "unknown-app":
        return name, ("bytes", dump(dict(base, app=rng.choice(["Nope", "../Echo", "Echo;ls"]))))
    if kind == "unknown-field":
        return name, ("bytes", dump(dict(base, colour="red")))
    if kind == "system-field":
        return name, ("bytes", dump(dict(base, state="JOB_FINISHED")))
    if kind == "not-object":
        return name, ("bytes", rng.choice([b"[]", b'"job"', b"1", b"null", b"true", b"[{}]"]))
    if kind == "surrogate":
        return name, ("bytes", b'{"app": "Echo", "workdir": "w", "parameters": {"msg": "\\ud800"}}')
    if kind == "dup-id":
        return name, ("bytes", dump(dict(base, id=SEED)))
    raise ValueError(kind)


def _drop(created: Path, name: str, what: tuple, big_path: Path) -> None:
    dst = created / name
    if what[0] == "bytes":
        tmp = created / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(what[1])
        os.rename(tmp, dst)
    elif what[0] == "symlink":
        os.symlink(what[1], dst)
    elif what[0] == "dir":
        tmp = created / f".{name}.d"
        tmp.mkdir()
        for n in what[1]:
            (tmp / n).write_bytes(b"{}")
        os.rename(tmp, dst)
    elif what[0] == "fifo":
        os.mkfifo(dst)
    elif what[0] == "big":
        os.link(big_path, dst)


def _snapshot(d: Path) -> dict:
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = Path(root) / n
            st = p.lstat()
            h = hashlib.sha1(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(p.relative_to(d))] = (st.st_mode, st.st_size, st.st_mtime_ns, h)
    return out


def _kept_as_dropped(path: Path, what: tuple, big_bytes: int) -> str | None:
    """Why the rejected entry ``path`` is not what was dropped, or None."""
    st = path.lstat()
    if what[0] == "bytes":
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file any more"
        return None if path.read_bytes() == what[1] else "bytes differ"
    if what[0] == "symlink":
        if not stat.S_ISLNK(st.st_mode):
            return "not a symlink any more"
        return None if os.readlink(path) == what[1] else "link target differs"
    if what[0] == "dir":
        if not stat.S_ISDIR(st.st_mode):
            return "not a directory any more"
        return None if sorted(os.listdir(path)) == sorted(what[1]) else "listing differs"
    if what[0] == "fifo":
        return None if stat.S_ISFIFO(st.st_mode) else "not a FIFO any more"
    if what[0] == "big":
        return None if st.st_size == big_bytes else "size differs"
    return "unknown kind"


def run(scratch: Path, n: int, seed: int = 1, budget_sec: float | None = None,
        log=print) -> Result:
    res = Result(f"fuzzed drops ({n:,} hostile + {n // VALID_EVERY:,} valid)")
    rng = random.Random(seed)
    t0 = time.monotonic()
    root = scratch / "fuzz-site"
    outside, markers, victim = scratch / "outside", scratch / "markers", scratch / "victim"
    for d in (outside, markers, victim):
        d.mkdir(parents=True)
    (victim / "keep").write_text("keep me\n")
    (outside / "secret.txt").write_text("not for the site\n")
    (outside / "valid-job.json").write_text(json.dumps(
        {"app": "Echo", "workdir": "fz/outside", "parameters": {"msg": "from outside"}}))
    big = scratch / "big.json"
    with open(big, "wb") as f:                           # a 50 MB job file
        f.write(b'{"app": "Echo", "workdir": "fz/big", "parameters": {"msg": "')
        f.write(b"A" * (BIG_MB << 20))
        f.write(b'"}}')
    big_bytes = big.stat().st_size
    before = _snapshot(outside)
    procs.make_site(root, APPS, cpus=4)
    sp = procs.SiteProcs(root, ("-j", "serial", "-t", "60", "--idle-ttl", "20"))
    created = root / "jobs" / "created"
    hostile: dict[str, tuple] = {}
    valid: list[str] = []
    try:
        site_pid = sp.start_site()
        base_rss = procs.vm_hwm_kb(site_pid)[0]
        sp.start_launcher()
        seed = _good(0, rng, markers, victim)
        seed["id"] = SEED
        _drop(created, f"{SEED}.json", ("bytes", json.dumps(seed).encode()), big)
        valid.append(SEED)
        procs.wait_for(lambda: Layout(root).job_path("done", SEED).exists(), 60)
        bigs = {n // 3, 2 * n // 3} if n >= 1000 else {n // 2}
        i = 0
        while i < n:
            if budget_sec is not None and time.monotonic() - t0 > budget_sec * 0.6:
                res.notes.append(f"dropping stopped by the time budget after {i} files")
                break
            if i % VALID_EVERY == 0:
                job = _good(i, rng, markers, victim)
                _drop(created, f"{job['id']}.json", ("bytes", json.dumps(job).encode()), big)
                valid.append(job["id"])
            if i in bigs:
                name, what = f"fz{i:05d}-big.json", ("big",)
            else:
                kind = KINDS[i % len(KINDS)]
                name, what = _hostile(i, kind, rng, outside, valid)
            _drop(created, name, what, big)
            hostile[name] = what
            if what[0] == "bytes" and name.endswith("parent-cycle.json"):
                other = name.replace("parent-cycle", "parent-cycle-b")
                data = what[1].replace(b'a", "parent_ids": ["cyc', b'b", "parent_ids": ["cyc')
                data = data.replace(f'cyc{i}b"]'.encode(), f'cyc{i}a"]'.encode())
                _drop(created, other, ("bytes", data), big)
                hostile[other] = ("bytes", data)
            i += 1
            if i % 500 == 0:
                if sp.site_pid() != site_pid:
                    res.problems.append(f"the site process died after {i} drops")
                    break
                if not sp.live_launchers():
                    sp.start_launcher()
            if i % 2000 == 0:
                log(f"  {i:,} hostile files dropped, {time.monotonic() - t0:.0f} s")
        # every drop handled, every valid job done
        lay = Layout(root)
        deadline = t0 + (budget_sec or 3600)

        def settled():
            if os.listdir(created) or os.listdir(root / "site" / "intake"):
                return False
            if not sp.live_launchers():
                sp.start_launcher()
            return check.all_finished(lay, valid)
        while not settled() and time.monotonic() < deadline:
            if sp.site_pid() != site_pid:
                break
            time.sleep(0.2)
        rss, hwm = procs.vm_hwm_kb(site_pid)
        res.notes.append(f"site RSS {base_rss / 1024:.0f} MB after start, {rss / 1024:.0f} MB "
                         f"at the end, peak {hwm / 1024:.0f} MB (limit {RSS_LIMIT_MB} MB)")
        if sp.site_pid() != site_pid:
            res.problems.append("the site process is not the one started (it died)")
        if hwm > RSS_LIMIT_MB * 1024:
            res.problems.append(f"the site's peak RSS was {hwm / 1024:.0f} MB")
        res.problems += _check_rejected(root, hostile, big_bytes)
        problems = check.check_site(root, {j: "done" for j in valid}, final=True)
        res.problems += problems
        found = [str(p) for p in scratch.rglob("PWNED*")]
        if found:
            res.problems.append(f"injection markers exist: {found[:5]}")
        if not (victim / "keep").exists():
            res.problems.append("the victim directory was removed by a parameter")
        if _snapshot(outside) != before:
            res.problems.append("the directory outside the site changed")
        bad_hostile = {p.split(":")[0] for p in res.problems if p.startswith("fz")}
        res.trials = len(hostile) + len(valid)
        res.failed = len(bad_hostile) + sum(1 for p in problems if p.startswith("job ok"))
        if res.problems and not res.failed:
            res.failed = 1
        res.held = res.trials - res.failed
        res.notes.append(f"{len(hostile):,} hostile drops, {len(valid):,} valid jobs")
    finally:
        sp.end_all()
        for d in (root, outside, markers, victim):
            shutil.rmtree(d, ignore_errors=True)
        big.unlink(missing_ok=True)
    res.seconds = time.monotonic() - t0
    return res


def _check_rejected(root: Path, hostile: dict[str, tuple], big_bytes: int) -> list[str]:
    rdir = root / "jobs" / "rejected"
    entries: dict[str, list[str]] = {}
    for name in os.listdir(rdir):
        if name.startswith(".") or name.endswith(".reason"):
            continue
        original = name.split("-", 1)[1]
        entries.setdefault(original, []).append(name)
    out = []
    for name, what in hostile.items():
        got = entries.get(name, [])
        if len(got) != 1:
            out.append(f"{name}: {len(got)} entries in rejected/ (want 1)")
            continue
        why = _kept_as_dropped(rdir / got[0], what, big_bytes)
        if why:
            out.append(f"{name}: kept in rejected/ but {why}")
        try:
            reason = (rdir / (got[0] + ".reason")).read_text()
        except FileNotFoundError:
            out.append(f"{name}: no .reason")
            continue
        if reason.count("\n") != 1 or f"jobs/created/{name}" not in reason:
            out.append(f"{name}: reason is not one line naming the file: {reason[:150]!r}")
    strangers = set(entries) - set(hostile)
    if strangers:
        out.append(f"valid drops were rejected: {sorted(strangers)[:10]}")
    return out
