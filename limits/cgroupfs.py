"""File operations on cgroup filesystems, and where the hierarchies are mounted.

Both cgroup backends touch the kernel only through :class:`CgroupFS`, a thin class
over os calls, so the v2 backend can be unit-tested over a fake cgroupfs folder
(this project's machines bind the memory controller to v1). Every failure is
raised as :class:`~agent_supervise.errors.CageError` naming the call and the path.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from agent_supervise.errors import syscall_error
from agent_supervise.proctree import read_proc


class CgroupFS:
    """The system calls the cgroup backends make. Override in tests."""

    def mkdir(self, path: str) -> None:
        try:
            os.mkdir(path)
        except OSError as e:
            raise syscall_error("mkdir", path, e) from e

    def rmdir(self, path: str) -> None:
        try:
            os.rmdir(path)
        except OSError as e:
            raise syscall_error("rmdir", path, e) from e

    def read(self, path: str) -> str:
        try:
            return read_proc(path).decode("ascii")  # see read_proc: 4 calls, not 8
        except OSError as e:
            raise syscall_error("read", path, e) from e

    def write(self, path: str, text: str) -> None:
        """One write(2) of ``text``: cgroup files take a value per write call."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise syscall_error("open", path, e) from e
        try:
            os.write(fd, text.encode())
        except OSError as e:
            raise syscall_error(f"write {text.strip()!r} to", path, e) from e
        finally:
            os.close(fd)

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except OSError as e:
            raise syscall_error("open", path, e) from e

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except OSError as e:
            raise syscall_error("listdir", path, e) from e

    def subdirs(self, path: str) -> list[str]:
        """Child cgroups of ``path``. A directory's link count is 2 plus its
        subdirectories (kernfs keeps it so), so one stat usually says "none"
        without listing the ~40 control files."""
        try:
            if os.stat(path).st_nlink <= 2:
                return []
            with os.scandir(path) as entries:
                return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError as e:
            raise syscall_error("scandir", path, e) from e

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def writable(self, path: str) -> bool:
        return os.access(path, os.W_OK)


def pread_int(fd: int) -> int:
    """Read a counter file from a kept-open fd: ~1 us, and the value stays fresh."""
    return int(os.pread(fd, 64, 0))


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse ``key value`` lines (memory.events, memory.oom_control, cgroup.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


@dataclass(frozen=True)
class Mount:
    """One cgroup mount from /proc/self/mountinfo."""

    point: str  # where it is mounted
    root: str  # which cgroup of the hierarchy appears at ``point``
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: tuple[str, ...]  # super options: v1 controllers are listed here


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    mounts: list[Mount] = []
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return mounts
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        mounts.append(Mount(point, fields[3], tail[0], tuple(tail[2].split(","))))
    return mounts


def own_cgroups(cgroup_file: str = "/proc/self/cgroup") -> dict[str, str]:
    """Map of hierarchy key to this process's cgroup path.

    The v2 line (``0::/path``) is keyed ``""``; each v1 line is keyed by each of its
    controllers (``memory``) and by ``name=...`` for named hierarchies.
    """
    paths: dict[str, str] = {}
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for key in controllers.split(",") if controllers else [""]:
            paths[key] = path
    return paths


def cgroup_dir(mount: Mount, cgroup_path: str) -> str | None:
    """The directory of ``cgroup_path`` inside ``mount``, or None if not visible there.

    In a container the mount's root may be a sub-cgroup: strip it from the path.
    """
    root = mount.root.rstrip("/")
    if root and not (cgroup_path == root or cgroup_path.startswith(root + "/")):
        return None
    rel = cgroup_path[len(root) :].lstrip("/")
    return os.path.join(mount.point, rel) if rel else mount.point


def own_v1_dir(fs: CgroupFS, controller: str, mountinfo: str, cgroup_file: str) -> str:
    """This process's directory in the v1 hierarchy of ``controller``; Unavailable
    (with the reason) where there is none, it is not visible, or it is not ours."""
    from agent_supervise.limits.base import Unavailable

    mounts = [
        m for m in cgroup_mounts(mountinfo) if m.fstype == "cgroup" and controller in m.options
    ]
    if not mounts:
        raise Unavailable(f"no cgroup v1 hierarchy has the {controller} controller")
    own = own_cgroups(cgroup_file).get(controller)
    parent = cgroup_dir(mounts[0], own) if own else None
    if parent is None or not fs.exists(os.path.join(parent, "cgroup.procs")):
        raise Unavailable(
            f"this process's {controller} cgroup is not visible under {mounts[0].point}"
        )
    if not fs.writable(parent):
        raise Unavailable(f"{parent} is not writable by uid {os.getuid()}")
    return parent


def kernel_path(directory: str, mounts: list[Mount]) -> str | None:
    """The cgroup path that /proc/PID/cgroup shows for the cgroup at ``directory``
    (the inverse of :func:`cgroup_dir`), or None if no mount holds it."""
    best = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = directory == point or directory.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, mount)
    if best is None:
        return None
    point, mount = best
    rel = directory[len(point) :].strip("/")
    root = mount.root.rstrip("/")
    return f"{root}/{rel}" if rel else (root or "/")


def is_busy(err: BaseException) -> bool:
    cause = err.__cause__ if isinstance(err.__cause__, OSError) else None
    return cause is not None and cause.errno == errno.EBUSY
