"""``spool watch``: the rate and ETA arithmetic as pure functions, then the command against
a real campaign with its output in a pipe (lines) and on a pseudo-terminal (redraws)."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time

from spoolbalsam import progress as P
from spoolbalsam.spool.query import Filter

import pytest

from helpers import PY, drop, ids_in, job, layout, spool, start_launcher, wait_for


# ---- pure functions ----------------------------------------------------------------------
def test_the_rate_is_taken_over_a_sliding_window():
    m = P.Meter(window=10)
    assert m.rate() is None
    m.add(0, 0)
    assert m.rate() is None                       # one sample spans no time
    m.add(5, 10)
    assert m.rate() == 2.0
    for t, f in ((10, 20), (15, 20), (20, 20)):   # a stall: the window forgets the burst
        m.add(t, f)
    assert m.samples[0] == (10, 20) and m.rate() == 0.0
    m.add(25, 70)
    assert m.rate() == (70 - 20) / (25 - 15) and m.span() == 10
    m.add(30, 60)                                 # a retry took a finished job back
    assert m.rate() >= 0.0


def test_eta_and_the_formats():
    assert P.eta(0, None) == 0.0 and P.eta(10, None) is None and P.eta(10, 0.0) is None
    assert P.eta(100, 4.0) == 25.0
    assert P.fmt_duration(None) == "?" and P.fmt_duration(3725.4) == "1:02:05"
    assert P.fmt_rate(None) == "?" and P.fmt_rate(12.345) == "12.3" and P.fmt_rate(1234.5) == "1,234"
    s = P.Snapshot(created=1, waiting=2, ready=3, running=4, done=5, failed=5)
    assert (s.finished, s.left, s.total) == (10, 10, 20) and P.share(s) == 50.0
    staged = P.Snapshot(stagein=1, stageout=2, done=1)
    assert staged.left == 3 and "running 0  staging 3  ready 0" in P.counts_text(staged)
    assert "staging" not in P.counts_text(s)
    assert P.share(P.Snapshot()) == 100.0 and P.bar(0.5, 10) == "[#####-----]"
    line = P.render_line(s, 2.0, 0.0)
    assert line.endswith("done 5  failed 5  running 4  ready 3  waiting 2  created 1  50.0%  "
                         "rate 2 jobs/s  ETA 0:00:05")
    screen = P.render_screen(s, None, 0.0, "spool watch  S", 60, width=40)
    assert len(screen) == 4 and all(len(x) <= 40 for x in screen)
    assert screen[1].startswith("[") and "50.0%" in screen[1] and "ETA ?" in screen[3]
    assert P.as_json(s, 2.0, 1.0) == {"t": 1.0, "created": 1, "waiting": 2, "stagein": 0,
                                      "ready": 3, "running": 4, "stageout": 0, "done": 5,
                                      "failed": 5, "finished": 10, "total": 20, "rate": 2.0,
                                      "eta_sec": 5.0}


# ---- against a real campaign ------------------------------------------------------------------
def _watch(site, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "spoolbalsam.cli", "--site", str(site), "watch", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  done (\d+)  failed (\d+)  running (\d+)  "
                  r"ready (\d+)  waiting (\d+)  created (\d+)  ([\d.]+)%  rate (\S+) jobs/s  "
                  r"ETA (\S+)$")


def test_lines_in_a_pipe_follow_a_campaign_and_it_exits_when_its_jobs_are_done(running_site):
    site = running_site
    for i in range(8):
        drop(site, f"a{i}.json", job("Sleep", f"a/{i}", id=f"a{i}", node_packing_count=4,
                                     parameters={"secs": 0.3}, tags={"camp": "a"}))
    drop(site, "b0.json", job(workdir="b/0", id="b0", tags={"camp": "b"}))
    wait_for(lambda: len(ids_in(site, "ready")) == 9, 20, "jobs ready")
    w = _watch(site, "--tag", "camp=a", "--interval", "0.2")
    first = w.stdout.readline()                               # before any job runs
    start_launcher(site, "--tag", "camp=a", idle_ttl=30)      # b0 stays ready
    out, err = w.communicate(timeout=60)
    assert w.returncode == 0, err
    rows = [LINE.match(line) for line in (first + out).splitlines()]
    assert all(rows) and len(rows) >= 3, out
    nums = [tuple(int(x) for x in m.groups()[:6]) for m in rows]
    assert nums[0] == (0, 0, 0, 8, 0, 0)                      # the campaign only: b0 not in it
    assert nums[-1] == (8, 0, 0, 0, 0, 0) and rows[-1].group(7) == "100.0"
    assert rows[-1].group(9) == "0:00:00"
    assert [n[0] for n in nums] == sorted(n[0] for n in nums)   # done never goes back
    assert any(n[2] > 0 for n in nums)                        # it saw jobs running
    assert any(m.group(8) not in ("?", "0") for m in rows), out   # and a rate
    # the whole site still has b0 to run: a plain watch would go on
    lay = layout(site)
    assert P.snapshot(lay).left == 1
    assert P.snapshot(lay, Filter(tags={"camp": "a"})).left == 0
    # --json: one object per update; a finished campaign ends after the first
    res = subprocess.run([PY, "-m", "spoolbalsam.cli", "--site", str(site), "job", "ls", "--watch",
                          "--tag", "camp=a", "--json"], capture_output=True, text=True, timeout=30)
    [obj] = [json.loads(line) for line in res.stdout.splitlines()]
    assert obj["done"] == 8 and obj["total"] == 8 and obj["eta_sec"] == 0.0


def test_on_a_terminal_it_redraws_in_place_and_ctrl_c_restores_the_cursor(running_site):
    site = running_site
    drop(site, "r.json", job(workdir="r/0", id="r0"))
    wait_for(lambda: ids_in(site, "ready") == ["r0"], 20, "a job ready")
    master, slave = pty.openpty()
    w = subprocess.Popen([PY, "-m", "spoolbalsam.cli", "--site", str(site), "watch",
                          "--interval", "0.1"], stdin=slave, stdout=slave, stderr=slave,
                         start_new_session=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    while seen.count(b"\x1b[4F") < 3 and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            seen += os.read(master, 65536)
    w.send_signal(signal.SIGINT)
    assert w.wait(10) == 130
    while select.select([master], [], [], 0.2)[0]:
        try:
            seen += os.read(master, 65536)
        except OSError:          # EIO: the other end is closed
            break
    os.close(master)
    text = seen.decode()
    assert text.startswith(P.HIDE) and text.rstrip().endswith(P.SHOW), repr(text[-80:])
    assert text.count("\x1b[4F") >= 3                         # each frame goes back 4 lines
    frame = text.split("\x1b[4F")[-1]
    assert "ready 1" in frame and "Traceback" not in text
    assert "[" in frame and "0.0%  0 of 1 finished" in frame


@pytest.mark.parametrize("args,words", [
    (("watch", "--interval", "0"), "--interval 0: must be a number of seconds > 0"),
    (("watch", "--tag", "camp"), "tag 'camp' must look like KEY=VALUE"),
    (("job", "ls", "--watch", "--state", "done"), "it does not take --state"),
    (("job", "ls", "--watch", "--limit", "3", "-v"), "it does not take --limit, --verbose"),
])
def test_bad_watch_options_are_one_line_errors(site, args, words):
    res = spool(site, *args, expect=1)
    assert res.stderr.startswith("spool: ") and words in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""
