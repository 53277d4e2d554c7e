"""Where the supervisor reads memory figures: the machine's and its own.

Behind one small class so the dispatch loop's tests can script a history.
"""

from __future__ import annotations

import os

from .proctree import PAGE_SIZE


class MemorySource:
    """MemAvailable and MemTotal from /proc/meminfo; own RSS from /proc/self/statm."""

    def __init__(self, meminfo: str = "/proc/meminfo") -> None:
        self.meminfo = meminfo

    def _read(self) -> dict[str, int]:
        values = {}
        with open(self.meminfo, "rb") as f:
            for line in f.read().splitlines()[:5]:  # MemTotal, MemFree, MemAvailable
                key, _, rest = line.partition(b":")
                values[key.decode()] = int(rest.split()[0]) * 1024
        return values

    def available(self) -> int:
        """What the kernel estimates can be allocated without swapping (MemAvailable)."""
        return self._read()["MemAvailable"]

    def total(self) -> int:
        return self._read()["MemTotal"]

    def own_rss(self) -> int:
        with open(f"/proc/{os.getpid()}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
