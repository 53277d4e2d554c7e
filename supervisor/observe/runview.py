"""Looking at a run from another terminal: ``status`` and ``logs``.

``status`` reads the ``state.json`` snapshot that the loop replaces atomically
every second (never a half-written file), and says whether the supervisor
that writes it is still alive.
"""

from __future__ import annotations

import glob
import json
import os
import time

from agent_supervise.errors import BadInput


def find_run(run_dir: str | None, log_dir: str = "runs") -> str:
    """``run_dir`` itself, or the newest run folder under ``log_dir``."""
    if run_dir:
        if not os.path.isdir(run_dir):
            raise BadInput(f"{run_dir}: no such run folder", hint="see the runs/ folder")
        return run_dir
    runs = run_folders(log_dir)
    if not runs:
        raise BadInput(f"no run folder under {log_dir}/", hint="give the run folder")
    return runs[0]


def run_folders(log_dir: str = "runs") -> list[str]:
    """The run folders under ``log_dir`` (fleet's default ``log_dir``), newest first:
    by their event log, which the fleet appends to while it runs."""
    runs = [
        d
        for d in glob.glob(os.path.join(log_dir, "*"))
        if os.path.exists(os.path.join(d, "events.jsonl"))
    ]
    return sorted(runs, key=lambda d: os.path.getmtime(os.path.join(d, "events.jsonl")))[::-1]


def run_with_task(task: str, stream: str, log_dir: str = "runs") -> str:
    """The newest run folder under ``log_dir`` with a log of ``task`` (a task id or an
    agent name), for ``logs TASK`` without a run folder."""
    for run_dir in run_folders(log_dir):
        try:
            log_files(run_dir, task, stream)
        except BadInput:
            continue
        return run_dir
    raise BadInput(
        f"no run folder under {log_dir}/ has a log for {task!r}",
        hint="give the run folder first (logs RUN_DIR TASK), or a task id such as researcher-1",
    )


def load_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, "state.json")
    try:
        with open(path) as f:
            snap = json.load(f)
    except FileNotFoundError:
        raise BadInput(f"{run_dir}: no state.json yet", hint="the run may be starting") from None
    snap["alive"] = not snap["finished"] and _is_supervisor(snap["supervisor_pid"])
    return snap


def _is_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        return b"agent_supervise" in cmdline or b"agent-supervise" in cmdline
    except OSError:
        return False


def verdict(snap: dict) -> str:
    if snap["finished"]:
        return "finished"
    if snap["alive"]:
        return "running"
    return f"not finished, and its supervisor (pid {snap['supervisor_pid']}) is gone"


def log_files(run_dir: str, task: str, stream: str) -> list[str]:
    """The log files of a task id (``researcher-1``) or of every task of an agent."""
    suffix = ".err" if stream == "err" else ".out"
    exact = sorted(
        glob.glob(os.path.join(run_dir, glob.escape(task) + f"{suffix}"))
        + glob.glob(os.path.join(run_dir, glob.escape(task) + f".attempt*{suffix}"))
    )
    if exact:
        return exact
    found = sorted(glob.glob(os.path.join(run_dir, glob.escape(task) + f"-*{suffix}")))
    if not found:
        raise BadInput(
            f"{run_dir}: no {suffix} log for {task!r}",
            hint="give a task id such as researcher-1, or an agent name",
        )
    return found


def wait_for_logs(run_dir: str, task: str, stream: str, poll: float = 0.2) -> list[str]:
    """The task's log files, waiting for them while the run goes on (it may be queued)."""
    while True:
        try:
            return log_files(run_dir, task, stream)
        except BadInput:
            if os.path.exists(os.path.join(run_dir, "summary.json")):
                raise
        time.sleep(poll)


def follow(paths: list[str], run_dir: str, write, poll: float = 0.2) -> None:
    """Print the files, then what is appended to them, until the run has finished."""
    offsets = dict.fromkeys(paths, 0)
    while True:
        for path in paths:
            with open(path, "rb") as f:
                f.seek(offsets[path])
                chunk = f.read()
            offsets[path] += len(chunk)
            if chunk:
                write(chunk)
        if os.path.exists(os.path.join(run_dir, "summary.json")):
            return
        time.sleep(poll)
