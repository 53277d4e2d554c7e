"""Streaming checkpoints: the agent appends lines; the supervisor reads only the last.

An agent finds ``AGENT_CHECKPOINT_FILE`` in its environment and appends one line per
checkpoint (``agent_supervise.checkpoint("step 3")`` does it for Python agents).
The supervisor never keeps checkpoints in memory: it reads a bounded tail of the
file when it needs the last one. On a retry the agent gets ``AGENT_RESUME_FROM`` =
that last line, and ``AGENT_ATTEMPT``.
"""

from __future__ import annotations

import os

from agent_supervise.tailfile import from_line_start, read_tail

TAIL_BYTES = 64 * 1024


def checkpoint(text: str) -> None:
    """Record a checkpoint (one line of text) for the supervisor; no-op outside it."""
    path = os.environ.get("AGENT_CHECKPOINT_FILE")
    if not path:
        return
    line = " ".join(str(text).splitlines()) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode())  # one append write: never interleaved, never torn
    finally:
        os.close(fd)


def resume_from() -> str | None:
    """The last checkpoint of the previous attempt, when this run is a retry."""
    return os.environ.get("AGENT_RESUME_FROM") or None


def last_line(path: str, limit: int = TAIL_BYTES) -> str | None:
    """The last complete line of ``path``, reading at most ``limit`` bytes from its end."""
    try:
        tail, size = read_tail(path, limit)
    except FileNotFoundError:
        return None
    # after the last newline: an unfinished line, or nothing
    complete = from_line_start(tail, size, limit).split(b"\n")[:-1]
    for line in reversed(complete):
        if line.strip():
            return line.decode("utf-8", "replace")
    return None


class CheckpointWatch:
    """Notices new checkpoints with one ``stat`` per agent per tick."""

    def __init__(self, path_of) -> None:
        self.path_of = path_of
        self._sizes: dict[str, int] = {}

    def new_line(self, task_id: str) -> str | None:
        """The last checkpoint line, if the file changed since the last look."""
        path = self.path_of(task_id)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return None
        if size == self._sizes.get(task_id):
            return None
        self._sizes[task_id] = size
        return last_line(path)

    def forget(self, task_id: str) -> None:
        self._sizes.pop(task_id, None)
