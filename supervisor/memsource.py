"""Where the supervisor reads memory figures: the machine's and its own.

Behind one small class so the dispatch loop's tests can script a history.
"""

from __future__ import annotations

import os

from .proctree import PAGE_SIZE, read_proc


class MemorySource:
    """MemAvailable and MemTotal from /proc/meminfo; own RSS from /proc/self/statm."""

    def __init__(self, meminfo: str = "/proc/meminfo") -> None:
        self.meminfo = meminfo
        self._fd: int | None = None

    def _read(self) -> dict[str, int]:
        # Read before every start: a kept-open fd and pread (procfs regenerates the
        # text at offset 0) save the open and close, half the cost.
        if self._fd is None:
            self._fd = os.open(self.meminfo, os.O_RDONLY | os.O_CLOEXEC)
        values = {}
        for line in os.pread(self._fd, 512, 0).splitlines()[:5]:  # MemTotal..Available
            key, _, rest = line.partition(b":")
            values[key.decode()] = int(rest.split()[0]) * 1024
        return values

    def close(self) -> None:
        """Close the kept-open /proc/meminfo (reopened if read again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def available(self) -> int:
        """What the kernel estimates can be allocated without swapping (MemAvailable)."""
        return self._read()["MemAvailable"]

    def total(self) -> int:
        return self._read()["MemTotal"]

    def own_rss(self) -> int:
        return int(read_proc("/proc/self/statm").split()[1]) * PAGE_SIZE
