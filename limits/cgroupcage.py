"""What the cgroup v1 and v2 cages share: a leaf directory with a written-and-checked
limit, a kept-open usage file, ``cgroup.procs`` for membership, guards on the values
written (guard.py), an optional v1 pids companion (pids.py), and removing a cage
once it has drained. Making cages is :mod:`agent_supervise.limits.cgroupbackend`'s."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from agent_supervise.errors import CageError
from agent_supervise.limits.base import Cage, ChildSetup, Placement
from agent_supervise.limits.cgroupfs import CgroupFS, is_busy, parse_flat_keyed, pread_int
from agent_supervise.limits.guard import first_change
from agent_supervise.limits.pids import PidsLeaf, ids_under
from agent_supervise.proctree import PAGE_SIZE

#: How long release() and stale cleanup wait for a cgroup to empty and rmdir.
RMDIR_PATIENCE_S = 3.0


def page_floor(n: int) -> int:
    """The kernel keeps memory limits as a number of pages and rounds down."""
    return n - n % PAGE_SIZE


class CgroupCage(Cage):
    """A leaf cgroup holding one agent."""

    usage_file = ""  # memory.current (v2) / memory.usage_in_bytes (v1)
    hierarchy = ""  # its key in /proc/PID/cgroup: "" (v2) / "memory" (v1)
    threads_file = ""  # cgroup.threads (v2) / tasks (v1): thread ids inside

    def __init__(self, fs: CgroupFS, path: str, limit: int, backend: str) -> None:
        self.fs = fs
        self.path = path
        self.name = os.path.basename(path)
        self.limit = limit
        self.backend = backend
        self.pid: int | None = None
        self.pids_limit = 0
        self.cgroup: str | None = None  # its path as /proc/PID/cgroup shows it
        self.companion: PidsLeaf | None = None  # v1: the pids leaf beside it
        self.guards: list = []  # what tampered() re-reads on every tick
        self._fds: list[int] = []
        self._released = False
        #: Called once the directory is gone (a budget cage: its backend's cages go
        #: back to their own place).
        self.on_release: Callable[[], None] | None = None

    # -- set-up ---------------------------------------------------------------
    def configure(self) -> None:
        """Write the limits into the new directory and check the kernel took them."""
        raise NotImplementedError

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _keep_open(self, name: str, flags: int = os.O_RDONLY) -> int:
        fd = self.fs.open(self._file(name), flags)
        self._fds.append(fd)
        return fd

    def write_checked(self, name: str, value: str, expect: str | None = None) -> None:
        """Write a control file and read it back: fail loudly if the kernel refused it."""
        self.fs.write(self._file(name), value)
        got = self.fs.read(self._file(name)).split()
        want = (expect if expect is not None else value).split()
        if got[:1] != want[:1]:
            raise CageError(
                f"{self._file(name)}: wrote {value!r} but the kernel reads back {' '.join(got)!r}",
                path=self._file(name),
                backend=self.backend,
            )

    def open_files(self) -> None:
        self._usage_fd = self._keep_open(self.usage_file)
        # Opened here, written by the child: "0" moves the writing process itself.
        self._procs_fd = self._keep_open("cgroup.procs", os.O_WRONLY)

    def attach(self, pid: int) -> None:
        """The agent is inside (its child wrote to cgroup.procs before exec): close
        the parent's handle on that file, one fd less per agent."""
        super().attach(pid)
        if self._procs_fd in self._fds:
            self._fds.remove(self._procs_fd)
            os.close(self._procs_fd)
        if self.companion is not None:
            self.companion.attach()

    def child_setup(self) -> ChildSetup:
        procs: tuple[tuple[int, str], ...] = ((self._procs_fd, self._file("cgroup.procs")),)
        if self.companion is not None:
            procs += (self.companion.child_proc(),)
        return ChildSetup(procs=procs)

    # -- while it runs --------------------------------------------------------
    def usage(self) -> int:
        return pread_int(self._usage_fd)

    def refaults(self) -> int | None:
        """workingset_refault_{file,anon} (pages, 5.9+) or workingset_refault (older)."""
        stat = parse_flat_keyed(self.fs.read(self._file("memory.stat")))
        pages = stat.get("workingset_refault_file", 0) + stat.get(
            "workingset_refault_anon", 0
        ) or stat.get("workingset_refault", 0)
        return pages * PAGE_SIZE

    def members(self) -> list[int]:
        """Processes in the cage and in any sub-cgroup an agent running as root made
        inside it (``cgroup.procs`` lists only a cgroup's own processes), and in the
        pids companion (one that left the memory cage is still the agent's)."""
        pids = ids_under(self.fs, self.path)
        if self.companion is not None:
            pids += [p for p in self.companion.members() if p not in pids]
        return pids

    def tampered(self) -> str | None:
        return first_change(self.guards + (self.companion.guards if self.companion else []))

    def pids_exceeded(self) -> str | None:
        """The kernel's refusal counter; without a pids controller, the count of
        processes in the cage reaching the cap (read only in that case)."""
        if self.companion is not None:
            return self.companion.exceeded()
        if self.pids_limit > 0 and not self.kernel_pids():
            count = len(self.members())
            if count >= self.pids_limit:
                return (
                    f"process limit {self.pids_limit} reached: {count} processes in "
                    "the cage (counted: no pids controller here)"
                )
        return None

    def kernel_pids(self) -> bool:
        """Whether the kernel enforces pids_limit (cgroup2 overrides it)."""
        return self.companion is not None

    def placements(self) -> list[Placement]:
        own = Placement(
            self.hierarchy,
            self.cgroup,
            lambda: set(ids_under(self.fs, self.path, self.threads_file)),
        )
        return [own] + ([self.companion.placement()] if self.companion else [])

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for every process inside to be gone (sampled here;
        cgroup v2 overrides it with the kernel's ``populated`` notification)."""
        deadline = time.monotonic() + timeout
        while not self.is_empty():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- teardown -------------------------------------------------------------
    def hold_children(self) -> None:
        """Make this cgroup a parent of cages (a fleet's budget). cgroup v1: nothing
        to do, children are charged to it already."""

    def release(self) -> None:
        """Close the files and remove the directory (waiting while it drains)."""
        if self._released:
            return
        self.close_init()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        remove_when_empty(self.fs, self)
        if self.companion is not None:
            self.companion.release()  # empty now: members() covered it too
        self._released = True
        if self.on_release is not None:
            self.on_release()


def remove_when_empty(fs: CgroupFS, cage: CgroupCage | PidsLeaf) -> int:
    """SIGKILL whatever is inside, wait for it to drain, rmdir. Returns how many
    processes had to be killed.

    A killed process stays listed in ``cgroup.procs`` (and rmdir fails with EBUSY)
    until it has finished exiting: a few milliseconds, longer for a big process.
    So this kills each process once, waits for the cage to be empty (v2: the kernel's
    ``populated 0``), and only then removes it. Sub-cgroups an agent running as root
    made inside its cage are emptied by the same kill and removed first: rmdir of a
    cgroup with children is EBUSY too.
    """
    path = cage.path
    killed: set[int] = set()
    deadline = time.monotonic() + RMDIR_PATIENCE_S
    while True:
        inside = set(cage.members())
        if inside - killed:  # new ones: forked while an earlier kill ran
            cage.kill()
            killed |= inside
        empty = cage.wait_empty(max(0.0, min(0.5, deadline - time.monotonic())))
        if empty or time.monotonic() >= deadline:
            try:
                _remove_children(fs, path)
                fs.rmdir(path)
                return len(killed)
            except CageError as err:
                if not fs.exists(path):
                    return len(killed)
                if not is_busy(err) or time.monotonic() >= deadline:
                    raise CageError(
                        f"{err.message}; processes still inside: {cage.members() or 'none'}",
                        path=path,
                    ) from err
            time.sleep(0.01)


def _remove_children(fs: CgroupFS, path: str) -> None:
    """rmdir the (empty) sub-cgroups of ``path``, deepest first."""
    for sub in fs.subdirs(path):
        _remove_children(fs, sub)
        fs.rmdir(sub)
