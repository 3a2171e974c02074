"""The report as a four-panel PNG (matplotlib with the Agg backend: no display needed).

Panels, all times in minutes from the campaign start: (1) jobs finished over time, (2)
nodes and tiles busy against the allocation's size, (3) jobs per state, (4) run time per app
(box: quartiles and median, whiskers: min and max).  A busy series with more points than
the axis has pixels is drawn as its mean over ``BINS`` equal slices (its exact area over
each; the legend says so), and a long cumulative series by ~4k of its points: the numbers
themselves are those of ``--json``.  The PNG is rendered in memory and
written whole with ``fsio.write_atomic`` (a reader never sees half a file).

matplotlib is the optional extra ``spoolbalsam[plot]``; ``available()`` says whether it is
installed, and ``INSTALL_HINT`` how to get it.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

from ..api.analytics import integral
from ..spool import fsio

INSTALL_HINT = "pip install 'spoolbalsam[plot]' (matplotlib)"
STATE_COLORS = {"created": "#9e9e9e", "waiting": "#b39ddb", "stagein": "#4dd0e1",
                "ready": "#64b5f6", "running": "#ffb74d", "stageout": "#aed581",
                "done": "#66bb6a", "failed": "#e57373", "rejected": "#8d6e63"}
MAX_APPS = 12
BINS = 600          # slices of the time axis when a busy series has more points than pixels


def available() -> bool:
    """Whether matplotlib can be imported (a broken install counts as missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _binned(minutes: list[float], values: list, end: float, bins: int = BINS):
    """The step series' mean over each of ``bins`` equal slices of [0, end] (its exact
    area over the slice), as a step series, and the slice width in minutes."""
    width = end / bins
    edges = [i * width for i in range(bins + 1)]
    return edges[:-1], [integral(minutes, values, a, b) / width
                        for a, b in zip(edges, edges[1:])], width


def _busy_series(minutes: list[float], values: list, end: float):
    """(x, y, label suffix): the exact steps, or their means per slice when there are more
    points than pixels (thousands of starts and ends would paint a solid band)."""
    if len(minutes) <= 2 * BINS or end <= 0:
        return minutes, values, ""
    xs, ys, width = _binned(minutes, values, end)
    return xs, ys, f", mean per {_span(width)}"


def _span(minutes: float) -> str:
    return f"{minutes * 60:.3g} s" if minutes < 2 else f"{minutes:.3g} min"


def _thin(xs: list[float], ys: list, keep: int = 4 * 1024) -> tuple[list[float], list]:
    """At most about ``keep`` evenly spaced points of a monotone series, the last one kept."""
    if len(xs) <= keep:
        return xs, ys
    step = len(xs) / keep
    idx = sorted({int(i * step) for i in range(keep)} | {len(xs) - 1})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def _extend(minutes: list[float], values: list, end: float) -> tuple[list[float], list]:
    """A step series from 0 to ``end``: 0 before its first point, its last value to the end."""
    xs, ys = [0.0] + list(minutes), [0] + list(values)
    if end > xs[-1]:
        xs.append(end)
        ys.append(ys[-1])
    return xs, ys


def figure(r: dict):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 8.5), dpi=100, layout="constrained")
    (ax_done, ax_busy), (ax_states, ax_rt) = fig.subplots(2, 2)
    end = r["minutes"] if r["minutes"] > 0 else 1.0      # nothing ran yet: an empty minute
    scope = ("tags " + ", ".join(f"{k}={v}" for k, v in r["tags"].items())) if r["tags"] \
        else "all jobs"
    start = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["start"]))
    fig.suptitle(f"Site {r['site']} ({r['machine']}), {scope}: {r['jobs']} jobs; campaign "
                 f"start {start}", fontsize=13)

    # 1. jobs finished over time
    f = r["finished"]
    xs, ys = _extend(*_thin(f["minutes"], f["cumulative"]), end)
    rate = f", {f['per_minute']:.1f}/min" if f["per_minute"] else ""
    ax_done.step(xs, ys, where="post", color="#2e7d32", label=f"finished ({f['count']}{rate})")
    ax_done.set_title("Jobs finished")
    ax_done.set_xlabel("minutes from campaign start")
    ax_done.set_ylabel("jobs finished (cumulative)")
    ax_done.set_xlim(0, end)
    ax_done.set_ylim(0, max(f["count"], 1) * 1.05)
    ax_done.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_done.grid(alpha=0.3)
    ax_done.legend(loc="upper left")

    # 2. nodes and tiles busy against the allocation
    b, a, u = r["busy"], r["allocated"], r["utilization"]
    tiles_alloc = max(a["tiles"], default=0)
    nodes_alloc = max(a["nodes"], default=0)
    if a["count"]:
        xs, ys = _extend(a["minutes"], a["nodes"], end)
        ax_busy.fill_between(xs, ys, step="post", color="0.88", edgecolor="0.6",
                             label=f"allocated (from {a['source']})")
    bx, by, how = _busy_series(b["minutes"], b["nodes"], end)
    xs, ys = _extend(bx, by, end)
    ax_busy.fill_between(xs, ys, step="post", color="#1565c0", alpha=0.3, linewidth=0)
    ax_busy.step(xs, ys, where="post", color="#1565c0",
                 label=f"nodes busy ({_pct(u['nodes_percent'])} of node-hours{how})")
    ax_busy.set_title("Busy against the allocation")
    ax_busy.set_xlabel("minutes from campaign start")
    ax_busy.set_ylabel("nodes")
    ax_busy.set_xlim(0, end)
    top = max(max(b["nodes"], default=0), nodes_alloc) * 1.12 or 1.0
    ax_busy.set_ylim(0, top)
    ax_busy.grid(alpha=0.3)
    handles, labels = ax_busy.get_legend_handles_labels()
    if tiles_alloc or any(b["tiles"]):
        # Tiles on the right axis, scaled so that a full node's tiles sit at one node: the
        # allocated line serves both, and busy nodes vs busy tiles compare by eye.
        per_node = tiles_alloc / nodes_alloc if tiles_alloc and nodes_alloc else None
        ax_t = ax_busy.twinx()
        bx, by, how = _busy_series(b["minutes"], b["tiles"], end)
        xs, ys = _extend(bx, by, end)
        ax_t.step(xs, ys, where="post", color="#ef6c00", linestyle=(0, (4, 2)),
                  label=f"tiles busy ({_pct(u['tiles_percent'])} of tile-hours{how})")
        if per_node:
            ax_t.set_ylim(0, top * per_node)
            ax_t.set_ylabel(f"tiles ({per_node:g} per node)")
        else:
            ax_t.set_ylim(0, max(max(b["tiles"], default=0), 1) * 1.12)
            ax_t.set_ylabel("tiles")
        h2, l2 = ax_t.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax_busy.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                   ncol=2, fontsize=9, frameon=False)

    # 3. jobs per state
    states = list(r["states"].items())
    names = [k for k, _ in states]
    counts = [v for _, v in states]
    bars = ax_states.barh(names, counts, color=[STATE_COLORS.get(k, "#90a4ae") for k in names])
    ax_states.invert_yaxis()
    ax_states.bar_label(bars, labels=[str(c) for c in counts], padding=3)
    ax_states.set_title("Jobs per state (now)")
    ax_states.set_xlabel("jobs")
    ax_states.set_xlim(0, max(counts + [1]) * 1.15)
    ax_states.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_states.grid(axis="x", alpha=0.3)

    # 4. run time per app
    rt = list(r["run_time_sec"].items())[:MAX_APPS]
    ax_rt.set_title("Run time per app (every attempt; box: quartiles, whiskers: min/max)")
    if rt:
        stats = [{"label": f"{app} ({s['runs']})", "whislo": s["min"], "q1": s["p25"],
                  "med": s["median"], "q3": s["p75"], "whishi": s["max"], "mean": s["mean"],
                  "fliers": []} for app, s in rt]
        ax_rt.bxp(stats, orientation="horizontal", showmeans=True, widths=0.5,
                  meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black",
                             "markersize": 5})
        ax_rt.invert_yaxis()
        lo = min(s["min"] for _, s in rt)
        hi = max(s["max"] for _, s in rt)
        if lo > 0 and hi / lo > 100:
            ax_rt.set_xscale("log")
        else:
            ax_rt.set_xlim(0, hi * 1.05 if hi > 0 else 1)
        ax_rt.set_xlabel("seconds per run (diamond: mean)")
        ax_rt.grid(axis="x", alpha=0.3)
    else:
        ax_rt.text(0.5, 0.5, "no run has ended yet", ha="center", va="center",
                   transform=ax_rt.transAxes)
        ax_rt.set_axis_off()
    return fig


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


def render(r: dict) -> bytes:
    buf = io.BytesIO()
    figure(r).savefig(buf, format="png")
    return buf.getvalue()


def write_png(r: dict, path: Path) -> None:
    fsio.write_atomic(Path(path), render(r), durable=False)
