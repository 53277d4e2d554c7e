"""The end of a file that may still be growing (logs, checkpoints): one home for
reading it, so every reader bounds its memory the same way."""

from __future__ import annotations

import os


def read_tail(path: str, limit: int) -> tuple[bytes, int]:
    """The last ``limit`` bytes of ``path`` and its whole size at that moment.

    Raises OSError (FileNotFoundError...) for the caller to decide what a missing
    file means. The size is taken with the read's own seek, so a writer appending
    meanwhile only makes the tail shorter than the size says, never torn."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        return f.read(limit), size


def from_line_start(data: bytes, size: int, limit: int) -> bytes:
    """A tail cut to begin at a line: when the file was longer than ``limit``, the
    first piece may begin in the middle of a line."""
    return data if size <= limit else data[data.find(b"\n") + 1 :]
