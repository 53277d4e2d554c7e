"""``agent-supervise report RUN_DIR --out report.html|.png|.svg``: memory over time per
task with its cap and its kills marked, plus the summary. Drawn with matplotlib
(the optional ``report`` extra), from ``events.jsonl`` and ``summary.json``."""

from __future__ import annotations

import html
import io
import json
import os

from agent_supervise.errors import BadInput
from agent_supervise.outcome import Reason
from agent_supervise.rundir import read_events
from agent_supervise.units import format_duration, format_size

MiB = 1 << 20


def timelines(events: list[dict]) -> dict[str, dict]:
    """Per task: (t, bytes) points, its cap, and how each attempt ended."""
    lines: dict[str, dict] = {}
    for e in events:
        task = e.get("task")
        if task is None or e["event"] not in ("started", "sample", "exited", "retried"):
            continue
        line = lines.setdefault(task, {"points": [], "limit": None, "ends": []})
        if e["event"] == "started":
            line["points"].append((e["t"], 0))
            line["limit"] = e["limit"]
        elif e["event"] == "sample":
            line["points"].append((e["t"], e["usage"]))
        else:
            peak = e.get("peak_bytes") or 0
            line["points"].append((e["t"], peak))
            line["ends"].append((e["t"], peak, e["reason"]))
            if e["event"] == "retried":
                line["points"].append((e["t"], None))  # a gap until the next attempt
    return lines


def figure(events: list[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to files only
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (task, line) in enumerate(sorted(timelines(events).items())):
        color = f"C{i % 10}"
        xs = [t for t, _ in line["points"]]
        ys = [None if v is None else v / MiB for _, v in line["points"]]
        ax.plot(xs, ys, color=color, label=task, linewidth=1.6)  # type: ignore[arg-type]  # None: a gap
        if line["limit"]:
            ax.axhline(line["limit"] / MiB, color=color, linestyle="--", linewidth=0.8, alpha=0.7)
        for t, peak, reason in line["ends"]:
            if Reason(reason).memory_ending:
                ax.plot(
                    [t],
                    [peak / MiB],
                    marker="X",
                    markersize=10,
                    color=color,
                    markeredgecolor="black",
                    linestyle="none",
                )
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("memory (MiB)")
    ax.set_title(f"{title} — dashed: caps; X: killed for memory")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def build(run_dir: str, out: str) -> str:
    """Write the report; the format follows ``out``'s extension."""
    events_path = os.path.join(run_dir, "events.jsonl")
    if not os.path.exists(events_path):
        raise BadInput(f"{run_dir}: no events.jsonl here", hint="give a run folder")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInput(
            "report needs matplotlib", hint="pip install 'agent-supervise[report]'"
        ) from None
    kind = os.path.splitext(out)[1].lower().lstrip(".")
    if kind not in ("html", "png", "svg"):
        raise BadInput(f"--out {out}: unknown format", hint="use .html, .png or .svg")
    events = read_events(events_path)
    title = f"run {os.path.basename(os.path.normpath(run_dir))}"
    fig = figure(events, title)
    if kind in ("png", "svg"):
        fig.savefig(out, dpi=120)
        return out
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    with open(out, "w") as f:
        f.write(_page(title, svg.getvalue(), _summary(run_dir)))
    return out


def _summary(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return json.load(f)
    except OSError:
        return {"tasks": [], "counts": {}, "exit_code": None}  # a run still going


def _page(title: str, svg: str, summary: dict) -> str:
    rows = "".join(
        f"<tr class='{'ok' if t['reason'] == 'ok' else 'bad'}'><td>{html.escape(t['task'])}"
        f"</td><td>{t['reason']}</td><td>{t['exit_code']}</td>"
        f"<td>{format_size(t['peak_bytes'])} / {format_size(t['limit_bytes'])}</td>"
        f"<td>{format_duration(t['duration_s'])}</td><td>{t['attempts']}</td>"
        f"<td>{html.escape(t['detail'] or '')}</td></tr>"
        for t in summary["tasks"]
    )
    counts = ", ".join(f"{n} {r}" for r, n in sorted(summary["counts"].items()))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em}}tr.bad td{{background:#fde8e8}}
tr.ok td{{background:#eefaf0}}</style></head><body>
<h1>agent-supervise — {html.escape(title)}</h1>
<p>exit code {summary["exit_code"]}; {html.escape(counts or "no tasks ended yet")}</p>
{svg[svg.find("<svg") :]}
<table><tr><th>task</th><th>reason</th><th>exit</th><th>peak / cap</th><th>time</th>
<th>tries</th><th>detail</th></tr>{rows}</table></body></html>
"""
