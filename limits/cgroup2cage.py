"""One cgroup v2 cage: a leaf with ``memory.max``, ``memory.swap.max=0``,
``memory.oom.group=1``, and how it is watched, killed and emptied.

Where the leaf goes (the parent, a delegated scope) is
:class:`~agent_supervise.limits.cgroup2.Cgroup2Backend`'s. Kernel behaviour this
module relies on (Documentation/admin-guide/cgroup-v2.rst):

* ``memory.oom.group=1`` makes the OOM killer kill every process of the cgroup at
  once: the agent dies as one unit. ``memory.events`` then counts the victim twice,
  as the victim and again as a member of its group: ``oom_kill`` is 1 + the number
  of processes (2 for one process, 3 for a shell and its python), ``oom_group_kill``
  1 (kernel 5.17+). So the number of OOM kills of the agent is ``oom_group_kill``.
* ``memory.events`` and ``cgroup.events`` signal changes with POLLPRI (kernfs
  notify); the fd must be re-read after each wake-up to re-arm it. A freshly opened
  fd polls ready (POLLPRI|POLLERR) until its first read, so it is read once at open.
  The kernel defers a notification that follows another within 20 ms
  (``CGROUP_FILE_NOTIFY_MIN_INTV``): it comes late, never not at all.
* ``cgroup.kill`` (5.14+) SIGKILLs the whole cgroup and its descendants, including
  processes forked while the kill runs. Right after it, ``cgroup.procs`` still lists
  the dying process and ``rmdir`` is EBUSY (about 3 ms in User-Mode Linux): wait
  for ``populated 0`` in ``cgroup.events`` before ``rmdir``.
* ``cgroup.procs`` lists only the cgroup's own processes; an agent running as root
  may make sub-cgroups in its cage and move into them. ``populated`` covers the
  whole subtree, and ``members()`` reads the sub-cgroups too.
* Limits are stored in pages: ``memory.max`` and ``memory.swap.max`` read back
  rounded down to a page; the kernel also takes ``50M``, read back as bytes.
* The process cap is ``pids.max`` in the same leaf (pids.py), when the pids
  controller is offered: it is enabled in the parent's ``subtree_control`` beside
  memory. Sub-cgroups are always charged to their parent (memory and pids alike),
  so one an agent running as root makes in its cage cannot raise its caps; the
  leaf's own ``memory.max``, ``memory.swap.max``, ``memory.oom.group`` and
  ``pids.max`` are guarded against the agent's writes (guard.py).
"""

from __future__ import annotations

import os
import select
import time

from agent_supervise.errors import CageError
from agent_supervise.limits.cgroupcage import CgroupCage, page_floor
from agent_supervise.limits.cgroupfs import parse_flat_keyed
from agent_supervise.limits.guard import Guard, PeakGuard
from agent_supervise.limits.pids import exceeded_detail, max_events


class Cgroup2Cage(CgroupCage):
    usage_file = "memory.current"
    hierarchy = ""
    threads_file = "cgroup.threads"

    def set_high(self, high: int) -> None:
        """memory.high: above it the kernel reclaims the agent's pages and throttles
        its allocations, before memory.max kills it."""
        self.write_checked("memory.high", str(high), str(page_floor(high)))
        self.high = high

    def throttled(self, usage: int) -> bool:
        """memory.events counts each time the agent went over memory.high (the
        kernel holds its usage near memory.high, so a sample may never show it)."""
        if self.high is None:
            return False
        events = parse_flat_keyed(self.fs.read(self._file("memory.events")))
        return events.get("high", 0) > 0

    def hold_children(self) -> None:
        """A budget's parent: its children get the memory (and pids) controller, and
        an OOM kill at the budget takes one agent, not every agent (oom.group 0)."""
        if self.fs.exists(self._file("memory.oom.group")):
            self.write_checked("memory.oom.group", "0")
        offered = self.fs.read(self._file("cgroup.controllers")).split()
        self.fs.write(self._file("cgroup.subtree_control"), "+memory")
        if "pids" in offered:
            self.fs.write(self._file("cgroup.subtree_control"), "+pids")

    def configure(self) -> None:
        self.write_checked("memory.max", str(self.limit), str(page_floor(self.limit)))
        self._guarded = ["memory.max"]
        self._pids_events_fd: int | None = None
        if self.fs.exists(self._file("memory.swap.max")):
            self.write_checked("memory.swap.max", "0")
            self._guarded.append("memory.swap.max")
        else:
            self.notes.append(
                "memory.swap.max is missing (no swap accounting): the cap covers RAM only"
            )
        if self.fs.exists(self._file("memory.oom.group")):
            self.write_checked("memory.oom.group", "1")
            self._guarded.append("memory.oom.group")
        else:
            self.notes.append(
                "memory.oom.group is missing (kernel < 4.19): the "
                "supervisor kills the rest of the agent after an OOM kill"
            )
        if self.pids_limit > 0 and self.fs.exists(self._file("pids.max")):
            self.write_checked("pids.max", str(self.pids_limit))
            self._guarded.append("pids.max")
        elif self.pids_limit > 0:
            self.notes.append(
                "pids.max is missing (the pids controller is not offered "
                "here): the watchdog counts the cage's processes instead"
            )

    def open_files(self) -> None:
        super().open_files()
        self._events_fd = self._keep_open("memory.events")
        # Read once: the read arms kernfs notification; unread, a new fd polls ready
        # and would wake the loop for nothing.
        self._seen_kills = self.oom_kills()
        self.guards = [Guard(self._keep_open(name), name) for name in self._guarded]
        if self.fs.exists(self._file("memory.peak")):
            self.guards.append(PeakGuard(self._keep_open("memory.peak"), "memory.peak", self.limit))
        if "pids.max" in self._guarded:
            self._pids_events_fd = self._keep_open("pids.events")

    def kernel_pids(self) -> bool:
        return "pids.max" in self._guarded

    def pids_exceeded(self) -> str | None:
        if self._pids_events_fd is None or not self._fds:
            return super().pids_exceeded()
        refused = max_events(self._pids_events_fd)
        return exceeded_detail(self.pids_limit, refused) if refused else None

    def _events(self) -> dict[str, int]:
        return parse_flat_keyed(os.pread(self._events_fd, 4096, 0).decode())

    def oom_kills(self) -> int:
        events = (
            self._events()
            if self._fds
            else parse_flat_keyed(self.fs.read(self._file("memory.events")))
        )
        return events.get("oom_group_kill") or events.get("oom_kill", 0)

    def peak(self) -> int | None:
        if not self.fs.exists(self._file("memory.peak")):
            return None  # memory.peak arrived in Linux 5.19
        return int(self.fs.read(self._file("memory.peak")))

    def notify_fd(self) -> tuple[int, int]:
        return self._events_fd, select.EPOLLPRI

    def on_notify(self) -> bool:
        kills = self.oom_kills()  # the read also re-arms the kernfs notification
        fired, self._seen_kills = kills > self._seen_kills, kills
        return fired

    def is_empty(self) -> bool:
        try:
            events = parse_flat_keyed(self.fs.read(self._file("cgroup.events")))
        except CageError:
            return True
        return events.get("populated", 0) == 0

    def wait_empty(self, timeout: float) -> bool:
        """Wait for ``populated 0``, woken by the kernel's notification on
        ``cgroup.events`` rather than by sampling."""
        try:
            fd = self.fs.open(self._file("cgroup.events"))
        except CageError:
            return True  # the directory is gone
        try:
            poller = select.poll()  # poll, not epoll: it also takes a test's plain file
            poller.register(fd, select.POLLPRI)
            deadline = time.monotonic() + timeout
            while True:
                os.pread(fd, 4096, 0)  # arm: poll wakes on the next change after a read
                if self.is_empty():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Capped: a deferred notification comes within 20 ms, a fake never.
                poller.poll(min(left, 0.05) * 1000)
        finally:
            os.close(fd)

    def freeze(self) -> None:
        """The kernel's freezer (limits/freezer.py); ``frozen 1`` in cgroup.events
        follows once every task has stopped."""
        self.fs.write(self._file("cgroup.freeze"), "1")
        self.frozen = True

    def thaw(self) -> None:
        self.fs.write(self._file("cgroup.freeze"), "0")
        self.frozen = False

    def kill(self) -> int:
        inside = len(self.members())
        if self.fs.exists(self._file("cgroup.kill")):
            self.fs.write(self._file("cgroup.kill"), "1")
            return inside
        return super().kill()
