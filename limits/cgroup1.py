"""cgroup v1 memory controller: ``memory.limit_in_bytes`` then ``memory.memsw.limit_in_bytes``.

Kernel behaviour this module relies on (Documentation/admin-guide/cgroup-v1/memory.rst,
and measured on the project's machines, see ../shared/NOTES.md):

* Set ``memory.limit_in_bytes`` first: ``memsw`` (memory+swap) below the memory
  limit is EINVAL. Setting memsw equal to the limit means no swap at all.
* v1 has neither ``memory.oom.group`` nor ``cgroup.kill``: the OOM killer kills only
  the largest process (``sh -c 'python hog.py'``: python dies, sh lives on). The
  supervisor therefore kills every remaining task when the cage reports an OOM.
* An eventfd registered through ``cgroup.event_control`` on ``memory.oom_control``
  fires once per OOM, *before* the victim dies: ``oom_kill`` in ``memory.oom_control``
  may still read 0 at that moment, so the event itself is taken as the OOM.
* ``memory.failcnt`` is unreliable (non-zero without any OOM); it is not used.
* Removing a cgroup signals its registered eventfds once: unregister first.
* ``memory.use_hierarchy`` 1 (the only value since Linux 5.11) charges sub-cgroups
  to their parent: a sub-cgroup an agent running as root makes in its cage, with any
  limit of its own, stays under the cage's cap. An older kernel may start a cgroup
  at 0; the cage sets 1 (allowed while it has no children) and guards it.
* ``memory.oom_control`` ``oom_kill_disable 1`` would make the agent hang at its cap
  instead of being killed; it is guarded like the limits (guard.py).
* The pids controller is its own hierarchy: the process cap is a companion leaf
  there (pids.py), joined by the child with the memory cage. So is the freezer: a
  leaf there is made when the cage is first frozen (freezer.py).
"""

from __future__ import annotations

import os
import select

from agent_supervise.errors import CageError, syscall_error
from agent_supervise.limits.base import Unavailable
from agent_supervise.limits.cgroupbackend import CgroupBackend
from agent_supervise.limits.cgroupcage import CgroupCage, page_floor
from agent_supervise.limits.cgroupfs import cgroup_dir, cgroup_mounts, own_cgroups, parse_flat_keyed
from agent_supervise.limits.freezer import FreezerHierarchy, FreezerLeaf
from agent_supervise.limits.guard import Guard, PeakGuard
from agent_supervise.limits.pids import PidsHierarchy


class Cgroup1Cage(CgroupCage):
    usage_file = "memory.usage_in_bytes"
    hierarchy = "memory"
    threads_file = "tasks"
    #: Its leaf in the v1 freezer hierarchy (made on first freeze); None without one:
    #: the base class's SIGSTOP then.
    freezer: FreezerLeaf | None = None

    def freeze(self) -> None:
        if self.freezer is None:
            super().freeze()
        else:
            self.freezer.freeze(self.members)
            self.frozen = True

    def thaw(self) -> None:
        if self.freezer is None:
            super().thaw()
        else:
            self.freezer.thaw()
            self.frozen = False

    def release(self) -> None:
        super().release()
        if self.freezer is not None:
            self.freezer.release()  # its processes left with the cage
            self.freezer = None

    def configure(self) -> None:
        rounded = str(page_floor(self.limit))
        self.write_checked("memory.limit_in_bytes", str(self.limit), rounded)
        self._guarded = ["memory.limit_in_bytes"]
        if self.fs.exists(self._file("memory.memsw.limit_in_bytes")):
            self.write_checked("memory.memsw.limit_in_bytes", str(self.limit), rounded)
            self._guarded.append("memory.memsw.limit_in_bytes")
        else:
            self.notes.append(
                "memory.memsw.limit_in_bytes is missing (swap accounting "
                "off): the cap covers RAM only"
            )
        if self.fs.exists(self._file("memory.use_hierarchy")):
            if self.fs.read(self._file("memory.use_hierarchy")).strip() != "1":
                self.write_checked("memory.use_hierarchy", "1")
            self._guarded.append("memory.use_hierarchy")

    def set_high(self, high: int) -> None:
        """memory.soft_limit_in_bytes: under memory pressure on the machine, reclaim
        takes from groups over their soft limit first. It slows nothing by itself;
        :meth:`throttled` is the watchdog's sample against it."""
        self.write_checked("memory.soft_limit_in_bytes", str(high), str(page_floor(high)))
        self.high = high

    def open_files(self) -> None:
        super().open_files()
        self._oom_fd = self._keep_open("memory.oom_control")
        self.guards = [Guard(self._keep_open(name), name) for name in self._guarded]
        self.guards.append(Guard(self._oom_fd, "memory.oom_control", "oom_kill_disable"))
        self.guards.append(
            PeakGuard(
                self._keep_open("memory.max_usage_in_bytes"),
                "memory.max_usage_in_bytes",
                self.limit,
            )
        )
        try:
            self._event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError as e:
            raise syscall_error("eventfd", None, e, backend=self.backend) from e
        self._fds.append(self._event_fd)
        self.fs.write(self._file("cgroup.event_control"), f"{self._event_fd} {self._oom_fd}")

    def oom_kills(self) -> int:
        text = (
            os.pread(self._oom_fd, 4096, 0).decode()
            if self._fds
            else self.fs.read(self._file("memory.oom_control"))
        )
        return parse_flat_keyed(text).get("oom_kill", 0)

    def peak(self) -> int | None:
        return int(self.fs.read(self._file("memory.max_usage_in_bytes")))

    def notify_fd(self) -> tuple[int, int]:
        return self._event_fd, select.EPOLLIN

    def on_notify(self) -> bool:
        try:
            os.eventfd_read(self._event_fd)
        except BlockingIOError:
            return False
        return True


class Cgroup1Backend(CgroupBackend):
    """Leaves under the supervisor's own memory cgroup (or ``root``)."""

    name = "cgroup1"
    cage_class = Cgroup1Cage

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pids = PidsHierarchy(self.fs, self.mountinfo, self.cgroup_file)
        self.freezers = FreezerHierarchy(self.fs, self.mountinfo, self.cgroup_file)

    def add_companions(self, cage: CgroupCage) -> None:
        """Where its freezer leaf would go, and the process cap: a leaf of the same
        name in the v1 pids hierarchy."""
        if isinstance(cage, Cgroup1Cage):
            try:
                cage.freezer = self.freezers.leaf(cage.name)
            except Unavailable:
                pass  # frozen by SIGSTOP instead (the base cage's freeze)
        if cage.pids_limit <= 0:
            return
        try:
            self.pids.probe()
        except Unavailable as why:
            cage.notes.append(
                f"no process cap from the kernel ({why}): the watchdog "
                "counts the cage's processes instead"
            )
            return
        cage.companion = self.pids.create(cage.name, cage.pids_limit)

    def clean_stale(self):
        """A dead supervisor's cages; its frozen agents thawed first (a frozen v1
        task does not die until thawed), their freezer leaves removed last."""
        frozen = self.freezers.thaw_stale()
        found = super().clean_stale() + self.pids.clean_stale()
        return found + self.freezers.remove(frozen)

    def probe(self) -> str:
        if self.parent is not None:
            return self.parent
        mounts = [
            m
            for m in cgroup_mounts(self.mountinfo)
            if m.fstype == "cgroup" and "memory" in m.options
        ]
        if not mounts:
            raise Unavailable("no cgroup v1 hierarchy has the memory controller")
        parent: str | None
        if self.requested_root:
            parent = self.requested_root
        else:
            own = own_cgroups(self.cgroup_file).get("memory")
            parent = cgroup_dir(mounts[0], own) if own else None
            if parent is None:
                raise Unavailable(
                    f"this process's memory cgroup is not visible under {mounts[0].point}"
                )
        if not self.fs.exists(os.path.join(parent, "memory.limit_in_bytes")):
            raise Unavailable(f"{parent} is not a cgroup v1 memory directory")
        if not self.fs.writable(parent):
            raise Unavailable(f"{parent} is not writable by uid {os.getuid()}")
        try:
            self.probe_leaf(parent)
        except CageError as err:
            raise Unavailable(f"{parent}: {err}") from err
        self.parent = parent
        return parent
