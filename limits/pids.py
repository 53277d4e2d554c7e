"""The process cap: ``pids.max`` in a pids cgroup, and the v1 companion leaf.

Kernel behaviour this module relies on (Documentation/admin-guide/cgroup-v1/pids.rst
and cgroup-v2.rst "PID"), checked on the project's machines:

* ``pids.max`` caps the number of *tasks* -- processes and threads alike -- in a
  cgroup and its descendants. A fork or clone past it fails with EAGAIN in the
  caller; the kernel kills nobody. A fork bomb under it stays at the cap, still
  forking: the supervisor must stop it.
* ``pids.events`` ``max N`` counts forks refused by the limit (on v1 too); it is
  the signal that the cap was hit. A fresh cgroup reads ``max 0``.
* Migration ignores the limit: the child always manages to join before exec.
* The hierarchy is always hierarchical: a sub-cgroup that an agent running as root
  makes inside its leaf, whatever its own ``pids.max``, is charged to the leaf too.
* The root cgroup of a hierarchy has no ``pids.max``.

On cgroup v2 the controller lives in the cage's own leaf (cgroup2.py). On cgroup v1
the memory and pids controllers are separate hierarchies, so the cage gets a
**companion leaf** with the same name under the supervisor's own pids cgroup; the
child joins both before exec. The rlimit backend uses the same companion wherever a
v1 pids hierarchy is writable: besides the cap, it gives the rlimit cage a
membership that the agent cannot shed by double-forking or scrubbing its
environment.
"""

from __future__ import annotations

import os
import time

from agent_supervise.errors import CageError
from agent_supervise.limits.base import (
    Placement,
    StaleCage,
    Unavailable,
    cage_name,
    owner_tag,
    stale_owner,
)
from agent_supervise.limits.cgroupfs import (
    CgroupFS,
    cgroup_mounts,
    kernel_path,
    own_v1_dir,
    parse_flat_keyed,
)
from agent_supervise.limits.guard import Guard
from agent_supervise.proctree import signal_pids


def ids_under(fs: CgroupFS, path: str, file: str = "cgroup.procs") -> list[int]:
    """The ids listed in ``file`` of ``path`` and of every sub-cgroup under it (an agent
    running as root may make some and move into them). [] once the cgroup is gone."""
    try:
        ids = [int(p) for p in fs.read(os.path.join(path, file)).split()]
        subdirs = fs.subdirs(path)
    except CageError:
        return []
    for sub in subdirs:
        ids += ids_under(fs, sub, file)
    return ids


def max_events(fd: int) -> int:
    """The ``max`` counter of a kept-open ``pids.events``."""
    return parse_flat_keyed(os.pread(fd, 4096, 0).decode()).get("max", 0)


def exceeded_detail(limit: int, refused: int) -> str:
    return (
        f"process limit {limit} reached: the kernel refused {refused} fork(s) "
        "(pids.max counts threads too)"
    )


class PidsLeaf:
    """A v1 pids cgroup holding one agent, beside its memory cage (or its rlimits)."""

    def __init__(self, fs: CgroupFS, path: str, limit: int = 0) -> None:
        self.fs, self.path, self.limit = fs, path, limit
        self.guards: list[Guard] = []
        self._fds: list[int] = []
        self._procs_fd: int | None = None
        self._events_fd: int | None = None
        self.cgroup: str | None = None  # its path as /proc/PID/cgroup shows it

    @classmethod
    def create(cls, fs: CgroupFS, path: str, limit: int) -> PidsLeaf:
        """mkdir, write ``pids.max`` and read it back, open what the ticks read."""
        fs.mkdir(path)
        leaf = cls(fs, path, limit)
        value = str(limit) if limit > 0 else "max"  # 0: membership only, no cap
        try:
            fs.write(leaf._file("pids.max"), value)
            got = fs.read(leaf._file("pids.max")).strip()
            if got != value:
                raise CageError(
                    f"{leaf._file('pids.max')}: wrote {value} but the kernel reads back {got!r}",
                    path=leaf._file("pids.max"),
                )
            leaf._procs_fd = leaf._open("cgroup.procs", os.O_WRONLY)
            leaf._events_fd = leaf._open("pids.events")
            leaf.guards.append(Guard(leaf._open("pids.max"), "pids.max"))
        except BaseException:
            leaf.release()
            raise
        return leaf

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _open(self, name: str, flags: int = os.O_RDONLY) -> int:
        fd = self.fs.open(self._file(name), flags)
        self._fds.append(fd)
        return fd

    def child_proc(self) -> tuple[int, str]:
        """The ``cgroup.procs`` the child writes "0" into before exec."""
        assert self._procs_fd is not None  # opened by create()
        return self._procs_fd, self._file("cgroup.procs")

    def attach(self) -> None:
        """The agent is inside: the parent's handle on cgroup.procs is no longer needed."""
        if self._procs_fd in self._fds:
            self._fds.remove(self._procs_fd)
            os.close(self._procs_fd)

    def exceeded(self) -> str | None:
        if self.limit <= 0 or self._events_fd is None or not self._fds:
            return None
        refused = max_events(self._events_fd)
        return exceeded_detail(self.limit, refused) if refused else None

    def placement(self) -> Placement:
        return Placement("pids", self.cgroup, lambda: set(ids_under(self.fs, self.path, "tasks")))

    # -- what remove_when_empty needs --------------------------------------------------
    def members(self) -> list[int]:
        return ids_under(self.fs, self.path)

    def kill(self) -> int:
        import signal

        return signal_pids(self.members(), signal.SIGKILL)

    def is_empty(self) -> bool:
        return not self.members()

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_empty():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def release(self) -> None:
        """Close the files; kill what is left, wait for it to drain, rmdir."""
        from agent_supervise.limits.cgroupcage import remove_when_empty

        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self.fs.exists(self.path):
            remove_when_empty(self.fs, self)


class PidsHierarchy:
    """Where companion leaves go: under this process's cgroup in the v1 pids hierarchy."""

    def __init__(
        self,
        fs: CgroupFS,
        mountinfo: str = "/proc/self/mountinfo",
        cgroup_file: str = "/proc/self/cgroup",
    ) -> None:
        self.fs, self.mountinfo, self.cgroup_file = fs, mountinfo, cgroup_file
        self.parent: str | None = None
        self._why_not: Unavailable | None = None

    def probe(self) -> str:
        """Find a writable parent and really make (and remove) a leaf in it, once."""
        if self.parent is not None:
            return self.parent
        if self._why_not is not None:
            raise self._why_not
        try:
            self.parent = self._find()
        except Unavailable as why:
            self._why_not = why
            raise
        return self.parent

    def _find(self) -> str:
        parent = own_v1_dir(self.fs, "pids", self.mountinfo, self.cgroup_file)
        probe = os.path.join(parent, cage_name(owner_tag(), 0, "pids-probe"))
        try:
            PidsLeaf.create(self.fs, probe, 64).release()
        except CageError as err:
            raise Unavailable(f"{parent}: {err}") from err
        return parent

    def available(self) -> bool:
        try:
            self.probe()
            return True
        except Unavailable:
            return False

    def create(self, name: str, limit: int) -> PidsLeaf:
        leaf = PidsLeaf.create(self.fs, os.path.join(self.probe(), name), limit)
        leaf.cgroup = kernel_path(leaf.path, cgroup_mounts(self.mountinfo))
        return leaf

    def clean_stale(self) -> list[StaleCage]:
        """Companion leaves of supervisors that died: kill what is inside, rmdir."""
        from agent_supervise.limits.cgroupcage import remove_when_empty

        if not self.available():
            return []
        assert self.parent is not None  # available() found it
        found = []
        for entry in sorted(self.fs.listdir(self.parent)):
            owner = stale_owner(entry)
            if owner is None:
                continue
            path = os.path.join(self.parent, entry)
            try:
                killed = remove_when_empty(self.fs, PidsLeaf(self.fs, path))
                found.append(StaleCage(path, owner, killed, True))
            except CageError:
                found.append(StaleCage(path, owner, 0, False))
        return found
