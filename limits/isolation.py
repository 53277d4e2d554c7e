"""Namespaces of an agent's own: PID, IPC and mount, with a small init as PID 1.

What they give, on every memory backend (see ``supervisor/_nsinit.c`` for the init):

* **Membership the agent cannot shed.** Every process an agent starts lives in its
  PID namespace, whatever it does (double fork, ``setsid``, an empty environment).
  When the namespace's init exits or is killed — the agent's run ended, or the
  supervisor died and the parent-death signal reached the init — the kernel
  SIGKILLs everything left in it. Nothing outlives its run, even uncapped.
* **No signals across agents.** A process cannot name a process outside its PID
  namespace: ``kill -9 -1`` reaches its own agent only, never a neighbour or the
  supervisor.
* **Shared memory that is bounded and goes with the agent.** ``/dev/shm`` is a
  private tmpfs of the cap's size (the agent cannot fill the machine's), SysV
  limits of its own IPC namespace are set to the cap, and both are freed when the
  namespaces go (systemd's ``PrivateIPC=``, ``RemoveIPC=``). The init reports what
  was left, so the outcome can say what was removed.

Creating namespaces needs CAP_SYS_ADMIN: the supervisor must be root (a non-root
user would need a user namespace, which changes what the agent sees of file
owners and breaks setuid programs such as sudo: not done). The C spawner (clone
into the namespaces) and the init executable must have been built.
``AGENT_SUPERVISE_NAMESPACES=0`` turns them off.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from agent_supervise import __file__ as _package_file
from agent_supervise.linux import setns
from agent_supervise.proctree import PAGE_SIZE

#: Built beside the C spawner, in the agent_supervise package (setup.py).
INIT = os.path.join(os.path.dirname(os.path.abspath(_package_file)), "_nsinit")
ENV_SWITCH = "AGENT_SUPERVISE_NAMESPACES"
#: The SysV message queue size a new IPC namespace starts with (msgmnb).
MSGMNB = 16384


def unavailable() -> str | None:
    """Why agents cannot get namespaces of their own here (None: they can)."""
    from agent_supervise.run import spawn

    if os.environ.get(ENV_SWITCH) == "0":
        return f"{ENV_SWITCH}=0"
    if os.geteuid() != 0:
        return (
            "not root: PID, IPC and mount namespaces need CAP_SYS_ADMIN (agents of "
            "the same user can signal each other; an rlimit agent's double-forked "
            "children are followed through the process tree only)"
        )
    if not spawn.fast_path():
        return "the C spawner is not built (no C compiler at install) or is turned off"
    if not os.access(INIT, os.X_OK):
        return f"{INIT} is missing: it is built with the C spawner"
    for ns in ("pid", "ipc", "mnt"):
        if not os.path.exists(f"/proc/self/ns/{ns}"):
            return f"the kernel has no {ns} namespaces"
    return _try()


def _try() -> str | None:
    """Really clone a child into the namespaces and start the init (which, given no
    agent, exits 2 at once): root in a container without CAP_SYS_ADMIN, a seccomp
    filter, or a full /proc/sys/user/max_pid_namespaces all fail here, once."""
    from agent_supervise import _spawn  # present: spawn.fast_path() said so

    plan = Plan.for_cap(64 << 20)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid = _spawn.spawn(
                [INIT.encode()],
                [INIT.encode()],
                [],
                None,
                null,
                null,
                null,
                [],
                [],
                -1,
                -1,
                -1,
                -1,
                None,
                0,
                report_w,
                (plan.shm_options, plan.sysctls, (report_w, null)),
            )
        except OSError as err:
            return f"clone(CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS): {err.strerror}"
        finally:
            os.close(report_w)
        report = os.read(report_r, 64).decode()
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(report_r)
        os.close(null)
    if report:
        step, _, code = report.partition(":")
        return f"setting up the namespaces failed at step {step}: {os.strerror(int(code or 0))}"
    if os.waitstatus_to_exitcode(status) != 2:
        return f"{INIT} did not run in a new PID namespace (status {status})"
    return None


_CHECKED: list[str | None] = []


def enabled() -> bool:
    """``unavailable()``, asked once per process (spawns ask it every time)."""
    if not _CHECKED:
        _CHECKED.append(unavailable())
    return _CHECKED[0] is None


@dataclass(frozen=True)
class Plan:
    """What the C spawner needs to clone an agent into namespaces of its own."""

    shm_options: bytes
    sysctls: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def for_cap(cls, limit: int) -> Plan:
        pages = max(1, limit // PAGE_SIZE)
        return cls(
            shm_options=f"size={pages * PAGE_SIZE},mode=1777".encode(),
            # Per IPC namespace: these bound the agent's SysV shared memory and
            # message queues by its cap (a new namespace allows 32,000 queues).
            sysctls=(
                (b"/proc/sys/kernel/shmmax", str(limit).encode()),
                (b"/proc/sys/kernel/shmall", str(pages).encode()),
                (b"/proc/sys/kernel/msgmni", str(max(1, limit // MSGMNB)).encode()),
            ),
        )

    def argv(self, status_fd: int, report_fd: int, grace: float, paths, cmd) -> list[str]:
        """The init's command line: it execs ``cmd`` over the candidate ``paths``."""
        return [
            INIT,
            str(status_fd),
            str(report_fd),
            str(int(grace * 1000)),
            str(len(paths)),
            *paths,
            "--",
            *cmd,
        ]


@dataclass(frozen=True)
class InitReport:
    """The init's last word: the agent's own wait status and what it left."""

    status: int
    leftovers: int
    drain_s: float
    shm_files: int
    shm_bytes: int
    sysv_segments: int
    sysv_bytes: int

    @classmethod
    def read(cls, fd: int) -> InitReport | None:
        """Read and close the init's status pipe; None if it died without a word
        (SIGKILLed: then its own status is the agent's)."""
        try:
            text = os.read(fd, 256).decode(errors="replace")
        except BlockingIOError:
            text = ""
        finally:
            os.close(fd)
        fields = text.split()
        if len(fields) != 7 or not all(f.lstrip("-").isdigit() for f in fields):
            return None
        n = [int(f) for f in fields]
        return cls(n[0], n[1], n[2] / 1000, n[3], n[4], n[5], n[6])

    def removed(self) -> str | None:
        """A note on the shared memory that went with the agent's namespaces."""
        from agent_supervise.units import format_size

        parts = []
        if self.shm_files:
            parts.append(f"{self.shm_files} files in /dev/shm ({format_size(self.shm_bytes)})")
        if self.sysv_segments:
            parts.append(
                f"{self.sysv_segments} SysV shared memory segments ({format_size(self.sysv_bytes)})"
            )
        return ("removed with the agent: " + ", ".join(parts)) if parts else None


def rlimit_uncounted(isolated: bool) -> str:
    """What the rlimit watchdog does not count (said by doctor and in --json notes);
    the kernel backends charge all of it to the cgroup."""
    from agent_supervise.linux import original_open_files_limit

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
    import stat as stat_mod

    return stat_mod.S_ISREG(st.st_mode) and os.major(st.st_dev) == 0
