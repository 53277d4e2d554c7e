"""``--tasks -``: tasks as JSON lines from a stream, with real pipe backpressure.

The reader thread blocks in ``submit()`` while the queue is full and reads nothing
more meanwhile, so the producer upstream blocks on its full pipe: it feels the
fleet's pace. A malformed line is reported with its line number and skipped.
"""

from __future__ import annotations

import threading

from .agents.loader import parse_task_json
from .errors import BadInput
from .taskqueue import QueueClosed


class TaskFeed(threading.Thread):
    def __init__(self, stream, supervisor, name: str = "stdin") -> None:
        super().__init__(name=f"task-feed-{name}", daemon=True)
        self.stream = stream
        self.supervisor = supervisor
        self.source = name
        supervisor.feed_opened()

    def run(self) -> None:
        try:
            for lineno, raw in enumerate(self.stream, 1):
                line = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) \
                    else raw.strip()
                if not line or line.startswith("#"):
                    continue
                where = f"{self.source}:{lineno}"
                try:
                    spec = parse_task_json(line, self.supervisor.fleet.agents, where)
                    self.supervisor.submit(spec, block=True)
                except BadInput as err:
                    self.supervisor.reject(where, str(err))
                except QueueClosed:
                    self.supervisor.reject(where, "not queued: the fleet was stopping")
                    break
        finally:
            self.supervisor.feed_closed()
