"""The outcome of a fleet run: one entry per task, counts, the exit code, the table."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

from .checkpoint import last_line
from .outcome import Reason, signal_name
from .units import format_duration, format_size

EXIT_SELF_GUARD = 3
TABLE_ROWS = 50  # rows of the final table; summary.json has every task


def result_entry(task, outcome, rundir) -> dict:
    """What summary.json and the ``exited`` event say about one task."""
    out, err = rundir.log_paths(task.id, task.attempt)
    started = outcome.reason is not Reason.CANCELLED
    return {
        "task": task.id, "agent": task.agent, "reason": outcome.reason.value,
        "exit_code": outcome.exit_code, "peak_bytes": outcome.peak_bytes,
        "limit_bytes": task.memory_limit, "peak_source": outcome.peak_source,
        "duration_s": round(outcome.duration_s, 3), "backend": outcome.backend,
        "pid": outcome.pid, "status": outcome.status,
        "signal": signal_name(outcome.signal) if outcome.signal else None,
        "oom_kills": outcome.oom_kills,
        "detail": outcome.detail, "where": task.where, "cmd": list(task.cmd),
        "stdout": out if started else None, "stderr": err if started else None,
        "attempts": task.attempt, "checkpoint": last_line(rundir.checkpoint_path(task.id)),
    }


class ResultLog:
    """results.jsonl: one line per ended task, flushed as it ends; counts in memory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "a", buffering=1)
        self.counts: collections.Counter = collections.Counter()

    def append(self, entry: dict) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self.counts[entry["reason"]] += 1

    def __len__(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return len(self) - self.counts["ok"]

    def read(self) -> list[dict]:
        self._file.flush()
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def close(self) -> None:
        self._file.close()


@dataclass
class FleetResult:
    run_id: str
    run_dir: str
    duration_s: float
    exit_code: int
    tasks: list[dict]
    rejected: list[dict]
    stopping: str | None = None
    message: str | None = None
    counts: dict = field(default_factory=dict)

    @classmethod
    def build(cls, sup, duration: float) -> FleetResult:
        tasks = sorted(sup.results.read(), key=lambda e: (e["agent"], _n(e["task"])))
        sup.results.close()
        counts = dict(collections.Counter(e["reason"] for e in tasks))
        if sup.stopping == "interrupted":
            code = 128 + sup.stop_signal
        elif sup.stopping == "self_guard":
            code = EXIT_SELF_GUARD
        else:
            code = 0 if all(e["reason"] == "ok" for e in tasks) and not sup.rejected else 1
        result = cls(sup.rundir.run_id, sup.rundir.path, duration, code, tasks,
                     list(sup.rejected), sup.stopping,
                     getattr(sup, "stop_message", None), counts)
        sup.rundir.write_json("summary.json", result.to_json())
        return result

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_json(self) -> dict:
        return {"run_id": self.run_id, "run_dir": self.run_dir,
                "duration_s": round(self.duration_s, 3), "exit_code": self.exit_code,
                "stopping": self.stopping, "message": self.message, "counts": self.counts,
                "rejected": self.rejected, "tasks": self.tasks}

    def table(self, max_rows: int = TABLE_ROWS):
        """A rich Table: agent, task, reason, exit code, peak/cap, duration. Past
        ``max_rows`` tasks it shows every one that did not end ok (up to the limit)
        before any that did, and its caption says how many are left to summary.json:
        a 1,000-row table takes seconds to draw and nobody reads it."""
        from rich.table import Table

        table = Table(title=f"run {self.run_id}", title_justify="left")
        for name, justify in (("agent", "left"), ("task", "left"), ("reason", "left"),
                              ("exit", "right"), ("tries", "right"),
                              ("peak / cap", "right"), ("time", "right")):
            table.add_column(name, justify=justify)
        shown = self.tasks
        if len(shown) > max_rows:
            keep = {id(e) for e in sorted(shown, key=lambda e: e["reason"] == "ok")[:max_rows]}
            shown = [e for e in shown if id(e) in keep]
        for e in shown:
            style = "green" if e["reason"] == "ok" else "red"
            peak = f"{format_size(e['peak_bytes'])} / {format_size(e['limit_bytes'])}"
            table.add_row(e["agent"], e["task"], f"[{style}]{e['reason']}[/]",
                          "-" if e["exit_code"] is None else str(e["exit_code"]),
                          str(e["attempts"]), peak,
                          format_duration(e["duration_s"]))
        counts = ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items()))
        table.caption = (f"{len(self.tasks)} tasks: {counts or 'none'}"
                         + (f"; {len(self.rejected)} rejected input lines" if self.rejected
                            else "")
                         + _hidden(self.tasks, shown)
                         + f" — logs and summary.json in {self.run_dir}")
        return table


def _hidden(tasks: list[dict], shown: list[dict]) -> str:
    """What the table's caption says of the rows it left out."""
    hidden = len(tasks) - len(shown)
    if not hidden:
        return ""
    not_ok = sum(e["reason"] != "ok" for e in tasks) - sum(e["reason"] != "ok" for e in shown)
    return f"; {hidden} not shown ({f'{not_ok} of them not ok' if not_ok else 'all ok'})"


def _n(task_id: str) -> int:
    tail = task_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
