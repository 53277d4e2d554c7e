"""A run's folder: ``LOG_DIR/<run-id>/`` with per-agent logs, events.jsonl, summary.json.

Agent output goes straight from the agent to its files: the child's stdout and
stderr *are* the files, so the supervisor never holds agent output in memory (an
agent printing 1 GB costs the supervisor nothing). Event lines are written and
flushed as they happen, so a crash loses at most the line being written.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import threading
import time

from .errors import BadInput
from .jsonout import dumps


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
            raise BadInput(f"{where} {log_dir}: cannot create the run folder: "
                           f"{err.strerror}", path=log_dir,
                           hint="choose a writable folder with --log-dir") from None

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

    def open_logs(self, task_id: str, attempt: int = 1) -> tuple[int, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out, err = self.log_paths(task_id, attempt)
        return os.open(out, flags, 0o644), os.open(err, flags, 0o644)

    def write_json(self, name: str, data) -> str:
        """Replace ``name`` atomically (write a temporary file, then rename)."""
        path = os.path.join(self.path, name)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(dumps(data) + "\n")
        os.replace(tmp, path)
        return path


class EventLog:
    """events.jsonl: one JSON object per line; ``t`` is seconds since the run began."""

    def __init__(self, path: str, clock=time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.t0 = clock()
        self._file = open(path, "a", buffering=1)  # line-buffered: flushed per event
        self._lock = threading.Lock()
        self.listeners: list = []

    def emit(self, event: str, **fields) -> dict:
        record = {"t": round(self.clock() - self.t0, 4),
                  "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                  "event": event, **fields}
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
        for listener in list(self.listeners):
            try:
                listener(record)
            except OSError:  # a printer whose terminal hung up: the run goes on
                self.listeners.remove(listener)
        return record

    def close(self) -> None:
        self._file.close()


def read_events(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
