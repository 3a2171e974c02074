"""Before/after in the same run: one benchmark script run from this checkout and from an older
commit, alternately, on the same machine.

    python bench/compare.py --base REV [--rounds 3] SCRIPT [ARGS...]
    python bench/compare.py --base 7a2d099 throughput.py --peers spool,parallel --reps 1

``REV`` is checked out (detached) into a temporary git worktree, removed at the end.  Each
round runs ``python CHECKOUT/bench/SCRIPT ARGS`` for the base, then for this checkout (the
order alternates from round to round, so drift hurts both alike); each run uses its own
checkout's package and its own copy of the script.  ``--head-scripts`` copies this
checkout's ``bench/*.py`` over the base's first: the same benchmark code on both sides, for
a benchmark the base does not have yet (the scripts then call only what the base has).
Every output line is printed, prefixed with ``base``/``head``.  Then, for every kind of
line that reports a rate (``... N jobs/s`` or ``... N tasks/s``; lines are matched by their
text with the numbers taken out, but for labels in square brackets), the median of each
side and the ratio head/base.  Asserts nothing.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATE = re.compile(r"([\d,]+(?:\.\d+)?)\s+(jobs|tasks)/s")
NUMBER = re.compile(r"\d[\d,.]*")


def shape(line: str) -> str:
    """A line with its numbers taken out: lines of one kind across runs share it.  Numbers
    inside square brackets are labels (``[64 launchers]``) and stay."""
    parts = re.split(r"(\[[^\]]*\])", line.strip())
    return "".join(p if p.startswith("[") else NUMBER.sub("#", p) for p in parts)


def rates(text: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = RATE.search(re.sub(r"\[[^\]]*\]", "", line))
        if m:
            out.setdefault(shape(line), []).append(float(m.group(1).replace(",", "")))
    return out


def run(checkout: Path, script: str, args: list[str], label: str) -> str:
    proc = subprocess.run([sys.executable, str(checkout / "bench" / script), *args],
                          capture_output=True, text=True, cwd=checkout)
    for line in proc.stdout.splitlines():
        print(f"{label} | {line}", flush=True)
    if proc.returncode:
        print(f"{label} | exit {proc.returncode}: {proc.stderr.strip()[-500:]}", flush=True)
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the older commit to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--head-scripts", action="store_true",
                    help="run this checkout's bench/*.py on the base's package too")
    ap.add_argument("script", help="a script in bench/, e.g. throughput.py")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spool-compare-"))
    base = tmp / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base),
                    a.base], check=True)
    if a.head_scripts:
        for script in (REPO / "bench").glob("*.py"):
            (base / "bench" / script.name).write_bytes(script.read_bytes())
    collected: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    try:
        for r in range(a.rounds):
            sides = [("base", base), ("head", REPO)]
            for label, checkout in (sides if r % 2 == 0 else sides[::-1]):
                for key, vals in rates(run(checkout, a.script, a.args, label)).items():
                    collected[label].setdefault(key, []).extend(vals)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                       check=False)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(f"\n# {a.script} {' '.join(a.args)}: base {a.base} vs head, {a.rounds} round(s), "
          "medians of every rate line")
    for key in collected["head"]:
        b, h = collected["base"].get(key), collected["head"][key]
        if not b:
            continue
        mb, mh = statistics.median(b), statistics.median(h)
        print(f"{key[:70]:70s} base {mb:10.1f}  head {mh:10.1f}  head/base {mh / mb:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
