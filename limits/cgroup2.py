"""cgroup v2: a leaf with ``memory.max``, ``memory.swap.max=0``, ``memory.oom.group=1``.

Kernel behaviour this module relies on (Documentation/admin-guide/cgroup-v2.rst):

* The memory controller must be enabled in the parent's ``cgroup.subtree_control``
  for a child to get ``memory.max``. A non-root cgroup that holds processes cannot
  enable it (the "no internal processes" rule, EBUSY), so when the supervisor's own
  cgroup holds processes the leaf goes under the nearest ancestor that can host it.
* ``memory.oom.group=1`` makes the OOM killer kill every process of the cgroup at
  once: the agent dies as one unit. ``memory.events`` then counts the victim twice,
  as the victim and again as a member of its group: ``oom_kill`` is 1 + the number
  of processes (2 for one process, 3 for a shell and its python), ``oom_group_kill``
  1 (kernel 5.17+). So the number of OOM kills of the agent is ``oom_group_kill``.
* ``memory.events`` and ``cgroup.events`` signal changes with POLLPRI (kernfs
  notify); the fd must be re-read after each wake-up to re-arm it. A freshly opened
  fd polls ready (POLLPRI|POLLERR) until its first read, so it is read once at open.
  The kernel defers a notification that follows another within 20 ms
  (``CGROUP_FILE_NOTIFY_MIN_INTV``): it comes late, never not at all.
* ``cgroup.kill`` (5.14+) SIGKILLs the whole cgroup and its descendants, including
  processes forked while the kill runs. Right after it, ``cgroup.procs`` still lists
  the dying process and ``rmdir`` is EBUSY (about 3 ms in User-Mode Linux): wait
  for ``populated 0`` in ``cgroup.events`` before ``rmdir``.
* ``cgroup.procs`` lists only the cgroup's own processes; an agent running as root
  may make sub-cgroups in its cage and move into them. ``populated`` covers the
  whole subtree, and ``members()`` reads the sub-cgroups too.
* Limits are stored in pages: ``memory.max`` and ``memory.swap.max`` read back
  rounded down to a page; the kernel also takes ``50M``, read back as bytes.
* The root cgroup has no ``memory.*`` limit files, ``cgroup.events`` or
  ``cgroup.kill``, and is exempt from the no-internal-processes rule.
* The process cap is ``pids.max`` in the same leaf (pids.py), when the pids
  controller is offered: it is enabled in the parent's ``subtree_control`` beside
  memory. Sub-cgroups are always charged to their parent (memory and pids alike),
  so one an agent running as root makes in its cage cannot raise its caps; the
  leaf's own ``memory.max``, ``memory.swap.max``, ``memory.oom.group`` and
  ``pids.max`` are guarded against the agent's writes (guard.py).
"""

from __future__ import annotations

import errno
import os
import select
import time
import weakref

from agent_supervise.errors import CageError
from agent_supervise.limits import systemd as sd
from agent_supervise.limits.base import Unavailable
from agent_supervise.limits.cgroupcage import (
    CgroupBackend,
    CgroupCage,
    page_floor,
    remove_when_empty,
)
from agent_supervise.limits.cgroupfs import cgroup_dir, cgroup_mounts, own_cgroups, parse_flat_keyed
from agent_supervise.limits.guard import Guard, PeakGuard
from agent_supervise.limits.pids import exceeded_detail, max_events


class Cgroup2Cage(CgroupCage):
    usage_file = "memory.current"
    hierarchy = ""
    threads_file = "cgroup.threads"

    def configure(self) -> None:
        self.write_checked("memory.max", str(self.limit), str(page_floor(self.limit)))
        self._guarded = ["memory.max"]
        self._pids_events_fd: int | None = None
        if self.fs.exists(self._file("memory.swap.max")):
            self.write_checked("memory.swap.max", "0")
            self._guarded.append("memory.swap.max")
        else:
            self.notes.append(
                "memory.swap.max is missing (no swap accounting): the cap covers RAM only"
            )
        if self.fs.exists(self._file("memory.oom.group")):
            self.write_checked("memory.oom.group", "1")
            self._guarded.append("memory.oom.group")
        else:
            self.notes.append(
                "memory.oom.group is missing (kernel < 4.19): the "
                "supervisor kills the rest of the agent after an OOM kill"
            )
        if self.pids_limit > 0 and self.fs.exists(self._file("pids.max")):
            self.write_checked("pids.max", str(self.pids_limit))
            self._guarded.append("pids.max")
        elif self.pids_limit > 0:
            self.notes.append(
                "pids.max is missing (the pids controller is not offered "
                "here): the watchdog counts the cage's processes instead"
            )

    def open_files(self) -> None:
        super().open_files()
        self._events_fd = self._keep_open("memory.events")
        # Read once: the read arms kernfs notification; unread, a new fd polls ready
        # and would wake the loop for nothing.
        self._seen_kills = self.oom_kills()
        self.guards = [Guard(self._keep_open(name), name) for name in self._guarded]
        if self.fs.exists(self._file("memory.peak")):
            self.guards.append(PeakGuard(self._keep_open("memory.peak"), "memory.peak", self.limit))
        if "pids.max" in self._guarded:
            self._pids_events_fd = self._keep_open("pids.events")

    def kernel_pids(self) -> bool:
        return "pids.max" in self._guarded

    def pids_exceeded(self) -> str | None:
        if self._pids_events_fd is None or not self._fds:
            return super().pids_exceeded()
        refused = max_events(self._pids_events_fd)
        return exceeded_detail(self.pids_limit, refused) if refused else None

    def _events(self) -> dict[str, int]:
        return parse_flat_keyed(os.pread(self._events_fd, 4096, 0).decode())

    def oom_kills(self) -> int:
        events = (
            self._events()
            if self._fds
            else parse_flat_keyed(self.fs.read(self._file("memory.events")))
        )
        return events.get("oom_group_kill") or events.get("oom_kill", 0)

    def peak(self) -> int | None:
        if not self.fs.exists(self._file("memory.peak")):
            return None  # memory.peak arrived in Linux 5.19
        return int(self.fs.read(self._file("memory.peak")))

    def notify_fd(self) -> tuple[int, int]:
        return self._events_fd, select.EPOLLPRI

    def on_notify(self) -> bool:
        kills = self.oom_kills()  # the read also re-arms the kernfs notification
        fired, self._seen_kills = kills > self._seen_kills, kills
        return fired

    def is_empty(self) -> bool:
        try:
            events = parse_flat_keyed(self.fs.read(self._file("cgroup.events")))
        except CageError:
            return True
        return events.get("populated", 0) == 0

    def wait_empty(self, timeout: float) -> bool:
        """Wait for ``populated 0``, woken by the kernel's notification on
        ``cgroup.events`` rather than by sampling."""
        try:
            fd = self.fs.open(self._file("cgroup.events"))
        except CageError:
            return True  # the directory is gone
        try:
            poller = select.poll()  # poll, not epoll: it also takes a test's plain file
            poller.register(fd, select.POLLPRI)
            deadline = time.monotonic() + timeout
            while True:
                os.pread(fd, 4096, 0)  # arm: poll wakes on the next change after a read
                if self.is_empty():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Capped: a deferred notification comes within 20 ms, a fake never.
                poller.poll(min(left, 0.05) * 1000)
        finally:
            os.close(fd)

    def kill(self) -> int:
        inside = len(self.members())
        if self.fs.exists(self._file("cgroup.kill")):
            self.fs.write(self._file("cgroup.kill"), "1")
            return inside
        return super().kill()


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
            systemd = None if fs is not None or off else sd.Systemd()
        self.systemd = systemd
        self.scope: sd.DelegatedScope | None = None
        self._why_no_scope: str | None = None  # None: the systemd step was not reached

    def probe(self) -> str:
        """Where cages go: ``--cgroup-root``; else the own cgroup; else (systemd) a
        delegated scope (systemd.py); else the nearest ancestor that can host them."""
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
            raise sd.ScopeFailed(f"{scope.unit} at {path}: {err}") from err
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
            found += sd.clean_stale_scopes(
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
