"""Kernel caps without root: a delegated cgroup v2 scope, asked of systemd.

Under systemd the supervisor's own cgroup is rarely a place for cages: an ssh or
``su -l`` login sits in ``session-N.scope`` (root's), a desktop terminal or tmux in a
scope that holds processes, a root service in ``system.slice``, which systemd
manages and may rewrite. The documented way to a subtree of one's own is to ask the
manager for a transient **scope with Delegate=yes** (podman and runc's systemd
driver do so): ``systemd-run --user --scope`` from the user's manager
(``user@UID.service``), ``systemd-run --scope`` from PID 1 as root.

Which manager to ask is decided here; how the scope is held, joined and given
back is :mod:`agent_supervise.limits.scope`'s. What this relies on, from systemd
(systemd-run(1), sd_booted(3)):

* ``systemd-run --user`` finds the manager at ``$XDG_RUNTIME_DIR/systemd/private``
  or the user bus (``$DBUS_SESSION_BUS_ADDRESS``, ``$XDG_RUNTIME_DIR/bus``). A shell
  without ``XDG_RUNTIME_DIR`` (``su`` without ``-l``, cron) is given
  ``/run/user/UID`` when it is the user's. No runtime directory means no user
  manager: ``user@UID.service`` runs while the user has a login session, or always
  once lingering is on (``loginctl enable-linger``).
* systemd is running when ``/run/systemd/system`` exists (``sd_booted()``).
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass, field

from agent_supervise.limits.base import Unavailable
from agent_supervise.limits.scope import DelegatedScope


class NoManager(Unavailable):
    """No systemd manager to ask for a scope here, and why."""


@dataclass(frozen=True)
class Manager:
    """The systemd manager that would hand out the scope."""

    user: bool  # the user's own manager (systemd-run --user); else PID 1
    uid: int
    env: dict = field(default_factory=dict, compare=False, repr=False)  # for systemd-run
    systemd_run: str = "systemd-run"

    def flags(self) -> list[str]:
        return ["--user"] if self.user else []

    def bus_flags(self) -> list[list[str]]:
        """How busctl reaches the manager: over the bus (the user's bus, from
        dbus-user-session, for a user manager). Not through the manager's own socket
        (``systemd/private``), as systemctl does: busctl greets it as a bus (Hello)
        and it answers "Invalid request descriptor" (systemd 252)."""
        return [["--user"]] if self.user else [["--system"]]

    def describe(self) -> str:
        if self.user:
            return f"the user manager of uid {self.uid} (user@{self.uid}.service)"
        return "the system manager (PID 1)"


def systemd_running(root: str = "/") -> bool:
    """``sd_booted()``: systemd is PID 1 of this system (or container)."""
    return os.path.isdir(os.path.join(root, "run/systemd/system"))


def _pid1(root: str) -> str:
    try:
        with open(os.path.join(root, "proc/1/comm")) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def find_manager(
    *, euid: int | None = None, environ: dict | None = None, root: str = "/"
) -> Manager:
    """Which manager to ask for a delegated scope; :class:`NoManager` says why none."""
    euid = os.geteuid() if euid is None else euid
    environ = dict(os.environ if environ is None else environ)
    if not systemd_running(root):
        raise NoManager(
            f"systemd is not running here (PID 1 is {_pid1(root)}; no "
            "/run/systemd/system), so there is no manager to ask for a "
            "delegated scope"
        )
    path = environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
    run = shutil.which("systemd-run", path=path + ":/usr/bin:/bin")
    if run is None:
        raise NoManager(f"systemd is running but systemd-run is not installed (not on PATH {path})")
    if euid == 0:
        return Manager(False, 0, environ, run)
    runtime = environ.get("XDG_RUNTIME_DIR") or os.path.join(root, f"run/user/{euid}")
    try:
        owner = os.stat(runtime).st_uid
    except OSError:
        owner = None
    if owner != euid:
        where = "does not exist" if owner is None else f"belongs to uid {owner}"
        raise NoManager(
            f"no systemd user manager for uid {euid}: its runtime directory "
            f"{runtime} {where} (user@{euid}.service runs only while the "
            "user has a login session, or always once lingering is on)"
        )
    private = os.path.join(runtime, "systemd", "private")
    bus = os.path.join(runtime, "bus")
    if not (
        os.path.exists(private) or os.path.exists(bus) or environ.get("DBUS_SESSION_BUS_ADDRESS")
    ):
        raise NoManager(
            f"no systemd user manager for uid {euid}: neither {private} nor "
            f"{bus} exists (user@{euid}.service is not running)"
        )
    environ["XDG_RUNTIME_DIR"] = runtime
    return Manager(True, euid, environ, run)


def advice(uid: int | None = None, *, has_systemd: bool | None = None) -> list[str]:
    """What would give kernel caps to this user here (doctor prints it)."""
    uid = os.geteuid() if uid is None else uid
    has_systemd = systemd_running() if has_systemd is None else has_systemd
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    out = []
    if uid != 0 and has_systemd:
        out.append(
            f"loginctl enable-linger {name} (once, as root): systemd then runs "
            f"user@{uid}.service from boot on, and agent-supervise asks it for a "
            "delegated scope (a login session of the user starts it too)"
        )
    if uid != 0:
        out.append(
            "run agent-supervise as root (sudo): root asks "
            + (
                "the system manager for the scope"
                if has_systemd
                else "for nothing and makes its cgroups itself"
            )
            + "; --user NAME runs the agent itself as NAME"
        )
    out.append(
        f"--cgroup-root DIR on a cgroup2 directory delegated to uid {uid}"
        + (
            " (a unit with Delegate=yes and User=" + name + ", or "
            "systemd-run --user --scope -p Delegate=yes)"
            if has_systemd
            else " (chown of the directory, its cgroup.procs and cgroup.subtree_control, "
            "with memory in the parent's subtree_control)"
        )
    )
    return out


def can_enter(own: str, target: str, access=os.access) -> bool:
    """Whether a child of this process can move itself from the cgroup directory
    ``own`` into ``target``: the kernel asks for write access to ``cgroup.procs`` of
    their common ancestor (cgroup-v2.rst, "Delegation Containment")."""
    common = os.path.commonpath([own, target])
    return access(os.path.join(common, "cgroup.procs"), os.W_OK)


class Systemd:
    """What the cgroup2 backend asks of systemd (tests give it a fake)."""

    def find_manager(self) -> Manager:
        return find_manager()

    def scope(self, manager: Manager, fs, mount_point: str) -> DelegatedScope:
        return DelegatedScope(manager, fs, mount_point=mount_point)

    def can_enter(self, own: str, target: str) -> bool:
        return can_enter(own, target)

    def advice(self) -> list[str]:
        return advice()
