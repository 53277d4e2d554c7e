"""cgroup v2: where the cages go, a leaf with ``memory.max``, ``memory.swap.max=0``,
``memory.oom.group=1`` each (:mod:`agent_supervise.limits.cgroup2cage`).

The parent is ``--cgroup-root``, else the supervisor's own cgroup, else (under
systemd) a delegated scope (:mod:`agent_supervise.limits.scope`), else the nearest
ancestor that can host cages. Kernel behaviour this module relies on
(Documentation/admin-guide/cgroup-v2.rst):

* The memory controller must be enabled in the parent's ``cgroup.subtree_control``
  for a child to get ``memory.max``. A non-root cgroup that holds processes cannot
  enable it (the "no internal processes" rule, EBUSY), so when the supervisor's own
  cgroup holds processes the leaf goes under the nearest ancestor that can host it.
* The root cgroup has no ``memory.*`` limit files, ``cgroup.events`` or
  ``cgroup.kill``, and is exempt from the no-internal-processes rule.
"""

from __future__ import annotations

import errno
import os
import weakref

from agent_supervise.errors import CageError
from agent_supervise.limits.base import Unavailable
from agent_supervise.limits.cgroup2cage import Cgroup2Cage
from agent_supervise.limits.cgroupbackend import CgroupBackend
from agent_supervise.limits.cgroupcage import remove_when_empty
from agent_supervise.limits.cgroupfs import cgroup_dir, cgroup_mounts, own_cgroups
from agent_supervise.limits.scope import DelegatedScope
from agent_supervise.limits.sdcalls import ScopeFailed
from agent_supervise.limits.stalescope import clean_stale_scopes
from agent_supervise.limits.systemd import Systemd

_AUTO = object()  # Cgroup2Backend(systemd=...): detect
_SCOPE = object()  # the probe's step "ask systemd for a delegated scope"


class Cgroup2Backend(CgroupBackend):
    """Leaves under the supervisor's own cgroup (or ``root``) on the unified hierarchy."""

    name = "cgroup2"
    cage_class = Cgroup2Cage

    def __init__(self, fs=None, root=None, *, systemd=_AUTO, **kw) -> None:
        super().__init__(fs, root, **kw)
        if systemd is _AUTO:  # the real thing on the real cgroupfs; tests pass theirs
            off = os.environ.get("AGENT_SUPERVISE_SYSTEMD") == "0"
            systemd = None if fs is not None or off else Systemd()
        self.systemd = systemd
        self.scope: DelegatedScope | None = None
        self._why_no_scope: str | None = None  # None: the systemd step was not reached

    def probe(self) -> str:
        """Where cages go: ``--cgroup-root``; else the own cgroup; else (systemd) a
        delegated scope (scope.py); else the nearest ancestor that can host them."""
        if self.parent is not None:
            return self.parent
        mount = self._memory_mount()
        own: str | None = None
        candidates: list[object]  # cgroup paths, and the _SCOPE step
        if self.requested_root:
            candidates = [self.requested_root]
        else:
            own = cgroup_dir(mount, own_cgroups(self.cgroup_file).get("", "/"))
            if own is None:
                raise Unavailable(f"this process's cgroup is not visible under {mount.point}")
            candidates = list(_self_and_ancestors(own, mount.point))
            if self.systemd is not None:
                candidates.insert(1, _SCOPE)
        reasons = []
        for candidate in candidates:
            if candidate is _SCOPE:
                assert own is not None  # the step is only offered with an own cgroup
                try:
                    return self._delegated_scope(mount.point, own)
                except Unavailable as err:
                    self._why_no_scope = str(err)
                    reasons.append(f"systemd: {err}")
                    continue
            assert isinstance(candidate, str)
            try:
                self._prepare_parent(candidate, is_root=candidate == mount.point)
                self.probe_leaf(candidate)
            except (Unavailable, CageError) as err:
                reasons.append(f"{candidate}: {err}")
                continue
            self.parent = candidate
            return candidate
        raise Unavailable("; ".join(reasons))

    def _delegated_scope(self, mount_point: str, own: str) -> str:
        manager = self.systemd.find_manager()
        scope = self.systemd.scope(manager, self.fs, mount_point)
        path = scope.start()
        try:
            if not self.systemd.can_enter(own, path):
                scope.join()  # from session-N.scope (ssh, su -l, tmux there)
            self._prepare_parent(path, is_root=False)
            self.probe_leaf(path)
        except (Unavailable, CageError) as err:
            scope.close()
            raise ScopeFailed(f"{scope.unit} at {path}: {err}") from err
        self.scope, self.parent = scope, path
        self._close = weakref.finalize(self, scope.close)  # at exit, or when dropped
        return path

    def close(self) -> None:
        """Give the delegated scope back (a no-op without one); cages first."""
        if self.scope is not None:
            self._close()

    def placement_note(self) -> str | None:
        """What doctor says beside the parent directory."""
        return self.scope.describe() if self.scope is not None else None

    def advice(self) -> list[str]:
        """What would give kernel caps here, when the systemd step found none."""
        if self._why_no_scope is None:
            return []
        return self.systemd.advice()

    def clean_stale(self):
        found = super().clean_stale()
        if self.scope is not None:  # scopes of dead supervisors beside ours
            found += clean_stale_scopes(
                self.fs, os.path.dirname(self.parent), self._remove_stale, keep=self.parent
            )
        return found

    def _remove_stale(self, path: str) -> int:
        """A cage of a dead supervisor's scope. Once its last process is gone the
        scope is empty and systemd removes its cgroups while this still waits on
        them (ENODEV, ENOENT): gone is what was wanted."""
        cage = self.cage_class(self.fs, path, 0, self.name)
        inside = 0
        try:
            inside = len(cage.members())
            return remove_when_empty(self.fs, cage)
        except (OSError, CageError):
            if self.fs.exists(path):
                raise
            return inside

    def _memory_mount(self):
        mounts = [m for m in cgroup_mounts(self.mountinfo) if m.fstype == "cgroup2"]
        if not mounts:
            raise Unavailable("no cgroup2 filesystem is mounted")
        for mount in mounts:
            ctrls = self._controllers(mount.point)
            if "memory" in ctrls:
                return mount
        point = mounts[0].point
        ctrls = " ".join(sorted(self._controllers(point))) or "none"
        raise Unavailable(
            f"cgroup2 at {point} offers controllers '{ctrls}' but not "
            "memory: the memory controller is bound to a cgroup v1 "
            "hierarchy (hybrid layout)"
        )

    def _controllers(self, path: str) -> set[str]:
        try:
            return set(self.fs.read(os.path.join(path, "cgroup.controllers")).split())
        except CageError:
            return set()

    def _prepare_parent(self, path: str, is_root: bool) -> None:
        """Make sure children of ``path`` can get memory.max."""
        if not self.fs.exists(os.path.join(path, "cgroup.controllers")):
            raise Unavailable("not a cgroup2 directory")
        if not self.fs.writable(path) or not self.fs.writable(os.path.join(path, "cgroup.procs")):
            raise Unavailable(f"not writable by uid {os.getuid()}")
        if "memory" not in self._controllers(path):
            raise Unavailable("its parent does not delegate the memory controller")
        subtree = os.path.join(path, "cgroup.subtree_control")
        if "memory" not in self.fs.read(subtree).split():
            try:
                self.fs.write(subtree, "+memory")
            except CageError as err:
                cause = err.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EBUSY and not is_root:
                    raise Unavailable(
                        "it holds processes, and cgroup v2 lets a non-root cgroup with "
                        "processes enable no controller for its children"
                    ) from err
                raise
        if "pids" in self._controllers(path) and "pids" not in self.fs.read(subtree).split():
            try:
                self.fs.write(subtree, "+pids")
            except CageError:
                pass  # then cages count their processes instead (each says so in a note)


def _self_and_ancestors(path: str, top: str) -> list[str]:
    out = [path]
    while path != top and path.startswith(top):
        path = os.path.dirname(path)
        out.append(path)
    return out
