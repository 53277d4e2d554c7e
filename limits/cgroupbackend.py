"""What the cgroup v1 and v2 backends share: naming leaves, making them (limits
written and checked, files opened, companions added), probing a parent with a real
leaf, and cleaning the cages of supervisors that died."""

from __future__ import annotations

import os

from agent_supervise.errors import CageError
from agent_supervise.limits.base import (
    DEFAULT_PIDS_LIMIT,
    Backend,
    StaleCage,
    cage_name,
    stale_owner,
)
from agent_supervise.limits.cgroupcage import CgroupCage, remove_when_empty
from agent_supervise.limits.cgroupfs import CgroupFS, cgroup_mounts, kernel_path


class CgroupBackend(Backend):
    """Shared by cgroup1 and cgroup2: leaf naming, creation, stale cleanup."""

    cage_class: type[CgroupCage]

    def __init__(
        self,
        fs: CgroupFS | None = None,
        root: str | None = None,
        *,
        mountinfo: str = "/proc/self/mountinfo",
        cgroup_file: str = "/proc/self/cgroup",
    ) -> None:
        self.fs = fs or CgroupFS()
        self.requested_root = root
        self.mountinfo = mountinfo  # where to find the hierarchies (tests: fakes)
        self.cgroup_file = cgroup_file  # and this process's place in them
        self.parent: str | None = None
        self._seq = 0
        self._owner: str | None = None
        self._mounts = None

    def mounts(self):
        if self._mounts is None:
            self._mounts = cgroup_mounts(self.mountinfo)
        return self._mounts

    def owner(self) -> str:
        if self._owner is None:
            from agent_supervise.limits.base import owner_tag

            self._owner = owner_tag()
        return self._owner

    def next_path(self, label: str) -> str:
        parent = self.parent or self.probe()
        self._seq += 1
        return os.path.join(parent, cage_name(self.owner(), self._seq, label))

    def clean_stale(self) -> list[StaleCage]:
        parent = self.parent or self.probe()
        found = []
        for entry in sorted(self.fs.listdir(parent)):
            owner = stale_owner(entry)
            if owner is None:
                continue
            path = os.path.join(parent, entry)
            cage = self.cage_class(self.fs, path, 0, self.name)
            try:
                killed = remove_when_empty(self.fs, cage)
                found.append(StaleCage(path, owner, killed, True))
            except CageError:
                found.append(StaleCage(path, owner, 0, False))
        # Processes that left their cage before their supervisor died carry its marker.
        from agent_supervise.limits.stale import kill_marked_orphans

        return found + kill_marked_orphans()

    def create(
        self, label: str, limit: int, *, pids: int = DEFAULT_PIDS_LIMIT, uid: int | None = None
    ) -> CgroupCage:
        """mkdir a leaf, write and check its limits, open the files the loop reads."""
        path = self.next_path(label)
        return self._make(path, limit, open_files=True, pids=pids)

    def budget_cage(self, limit: int) -> CgroupCage:
        """A memory cgroup of ``limit`` bytes in the cages' place, and the cages from
        now on inside it: the kernel charges every page of theirs to it too (cgroup v1
        and v2 are hierarchical), so together they can never pass it. At the budget it
        reclaims, then OOM-kills one agent inside, never one outside."""
        parent = self.parent or self.probe()
        self._seq += 1
        path = os.path.join(parent, cage_name(self.owner(), self._seq, "budget"))
        cage = self._make(path, limit, open_files=False)
        try:
            cage.hold_children()
        except BaseException:
            cage.release()
            raise
        self.parent = path
        cage.on_release = lambda: setattr(self, "parent", parent)
        return cage

    def add_companions(self, cage: CgroupCage) -> None:
        """Cgroups in other hierarchies the agent also joins (cgroup1: pids)."""

    def probe_leaf(self, parent: str) -> None:
        """Really create a leaf with a limit in ``parent``, then remove it."""
        self._seq += 1
        path = os.path.join(parent, cage_name(self.owner(), 0, f"probe{self._seq}"))
        self._make(path, 64 << 20, open_files=False).release()

    def _make(self, path: str, limit: int, open_files: bool, pids: int = 0) -> CgroupCage:
        self.fs.mkdir(path)
        cage = self.cage_class(self.fs, path, limit, self.name)
        cage.pids_limit = max(0, pids)
        cage.cgroup = kernel_path(path, self.mounts())
        try:
            cage.configure()
            if open_files:
                cage.open_files()
                self.add_companions(cage)
        except BaseException:
            cage.release()
            raise
        return cage
