"""Memory-limit mechanisms, one module each, chosen in one place: :func:`select_backend`.

``cgroup2`` (a leaf with memory.max, swap 0, oom.group), ``cgroup1`` (the v1 memory
controller) and ``rlimit`` (RLIMIT_DATA or RLIMIT_AS plus the watchdog) all implement
the :class:`~agent_supervise.limits.base.Backend` / ``Cage`` protocol of :mod:`.base`.
``auto`` tries them in that order by really creating and removing a probe cage.
An explicitly requested backend that does not work is an error, never a downgrade.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent_supervise.errors import BackendUnavailable, BadInput
from agent_supervise.limits.base import DEFAULT_PIDS_LIMIT, Backend, Cage, StaleCage, Unavailable
from agent_supervise.limits.cgroupfs import cgroup_mounts
from agent_supervise.limits.rlimit import KINDS

__all__ = [
    "BACKEND_CHOICES",
    "BACKEND_NAMES",
    "DEFAULT_PIDS_LIMIT",
    "Backend",
    "Cage",
    "Probe",
    "StaleCage",
    "Unavailable",
    "make_backend",
    "probe_all",
    "select_backend",
]

BACKEND_NAMES = ("cgroup2", "cgroup1", "rlimit")  # auto's order
#: What a user may ask for: ``--backend``, ``supervisor.backend`` in a fleet file.
BACKEND_CHOICES = ("auto", *BACKEND_NAMES)


@dataclass(frozen=True)
class Probe:
    """What probing one backend found (for ``doctor``)."""

    name: str
    available: bool
    detail: str  # where cages go when available, the reason when not
    advice: tuple[str, ...] = ()  # when not: what would make it work here (cgroup2)


def make_backend(name: str, *, rlimit: str = "data", cgroup_root: str | None = None) -> Backend:
    # Each backend is imported when asked for: `run --backend rlimit` then never loads
    # cgroup2's systemd client (subprocess, shutil), a few ms of every start.
    if name == "cgroup2":
        from agent_supervise.limits.cgroup2 import Cgroup2Backend

        return Cgroup2Backend(root=cgroup_root)
    if name == "cgroup1":
        from agent_supervise.limits.cgroup1 import Cgroup1Backend

        return Cgroup1Backend(root=cgroup_root)
    if name == "rlimit":
        from agent_supervise.limits.rlimit import RlimitBackend

        return RlimitBackend(rlimit)
    raise BadInput(
        f"unknown backend {name!r}", hint=f"choose one of auto, {', '.join(BACKEND_NAMES)}"
    )


def _hierarchy_of(path: str) -> str:
    """Which backend a ``--cgroup-root`` directory belongs to."""
    real = os.path.realpath(path)
    best = None
    for mount in cgroup_mounts():
        point = os.path.realpath(mount.point)
        if real == point or real.startswith(point.rstrip("/") + "/"):
            if mount.fstype == "cgroup2":
                kind = "cgroup2"
            elif "memory" in mount.options:
                kind = "cgroup1"
            else:
                continue
            if best is None or len(point) > len(best[0]):
                best = (point, kind)
    if best is None:
        raise BadInput(
            f"--cgroup-root {path}: not inside a cgroup2 or cgroup v1 memory hierarchy",
            hint="see 'agent-supervise doctor' for the mounts",
        )
    return best[1]


def check_cgroup_root(path: str) -> str:
    if not os.path.isdir(path):
        raise BadInput(
            f"--cgroup-root {path}: no such directory",
            hint="create it first (mkdir) or leave the option out",
        )
    if not os.access(path, os.W_OK):
        raise BadInput(
            f"--cgroup-root {path}: not writable by uid {os.getuid()}",
            hint="run as root or delegate the cgroup to this user",
        )
    return _hierarchy_of(path)


def select_backend(
    name: str = "auto", *, rlimit: str = "data", cgroup_root: str | None = None
) -> Backend:
    """Return a probed, working backend. ``auto`` picks the first that works."""
    if rlimit not in KINDS:
        raise BadInput(f"--rlimit {rlimit!r}: unknown kind", hint="choose data or as")
    if name != "auto" and name not in BACKEND_NAMES:
        make_backend(name)  # raises the BadInput naming the choices
    if cgroup_root is not None:
        kind = check_cgroup_root(cgroup_root)
        if name == "auto":
            name = kind
        elif name != kind:
            raise BadInput(
                f"--cgroup-root {cgroup_root} is a {kind} directory but "
                f"--backend {name} was asked for",
                hint=f"use --backend {kind} or another --cgroup-root",
            )
    order = BACKEND_NAMES if name == "auto" else (name,)
    reasons = []
    for candidate in order:
        backend = make_backend(candidate, rlimit=rlimit, cgroup_root=cgroup_root)
        try:
            backend.probe()
            return backend
        except Unavailable as err:
            if name != "auto":
                raise BackendUnavailable(
                    candidate,
                    str(err),
                    hint="run 'agent-supervise doctor' to see which backends work here",
                ) from None
            reasons.append(f"{candidate}: {err}")
    raise BackendUnavailable("auto", "; ".join(reasons))


def probe_all(*, rlimit: str = "data", cgroup_root: str | None = None) -> list[Probe]:
    """Probe every backend (really creating and removing a probe cage)."""
    found = []
    for name in BACKEND_NAMES:
        backend = make_backend(name, rlimit=rlimit, cgroup_root=cgroup_root)
        try:
            where = backend.probe()
            note = backend.placement_note()
            found.append(Probe(name, True, f"{where} ({note})" if note else where))
        except Unavailable as err:
            found.append(Probe(name, False, str(err), tuple(backend.advice())))
        finally:
            backend.close()  # a delegated scope goes back
    return found
