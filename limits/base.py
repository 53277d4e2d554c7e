"""The protocol every memory-limit mechanism implements.

A **backend** is a mechanism (cgroup v2, cgroup v1, rlimit). It is *probed* by
really trying it, and *creates* one cage per agent run.

A **cage** is one agent's enclosure. Its life:

1. ``Backend.create(label, limit, pids=N)`` prepares it in the supervisor (mkdir,
   write the limits, read them back, open the files the watchdog will read).
2. ``child_setup()`` says what the child does *before exec* (write to an open
   ``cgroup.procs``, ``setrlimit``), so the agent is capped from its first
   instruction. It is data, not code: the spawner does it with raw system calls
   (see :mod:`agent_supervise.run.spawn` for why).
3. ``attach(pid)`` tells the cage the agent's root pid once it exists.
4. While it runs: ``usage()`` (bytes charged to the whole agent now), ``peak()``,
   ``oom_kills()``, ``members()``, ``notify_fd()`` to wake the loop on an OOM, and on
   each watchdog tick ``tampered()`` (a limit changed under the supervisor) and
   ``pids_exceeded()`` (the process cap was hit); ``placements()`` says which
   cgroups every thread of the agent must stay in (the escape check).
5. ``signal(sig)`` reaches every process inside; ``kill()`` SIGKILLs them all.
6. ``release()`` removes it once ``is_empty()``.
"""

from __future__ import annotations

import abc
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from agent_supervise.proctree import ProcessTable, signal_pids

# typing.TYPE_CHECKING, without importing typing on every start (type checkers
# read any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent_supervise.limits.pids import PidsLeaf

#: A step the child runs before exec: (name of the system call, function).
ChildStep = tuple[str, Callable[[], object]]


@dataclass(frozen=True)
class ChildSetup:
    """What the child must do before exec to be inside its cage, as data: the
    spawner does it with raw system calls (a vfork child runs no Python).

    ``procs``: open ``cgroup.procs`` files to write "0" into, each with its path for
    messages (a cage may join several hierarchies: memory and pids on cgroup v1).
    ``rlimits``: (resource, value) pairs for setrlimit, soft = hard = value.
    """

    procs: tuple[tuple[int, str], ...] = ()
    rlimits: tuple[tuple[int, int], ...] = ()

    def steps(self) -> list[ChildStep]:
        """The same, as Python functions for subprocess's preexec_fn (the fallback)."""
        import resource

        def write_zero(fd: int) -> Callable[[], object]:
            return lambda: os.write(fd, b"0")

        def set_limit(which: int, value: int) -> Callable[[], object]:
            return lambda: resource.setrlimit(which, (value, value))

        steps: list[ChildStep] = [(f"write(0 > {path})", write_zero(fd)) for fd, path in self.procs]
        steps += [(f"setrlimit({w}, {v})", set_limit(w, v)) for w, v in self.rlimits]
        return steps

    def describe_step(self, index: int) -> str:
        """The name of the C child's cage step ``index`` (procs first, then rlimits)."""
        if index < len(self.procs):
            return f"write(0 > {self.procs[index][1]})"
        which, value = self.rlimits[index - len(self.procs)]
        return f"setrlimit({which}, {value})"


#: The default process cap (``--pids-limit``, ``pids_limit``): tasks, i.e. processes
#: and threads, in one agent. 0 turns it off.
DEFAULT_PIDS_LIMIT = 4096


@dataclass(frozen=True)
class Placement:
    """A cgroup that every thread of the agent must stay in (see escape.py).

    ``hierarchy`` is the key of its line in /proc/PID/cgroup ("" on cgroup v2, a
    v1 controller such as "memory" or "pids"); ``cgroup`` its path as that file
    shows it (None when unknown: then the cage's name in the path decides);
    ``threads()`` reads the thread ids inside it and its sub-cgroups now.
    """

    hierarchy: str
    cgroup: str | None
    threads: Callable[[], set[int]]


CAGE_PREFIX = "agent-supervise"
_NAME_RE = re.compile(rf"{CAGE_PREFIX}\.(\d+)-(\d+)\.(\d+)(?:\.[\w-]*)?")


class Unavailable(Exception):
    """Raised by ``Backend.probe()``: the mechanism cannot be used here, and why."""


@dataclass(frozen=True)
class StaleCage:
    """A cage left behind by a supervisor that is no longer running."""

    path: str
    owner_pid: int
    killed: int  # processes that were still inside and had to be killed
    removed: bool


def owner_tag(pid: int | None = None) -> str:
    """``PID-STARTTIME`` of a process: unique even when pids are reused."""
    pid = pid or os.getpid()
    st = ProcessTable().stat(pid)
    if st is None:
        raise ProcessLookupError(pid)
    return f"{pid}-{st.starttime}"


def owner_alive(pid: int, starttime: str) -> bool:
    """Whether the process that ``owner_tag`` named ``PID-STARTTIME`` still runs."""
    st = ProcessTable().stat(pid)
    return st is not None and str(st.starttime) == starttime


def cage_name(owner: str, seq: int, label: str) -> str:
    """A recognisable name: ``agent-supervise.<pid>-<start>.<seq>.<label>``."""
    slug = re.sub(r"[^\w-]+", "_", label)[:40].strip("_")
    return f"{CAGE_PREFIX}.{owner}.{seq}" + (f".{slug}" if slug else "")


def cage_owner(name: str) -> tuple[int, int] | None:
    """(pid, start time in clock ticks) of the supervisor that made cage ``name``;
    None if ``name`` is no cage's."""
    match = _NAME_RE.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def stale_owner(name: str) -> int | None:
    """If ``name`` is a cage whose supervisor is gone, that supervisor's pid."""
    owner = cage_owner(name)
    if owner is None:
        return None
    pid, started = owner
    return None if owner_alive(pid, str(started)) else pid


def is_cage_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


class Cage(abc.ABC):
    """One agent's memory enclosure. See the module docstring for its life."""

    backend: str
    name: str
    limit: int
    #: Where the peak comes from: "kernel" when the mechanism records it,
    #: "sampled" when only the watchdog's samples know it.
    peak_source = "kernel"
    #: Whether the kernel itself enforces the cap on the whole tree. When False
    #: the watchdog is the only tree-wide enforcement (rlimit).
    kernel_enforced = True
    #: With namespaces of its own (see isolation.py), the agent's root is an init
    #: that writes the agent's own exit status here; set by the spawner.
    init_fd: int | None = None
    #: The cgroup directory this cage is; "" for a cage that is no cgroup.
    path: str = ""
    #: The v1 pids leaf it also joins where one is made (pids.py), else None.
    companion: PidsLeaf | None = None
    #: The agent's root, once attached.
    pid: int | None = None
    #: The process cap it was made with (0: none).
    pids_limit: int = 0
    #: The soft limit in bytes (set_high), None: none.
    high: int | None = None

    @functools.cached_property
    def orphans(self) -> set[int]:
        """Processes of the agent the supervisor adopted after their parent died
        (reaper.py adds them): a cgroup holds them anyway; an rlimit cage counts and
        signals them itself."""
        return set()

    @functools.cached_property
    def notes(self) -> list[str]:
        """What the run's outcome should say about this cage (a cap the kernel
        could not give, uncounted memory)."""
        return []

    def close_init(self) -> None:
        """Close the init's status pipe unread (a run that is given up on)."""
        if self.init_fd is not None:
            os.close(self.init_fd)
            self.init_fd = None

    def init_report(self):
        """Take the init's report once its process has exited (None without one)."""
        if self.init_fd is None:
            return None
        from agent_supervise.limits.isolation import InitReport

        fd, self.init_fd = self.init_fd, None
        return InitReport.read(fd)

    @abc.abstractmethod
    def child_setup(self) -> ChildSetup: ...

    def child_steps(self) -> list[ChildStep]:
        return self.child_setup().steps()

    def attach(self, pid: int) -> None:
        self.pid = pid

    @abc.abstractmethod
    def usage(self) -> int: ...

    @abc.abstractmethod
    def peak(self) -> int | None: ...

    @abc.abstractmethod
    def oom_kills(self) -> int: ...

    def refaults(self) -> int | None:
        """Bytes the kernel has re-read after evicting them from this cage (thrashing
        shows as a high rate). None when the mechanism cannot tell."""
        return None

    #: The per-process limit past which the kernel refuses allocations (an
    #: rlimit's value), None where the kernel reclaims or kills instead.
    refuse_limit: int | None = None
    #: What that limit is called in messages ("RLIMIT_DATA").
    refuse_name = ""

    def allocations(self) -> dict[int, int]:
        """Bytes each process of the tree has that ``refuse_limit`` counts."""
        return {}

    def progress(self, pid: int) -> tuple[int, bool] | None:
        """(CPU ticks used, its main thread waits on another thread) of a process,
        None if it is gone: the facts that tell an agent stuck at a refused
        allocation from one idle on its input (run/stuck.py)."""
        return None

    def notify_fd(self) -> tuple[int, int] | None:
        """(fd, epoll event mask) that becomes ready when an OOM may have happened."""
        return None

    def on_notify(self) -> bool:
        """Consume a notification; True when the kernel OOM-killed in the cage."""
        return False

    @abc.abstractmethod
    def members(self) -> list[int]: ...

    def set_high(self, high: int) -> None:
        """A soft limit below the cap (an agent's ``memory_high``). Here: none from the
        kernel, only :meth:`throttled` (the rlimit watchdog's samples). cgroup v2:
        memory.high, where the kernel reclaims and slows the agent; cgroup v1:
        memory.soft_limit_in_bytes, what reclaim takes back first when the machine is
        short (it slows nothing by itself)."""
        self.high = high
        self.notes.append(
            f"memory_high {high} bytes: no kernel soft limit under rlimit (a throttled event only)"
        )

    def throttled(self, usage: int) -> bool:
        """Whether the agent has reached its soft limit; ``usage``: the watchdog's
        last sample of it."""
        return self.high is not None and usage >= self.high

    #: Whether freeze() holds it now (limits/freezer.py).
    frozen = False

    def freeze(self) -> None:
        """Stop every process inside from running, memory kept (the pressure
        ladder). Here: SIGSTOP to the tree; the cgroup cages use the kernel's freezer."""
        import signal

        self.frozen = True
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen agent run on where it was."""
        import signal

        self.frozen = False
        self.signal(signal.SIGCONT)

    def tampered(self) -> str | None:
        """What changed in the cage's own limits since they were set (the agent wrote
        to them), or None. Called on every watchdog tick: kept-open fds and pread."""
        return None

    def pids_exceeded(self) -> str | None:
        """Why the agent is over its process cap (a fork failed at the kernel's
        ``pids.max``, or the counted tree reached the cap), or None."""
        return None

    def placements(self) -> list[Placement]:
        """The cgroups every thread of the agent must stay in; none for a cage that
        is no cgroup."""
        return []

    def signal(self, sig: int) -> int:
        """Send ``sig`` to every process inside; return how many were signalled."""
        return signal_pids(self.members(), sig)

    def kill(self) -> int:
        import signal

        return self.signal(signal.SIGKILL)

    def is_empty(self) -> bool:
        return not self.members()

    @abc.abstractmethod
    def release(self) -> None: ...

    def describe(self) -> dict:
        return {"backend": self.backend, "name": self.name, "limit": self.limit}


class Backend(abc.ABC):
    """A mechanism that can cap an agent's memory."""

    name: str

    @abc.abstractmethod
    def probe(self) -> str:
        """Really try the mechanism. Return where cages go; raise :class:`Unavailable`."""

    @abc.abstractmethod
    def create(
        self, label: str, limit: int, *, pids: int = DEFAULT_PIDS_LIMIT, uid: int | None = None
    ) -> Cage:
        """A cage for one agent: ``limit`` bytes, at most ``pids`` tasks (0: no cap);
        ``uid`` is the user the agent will run as (None: the supervisor's)."""

    def clean_stale(self) -> list[StaleCage]:
        """Remove cages left by supervisors that died. Default: nothing to clean."""
        return []

    def placement_note(self) -> str | None:
        """What doctor says beside the place where cages go (None: nothing)."""
        return None

    def advice(self) -> list[str]:
        """What would make this backend work here, once its probe failed."""
        return []

    def budget_cage(self, limit: int) -> Cage | None:
        """Make every cage from now on a child of one parent cage of ``limit`` bytes
        (a fleet's ``memory_budget``), which the caller releases once its children
        are gone; None where the kernel has no such parent (rlimit: the fleet loop
        holds the sum to the budget instead)."""
        return None

    def close(self) -> None:
        """Give back what the backend holds beyond its cages. Default: nothing."""
        return
