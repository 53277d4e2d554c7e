"""``--tasks -``: tasks as JSON lines from a stream, with real pipe backpressure.

The reader thread blocks in ``submit()`` while the queue is full and reads nothing
more meanwhile, so the producer upstream blocks on its full pipe: it feels the
fleet's pace. A malformed line is reported with its line number and skipped.

Lines are read in bounded pieces: one longer than ``bounds.MAX_LINE_BYTES`` is
rejected and skipped without ever being held whole (a 60 MB line costs 64 KiB).
"""

from __future__ import annotations

import threading

from agent_supervise.agents.bounds import MAX_LINE_BYTES
from agent_supervise.agents.tasks import parse_task_json
from agent_supervise.errors import BadInput, QueueClosed

#: How much of an over-long line is read at a time while skipping it.
SKIP_CHUNK = 64 << 10


def bounded_lines(stream, limit: int = MAX_LINE_BYTES):
    """(line number, text) for each line of ``stream`` (bytes or text), ``text`` None
    for a line longer than ``limit``, whose rest is read and dropped piecewise."""
    lineno = 0
    while True:
        chunk = stream.readline(limit + 1)
        if not chunk:
            return
        lineno += 1
        newline = b"\n" if isinstance(chunk, bytes) else "\n"
        if len(chunk) <= limit or chunk.endswith(newline):
            yield lineno, (chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk)
            continue
        del chunk
        while True:
            rest = stream.readline(SKIP_CHUNK)
            if not rest or rest.endswith(newline):
                break
        yield lineno, None


class TaskFeed(threading.Thread):
    def __init__(self, stream, supervisor, name: str = "stdin") -> None:
        super().__init__(name=f"task-feed-{name}", daemon=True)
        self.stream = stream
        self.supervisor = supervisor
        self.source = name
        supervisor.feed_opened()

    def run(self) -> None:
        try:
            self._read()
        except (OSError, ValueError) as err:  # the stream failed (EIO, a closed file)
            self.supervisor.reject(self.source, f"{self.source}: reading stopped: {err}")
        finally:
            self.supervisor.feed_closed()

    def _read(self) -> None:
        for lineno, text in bounded_lines(self.stream):
            where = f"{self.source}:{lineno}"
            if text is None:
                self.supervisor.reject(
                    where,
                    f"{where}: the line is longer than "
                    f"{MAX_LINE_BYTES // (1 << 20)} MiB, the limit for "
                    "a task line (skipped unread; pass large values "
                    "in a file the agent reads)",
                )
                continue
            line = text.strip()
            if not line or line.startswith("#"):
                continue
            try:
                spec = parse_task_json(line, self.supervisor.fleet.agents, where)
                self.supervisor.submit(spec, block=True)
            except BadInput as err:
                self.supervisor.reject(where, str(err))
            except QueueClosed:
                self.supervisor.reject(where, "not queued: the fleet was stopping")
                break
