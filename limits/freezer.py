"""Freezing an agent: its processes stop being scheduled, keep their memory, and go on
where they were when thawed. The pressure ladder's middle step (fleet/ladder.py):
a frozen agent stops growing, so the others can finish and give memory back.

What each mechanism does (Documentation/admin-guide/cgroup-v2.rst "Core Interface
Files", cgroup-v1/freezer-subsystem.rst), checked on the project's machines:

* cgroup v2: ``cgroup.freeze`` 1 freezes every task of the leaf and its sub-cgroups,
  those forked meanwhile too; ``cgroup.events`` reads ``frozen 1`` once all are.
  Invisible to the agent. SIGKILL still kills a frozen task; other signals wait for
  the thaw, so a run always thaws before it stops one (run/lifecycle.py).
* cgroup v1: the freezer is a hierarchy of its own, so the cage's processes are
  moved into a leaf of the cage's name there when first frozen (not before: most
  agents are never frozen, and a start costs one mkdir less). A task migrating into
  a FROZEN cgroup is frozen on arrival, so the leaf is frozen first and the cage's
  members moved in until none is left outside (one may fork while the others move).
  A frozen v1 task does not even die from SIGKILL until thawed: stale cleanup thaws
  a dead supervisor's leaves before anything is killed.
* rlimit (no cgroup to freeze): SIGSTOP to every process of the tree and its process
  group, SIGCONT to thaw. The agent can notice (a parent waiting with WUNTRACED sees
  its child stop; a SIGCONT handler runs), unlike the cgroup freezers.
"""

from __future__ import annotations

import os
import time

from agent_supervise.errors import CageError
from agent_supervise.limits.base import StaleCage, Unavailable, stale_owner
from agent_supervise.limits.cgroupfs import CgroupFS, own_v1_dir
from agent_supervise.limits.pids import ids_under
from agent_supervise.proctree import signal_pids

#: Rounds of moving the cage's processes into a v1 freezer leaf before giving up:
#: each round catches what the previous one's stragglers forked.
MOVE_ROUNDS = 8


class FreezerLeaf:
    """A v1 freezer cgroup holding one agent's processes while it is frozen (and
    after, until they exit)."""

    def __init__(self, fs: CgroupFS, path: str) -> None:
        self.fs, self.path = fs, path

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def freeze(self, members) -> None:
        """Make the leaf, set it FROZEN, move ``members()`` in until all are there."""
        if not self.fs.exists(self.path):
            self.fs.mkdir(self.path)
        self.fs.write(self._file("freezer.state"), "FROZEN")
        for _ in range(MOVE_ROUNDS):
            outside = set(members()) - set(self.members())
            if not outside:
                return
            for pid in sorted(outside):
                try:
                    self.fs.write(self._file("cgroup.procs"), str(pid))
                except CageError:
                    pass  # exited meanwhile (ESRCH): the next round reads again
        raise CageError(
            f"{self.path}: processes kept appearing outside the freezer", path=self.path
        )

    def thaw(self) -> None:
        if self.fs.exists(self.path):
            self.fs.write(self._file("freezer.state"), "THAWED")

    # -- what remove_when_empty needs (cgroupcage.py) -------------------------------
    def members(self) -> list[int]:
        return ids_under(self.fs, self.path)

    def kill(self) -> int:
        import signal

        self.thaw()  # a frozen v1 task does not die until thawed
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
        """Thaw and remove the leaf (its processes have left with their cage)."""
        from agent_supervise.limits.cgroupcage import remove_when_empty

        if self.fs.exists(self.path):
            self.thaw()
            remove_when_empty(self.fs, self)  # type: ignore[arg-type]


class FreezerHierarchy:
    """Where freezer leaves go: under this process's cgroup in the v1 freezer
    hierarchy. Found on first use; Unavailable says why not."""

    def __init__(self, fs: CgroupFS, mountinfo: str, cgroup_file: str) -> None:
        self.fs, self.mountinfo, self.cgroup_file = fs, mountinfo, cgroup_file
        self._parent: str | None = None

    def parent(self) -> str:
        if self._parent is None:
            self._parent = own_v1_dir(self.fs, "freezer", self.mountinfo, self.cgroup_file)
        return self._parent

    def leaf(self, name: str) -> FreezerLeaf:
        return FreezerLeaf(self.fs, os.path.join(self.parent(), name))

    def thaw_stale(self) -> list[FreezerLeaf]:
        """A dead supervisor's leaves, thawed (its agents can die now); the caller
        removes them once the agents' own cages are cleaned."""
        try:
            parent = self.parent()
        except Unavailable:
            return []
        stale = []
        for entry in sorted(self.fs.listdir(parent)):
            if stale_owner(entry) is None:
                continue
            leaf = FreezerLeaf(self.fs, os.path.join(parent, entry))
            try:
                leaf.thaw()
                stale.append(leaf)
            except CageError:
                pass
        return stale

    @staticmethod
    def remove(leaves: list[FreezerLeaf]) -> list[StaleCage]:
        found = []
        for leaf in leaves:
            owner = stale_owner(os.path.basename(leaf.path)) or 0
            try:
                killed = len(leaf.members())
                leaf.release()
                found.append(StaleCage(leaf.path, owner, killed, True))
            except CageError:
                found.append(StaleCage(leaf.path, owner, 0, False))
        return found
