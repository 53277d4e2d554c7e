"""The supervisor's writes into its run folder, kept going when the folder cannot take
them (the filesystem is full: ENOSPC, EDQUOT; or it went read-only, ...).

A full disk must not stop a fleet: agents stay caged and watched whatever happens to
their log folder. So no write into the run folder raises. Each append-only file
(events.jsonl, results.jsonl, a pool task's answers, a Ray task's returned logs) is
a :class:`Spool`: a record that cannot be written now is held in memory, in order,
and retried on the next write and on every loop tick, until the folder has room
again. Holding is bounded (:data:`HOLD_BYTES` per budget): beyond it whole records
are dropped and counted, never half-written, so a file that catches up is still
whole lines. A record the kernel took only part of (a short write as the disk
filled) keeps its rest held, so the file never has a torn line once room returns.

:class:`FolderHealth` is shared by every writer of one run folder: it says once on
stderr that the folder cannot be written, remembers that it happened (the run then
exits 4, see summary.py), and counts what was dropped.
"""

from __future__ import annotations

import collections
import errno
import os
import threading

from agent_supervise.observe.printer import stderr_line
from agent_supervise.units import format_size

#: Memory one budget (events; results; all other files together) may hold.
HOLD_BYTES = 4 << 20
APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
FULL = (errno.ENOSPC, errno.EDQUOT)


class Budget:
    def __init__(self, limit: int = HOLD_BYTES) -> None:
        self.limit = limit
        self.used = 0


class FolderHealth:
    """Whether the run folder takes writes, said once; what was held and dropped.

    Its lock is a leaf: nothing else is locked while it is held, so a spool may call
    in here under its own lock."""

    def __init__(self, path: str, say=stderr_line) -> None:
        self.path = path
        self.say = say
        self.error: str | None = None  # the first failure: "No space left on device"
        self.failing = False  # writes are failing now
        self.dropped: collections.Counter = collections.Counter()  # file -> records
        self.discarded_logs = 0  # agents started with output to /dev/null
        self.news: list[dict] = []  # changes for the fleet to log as events
        self.spools: list[Spool] = []
        self.others = Budget()  # shared by the files written now and then
        self._by_path: dict[str, Spool] = {}
        self._lock = threading.Lock()

    def failed(self, err: OSError, what: str) -> None:
        with self._lock:
            if not self.failing:
                self.news.append({"state": "unwritable", "error": err.strerror, "what": what})
            self.failing = True
            first = self.error is None
            if first:
                self.error = err.strerror or str(err)
        if first:
            kind = "is full" if err.errno in FULL else "cannot be written"
            self.say(
                f"agent-supervise: the run folder {self.path} {kind} ({self.error}, "
                f"writing {what}): agents keep running, capped and watched; the "
                f"supervisor holds its own writes in memory (up to "
                f"{format_size(HOLD_BYTES)} each for events, results and other "
                f"files, then drops whole lines and counts them) and retries them; "
                f"agents whose log files cannot be "
                f"created write to /dev/null (exit code 4 at the end)"
            )

    def dropped_one(self, name: str) -> None:
        with self._lock:
            self.dropped[name] += 1

    def retry(self, emit=None) -> bool:
        """Write what is held (every loop tick; cheap when nothing is), and hand the
        changes of state to ``emit`` as ``run_folder`` events. True when nothing is
        held any more."""
        with self._lock:
            spools = [s for s in self.spools if s.held]
        done = all([spool.flush() for spool in spools])  # noqa: C419 - every one, in turn
        if spools and done:
            self.succeeded()
        if self._by_path:
            self._close_caught_up()
        while emit and self.news:  # no lock held: the event goes through a spool
            emit("run_folder", **self.news.pop(0))
        return done

    def succeeded(self) -> None:
        """A write got through: if nothing is held any more, the folder takes writes
        again. (Only a write that got through says so: a failing state.json, which
        is never held, must not make it look writable every second.)"""
        if not self.failing:
            return
        with self._lock:
            if not self.failing or any(s.held for s in self.spools):
                return
            self.failing = False
            self.news.append({"state": "writable", "dropped": dict(self.dropped)})

    def _close_caught_up(self) -> None:
        """A file written now and then needs no open fd once it caught up. Called
        from the loop's thread only, like append(), which alone writes such files."""
        with self._lock:
            idle = [(path, s) for path, s in self._by_path.items() if not s.held]
            for path, spool in idle:
                del self._by_path[path]
                self.spools.remove(spool)
        for _, spool in idle:
            spool.close()

    def held(self) -> int:
        with self._lock:
            spools = list(self.spools)
        return sum(s.held_bytes() for s in spools)

    def append(self, path: str, data: bytes) -> None:
        """Append to a file written now and then (a pool answer, a returned log,
        checkpoint lines from a node): opened for each write, unless earlier writes
        to it are still held. The file is created even for empty ``data``."""
        with self._lock:
            spool = self._by_path.get(path)
        if spool is None:
            error: OSError | None
            try:
                fd = os.open(path, APPEND, 0o644)
            except OSError as err:
                rest, error = data, err
            else:
                try:
                    rest, error = _write(fd, data)
                finally:
                    os.close(fd)
            if error is None:
                return
            self.failed(error, os.path.basename(path))
            with self._lock:
                spool = self._by_path.get(path)
                if spool is None:  # drops counted together: there may be many such files
                    spool = self._by_path[path] = Spool(
                        path, self, self.others, _add=False, label="other files"
                    )
                    self.spools.append(spool)
            spool.hold(rest, begun=len(rest) < len(data))
            return
        spool.write(data)

    def report(self) -> dict | None:
        """What summary.json says of it (None: the folder always took every write)."""
        if self.error is None:
            return None
        return {
            "error": self.error,
            "writable_again": not self.failing,
            "held_bytes": self.held(),
            "dropped_lines": dict(self.dropped),
            "logs_to_dev_null": self.discarded_logs,
        }


class Spool:
    """An append-only file whose records are held in memory while it cannot be
    written. Opened lazily: on a full folder even creating the file may fail."""

    def __init__(
        self,
        path: str,
        health: FolderHealth,
        budget: Budget | None = None,
        _add: bool = True,
        label: str | None = None,
    ) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.label = label or self.name  # what its dropped lines are counted under
        self.health = health
        self.budget = budget or Budget()
        self.fd: int | None = None
        self.held: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()
        if _add:
            with health._lock:
                health.spools.append(self)

    def write(self, data: bytes) -> None:
        """Append one whole record (a line): now, or held, or dropped and counted."""
        with self._lock:
            if self.held and not self._flush():
                self._hold(data, begun=False)
                return
            try:
                rest, error = _write(self._open(), data)
            except OSError as err:  # the open
                rest, error = data, err
            if error is not None:
                self.health.failed(error, self.name)
                self._hold(rest, begun=len(rest) < len(data))
        if error is None and self.health.failing:
            self.health.succeeded()

    def hold(self, data: bytes, begun: bool) -> None:
        with self._lock:
            self._hold(data, begun)

    def _hold(self, data: bytes, begun: bool) -> None:
        """Keep ``data`` for later, within the budget; the rest of a record the file
        already has the beginning of is kept whatever the budget (a torn line would
        corrupt the file for good; it is at most one record per file)."""
        if not data:
            return
        if not begun and self.budget.used + len(data) > self.budget.limit:
            self.health.dropped_one(self.label)
            return
        self.held.append(data)
        self.budget.used += len(data)

    def _open(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.path, APPEND, 0o644)
        return self.fd

    def flush(self) -> bool:
        with self._lock:
            return self._flush()

    def _flush(self) -> bool:
        """Write held records in order; True when none is left."""
        while self.held:
            first = self.held[0]
            try:
                rest, error = _write(self._open(), first)
            except OSError:
                return False
            self.budget.used -= len(first) - len(rest)
            if error is not None:
                self.held[0] = rest
                return False
            self.held.popleft()
        return True

    def held_bytes(self) -> int:
        with self._lock:
            return sum(len(b) for b in self.held)

    def contents(self) -> bytes:
        """The file as it will be once everything held is written."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    disk = f.read()
            except FileNotFoundError:
                disk = b""
            return disk + b"".join(self.held)

    def close(self) -> None:
        with self._lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def _write(fd: int, data: bytes) -> tuple[bytes, OSError | None]:
    """Write as much of ``data`` as the file takes: (what it did not take, the error
    that stopped it). A short write is how a filling disk first shows; the next
    write then raises."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as err:
            return bytes(view), err
        view = view[n:]
    return b"", None
