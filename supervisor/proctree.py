"""The process table: reading /proc for trees, memory and states.

All /proc access of the supervisor goes through :class:`ProcessTable` so that the
loop's tests can substitute a fake. Costs measured on the project's machines:
``/proc/PID/statm`` ~10 us, one ``task/TID/children`` read a few us. Walking a
tree through ``children`` files costs O(tree), unlike psutil's
``children(recursive=True)`` which scans every process on the machine (3.4 ms).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_proc(path: str) -> bytes:
    """A /proc (or cgroupfs) file's text in 3-4 system calls. Python's open() adds
    fstat, an isatty ioctl and two lseeks, and builds a buffered reader: most of the
    cost of the small reads the watchdog, the orphan tracker and the cages make many
    times a second."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:  # procfs hands out a page or so per read when it is long
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks)
    finally:
        os.close(fd)


def signal_pids(pids, sig: int) -> int:
    """Send ``sig`` to each pid; return how many got it. A pid gone meanwhile (the
    process exited between reading its cage and now) is no error."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


@dataclass(frozen=True)
class PrivateCharge:
    """What a cgroup would charge one process, and whether that can change unseen."""

    bytes: int
    shares: bool = True  # some pages shared: its share moves without its statm


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the supervisor needs."""

    pid: int
    state: str  # R, S, D, Z, T, ...
    ppid: int
    pgrp: int
    session: int
    starttime: int  # clock ticks since boot; with pid, identifies a process uniquely
    cpu: int = 0  # utime + stime of all its threads, in clock ticks


class ProcessTable:
    """Reads /proc. Every method returns None/empty for a process that is gone."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc

    def stat(self, pid: int) -> ProcStat | None:
        try:
            data = read_proc(f"{self.proc}/{pid}/stat")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        # The command name is in parentheses and may itself contain spaces and ')'.
        rest = data[data.rindex(b")") + 2 :].split()
        return ProcStat(
            pid,
            rest[0].decode(),
            int(rest[1]),
            int(rest[2]),
            int(rest[3]),
            int(rest[19]),
            int(rest[11]) + int(rest[12]),
        )

    def children(self, pid: int) -> list[int]:
        """Direct children of ``pid``, over all its threads.

        /proc/PID/task/TID/children lists the children forked by that thread, so a
        multi-threaded parent (node, a Python agent using threads) needs every task.
        """
        kids: list[int] = []
        try:
            tids = os.listdir(f"{self.proc}/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            return kids
        for tid in tids:
            try:
                children = read_proc(f"{self.proc}/{pid}/task/{tid}/children")
                kids.extend(int(p) for p in children.split())
            except (FileNotFoundError, ProcessLookupError):
                continue
        return kids

    def descendants(self, roots) -> list[int]:
        """``roots`` (those alive) and all their descendants, parents first."""
        seen: list[int] = []
        stack = [r for r in roots if os.path.exists(f"{self.proc}/{r}")]
        visited = set()
        while stack:
            pid = stack.pop()
            if pid in visited:
                continue
            visited.add(pid)
            seen.append(pid)
            stack.extend(self.children(pid))
        return seen

    def rss(self, pid: int) -> int:
        """Resident set size in bytes (0 if the process is gone)."""
        try:
            return int(read_proc(f"{self.proc}/{pid}/statm").split()[1]) * PAGE_SIZE
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return 0

    def statm(self, pid: int) -> list[int]:
        """/proc/PID/statm in pages: size, resident, shared, text, lib, data (data
        and stack: the writable private mappings RLIMIT_DATA counts), dt; [] if gone."""
        try:
            return [int(f) for f in read_proc(f"{self.proc}/{pid}/statm").split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def main_thread_in(self, pid: int, word: bytes) -> bool:
        """Whether the main thread of ``pid`` sleeps in a kernel function named with
        ``word`` (its wchan; b"futex": waiting on another thread, not on input, a
        timer or a child). False when it cannot be read (the kernel shows "0" to
        those who may not ptrace the process)."""
        try:
            return word in read_proc(f"{self.proc}/{pid}/wchan")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False

    def resident(self, pid: int) -> tuple[int, int]:
        """(resident, of which file-backed or shared memory) in bytes, from statm;
        (0, 0) if the process is gone."""
        try:
            fields = read_proc(f"{self.proc}/{pid}/statm").split()
            return int(fields[1]) * PAGE_SIZE, int(fields[2]) * PAGE_SIZE
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return 0, 0

    def private_charge(self, pid: int) -> PrivateCharge | None:
        """Anonymous and shared-memory pages in bytes, each page shared with other
        processes counted for its share only (``Pss_Anon + Pss_Shmem`` of
        /proc/PID/smaps_rollup): summed over a tree, every page counts once, as a
        cgroup charges it. File-backed pages are left out: the cgroup charges page
        cache to whoever read it first (the interpreter's own files are cached long
        before an agent starts) and reclaims it at the cap. ProcessLookupError
        once its memory is gone (ESRCH when an exiting process has released its mm,
        while its statm may have shown its pages a moment before; FileNotFoundError
        when it is reaped). None if it is not ours to read (EACCES: another user's,
        without ptrace rights). ``shares``: some of its anonymous pages are
        shared (``Pss_Anon`` below ``Anonymous``: copy-on-write with a fork) or it
        maps shared memory, so that its share can change while its statm does not.
        The kernel walks the page tables for this: ~130-650 us for one process,
        2.9 ms at 200 MiB, against ~6 us for statm (see limits/charge.py)."""
        try:
            data = read_proc(f"{self.proc}/{pid}/smaps_rollup")
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        except ProcessLookupError:
            raise
        except OSError:
            return None
        kib = {b"Pss_Anon:": 0, b"Pss_Shmem:": 0, b"Anonymous:": 0}
        for line in data.splitlines()[1:]:
            key, _, rest = line.partition(b" ")
            if key in kib:
                kib[key] = int(rest.split()[0])
        anon, shmem = kib[b"Pss_Anon:"], kib[b"Pss_Shmem:"]
        return PrivateCharge((anon + shmem) * 1024, anon < kib[b"Anonymous:"] or shmem > 0)

    def environ_has(self, pid: int, entry: bytes) -> bool:
        """Whether ``KEY=value`` is in the process's initial environment."""
        try:
            return entry in read_proc(f"{self.proc}/{pid}/environ").split(b"\0")
        except OSError:
            return False

    def own_children(self) -> list[int]:
        return self.children(os.getpid())

    def alive(self, pid: int) -> bool:
        st = self.stat(pid)
        return st is not None and st.state != "Z"
