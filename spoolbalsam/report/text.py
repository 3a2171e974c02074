"""The one-screen summary of a report (``numbers.report``'s dict); pure."""
from __future__ import annotations

import time

MAX_APPS = 8
MAX_REASONS = 8


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _dur(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.1f} s"
    if minutes < 120:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1f}%"


def _secs(v: float) -> str:
    return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def summary(r: dict) -> str:
    scope = (" jobs tagged " + " ".join(f"{k}={v}" for k, v in r["tags"].items())
             if r["tags"] else " all jobs")
    lines = [f"Site {r['site']} ({r['machine']}),{scope}: {r['jobs']} job(s)"]
    if r["minutes"] > 0:
        lines.append(f"  campaign {_when(r['start'])} -> {_when(r['end'])} ({_dur(r['minutes'])})")
    lines.append("States      " + "  ".join(f"{k} {v}" for k, v in r["states"].items()))
    f = r["finished"]
    rate = f"{f['per_minute']:.1f} jobs/min" if f["per_minute"] is not None else "no time elapsed"
    lines.append(f"Throughput  {f['count']} finished, {rate}; {r['running_now']} running now")
    u, a = r["utilization"], r["allocated"]
    if a["count"]:
        lines.append(f"Utilization nodes {_pct(u['nodes_percent'])} ({u['busy_node_hours']:.3g} "
                     f"of {u['allocated_node_hours']:.3g} node-hours)"
                     + (f", tiles {_pct(u['tiles_percent'])} ({u['busy_tile_hours']:.3g} of "
                        f"{u['allocated_tile_hours']:.3g} tile-hours)"
                        if u["tiles_percent"] is not None else ", no tiles allocated"))
        lines.append(f"            allocations: {a['count']} (from {a['source']})")
    else:
        lines.append(f"Utilization n/a: no allocation recorded; busy {u['busy_node_hours']:.3g} "
                     f"node-hours")
    rt = r["run_time_sec"]
    if rt:
        lines.append(f"Run time    {'app':20s} {'runs':>7s} {'min':>7s} {'median':>7s} "
                     f"{'p90':>7s} {'max':>7s}  (seconds, every attempt)")
        for app, s in list(rt.items())[:MAX_APPS]:
            lines.append(f"            {app[:20]:20s} {s['runs']:7d} {_secs(s['min']):>7s} "
                         f"{_secs(s['median']):>7s} {_secs(s['p90']):>7s} {_secs(s['max']):>7s}")
        if len(rt) > MAX_APPS:
            lines.append(f"            ... and {len(rt) - MAX_APPS} more app(s) (--json)")
    fails = r["failures"]
    if fails:
        lines.append(f"Failures    {sum(fails.values())} failed job(s) by reason:")
        for reason, n in list(fails.items())[:MAX_REASONS]:
            lines.append(f"            {n:7d}  {reason}")
        if len(fails) > MAX_REASONS:
            lines.append(f"            ... and {len(fails) - MAX_REASONS} more reason(s) (--json)")
    else:
        lines.append("Failures    none")
    return "\n".join(lines)
