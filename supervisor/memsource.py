"""Where the supervisor reads memory figures: the machine's and its own.

Behind one small class so the dispatch loop's tests can script a history.
"""

from __future__ import annotations

import os

from agent_supervise.proctree import PAGE_SIZE, read_proc


def parse_meminfo(data: bytes, lines: int | None = None) -> dict[str, int]:
    """/proc/meminfo's ``Key:  N kB`` lines (the first ``lines`` of them) in bytes."""
    values = {}
    for line in data.splitlines()[:lines]:
        key, _, rest = line.partition(b":")
        words = rest.split()
        if words:
            values[key.decode()] = int(words[0]) * (1024 if words[1:] == [b"kB"] else 1)
    return values


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """All of /proc/meminfo in bytes; empty where it cannot be read."""
    try:
        with open(path, "rb") as f:
            return parse_meminfo(f.read())
    except OSError:
        return {}


def read_psi(path: str = "/proc/pressure/memory") -> tuple[str | None, str | None]:
    """(the ``some`` line of a PSI file, None) or (None, why it cannot be read):
    kernels without CONFIG_PSI, or booted with psi=0, have no /proc/pressure."""
    try:
        with open(path) as f:
            return f.readline().strip(), None
    except OSError as err:
        return None, err.strerror or str(err)


def psi_avg10(line: str | None) -> float | None:
    """``avg10`` of a PSI line (``some avg10=0.00 avg60=0.00 avg300=0.00 total=0``)."""
    for word in (line or "").split():
        if word.startswith("avg10="):
            return float(word[6:])
    return None


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
        return parse_meminfo(os.pread(self._fd, 512, 0), lines=5)  # MemTotal..Available

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
