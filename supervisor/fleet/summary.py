"""The outcome of a fleet run: one entry per task, counts, the exit code, the table."""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field

from agent_supervise.checkpoint import last_line
from agent_supervise.jsonout import dumps
from agent_supervise.outcome import Reason, signal_name
from agent_supervise.rundir import parse_lines
from agent_supervise.spool import Budget, Spool
from agent_supervise.units import format_duration, format_size

EXIT_SELF_GUARD = 3
#: The driver lost the Ray cluster's head (ray/faults.py): the fleet stopped.
EXIT_CLUSTER_LOST = 5
#: The run folder could not take a write at some point (full, read-only): agents'
#: own logs may be cut short and the folder may lack lines; the summary (in
#: summary.json, or on stderr when even that could not be written) has every task.
EXIT_RUN_FOLDER = 4
#: At the end, how long to wait for a full run folder to take summary.json and
#: what is held, before the summary goes to stderr instead.
FINAL_WAIT_S = 2.0
TABLE_ROWS = 50  # rows of the final table; summary.json has every task


def result_entry(task, outcome, rundir) -> dict:
    """What summary.json and the ``exited`` event say about one task."""
    out, err = rundir.log_paths(task.id, task.attempt)
    started = outcome.reason is not Reason.CANCELLED
    detail = outcome.detail
    discarded = rundir.logs_note(task.id, task.attempt, forget=True)
    if discarded:  # the folder was full when it started
        started, detail = False, "; ".join(d for d in (detail, discarded) if d)
    return {
        "task": task.id,
        "agent": task.agent,
        "reason": outcome.reason.value,
        "exit_code": outcome.exit_code,
        "peak_bytes": outcome.peak_bytes,
        "limit_bytes": task.memory_limit,
        "peak_source": outcome.peak_source,
        "duration_s": round(outcome.duration_s, 3),
        "backend": outcome.backend,
        "pid": outcome.pid,
        "status": outcome.status,
        "signal": signal_name(outcome.signal) if outcome.signal else None,
        "oom_kills": outcome.oom_kills,
        "detail": detail,
        "where": task.where,
        "cmd": list(task.cmd),
        "stdout": out if started else None,
        "stderr": err if started else None,
        "attempts": task.attempt,
        "checkpoint": last_line(rundir.checkpoint_path(task.id)),
    }


class ResultLog:
    """results.jsonl: one line per ended task, written as it ends (held in memory
    while the folder is full, see spool.py); counts in memory."""

    def __init__(self, path: str, health) -> None:
        self.path = path
        self._spool = Spool(path, health, Budget())
        self.counts: collections.Counter = collections.Counter()

    def append(self, entry: dict) -> None:
        self._spool.write((json.dumps(entry) + "\n").encode())
        self.counts[entry["reason"]] += 1

    def __len__(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return len(self) - self.counts["ok"]

    def read(self) -> list[dict]:
        """Every entry: those in the file and those still held."""
        return parse_lines(self._spool.contents())

    def close(self) -> None:
        self._spool.close()


@dataclass(frozen=True)
class FleetEnd:
    """How a fleet run ended, as plain values (``Supervisor._end``)."""

    run_id: str
    run_dir: str
    duration_s: float
    stopping: str | None  # interrupted, self_guard, run_timeout, cluster_lost
    message: str | None  # what the stop said
    stop_signal: int | None  # the signal that interrupted it
    rejected: list[dict]  # input lines refused
    tasks: list[dict]  # results.jsonl and what is held
    counts: dict  # reason -> tasks, every task counted
    folder_failed: bool  # the run folder refused a write at some point
    run_folder: dict | None  # what the full folder cost (spool.FolderHealth)


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
    run_folder: dict | None = None  # what the full folder cost (spool.FolderHealth)
    written: bool = True  # summary.json is in the run folder

    @classmethod
    def build(cls, end: FleetEnd) -> FleetResult:
        """The result; the run folder writes it (``RunDir.write_summary``)."""
        tasks = sorted(end.tasks, key=lambda e: (e["agent"], _n(e["task"])))
        if end.stopping == "interrupted" and end.stop_signal is not None:
            code = 128 + end.stop_signal
        elif end.stopping == "self_guard":
            code = EXIT_SELF_GUARD
        elif end.stopping == "cluster_lost":
            code = EXIT_CLUSTER_LOST
        elif end.folder_failed:
            code = EXIT_RUN_FOLDER
        else:
            code = 0 if set(end.counts) <= {"ok"} and not end.rejected else 1
        return cls(
            end.run_id,
            end.run_dir,
            end.duration_s,
            code,
            tasks,
            list(end.rejected),
            end.stopping,
            end.message,
            dict(end.counts),
            end.run_folder,
        )

    def settle(self, rundir, results: ResultLog, wait: float = FINAL_WAIT_S) -> None:
        """The run is over. If its folder could not take every write: wait a little
        for room (summary.json first, then what is held), then say on stderr what is
        not in the folder, so that every task is accounted for."""
        health = rundir.health
        deadline = time.monotonic() + wait
        while True:
            if not self.written:
                self.run_folder = health.report()
                self.written = rundir.write_summary(self.to_json())
            if (health.retry() and self.written) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        results.close()
        if health.error is None:
            return
        before, report = self.run_folder, health.report()
        self.run_folder = report
        if self.written and report != before:  # it caught up meanwhile: say so in it
            self.written = rundir.write_summary(self.to_json())
        dropped = ", ".join(
            f"{n} lines of {name}" for name, n in sorted(report["dropped_lines"].items())
        )
        facts = [f"{dropped} dropped" if dropped else "no line was dropped"]
        if report["held_bytes"]:
            facts.append(f"{report['held_bytes']} bytes held were never written")
        if report["logs_to_dev_null"]:
            facts.append(f"{report['logs_to_dev_null']} agents' output went to /dev/null")
        state = "takes writes again" if report["writable_again"] else "still cannot be written"
        tally = f"{self.total()} tasks: {_counts(self)}"
        health.say(
            f"agent-supervise: the run folder {rundir.path} {state} (it failed "
            f"with: {health.error}): {'; '.join(facts)}; "
            + (
                f"summary.json accounts for all {tally}{_lost(self)}"
                if self.written
                else f"summary.json could not be written, so it follows on stderr "
                f"({tally}{_lost(self)})"
            )
            + f"; exit {EXIT_RUN_FOLDER}" * (self.exit_code == EXIT_RUN_FOLDER)
        )
        if not self.written:
            health.say(dumps(self.to_json()))

    def total(self) -> int:
        """Tasks that ended: every one is counted, even one whose entry was lost."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "duration_s": round(self.duration_s, 3),
            "exit_code": self.exit_code,
            "stopping": self.stopping,
            "message": self.message,
            "counts": self.counts,
            "run_folder": self.run_folder,
            "rejected": self.rejected,
            "tasks": self.tasks,
        }

    def table(self, max_rows: int = TABLE_ROWS):
        """A rich Table: agent, task, reason, exit code, peak/cap, duration. Past
        ``max_rows`` tasks it shows every one that did not end ok (up to the limit)
        before any that did, and its caption says how many are left to summary.json:
        a 1,000-row table takes seconds to draw and nobody reads it."""
        from rich.table import Table

        table = Table(title=f"run {self.run_id}", title_justify="left")
        for name, justify in (
            ("agent", "left"),
            ("task", "left"),
            ("reason", "left"),
            ("exit", "right"),
            ("tries", "right"),
            ("peak / cap", "right"),
            ("time", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]  # rich: Literal
        shown = self.tasks
        if len(shown) > max_rows:
            keep = {id(e) for e in sorted(shown, key=lambda e: e["reason"] == "ok")[:max_rows]}
            shown = [e for e in shown if id(e) in keep]
        for e in shown:
            style = "green" if e["reason"] == "ok" else "red"
            peak = f"{format_size(e['peak_bytes'])} / {format_size(e['limit_bytes'])}"
            table.add_row(
                e["agent"],
                e["task"],
                f"[{style}]{e['reason']}[/]",
                "-" if e["exit_code"] is None else str(e["exit_code"]),
                str(e["attempts"]),
                peak,
                format_duration(e["duration_s"]),
            )
        lost = self.total() - len(self.tasks)
        table.caption = (
            f"{len(self.tasks)} tasks: {_counts(self)}"
            + (f" ({lost} of them lost to the full run folder)" if lost > 0 else "")
            + (f"; {len(self.rejected)} rejected input lines" if self.rejected else "")
            + _hidden(self.tasks, shown)
            + f" — logs and summary.json in {self.run_dir}"
        )
        return table


def _lost(result: FleetResult) -> str:
    lost = result.total() - len(result.tasks)
    return f"; {lost} of their entries were dropped (in counts only)" if lost > 0 else ""


def _counts(result: FleetResult) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(result.counts.items())) or "none"


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
