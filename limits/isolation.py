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
from dataclasses import dataclass

from agent_supervise import __file__ as _package_file
from agent_supervise.proctree import PAGE_SIZE

#: Built beside the C spawner, in the agent_supervise package (setup.py).
INIT = os.path.join(os.path.dirname(os.path.abspath(_package_file)), "_nsinit")
ENV_SWITCH = "AGENT_SUPERVISE_NAMESPACES"
#: The SysV message queue size a new IPC namespace starts with (msgmnb).
MSGMNB = 16384
#: The most message queues an IPC namespace may have (the kernel's IPCMNI): a larger
#: msgmni is EINVAL. At it, full queues hold 512 MiB, within any cap this large.
IPCMNI = 32768


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
                (b"/proc/sys/kernel/msgmni", str(max(1, min(IPCMNI, limit // MSGMNB))).encode()),
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
