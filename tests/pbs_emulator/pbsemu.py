"""PBS Pro EMULATOR for tests -- NOT PBS. Shared code of tests/pbs_emulator/{qsub,qstat,qdel}.

No real PBS server can be installed on the test machines (Debian and PyPI ship
none), so these three commands translate PBS Pro's user interface onto the real
Slurm that ``tests/infra/slurm-up.sh`` starts:

* ``qsub [-A P] [-q Q] [-N name] [-l res=val[,res=val]] [-o p] [-e p] [-j oe] [-h] [-V]
  [-k ...] [-m ...] [-M ...] [-W ...] [-v ...] script`` (or the script on stdin):
  reads ``#PBS`` directives up to the first command (command-line options win),
  copies the script (PBS spools it at submit time) and submits, with ``sbatch``,
  a wrapper that exports ``PBS_JOBID=<slurm id>.<server>``, ``PBS_JOBNAME``,
  ``PBS_NODEFILE`` (one line per node of the allocation, from
  ``SLURM_JOB_NODELIST``), ``PBS_O_WORKDIR`` and the other ``PBS_O_*``, ``cd``s to
  ``$HOME`` like PBS and runs the script with bash. ``select=N[:...][+M[:...]]``
  gives ``-N`` (one node per chunk), ``walltime`` gives ``-t``. A queue that is a
  Slurm partition is used as one; any other queue name is only recorded.
  Prints ``<slurm id>.<server>``.
* ``qstat -f -F json [-x] [ids]`` prints a PBS-Pro-shaped JSON document
  (timestamp, pbs_version, pbs_server, Jobs{id: {Job_Name, job_state, queue,
  Exit_status, Resource_List{nodect, select, walltime, ...}, exec_host, stime,
  ...}}); ``Jobs`` is left out when nothing matches. Unknown id: stderr
  ``qstat: Unknown Job Id ID``, rc 153. A finished job without ``-x``: stderr
  ``qstat: ID Job has finished, use -x or -H to obtain historical job
  information``, rc 35. Plain ``qstat [ids]`` prints the default table.
* ``qdel ids`` -> ``scancel``; unknown: ``qdel: Unknown Job Id ID`` rc 153;
  finished: ``qdel: Job has finished ID`` rc 35.

State mapping: PENDING -> Q (H when held), RUNNING/CONFIGURING -> R, SUSPENDED -> S,
COMPLETING -> E, any terminal Slurm state -> F. ``Exit_status`` is the script's
exit code, or 256+N when Slurm reports it killed by signal N (271 = SIGTERM).
Finished jobs are remembered in the emulator's state directory, so history
outlives Slurm's MinJobAge.

Environment:
  PBS_EMULATOR_HOME     state directory (default <tmp>/pbs-emulator-<uid>)
  PBS_EMULATOR_SERVER   server name in job ids (default "pbs-emulator")
  PBS_EMULATOR_HISTORY  "1" (default): job_history_enable=True; "0": finished
                        jobs are forgotten at once, as on a server with history off

Known differences from PBS Pro: the submit environment is always exported
(Slurm's default; PBS exports only with -V); exec_host names are the emulated
Slurm node names; no arrays (-J), no qalter/qhold/qrls; times come from Slurm.
"""
from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

RC_USAGE = 2
RC_JOB_FINISHED = 35     # PBSE_HISTJOBID 15139 % 256
RC_UNKNOWN_JOB = 153     # PBSE_UNKJOBID 15001 % 256
VERSION = "emulator-2022.1"

SLURM_TO_PBS = {
    "PENDING": "Q", "REQUEUED": "Q", "REQUEUE_FED": "Q", "REQUEUE_HOLD": "H",
    "RESV_DEL_HOLD": "H", "SPECIAL_EXIT": "H", "CONFIGURING": "R", "RUNNING": "R",
    "RESIZING": "R", "SIGNALING": "R", "STAGE_OUT": "E", "COMPLETING": "E",
    "SUSPENDED": "S", "STOPPED": "S",
}
TERMINAL = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
            "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT"}
SUBSTATE = {"Q": 10, "H": 20, "R": 42, "S": 43, "E": 50, "F": 92}


# ----------------------------------------------------------------------------- state dir

def home() -> Path:
    path = Path(os.environ.get("PBS_EMULATOR_HOME")
                or Path(tempfile.gettempdir()) / f"pbs-emulator-{os.getuid()}")
    for sub in ("jobs", "scripts", "nodefiles"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def server() -> str:
    return os.environ.get("PBS_EMULATOR_SERVER", "pbs-emulator")


def history_enabled() -> bool:
    return os.environ.get("PBS_EMULATOR_HISTORY", "1") != "0"


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def load_meta(seq: str) -> dict[str, Any] | None:
    try:
        return json.loads((home() / "jobs" / f"{seq}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_meta(meta: dict[str, Any]) -> None:
    write_json(home() / "jobs" / f"{meta['seq']}.json", meta)


def ctime(ts: float | None = None) -> str:
    """PBS time format: ``Tue Oct  4 21:23:20 2022``."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(time.time() if ts is None else ts))


def slurm_time(value: str | None, fmt: str | None = None) -> str | None:
    """Slurm ``2026-11-25T18:46:10`` -> PBS ``Wed Nov 25 18:46:10 2026`` (or ``fmt``)."""
    if not value or value in ("Unknown", "None", "N/A", "(null)"):
        return None
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
        return parsed.strftime(fmt) if fmt else ctime(parsed.timestamp())
    except ValueError:
        return None


def die(command: str, message: str, rc: int = RC_USAGE) -> int:
    print(f"{command}: {message}", file=sys.stderr)
    return rc


# ----------------------------------------------------------------------------- qsub

def parse_resources(values: list[str]) -> dict[str, str]:
    """``["select=2:system=aurora,place=scatter", "walltime=1:00:00"]`` -> dict."""
    res: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise ValueError(f"illegal -l value {value}")
            res[key.strip()] = val.strip()
    return res


def select_nodes(select: str) -> tuple[int, int]:
    """``"2:ncpus=4+1:ngpus=1"`` -> (chunks=3, ncpus=9): one node per chunk here."""
    chunks = ncpus = 0
    for chunk in select.split("+"):
        parts = chunk.split(":")
        count = int(parts[0]) if parts[0].isdigit() else 1
        per = 1
        for p in parts[1 if parts[0].isdigit() else 0:]:
            k, eq, v = p.partition("=")
            if not k or not eq or not v:
                raise ValueError(f"illegal -l value select={select}")
            if k == "ncpus" and v.isdigit():
                per = int(v)
        chunks += count
        ncpus += count * per
    if chunks < 1:
        raise ValueError(f"illegal select {select}")
    return chunks, ncpus


def walltime_to_hms(value: str) -> str:
    parts = value.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        raise ValueError(f"illegal walltime {value}")
    secs = 0
    for p in parts:
        secs = secs * 60 + int(p)
    return f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def script_directives(text: str) -> list[str]:
    """Arguments from ``#PBS`` lines before the first command (as qsub reads them)."""
    args: list[str] = []
    for i, line in enumerate(text.splitlines()):
        s = line.strip()
        if i == 0 and s.startswith("#!"):
            continue
        if not s or s.startswith("#"):
            if s.startswith("#PBS ") or s.startswith("#PBS\t"):
                args += shlex.split(s[4:], comments=False)
            continue
        break
    return args


FLAGS_WITH_VALUE = set("AqNloejkmMWvSPrcpaIuCJ")
FLAGS_BARE = set("hVIfzX")


def parse_qsub_args(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """qsub options -> ({flag: [values]}, rest). ``--`` ends options (exe follows)."""
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return opts, argv[i:]
        if not a.startswith("-") or a == "-":
            return opts, argv[i:]
        flag = a[1:2]
        if flag in FLAGS_BARE and len(a) == 2:
            opts.setdefault(flag, []).append("")
            i += 1
            continue
        if flag not in FLAGS_WITH_VALUE:
            raise ValueError(f"invalid option -- '{flag}'")
        if len(a) > 2:
            value = a[2:]
            i += 1
        elif i + 1 < len(argv):
            value = argv[i + 1]
            i += 2
        else:
            raise ValueError(f"option requires an argument -- '{flag}'")
        opts.setdefault(flag, []).append(value)
    return opts, []


def slurm_partitions() -> set[str]:
    proc = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True)
    return {ln.strip() for ln in proc.stdout.splitlines() if ln.strip()}


WRAPPER = """#!/bin/bash
# PBS EMULATOR job wrapper (tests only): gives the script a PBS Pro batch environment.
export PBS_JOBID="${{SLURM_JOB_ID}}.{server}"
export PBS_JOBNAME={name}
export PBS_QUEUE={queue}
export PBS_ACCOUNT={account}
export PBS_ENVIRONMENT=PBS_BATCH
export PBS_TASKNUM=1 PBS_NODENUM=0 PBS_MOMPORT=15003
export NCPUS={ncpus_per_node}
{o_vars}
export PBS_NODEFILE={nodefiles}/"$PBS_JOBID"
scontrol show hostnames "$SLURM_JOB_NODELIST" > "$PBS_NODEFILE"
cd "$HOME" || cd /
exec /bin/bash {script}
"""


def qsub_main(argv: list[str]) -> int:
    try:
        opts, rest = parse_qsub_args(argv)
    except ValueError as exc:
        return die("qsub", f"{exc}\nusage: qsub [-A account] [-q queue] [-N name] [-l resources] script")
    cwd = os.getcwd()
    if rest[:1] == ["--"]:
        if len(rest) < 2:
            return die("qsub", "no executable after --")
        text = "#!/bin/bash\n" + " ".join(shlex.quote(a) for a in rest[1:]) + "\n"
        default_name = Path(rest[1]).name
    elif rest:
        if len(rest) > 1:
            return die("qsub", "only one script argument is allowed")
        try:
            text = Path(rest[0]).read_text()
        except OSError as exc:
            return die("qsub", f"script file:: {exc.strerror}", 1)
        default_name = Path(rest[0]).name
    else:
        text = sys.stdin.read()
        default_name = "STDIN"
    try:
        dopts, _ = parse_qsub_args(script_directives(text))
    except ValueError as exc:
        return die("qsub", f"directive error: {exc}")
    merged: dict[str, list[str]] = {}
    for src in (dopts, opts):   # command line wins
        for k, v in src.items():
            merged[k] = merged.get(k, []) + v if k in ("l", "v") else v
    try:
        res = parse_resources(merged.get("l", []))
        nodect, ncpus = select_nodes(res.get("select", "1"))
        walltime = walltime_to_hms(res["walltime"]) if "walltime" in res else None
    except ValueError as exc:
        return die("qsub", str(exc))
    name = (merged.get("N") or [default_name])[-1]
    if not re.match(r"^[A-Za-z][^\s@:/#]{0,235}$", name):
        return die("qsub", f"illegal -N value {name}")
    queue = (merged.get("q") or ["workq"])[-1]
    account = (merged.get("A") or [""])[-1]
    join = (merged.get("j") or ["n"])[-1]
    user = getpass.getuser()
    host = socket.gethostname()

    state = home()
    token = uuid.uuid4().hex[:12]
    script_copy = state / "scripts" / f"{token}.sh"
    script_copy.write_text(text)
    o_vars = {"PBS_O_WORKDIR": cwd, "PBS_O_HOME": os.environ.get("HOME", "/"),
              "PBS_O_LOGNAME": user, "PBS_O_PATH": os.environ.get("PATH", ""),
              "PBS_O_SHELL": os.environ.get("SHELL", "/bin/bash"), "PBS_O_SYSTEM": "Linux",
              "PBS_O_LANG": os.environ.get("LANG", "C"), "PBS_O_QUEUE": queue, "PBS_O_HOST": host}
    wrapper = state / "scripts" / f"{token}.wrapper.sh"
    wrapper.write_text(WRAPPER.format(
        server=server(), name=shlex.quote(name), queue=shlex.quote(queue),
        account=shlex.quote(account), ncpus_per_node=max(1, ncpus // nodect),
        o_vars="\n".join(f"export {k}={shlex.quote(v)}" for k, v in o_vars.items()),
        nodefiles=shlex.quote(str(state / "nodefiles")), script=shlex.quote(str(script_copy))))

    def out_path(flag: str, suffix: str) -> str:
        if merged.get(flag):
            return merged[flag][-1].split(":", 1)[-1] if ":" in merged[flag][-1] else merged[flag][-1]
        return str(Path(cwd) / f"{name}.{suffix}%j")

    sbatch = ["sbatch", "--parsable", "-N", str(nodect), "-J", name, "--chdir", cwd,
              "-o", out_path("o", "o")]
    if join != "oe":
        sbatch += ["-e", out_path("e", "e")]
    if walltime:
        sbatch += ["-t", walltime]
    if queue in slurm_partitions():
        sbatch += ["-p", queue]
    if "h" in merged:
        sbatch.append("-H")
    sbatch.append(str(wrapper))
    proc = subprocess.run(sbatch, capture_output=True, text=True)
    if proc.returncode != 0:
        return die("qsub", f"Job rejected by all possible destinations ({proc.stderr.strip()})", 1)
    seq = proc.stdout.strip().split(";")[0]
    now = time.time()
    resource_list = {"ncpus": ncpus, "nodect": nodect, "place": res.get("place", "free"),
                     "select": res.get("select", "1")}
    resource_list.update({k: v for k, v in res.items() if k not in ("select", "place")})
    if walltime:
        resource_list["walltime"] = walltime
    save_meta({
        "seq": seq, "id": f"{seq}.{server()}", "Job_Name": name,
        "Job_Owner": f"{user}@{host}", "queue": queue, "Account_Name": account,
        "project": account or "_pbs_project_default", "Resource_List": resource_list,
        "ctime": now, "Join_Path": join, "Keep_Files": (merged.get("k") or ["n"])[-1],
        "Output_Path": f"{host}:{out_path('o', 'o').replace('%j', seq)}",
        "Error_Path": f"{host}:{out_path('e', 'e').replace('%j', seq)}",
        "Submit_arguments": " ".join(shlex.quote(a) for a in argv),
        "Variable_List": o_vars, "script": str(script_copy), "final": None,
    })
    print(f"{seq}.{server()}")
    return 0


# ----------------------------------------------------------------------------- qstat / qdel

def scontrol_jobs() -> dict[str, dict[str, str]]:
    """All jobs Slurm still knows: ``scontrol show job -o`` -> {id: {Key: Value}}."""
    proc = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True)
    jobs: dict[str, dict[str, str]] = {}
    for line in proc.stdout.splitlines():
        fields: dict[str, str] = {}
        key = None
        for tok in line.split(" "):
            if re.match(r"^[A-Za-z][A-Za-z0-9_/:]*=", tok):
                key, _, val = tok.partition("=")
                fields[key] = val
            elif key:
                fields[key] += " " + tok
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def hostnames(nodelist: str) -> list[str]:
    if not nodelist or nodelist == "(null)":
        return []
    proc = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    return proc.stdout.split()


def pbs_view(meta: dict[str, Any], sj: dict[str, str] | None) -> dict[str, Any] | None:
    """The emulated PBS attributes of one job (None: Slurm and the emulator both forgot it)."""
    final = meta.get("final")
    if sj is None and final is None:
        return None
    if sj is not None:
        sstate = sj.get("JobState", "")
        held = sj.get("Reason", "").startswith("JobHeld")
        if sstate in TERMINAL:
            state = "F"
        else:
            state = "H" if (sstate == "PENDING" and held) else SLURM_TO_PBS.get(sstate, "Q")
        info = {"slurm_state": sstate, "nodes": hostnames(sj.get("NodeList", "")),
                "stime": slurm_time(sj.get("StartTime")), "end": slurm_time(sj.get("EndTime")),
                "run_at": slurm_time(sj.get("StartTime"), "%a %b %d at %H:%M"),
                "exit": sj.get("ExitCode", "0:0"), "run_time": sj.get("RunTime", "00:00:00"),
                "reason": sj.get("Reason", "None"), "batch_host": sj.get("BatchHost", "")}
        if state == "F" and final is None:
            meta["final"] = info
            save_meta(meta)
    else:
        state, info = "F", final
    attrs: dict[str, Any] = {
        "Job_Name": meta["Job_Name"], "Job_Owner": meta["Job_Owner"], "job_state": state,
        "queue": meta["queue"], "server": server(), "Account_Name": meta["Account_Name"],
        "Checkpoint": "u", "ctime": ctime(meta["ctime"]), "Error_Path": meta["Error_Path"],
    }
    nodes = info["nodes"] if state in ("R", "E", "S", "F") else []
    ran = bool(info.get("batch_host")) and info.get("stime") is not None
    if nodes and ran:
        per = meta["Resource_List"]["ncpus"] // max(1, len(nodes)) or 1
        attrs["exec_host"] = "+".join(f"{n}/0*{per}" for n in nodes)
        attrs["exec_vnode"] = "+".join(f"({n}:ncpus={per})" for n in nodes)
    attrs.update({"Hold_Types": "u" if state == "H" else "n", "Join_Path": meta["Join_Path"],
                  "Keep_Files": meta["Keep_Files"], "Mail_Points": "a", "mtime": ctime(),
                  "Output_Path": meta["Output_Path"], "Priority": 0, "qtime": ctime(meta["ctime"]),
                  "Rerunable": "False", "Resource_List": meta["Resource_List"]})
    if ran and state in ("R", "E", "S", "F"):
        attrs["stime"] = info["stime"]
        rt = info.get("run_time", "00:00:00").split("-")[-1]
        attrs["resources_used"] = {"cpupercent": 0, "cput": "00:00:00", "mem": "0kb",
                                   "ncpus": meta["Resource_List"]["ncpus"], "vmem": "0kb",
                                   "walltime": rt if rt.count(":") == 2 else "00:00:00"}
        attrs["session_id"] = 0
    attrs["substate"] = SUBSTATE[state]
    attrs["Variable_List"] = meta["Variable_List"]
    if state == "F":
        code, _, sig = info["exit"].partition(":")
        if ran:
            attrs["Exit_status"] = 256 + int(sig) if sig and int(sig) else int(code)
            attrs["comment"] = (f"Job run at {info.get('run_at')} on {attrs.get('exec_vnode', '')}"
                                " and finished")
        else:
            attrs["comment"] = "Job deleted before it ran"
        if info.get("end"):
            attrs["obittime"] = info["end"]
    elif state in ("R", "E", "S") and ran:
        attrs["comment"] = f"Job run at {info.get('run_at')} on {attrs.get('exec_vnode', '')}"
    elif state == "Q":
        attrs["comment"] = f"Not Running: {info['reason']}" if info["reason"] != "None" else ""
    attrs.update({"etime": ctime(meta["ctime"]), "run_count": 1 if ran else 0,
                  "Submit_arguments": meta["Submit_arguments"], "project": meta["project"]})
    return attrs


def full_id(job_id: str) -> str:
    """``"12"`` -> ``"12.<server>"``, as PBS names the job in its messages."""
    return job_id if "." in job_id else f"{job_id}.{server()}"


def resolve(job_id: str) -> str | None:
    """``"12"``, ``"12.<server>"`` or ``"12.<server>.domain"`` -> ``"12"`` when it is ours."""
    seq, _, srv = job_id.partition(".")
    if not seq.isdigit():
        return None
    if srv and srv != server() and not srv.startswith(server() + "."):
        return None
    return seq if load_meta(seq) is not None else None


def all_seqs() -> list[str]:
    return sorted((p.stem for p in (home() / "jobs").glob("*.json")), key=int)


def qstat_main(argv: list[str]) -> int:
    full = json_fmt = history = False
    ids: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-F":
            if i + 1 >= len(argv) or argv[i + 1].lower() != "json":
                return die("qstat", "the emulator supports only -F json")
            json_fmt = True
            i += 2
            continue
        if a.startswith("-") and len(a) > 1:
            for ch in a[1:]:
                if ch == "f":
                    full = True
                elif ch in "xH":
                    history = True
                elif ch == "w":
                    pass
                else:
                    return die("qstat", f"invalid option -- '{ch}' (PBS emulator supports -f -F json -x)")
            i += 1
            continue
        ids.append(a)
        i += 1
    if json_fmt and not full:
        return die("qstat", "-F json requires -f")
    sjobs = scontrol_jobs()
    rc = 0
    errors: list[str] = []
    shown: dict[str, dict[str, Any]] = {}
    targets = ids or all_seqs()
    for job_id in targets:
        seq = resolve(job_id)
        meta = load_meta(seq) if seq else None
        view = pbs_view(meta, sjobs.get(seq)) if meta else None   # type: ignore[arg-type]
        if view is None or (view["job_state"] == "F" and not history_enabled()):
            if ids:
                errors.append(f"qstat: Unknown Job Id {full_id(job_id)}")
                rc = RC_UNKNOWN_JOB
            continue
        if view["job_state"] == "F" and not history:
            if ids:
                errors.append(f"qstat: {meta['id']} Job has finished, use -x or -H to obtain "  # type: ignore[index]
                              "historical job information")
                rc = RC_JOB_FINISHED
            continue
        shown[meta["id"]] = view  # type: ignore[index]
    for line in errors:
        print(line, file=sys.stderr)
    if json_fmt:
        doc: dict[str, Any] = {"timestamp": int(time.time()), "pbs_version": VERSION,
                               "pbs_server": server()}
        if shown:
            doc["Jobs"] = shown
        print(json.dumps(doc, indent=4))
    elif full:
        for jid, attrs in shown.items():
            print(f"Job Id: {jid}")
            for k, v in attrs.items():
                if isinstance(v, dict):
                    for k2, v2 in v.items():
                        print(f"    {k}.{k2} = {v2}")
                else:
                    print(f"    {k} = {v}")
            print()
    elif shown:
        print(f"{'Job id':<17} {'Name':<16} {'User':<16} {'Time Use':>8} S Queue")
        print(f"{'-' * 16}  {'-' * 16} {'-' * 16}  {'-' * 8} - {'-' * 5}")
        for jid, a in shown.items():
            used = a.get("resources_used", {}).get("cput", "0")
            print(f"{jid[:16]:<17} {a['Job_Name'][:16]:<16} {a['Job_Owner'].split('@')[0][:16]:<16} "
                  f"{used:>8} {a['job_state']} {a['queue']}")
    return rc


def qdel_main(argv: list[str]) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    if not ids:
        return die("qdel", "usage: qdel job_identifier ...")
    sjobs = scontrol_jobs()
    rc = 0
    for job_id in ids:
        seq = resolve(job_id)
        meta = load_meta(seq) if seq else None
        view = pbs_view(meta, sjobs.get(seq)) if meta else None   # type: ignore[arg-type]
        if view is None or (view["job_state"] == "F" and not history_enabled()):
            print(f"qdel: Unknown Job Id {full_id(job_id)}", file=sys.stderr)
            rc = RC_UNKNOWN_JOB
        elif view["job_state"] == "F":
            print(f"qdel: Job has finished {full_id(job_id)}", file=sys.stderr)
            rc = RC_JOB_FINISHED
        else:
            proc = subprocess.run(["scancel", seq], capture_output=True, text=True)  # type: ignore[list-item]
            if proc.returncode != 0:
                print(f"qdel: {proc.stderr.strip()} {job_id}", file=sys.stderr)
                rc = 1
    return rc
