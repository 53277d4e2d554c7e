"""The tool's own lines on stdout and stderr, delivered whole even when the file is
non-blocking: the one place where agent-supervise writes to its standard streams.

``O_NONBLOCK`` belongs to the open file *description*, and an agent shares ours when
it inherits our stderr (``run`` passes stdio straight through; so does whatever
started us): one ``os.set_blocking(2, False)`` inside an agent, and our next write
to a full pipe fails with EAGAIN, or writes half a line. Python then drops the
outcome line, or raises in the middle of the ``--json`` object. Clearing the flag
again would race with the agent (it is still its flag too) and would block forever
on a reader that stopped; so instead every write goes through :func:`write_all`:
write, and on EAGAIN or a partial write poll for POLLOUT and carry on for as long as
the reader keeps taking bytes (at most ``STALL_S`` without progress, ``WRITE_S`` in
all). A stream that gave up once is not waited on again until the reader takes a byte
again, so a reader that stopped costs the fleet's loop one wait, not one per line;
:func:`forget_stalls` lifts that for the final lines, which get full patience.

:func:`install` puts this under ``sys.stdout`` and ``sys.stderr`` (the CLI calls it
first), so click, rich (the table, the dashboard) and the event lines all use it.
"""

from __future__ import annotations

import io
import os
import select
import sys
import time

#: Give up on a write after this long without the reader taking a byte.
STALL_S = 5.0
#: ... or after this long in all, however slowly it reads.
WRITE_S = 30.0

_stalled: set[int] = set()
#: Bytes given up on, per fd (a reader that stopped reading for good).
lost: dict[int, int] = {}
_kept: list = []  # the streams we replaced: alive, so that nothing closes fds 1 and 2


def write_all(fd: int, data: bytes, stall: float = STALL_S, total: float = WRITE_S) -> int:
    """Write all of ``data`` to ``fd``, waiting out EAGAIN and partial writes; return
    how much was written (less only when the reader stalled). EPIPE still raises:
    a reader that left (``| head``) is the caller's to handle."""
    view = memoryview(data)
    done = 0
    start = last = time.monotonic()
    while done < len(view):
        try:
            n = os.write(fd, view[done:])
        except BlockingIOError:
            n = 0
        now = time.monotonic()
        if n:  # progress: the reader is there (again), so it is worth waiting for
            done, last = done + n, now
            _stalled.discard(fd)
            continue
        left = min(stall - (now - last), total - (now - start))
        if fd in _stalled or left <= 0:
            _stalled.add(fd)
            lost[fd] = lost.get(fd, 0) + len(view) - done
            return done
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll(left * 1000)  # POLLERR/POLLHUP wake it too: the write then says why
    _stalled.discard(fd)
    return done


def forget_stalls() -> None:
    """The run is over: its last lines get full patience even on a stream that
    stalled during the run."""
    _stalled.clear()


class PatientRaw(io.RawIOBase):
    """A raw stream over an fd that is not ours to close, writing with write_all."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, b) -> int:
        # What a stalled reader did not take is counted in ``lost`` and reported as
        # written: the layers above must not raise half-way through a line.
        write_all(self._fd, bytes(b))
        return len(b)


def install() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through :func:`write_all`. Streams that
    are not the process's fds 1 and 2 (a test's capture, a host program's own
    replacement) are left alone."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            if stream is None or stream.fileno() != fd:
                continue
        except (AttributeError, OSError, ValueError):
            continue
        if isinstance(getattr(getattr(stream, "buffer", None), "raw", None), PatientRaw):
            continue
        try:
            stream.flush()
        except OSError:
            pass
        buffer = io.BufferedWriter(PatientRaw(fd))
        patient = io.TextIOWrapper(
            buffer,
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=stream.line_buffering,
            write_through=getattr(stream, "write_through", False),
        )
        _kept.append(stream)
        setattr(sys, name, patient)
