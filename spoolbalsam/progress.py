"""Live progress of a campaign: ``spool watch`` (alias: ``spool job ls --watch``).

Every ``interval`` seconds it takes a ``Snapshot`` -- jobs per directory, from
``spool.query.counts`` for the whole site, or ``spool.query.count`` for a ``--tag``/``--app``
campaign, both from the site's query index when it is there -- and shows done, failed, running, ready, waiting and created,
the share finished, the rate at which jobs finish (``Meter``: over a sliding window) and the
time left at that rate (``eta``).  On a terminal the display is redrawn in place (ANSI
cursor movement: no dependency earns its place for four lines); otherwise, or with
``--json``, one line per interval is appended, so a log or a pipe gets a history.

It exits by itself once nothing is created, waiting, ready, running or staging its data in
or out (at once on a site with nothing left to run; ``--forever`` keeps watching), and on Ctrl-C, with the terminal
restored (exit code 130).  Everything here but ``watch`` is a pure function of its inputs.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable, TextIO

from .spool import fsio
from .spool.layout import Layout
from .spool import states as S
from .spool.query import JOB_DIRS, Filter, count, counts

RATE_WINDOW_SEC = 60.0
TTY_INTERVAL_SEC = 1.0      # redraws on a terminal
LINE_INTERVAL_SEC = 10.0    # lines into a file or a pipe


@dataclass(frozen=True)
class Snapshot:
    created: int = 0
    waiting: int = 0
    stagein: int = 0
    ready: int = 0
    running: int = 0
    stageout: int = 0
    done: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def left(self) -> int:
        """Jobs not finished yet: to run, running, or staging their data."""
        return (self.created + self.waiting + self.stagein + self.ready + self.running
                + self.stageout)

    @property
    def staging(self) -> int:
        return self.stagein + self.stageout

    @property
    def total(self) -> int:
        return self.finished + self.left

    @classmethod
    def from_counts(cls, per_dir: dict[str, int]) -> "Snapshot":
        return cls(**{d: per_dir.get(d, 0) for d in JOB_DIRS})


class Meter:
    """Jobs finished per second over the last ``window`` seconds (a sliding window of
    samples; the oldest kept is the last one at or before the window's start)."""

    def __init__(self, window: float = RATE_WINDOW_SEC):
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, finished: int) -> None:
        self.samples.append((t, finished))
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        """None until two samples span some time; never negative (a retry moves a
        finished job back, which is not negative progress of the others)."""
        if len(self.samples) < 2:
            return None
        (t0, f0), (t1, f1) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None
        return max(0.0, (f1 - f0) / (t1 - t0))

    def span(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0.0


def eta(left: int, rate: float | None) -> float | None:
    """Seconds until ``left`` jobs are finished at ``rate`` jobs/s; None if unknown."""
    if left == 0:
        return 0.0
    if not rate:
        return None
    return left / rate


def fmt_duration(sec: float | None) -> str:
    if sec is None:
        return "?"
    sec = int(round(sec))
    h, rest = divmod(sec, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "?"
    return f"{rate:.3g}" if rate < 100 else f"{rate:,.0f}"


def share(s: Snapshot) -> float:
    return 100.0 * s.finished / s.total if s.total else 100.0


def counts_text(s: Snapshot) -> str:
    staging = f"  staging {s.staging:,}" if s.staging else ""
    return (f"done {s.done:,}  failed {s.failed:,}  running {s.running:,}{staging}  "
            f"ready {s.ready:,}  waiting {s.waiting:,}  created {s.created:,}")


def render_line(s: Snapshot, rate: float | None, wall: float) -> str:
    """One plain line (not a terminal)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
    return (f"{stamp}  {counts_text(s)}  {share(s):.1f}%  rate {fmt_rate(rate)} jobs/s  "
            f"ETA {fmt_duration(eta(s.left, rate))}")


def bar(fraction: float, width: int) -> str:
    full = max(0, min(width, int(round(fraction * width))))
    return "[" + "#" * full + "-" * (width - full) + "]"


def render_screen(s: Snapshot, rate: float | None, wall: float, title: str,
                  window: float, width: int = 80) -> list[str]:
    """The lines redrawn on a terminal, each cut to ``width``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(wall))
    head = f"{title}  {stamp}"
    tail = f"  {share(s):5.1f}%  {s.finished:,} of {s.total:,} finished"
    lines = [head,
             bar(s.finished / s.total if s.total else 1.0, max(10, min(50, width - len(tail) - 2))) + tail,
             counts_text(s),
             f"rate {fmt_rate(rate)} jobs/s (last {window:g} s)  "
             f"ETA {fmt_duration(eta(s.left, rate))}"]
    return [line[:width] for line in lines]


def as_json(s: Snapshot, rate: float | None, wall: float) -> dict:
    e = eta(s.left, rate)
    return {"t": round(wall, 3), **asdict(s), "finished": s.finished, "total": s.total,
            "rate": None if rate is None else round(rate, 4),
            "eta_sec": None if e is None else round(e, 1)}


# ---- taking snapshots ------------------------------------------------------------------------
def snapshot(layout: Layout, flt: Filter | None = None) -> Snapshot:
    """Jobs per directory: ``counts`` for the whole site, ``count`` (per state, folded into
    directories) for a filter -- from the site's query index when it is there."""
    if flt is None:
        return Snapshot.from_counts(counts(layout))
    per_dir: dict[str, int] = {}
    for state, n in count(layout, flt).items():
        d = S.STATE_DIR.get(state)
        per_dir[d] = per_dir.get(d, 0) + n
    return Snapshot.from_counts(per_dir)


def intake_busy(layout: Layout) -> bool:
    """True while the site holds drops it has taken out of created/ and not yet published.

    # race: a burst of drops is renamed from created/ into site/intake/ before it is
    # published, so for a moment those jobs are in no state directory; a snapshot taken
    # then may show nothing left while jobs are on their way.  Finishing is decided only
    # when the site's intake is empty too."""
    return bool(fsio.list_names(layout.site_dir / "intake", suffix=""))


# ---- the loop ----------------------------------------------------------------------------------
HIDE, SHOW, CLEAR_EOL, CLEAR_BELOW = "\x1b[?25l", "\x1b[?25h", "\x1b[K", "\x1b[J"


def _up(n: int) -> str:
    return f"\x1b[{n}F" if n else "\r"


def watch(layout: Layout, *, flt: Filter | None = None, title: str = "spool watch",
          interval: float | None = None, forever: bool = False, json_lines: bool = False,
          out: TextIO = sys.stdout, tty: bool | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Show progress until nothing is left to run (or forever); the exit code."""
    tty = out.isatty() if tty is None else tty
    redraw = tty and not json_lines
    if interval is None:
        interval = TTY_INTERVAL_SEC if redraw else LINE_INTERVAL_SEC
    meter = Meter()
    drawn = 0
    code = 0
    if redraw:
        out.write(HIDE)
    try:
        while True:
            snap = snapshot(layout, flt)
            meter.add(time.monotonic(), snap.finished)
            rate, wall = meter.rate(), time.time()
            if json_lines:
                import orjson
                out.write(orjson.dumps(as_json(snap, rate, wall)).decode() + "\n")
            elif redraw:
                width = shutil.get_terminal_size((80, 24)).columns
                lines = render_screen(snap, rate, wall, title, meter.window, width)
                out.write(_up(drawn) + "".join(line + CLEAR_EOL + "\n" for line in lines)
                          + CLEAR_BELOW)
                drawn = len(lines)
            else:
                out.write(render_line(snap, rate, wall) + "\n")
            out.flush()
            if not forever and snap.left == 0 and not intake_busy(layout):
                break
            sleep(interval)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:          # `spool watch | head`: the reader has gone
        redraw = False
        try:                         # and no flush at exit may complain about it
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        except (OSError, ValueError, AttributeError):
            pass
    finally:
        if redraw:
            out.write(SHOW)
            out.flush()
    return code
