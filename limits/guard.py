"""Cage tampering: the control files whose values must not change while an agent runs.

An agent running as root can write to its own cage's control files: raise
``memory.limit_in_bytes`` (seen: 243-393 MiB reached under a 50M cap), turn off the
v1 OOM killer (``oom_kill_disable``), give itself swap, lift ``pids.max``. File
permissions cannot stop root (CAP_DAC_OVERRIDE), so the supervisor notices instead:
the cage keeps an fd open on every file whose value it set and re-reads it with
pread on every watchdog tick (about 1 us a file, like the usage read). Any change is
the agent's doing (the kernel never rewrites these values) and stops it as
``escaped``.

A limit raised and put back between two ticks leaves a trace in the kernel's
high-water mark (``memory.max_usage_in_bytes`` on v1, ``memory.peak`` on v2): the
kernel keeps usage at or below the limit when charging, so a peak well above the cap
means the limit was higher meanwhile. A v1 peak that goes *down* was reset by a
write (the v2 one cannot be reset for the supervisor's own fd).
"""

from __future__ import annotations

import os

from agent_supervise.limits.cgroupfs import parse_flat_keyed
from agent_supervise.units import format_size


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("ascii", errors="replace")


class Guard:
    """One control file (or one ``key value`` line of it) that must keep its value."""

    def __init__(self, fd: int, label: str, key: str | None = None) -> None:
        self.fd, self.label, self.key = fd, label, key
        self.expected = self.value()

    def value(self) -> str:
        text = _read(self.fd)
        if self.key is None:
            return text.strip()
        return str(parse_flat_keyed(text).get(self.key))

    def changed(self) -> str | None:
        now = self.value()
        if now == self.expected:
            return None
        name = f"{self.label} {self.key}" if self.key else self.label
        return f"{name} changed from {self.expected} to {now} by the agent"


class PeakGuard:
    """The kernel's high-water mark of a memory cage: never far above the cap, never
    going down.

    The kernel does let usage exceed the limit a little: forced charges for dying
    OOM victims and for allocations that must not fail (network buffers on v2). So
    only a peak above the cap by a quarter plus 16 MiB counts."""

    def __init__(self, fd: int, label: str, limit: int) -> None:
        self.fd, self.label, self.limit = fd, label, limit
        self.slack = limit // 4 + (16 << 20)
        self.last = self.value()

    def value(self) -> int:
        return int(_read(self.fd))

    def changed(self) -> str | None:
        peak = self.value()
        if peak > self.limit + self.slack:
            return (
                f"{self.label} reached {format_size(peak)}, above the "
                f"{format_size(self.limit)} cap: the agent raised its limit meanwhile"
            )
        if peak < self.last:
            return f"{self.label} went down from {self.last} to {peak}: the agent reset it"
        self.last = peak
        return None


def first_change(guards) -> str | None:
    """The first guard whose value changed, described; None when all hold."""
    for guard in guards:
        try:
            what = guard.changed()
        except (OSError, ValueError):
            continue  # the cage is being torn down
        if what:
            return what
    return None
