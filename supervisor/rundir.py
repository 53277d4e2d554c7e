"""A run's folder: ``LOG_DIR/<run-id>/`` with per-agent logs, events.jsonl, summary.json.

Agent output goes straight from the agent to its files: the child's stdout and
stderr *are* the files, so the supervisor never holds agent output in memory (an
agent printing 1 GB costs the supervisor nothing). Event lines are written and
flushed as they happen, so a crash loses at most the line being written.

No write here raises: a folder that cannot take a write (full, read-only) is the
business of :mod:`agent_supervise.spool`, which holds and retries, and says so once.
A new agent whose log files cannot be created runs with its output to /dev/null
rather than being held back: the folder may never have room again, and a queue
that waits on it would stall the fleet and never account for its tasks, while the
agents already running lose their output to the full disk just the same. Its
task's entry says so, with the reason.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import time

from agent_supervise.errors import BadInput
from agent_supervise.jsonout import dumps
from agent_supervise.spool import APPEND, FolderHealth, Spool


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()


def safe_stem(name: str) -> str:
    """A file name that cannot leave its folder, whatever the agent is called."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "agent"
    return stem[:100]


class RunDir:
    def __init__(self, log_dir: str, run_id: str | None = None, where: str = "log_dir") -> None:
        self.run_id = run_id or new_run_id()
        self.path = os.path.abspath(os.path.join(log_dir, self.run_id))
        try:
            os.makedirs(self.path)
        except OSError as err:
            raise BadInput(
                f"{where} {log_dir}: cannot create the run folder: {err.strerror}",
                path=log_dir,
                hint="choose a writable folder with --log-dir",
            ) from None
        self.health = FolderHealth(self.path)
        self.discarded: dict[tuple[str, int], str] = {}  # (task, attempt) -> why

    @functools.lru_cache(maxsize=256)  # noqa: B019 - a few per task, one RunDir per run
    def _stem(self, task_id: str) -> str:
        stem = os.path.join(self.path, safe_stem(task_id))
        assert os.path.dirname(stem) == self.path
        return stem

    def log_paths(self, task_id: str, attempt: int = 1) -> tuple[str, str]:
        """``<task>.out|.err``; a retry writes ``<task>.attempt<N>.out|.err``."""
        stem = self._stem(task_id) + (f".attempt{attempt}" if attempt > 1 else "")
        return stem + ".out", stem + ".err"

    def checkpoint_path(self, task_id: str) -> str:
        """One append-only checkpoint file per task, kept across its attempts."""
        return self._stem(task_id) + ".checkpoint"

    def open_logs(
        self, task_id: str, attempt: int = 1, err_name: str | None = None
    ) -> tuple[int, int]:
        """The agent's stdout and stderr files (``err_name``: a pool worker's own
        stderr log instead). When they cannot be created, /dev/null, and a note for
        the task's entry (see the module's docstring)."""
        out, err = self.log_paths(task_id, attempt)
        if err_name is not None:
            err = os.path.join(self.path, safe_stem(err_name))
        fds: list[int] = []
        try:
            for path in (out, err):
                fds.append(os.open(path, APPEND, 0o644))
            return fds[0], fds[1]
        except OSError as error:
            for fd in fds:
                os.close(fd)
            self.health.failed(error, os.path.basename(path))
            self.health.discarded_logs += 1
            self.discarded[(task_id, attempt)] = (
                f"its output went to /dev/null: {os.path.basename(path)} could not be "
                f"created ({error.strerror})"
            )
            return (
                os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC),
                os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC),
            )

    def logs_note(self, task_id: str, attempt: int, forget: bool = False) -> str | None:
        """Why this attempt's output went to /dev/null (None: it is in its files)."""
        if forget:
            return self.discarded.pop((task_id, attempt), None)
        return self.discarded.get((task_id, attempt))

    def give_file(self, path: str, uid: int, gid: int) -> None:
        """Create ``path`` owned by the agent's user (it may not create files in the
        root-owned folder). A folder that cannot take it: the agent's own writes to
        it will fail, which is the agent's business."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            self.health.failed(error, os.path.basename(path))
            return
        try:
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)

    def append(self, path: str, data: bytes) -> None:
        """Append to a file of the run folder (held and retried when it is full)."""
        assert os.path.dirname(path) == self.path
        self.health.append(path, data)

    def write_json(self, name: str, data) -> bool:
        """Replace ``name`` atomically (write a temporary file, then rename). False
        when the folder could not take it: the old file stays as it was."""
        path = os.path.join(self.path, name)
        tmp = f"{path}.tmp"
        text = (dumps(data) + "\n").encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(text)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self.health.succeeded()
            return True
        except OSError as error:
            try:
                os.unlink(tmp)  # a half-written file takes the space others need
            except OSError:
                pass
            self.health.failed(error, name)
            return False

    def write_summary(self, summary: dict) -> bool:
        """summary.json: the fleet's result (summary.FleetResult.to_json). False when
        the folder could not take it (FleetResult.settle tries again)."""
        return self.write_json("summary.json", summary)


class EventLog:
    """events.jsonl: one JSON object per line; ``t`` is seconds since the run began."""

    def __init__(self, path: str, clock=time.monotonic, health: FolderHealth | None = None) -> None:
        self.path = path
        self.clock = clock
        self.t0 = clock()
        self._spool = Spool(path, health or FolderHealth(os.path.dirname(path)))
        self.listeners: list = []

    def emit(self, event: str, **fields) -> dict:
        record = {
            "t": round(self.clock() - self.t0, 4),
            "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            **fields,
        }
        self._spool.write((json.dumps(record) + "\n").encode())  # one write per line
        for listener in list(self.listeners):
            try:
                listener(record)
            except OSError:  # a printer whose terminal hung up: the run goes on
                self.listeners.remove(listener)
        return record

    def close(self) -> None:
        self._spool.flush()
        self._spool.close()


def parse_lines(data: bytes) -> list[dict]:
    """JSON lines; a last line cut short (the folder filled up, the writer died) is
    left out rather than failing every reader."""
    lines = data.split(b"\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
    return records


def read_events(path: str) -> list[dict]:
    with open(path, "rb") as f:
        return parse_lines(f.read())
