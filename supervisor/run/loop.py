"""The supervisor's event loop: one thread, one ``epoll``, timers from a heap of deadlines.

What wakes it:
* a **pidfd** per agent root (readable when the root exits) -> ``waitpid(pid)``;
* each cage's **notification fd** (cgroup v2 ``memory.events`` with POLLPRI, the v1
  OOM eventfd) -> an OOM is handled at once, not at the next sample;
* the **signal wake-up fd** (``signal.set_wakeup_fd``): SIGCHLD reaps adopted
  orphans; SIGINT/SIGTERM/SIGHUP are handed to ``on_interrupt``;
* the earliest **deadline** of any run (sample due, grace over, timeout).
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable

from agent_supervise.proctree import ProcessTable
from agent_supervise.run.lifecycle import AgentRun
from agent_supervise.run.reaper import OrphanTracker

INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalInbox:
    """Signal handlers that only record the signal and wake the loop's epoll."""

    def __init__(self, signums=(*INTERRUPTS, signal.SIGCHLD)) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pending: list[int] = []
        self._previous = {s: signal.signal(s, self._record) for s in signums}
        self._previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)

    def _record(self, signum, frame) -> None:
        self.pending.append(signum)

    def drain(self) -> list[int]:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass
        got, self.pending = self.pending, []
        return got

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self.read_fd)
        os.close(self.write_fd)


class Loop:
    """Drives :class:`AgentRun` objects. ``clock`` and ``table`` are injectable."""

    def __init__(
        self,
        *,
        clock=time.monotonic,
        table: ProcessTable | None = None,
        reap_foreign: bool = True,
        on_interrupt=None,
    ) -> None:
        self.clock = clock
        self.table = table or ProcessTable()
        self.tracker = OrphanTracker(self.table, reap_foreign)
        self.epoll = select.epoll()
        self.runs: dict[int, AgentRun] = {}
        self._handlers: dict[int, Callable[[], None]] = {}
        self._pidfds: dict[int, int] = {}
        self.on_interrupt = on_interrupt or self.interrupt_all
        self.signals: SignalInbox | None = None
        # Other threads (submit(), the stdin task reader) wake the loop through this.
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.register(self._wake_fd, select.EPOLLIN, self._drain_wake)

    def catch_signals(self) -> bool:
        """Take SIGINT/SIGTERM/SIGHUP/SIGCHLD, if this is the main thread (Python runs
        signal handlers only there). Without them, exits still arrive via pidfds and
        orphans are reaped on every step."""
        if self.signals or threading.current_thread() is not threading.main_thread():
            return self.signals is not None
        self.signals = SignalInbox()
        self.register(self.signals.read_fd, select.EPOLLIN, self._on_signals)
        return True

    def wake(self) -> None:
        """Make a blocked ``step()`` return; safe from any thread."""
        os.eventfd_write(self._wake_fd, 1)

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    # -- registration ---------------------------------------------------------
    def register(self, fd: int, mask: int, handler) -> None:
        self.epoll.register(fd, mask)
        self._handlers[fd] = handler

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def watch(self, run: AgentRun) -> None:
        """Start driving ``run``: its root's exit, its cage's OOM notices, its timers."""
        self.runs[run.pid] = run
        try:
            pidfd = os.pidfd_open(run.pid)
        except (AttributeError, OSError):
            pidfd = None  # no pidfd (Linux < 5.3): SIGCHLD and ticks poll waitpid
        if pidfd is not None:
            self._pidfds[run.pid] = pidfd
            self.register(pidfd, select.EPOLLIN, lambda: self._reap_root(run))
        notify = run.cage.notify_fd()
        if notify is not None:
            self.register(notify[0], notify[1], lambda: run.notified(self.clock()))

    def _forget(self, run: AgentRun) -> None:
        pidfd = self._pidfds.pop(run.pid, None)
        if pidfd is not None:
            self.unregister(pidfd)
            os.close(pidfd)
        notify = run.cage.notify_fd()
        if notify is not None:
            self.unregister(notify[0])
        self.runs.pop(run.pid, None)
        self.tracker.forget(run)

    # -- events ---------------------------------------------------------------
    def _reap_root(self, run: AgentRun) -> None:
        if run.status is not None:
            return
        try:
            pid, status = os.waitpid(run.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = run.pid, 0  # reaped elsewhere: status unknown
        if pid == run.pid:
            pidfd = self._pidfds.pop(run.pid, None)
            if pidfd is not None:
                self.unregister(pidfd)
                os.close(pidfd)
            # Its children were reparented to us before it became a zombie.
            self.tracker.scan(self.runs.values())
            now = self.clock()
            report = run.cage.init_report()
            if report is None:
                run.root_exited(status, now)
                return
            # The agent's init exited: the agent itself exited drain_s earlier, and
            # the init gave what it left SIGTERM and the grace before the kernel
            # killed the rest (see limits/isolation.py).
            run.root_exited(report.status, now - report.drain_s, leftovers=report.leftovers)
            note = report.removed()
            if note:
                run.cage.notes.append(note)

    def _on_signals(self) -> None:
        assert self.signals is not None  # registered by catch_signals()
        for signum in self.signals.drain():
            if signum == signal.SIGCHLD:
                self._on_child()
            else:
                self.on_interrupt(signum)

    def _on_child(self) -> None:
        for run in list(self.runs.values()):
            if run.pid not in self._pidfds:
                self._reap_root(run)
        self.tracker.reap(set(self.runs))

    def interrupt_all(self, signum: int) -> None:
        now = self.clock()
        for run in self.runs.values():
            run.interrupted(signum, now)

    # -- the loop -------------------------------------------------------------
    def step(self, max_wait: float | None = None) -> list[AgentRun]:
        """Wait for the next event or deadline, act on it; return runs that ended."""
        now = self.clock()
        due = min((run.next_due() for run in self.runs.values()), default=float("inf"))
        wait = max(0.0, due - now)
        if max_wait is not None:
            wait = min(wait, max_wait)
        if not self.signals and not self._pidfds and self.runs:
            wait = min(wait, 0.05)  # nothing will wake us for an exit: poll
        for fd, _ in self.epoll.poll(None if wait == float("inf") else wait):
            handler = self._handlers.get(fd)
            if handler is not None:
                handler()
        if not self.signals:
            self._on_child()
        now = self.clock()
        sampling = [
            r for r in self.runs.values() if r.status is None and now >= r.watchdog.next_due
        ]
        if sampling:
            self.tracker.scan(self.runs.values())
        if any(run.status is not None for run in self.runs.values()):
            # Killed leftovers become zombie children of ours; a cage counts as
            # empty without them, so reap them now rather than leave them behind.
            self.tracker.reap(set(self.runs))
        ended = []
        for run in list(self.runs.values()):
            run.tick(now)
            if run.finished(now):
                ended.append(run)
        for run in ended:
            self._forget(run)
            run.finish(now)
        return ended

    def close(self) -> None:
        self.tracker.reap(set(self.runs))
        for run in self.runs.values():
            run.cage.close_init()
        for pidfd in self._pidfds.values():
            os.close(pidfd)
        self._pidfds.clear()
        if self.signals:
            self.signals.close()
        self.epoll.close()
        os.close(self._wake_fd)
