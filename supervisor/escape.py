"""Processes that left their cage: the agent's tree, compared with its cgroup.

An agent running as root can write its pid into another cgroup's ``cgroup.procs``
and leave its cage, taking its memory out of the cap. It is still the agent's
descendant (or an orphan adopted by the supervisor, a child subreaper), so the
process tree finds it. Leaving the cage is hostile: the whole agent is stopped with
reason ``escaped``. Running agents as another user (``user:``, ``--user``) makes the
move itself fail with EACCES; this check is the defence in depth, once a second.
"""

from __future__ import annotations

from .proctree import ProcessTable

CHECK_EVERY_S = 1.0


class EscapeWatch:
    def __init__(self, table: ProcessTable | None = None) -> None:
        self.table = table or ProcessTable()

    def tree(self, run) -> list[int]:
        """Live processes of the agent's tree: its root, descendants, adopted orphans."""
        roots = [run.pid, *sorted(run.orphans)]
        return [p for p in self.table.descendants(roots) if self.table.alive(p)]

    def outside(self, run) -> list[int]:
        """Processes of the agent's tree that are not in its cage (cgroup cages only)."""
        if not getattr(run.cage, "kernel_enforced", False):
            return []  # an rlimit cage *is* the tree
        tree = self.tree(run)
        if not tree:
            return []
        inside = set(run.cage.members())
        # A process that is exiting has already left cgroup.procs but is not a zombie
        # yet; /proc/PID/cgroup still names its cage then. Only that file decides.
        hierarchy = "" if run.cage.backend == "cgroup2" else "memory"
        return [p for p in tree if p not in inside
                and (path := self._cgroup_of(p, hierarchy)) is not None
                and run.cage.name not in path.split("/")]

    @staticmethod
    def _cgroup_of(pid: int, hierarchy: str) -> str | None:
        """The process's cgroup path in the memory hierarchy (None: it is gone)."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                for line in f:
                    _, controllers, path = line.rstrip("\n").split(":", 2)
                    if hierarchy in controllers.split(",") or controllers == hierarchy:
                        return path
        except (OSError, ValueError):
            return None
        return None
