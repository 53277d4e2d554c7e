"""The live dashboard (rich), drawn from a snapshot at most 4 times a second.

No refresh thread: rich's ``Live`` would otherwise redraw from a thread of its own,
and a thread holding a lock at the moment the loop forks an agent can deadlock the
child between fork and exec. The loop calls :class:`LiveDashboard` as a ticker.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .units import format_duration, format_size

MAX_HZ = 4.0


def memory_bar(usage: int, limit: int, width: int = 12) -> Text:
    share = min(1.0, usage / limit) if limit else 0.0
    filled = round(share * width)
    style = "green" if share < 0.7 else "yellow" if share < 0.9 else "red"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim") + \
        Text(f" {share * 100:3.0f}%")


def header(snap: dict) -> Table:
    s, c = snap["system"], snap["counts"]
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column()
    state = "finished" if snap["finished"] else f"stopping: {snap['stopping']}" \
        if snap["stopping"] else "running"
    grid.add_row(f"[b]agent-supervise[/b] run {snap['run_id']}", f"{state}, "
                 f"{format_duration(snap['t'])}", f"backend {snap['backend']}",
                 f"supervisor RSS {format_size(s['supervisor_rss'])}")
    grid.add_row(f"CPU {s['cpu_percent']:.1f}%  MEM {s['mem_percent']:.1f}%",
                 f"available {format_size(s['available'])}",
                 f"mode [b]{snap['mode']}[/b]", f"breaker [b]{snap['breaker']}[/b]")
    grid.add_row(f"running {c['running']}  queued {c['queued']}",
                 f"done {c['done']}  failed {c['failed']}", f"retrying {c['retrying']}", "")
    return grid


def agents_table(snap: dict, max_rows: int | None = None) -> Table:
    """One row per agent: running ones first, the nearest to their cap on top. Only
    ``max_rows`` are drawn (a terminal shows no more, and drawing costs)."""
    table = Table(expand=False, pad_edge=False)
    for name, justify in (("task", "left"), ("pid", "right"), ("state", "left"),
                          ("memory", "left"), ("peak", "right"), ("CPU", "right"),
                          ("time", "right"), ("retries", "right"), ("checkpoint", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "checkpoint")
    agents = sorted(snap["agents"], key=lambda a: (a["state"] == "ended", -a.get(
        "usage", 0) / max(1, a.get("limit", 1)) if a["state"] != "ended" else 0))
    hidden = agents[max_rows:] if max_rows is not None and len(agents) > max_rows else []
    for a in agents[:len(agents) - len(hidden)]:
        if a["state"] == "ended":
            ok = a["reason"] == "ok"
            state = Text(a["reason"], style="green" if ok else "red")
            memory = Text(f"cap {format_size(a['limit_bytes'])}", style="dim")
            peak, cpu = format_size(a["peak_bytes"]), "-"
            runtime, attempt = format_duration(a["duration_s"]), a["attempts"]
        else:
            state = Text(a["state"])
            memory = memory_bar(a["usage"], a["limit"])
            peak = format_size(a["peak"])
            cpu = "-" if a["cpu_percent"] is None else f"{a['cpu_percent']:.0f}%"
            runtime, attempt = format_duration(a["runtime"]), a["attempt"]
        table.add_row(a["task"], str(a["pid"] or "-"), state, memory, peak, cpu, runtime,
                      str(attempt - 1), (a.get("checkpoint") or "")[:40])
    if hidden:
        table.add_row(f"… {len(hidden)} more", "", "", "", "", "", "", "", "")
    return table


def render(snap: dict, max_rows: int | None = None) -> Group:
    return Group(header(snap), agents_table(snap, max_rows))


class LiveDashboard:
    """A ticker that redraws the dashboard, and prints event lines above it."""

    def __init__(self, snapshotter, console: Console | None = None) -> None:
        self.snapshotter = snapshotter
        self.console = console or Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self._last = None

    def start(self) -> None:
        self.live.start()

    def print_line(self, text: str) -> None:
        self.live.console.print(text, markup=False, highlight=False)

    def __call__(self, sup, final: bool = False) -> None:
        now = sup.clock()
        if not final and self._last is not None and now - self._last < 1 / MAX_HZ:
            return
        self._last = now
        rows = max(5, self.console.size.height - 10)  # what fits under the header
        self.live.update(render(self.snapshotter.take(sup), rows), refresh=True)
        if final:
            self.live.stop()
