"""Shared memory an rlimit agent holds that its RSS does not show, for the watchdog.

The kernel backends charge shared memory to the cgroup; the rlimit watchdog sums RSS,
so an agent with namespaces of its own (limits/isolation.py) is metered here for
what it keeps in its private /dev/shm, in SysV segments of its IPC namespace, and in
memfd and deleted tmpfs files it holds open.
"""

from __future__ import annotations

import os
import resource
import stat

from agent_supervise.linux import original_open_files_limit, setns


def rlimit_uncounted(isolated: bool) -> str:
    """What the rlimit watchdog does not count (said by doctor and in --json notes);
    the kernel backends charge all of it to the cgroup."""
    soft = (original_open_files_limit() or resource.getrlimit(resource.RLIMIT_NOFILE))[0]
    if isolated:
        return (
            f"not counted under rlimit: pipe buffers (at most ~{soft // 2} pipes of "
            "/proc/sys/fs/pipe-max-size each) and closed files in tmpfs mounts other "
            f"than its private /dev/shm; memfd files are counted every {FD_SCAN_S:g}s"
        )
    return (
        "not counted under rlimit (no namespaces of its own): files in /dev/shm and "
        "other tmpfs mounts, detached SysV shared memory, pipe buffers; memfd and "
        "deleted tmpfs files it holds open are not counted either"
    )


#: How often the agent's open memfd and deleted tmpfs files are looked for (a scan
#: of every fd of the tree, ~2 us an fd; the other two sources are read on every
#: sample). What an agent writes into a memfd within this time can pass its cap
#: before the watchdog sees it.
FD_SCAN_S = 0.25
_CLONE_NEWIPC = 0x08000000


class SharedMemoryMeter:
    """Shared memory an rlimit agent holds that RSS does not show, for the watchdog.

    The kernel backends charge these pages to the cgroup; under rlimit they would go
    uncounted (1 GiB under a 50M cap, measured). With namespaces of its own, the
    agent's is countable:

    * its private /dev/shm: used blocks, one ``fstatvfs`` on a kept-open directory
      (reached through ``/proc/PID/root``, i.e. the agent's mount namespace);
    * SysV segments of its IPC namespace: ``/proc/sysvipc/shm`` lists the segments of
      the namespace of whoever *opened* it, so it is opened once from inside (this
      thread enters the agent's IPC namespace for that ``open`` and comes back), then
      re-read with ``pread``;
    * memfd files and deleted tmpfs files it holds open, found by a scan of the
      tree's fds once every ``FD_SCAN_S``.
    Over-counting (a segment or memfd also mapped counts in RSS too) is the safe way.
    """

    def __init__(self, shm_dir: int | None, sysv: int | None) -> None:
        self._shm_dir = shm_dir
        self._sysv = sysv
        self._fd_bytes = 0
        self._fd_scan_at = 0.0

    @classmethod
    def open(cls, pid: int) -> SharedMemoryMeter:
        try:
            shm = os.open(f"/proc/{pid}/root/dev/shm", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            shm = None
        return cls(shm, _open_in_ipc_namespace(pid, "/proc/sysvipc/shm"))

    def bytes(self, pids, now: float) -> int:
        total = 0
        if self._shm_dir is not None:
            st = os.fstatvfs(self._shm_dir)
            total += (st.f_blocks - st.f_bfree) * st.f_frsize
        if self._sysv is not None:
            total += _sysv_bytes(self._sysv)
        if now >= self._fd_scan_at:
            self._fd_scan_at = now + FD_SCAN_S
            self._fd_bytes = _held_file_bytes(pids)
        return total + self._fd_bytes

    def close(self) -> None:
        for fd in (self._shm_dir, self._sysv):
            if fd is not None:
                os.close(fd)
        self._shm_dir = self._sysv = None


def _open_in_ipc_namespace(pid: int, path: str) -> int | None:
    try:
        own = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        theirs = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(own)
        return None
    try:
        try:
            setns(theirs, _CLONE_NEWIPC)
        except OSError:
            return None
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        finally:
            setns(own, _CLONE_NEWIPC)  # back home; a failure here is raised
    finally:
        os.close(own)
        os.close(theirs)


def _sysv_bytes(fd: int) -> int:
    """Resident bytes of every segment (the ``rss`` column, 15th)."""
    text = os.pread(fd, 1 << 20, 0).decode(errors="replace")
    total = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 15 and fields[14].isdigit():
            total += int(fields[14])
    return total


def _held_file_bytes(pids) -> int:
    """Blocks of memfd files and deleted files the tree holds open (a deleted tmpfs
    file lives on in memory while open; a deleted disk file costs nothing here, and
    its blocks are on disk, which is over-counted: rare, and the safe way)."""
    total, seen = 0, set()
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(base)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{base}/{fd}")
                if not (target.startswith("/memfd:") or target.endswith(" (deleted)")):
                    continue
                st = os.stat(f"{base}/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen and _is_memory_backed(st):
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _is_memory_backed(st) -> bool:
    return stat.S_ISREG(st.st_mode) and os.major(st.st_dev) == 0
