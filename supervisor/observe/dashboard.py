"""The live dashboard (rich), drawn from a snapshot at most 4 times a second.

No refresh thread: rich's ``Live`` would otherwise redraw from a thread of its own,
and a thread holding a lock at the moment the loop forks an agent can deadlock the
child between fork and exec. The loop calls :class:`LiveDashboard` as a ticker.

Rows are laid out as fixed-width text, not a rich ``Table``: a table measures every
cell of every frame (30 ms a frame for 14 rows, measured), which at 4 Hz would cost
the loop 12% of a core; text lines cost about a millisecond. The redraw rate also
adapts: never more than 3% of the loop's time goes to drawing.
"""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from agent_supervise.units import format_duration, format_size

MAX_HZ = 4.0
#: The share of wall time the dashboard may spend drawing.
DRAW_BUDGET = 0.03
COLUMNS = (
    ("task", 14, "<"),
    ("pid", 7, ">"),
    ("state", 12, "<"),
    ("memory", 17, "<"),
    ("peak", 10, ">"),
    ("CPU", 5, ">"),
    ("time", 7, ">"),
    ("retries", 7, ">"),
    ("checkpoint", 30, "<"),
)


def memory_bar(usage: int, limit: int, width: int = 12) -> Text:
    share = min(1.0, usage / limit) if limit else 0.0
    filled = round(share * width)
    style = "green" if share < 0.7 else "yellow" if share < 0.9 else "red"
    return (
        Text("█" * filled, style=style)
        + Text("░" * (width - filled), style="dim")
        + Text(f" {share * 100:3.0f}%")
    )


def header(snap: dict) -> Text:
    s, c = snap["system"], snap["counts"]
    state = (
        "finished"
        if snap["finished"]
        else f"stopping: {snap['stopping']}"
        if snap["stopping"]
        else "running"
    )
    lines = [
        (
            f"agent-supervise run {snap['run_id']}",
            f"{state}, {format_duration(snap['t'])}",
            f"backend {snap['backend']}",
            f"supervisor RSS {format_size(s['supervisor_rss'])}",
        ),
        (
            f"CPU {s['cpu_percent']:.1f}%  MEM {s['mem_percent']:.1f}%",
            f"available {format_size(s['available'])}",
            f"mode {snap['mode']}",
            f"breaker {snap['breaker']}",
        ),
        (
            f"running {c['running']}  queued {c['queued']}",
            f"done {c['done']}  failed {c['failed']}",
            f"retrying {c['retrying']}",
            "",
        ),
    ]
    widths = [max(len(line[i]) for line in lines) + 2 for i in range(4)]
    text = Text()
    for line in lines:
        text.append(
            "".join(f"{cell:<{w}}" for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )
    text.highlight_words(["agent-supervise"], "bold")
    return text


def _cell(value, width: int, align: str) -> str:
    value = str(value)
    if len(value) > width:
        value = value[: width - 1] + "…"
    return f"{value:{align}{width}}"


def agents_table(snap: dict, max_rows: int | None = None) -> Text:
    """One row per agent: running ones first, the nearest to their cap on top. Only
    ``max_rows`` are drawn (a terminal shows no more, and drawing costs)."""
    agents = sorted(
        snap["agents"],
        key=lambda a: (
            a["state"] == "ended",
            -a.get("usage", 0) / max(1, a.get("limit", 1)) if a["state"] != "ended" else 0,
        ),
    )
    hidden = agents[max_rows:] if max_rows is not None and len(agents) > max_rows else []
    width = max([len(a["task"]) for a in agents] + [4])
    columns = ((COLUMNS[0][0], min(width, 24), "<"), *COLUMNS[1:])
    out = Text("│".join(_cell(n, w, a) for n, w, a in columns) + "\n", style="bold")
    out.append("┼".join("─" * w for _, w, _ in columns) + "\n")
    for a in agents[: len(agents) - len(hidden)]:
        ended = a["state"] == "ended"
        if ended:
            state = Text(
                _cell(a["reason"], 12, "<"), style="green" if a["reason"] == "ok" else "red"
            )
            memory = Text(_cell(f"cap {format_size(a['limit_bytes'])}", 17, "<"), "dim")
            peak, cpu = format_size(a["peak_bytes"]), "-"
            runtime, attempt = format_duration(a["duration_s"]), a["attempts"]
        else:
            state = Text(_cell(a["state"], 12, "<"))
            memory = memory_bar(a["usage"], a["limit"])
            peak = format_size(a["peak"])
            cpu = "-" if a["cpu_percent"] is None else f"{a['cpu_percent']:.0f}%"
            runtime, attempt = format_duration(a["runtime"]), a["attempt"]
        out.append(
            _cell(a["task"], columns[0][1], "<") + "│" + _cell(a["pid"] or "-", 7, ">") + "│"
        )
        out.append_text(state)
        out.append("│")
        out.append_text(memory)
        out.append(
            "│"
            + "│".join(
                _cell(v, w, al)
                for v, (_, w, al) in zip(
                    (peak, cpu, runtime, attempt - 1, a.get("checkpoint") or ""),
                    COLUMNS[4:],
                    strict=True,
                )
            )
            + "\n"
        )
    if hidden:
        out.append(f"… {len(hidden)} more\n", style="dim")
    return out


def render(snap: dict, max_rows: int | None = None) -> Group:
    return Group(header(snap), agents_table(snap, max_rows))


class LiveDashboard:
    """A ticker that redraws the dashboard, and prints event lines above it."""

    def __init__(self, snapshotter, console: Console | None = None) -> None:
        self.snapshotter = snapshotter
        self.console = console or Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self._next = 0.0

    def start(self) -> None:
        self.live.start()

    def print_line(self, text: str) -> None:
        self.live.console.print(text, markup=False, highlight=False)

    def __call__(self, sup, final: bool = False) -> None:
        now = sup.clock()
        if not final and now < self._next:
            return
        started = time.perf_counter()
        rows = max(5, self.console.size.height - 8)  # what fits under the header
        self.live.update(render(self.snapshotter.take(sup), rows), refresh=True)
        took = time.perf_counter() - started
        self._next = now + max(1 / MAX_HZ, took / DRAW_BUDGET)
        if final:
            self.live.stop()
