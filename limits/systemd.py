"""Kernel caps without root: a delegated cgroup v2 scope, asked of systemd.

Under systemd the supervisor's own cgroup is rarely a place for cages: an ssh or
``su -l`` login sits in ``session-N.scope`` (root's), a desktop terminal or tmux in a
scope that holds processes, a root service in ``system.slice``, which systemd
manages and may rewrite. The documented way to a subtree of one's own is to ask the
manager for a transient **scope with Delegate=yes** (podman and runc's systemd
driver do so): ``systemd-run --user --scope`` from the user's manager
(``user@UID.service``), ``systemd-run --scope`` from PID 1 as root.

How the supervisor comes to own one: it starts a **holder**, ``systemd-run [--user]
--scope -p Delegate=yes --unit=agent-supervise-<pid>-<start>-<n> -- cat``, whose
stdin is a pipe only the supervisor writes to. The cages are made inside the
scope's cgroup. The supervisor itself stays where it was (its terminal, its tmux
pane, its service keep their accounting), no D-Bus code is needed in here, and the
scope's life is the holder's: ``cat`` reads EOF and exits when the supervisor closes
the pipe or dies in any way (SIGKILL included: the kernel closes its end; the fd is
close-on-exec, so no agent holds it). Moving the supervisor itself (StartTransientUnit
with its own pid, or a re-exec under systemd-run) was not chosen: it changes where
the user's process lives, and a supervisor inside the scope is one more process
under the no-internal-processes rule.

What this relies on, from the kernel (Documentation/admin-guide/cgroup-v2.rst) and
systemd (systemd.resource-control(5), systemd-run(1), "Control Group APIs and
Delegation"):

* ``Delegate=yes`` chowns the scope's directory, ``cgroup.procs``,
  ``cgroup.subtree_control`` and ``cgroup.threads`` to the unit's user, and systemd
  leaves the subtree below it alone. The user manager can delegate only what
  ``user@.service`` got (``Delegate=pids memory cpu`` on Debian, Fedora, Ubuntu).
* systemd-run registers its own pid in the scope (StartTransientUnit ``PIDs``),
  waits for the start job, then execs the command: the holder is inside before
  its first instruction. A process in a root-owned ``session-N.scope`` is moved by
  the user manager through PID 1 (``AttachProcessesToUnit``).
* The no-internal-processes rule: the scope's cgroup may enable controllers in its
  ``cgroup.subtree_control`` only while it holds no process, so the holder is moved
  into ``<scope>/holder`` first (moving within a subtree needs write access to the
  common ancestor's ``cgroup.procs``: the scope's, which is ours). Then ``+memory``
  and ``+pids`` are enabled and the cages are its other children.
* A scope ends when its cgroup is empty (``populated 0`` covers the subtree):
  systemd stops it and removes its cgroup with the empty sub-cgroups. At the end the
  cages are gone, the holder exits, its cgroup is removed: the scope goes.
  A SIGKILLed supervisor's scope stays while something it left runs in a cage; the
  next start finds it by name (its owner's pid and start time), kills what is left,
  removes the cgroups, and systemd removes the scope.
* ``memory.events`` is hierarchical: an OOM kill in a cage counts in the scope's
  too, and since systemd 253 scopes obey ``OOMPolicy=`` (default ``stop``): one
  agent's OOM kill would stop the scope and every agent in it. So the scope is asked
  for with ``OOMPolicy=continue``; systemd 252 knows no OOMPolicy for scopes (it
  refuses the property: "Unknown assignment"), and then the scope is asked for
  without it (252 does not act on a scope's OOM kill).
* ``systemd-run --user`` finds the manager at ``$XDG_RUNTIME_DIR/systemd/private``
  or the user bus (``$DBUS_SESSION_BUS_ADDRESS``, ``$XDG_RUNTIME_DIR/bus``). A shell
  without ``XDG_RUNTIME_DIR`` (``su`` without ``-l``, cron) is given
  ``/run/user/UID`` when it is the user's. No runtime directory means no user
  manager: ``user@UID.service`` runs while the user has a login session, or always
  once lingering is on (``loginctl enable-linger``).
* systemd is running when ``/run/systemd/system`` exists (``sd_booted()``).

Every failure names the call that failed (the systemd-run command line and its
message, or the cgroup file and errno).
"""

from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import CageError
from .base import StaleCage, Unavailable, is_cage_name, owner_alive, owner_tag

#: Unit names: ``agent-supervise-<pid>-<starttime>-<n>.scope`` (``n``: several
#: backends in one process, as doctor and a run make).
UNIT_PREFIX = "agent-supervise-"
_UNIT_RE = re.compile(r"agent-supervise-(\d+)-(\d+)-(\d+)\.scope")
#: The sub-cgroup of the scope the holder process sits in.
HOLDER = "holder"
#: How long systemd-run may take to create the scope (D-Bus round trips; a slow
#: first start of a user manager's D-Bus activation).
START_TIMEOUT_S = 20.0
#: How long close() waits for systemd to remove the emptied scope.
GONE_PATIENCE_S = 2.0


class NoManager(Unavailable):
    """No systemd manager to ask for a scope here, and why."""


class ScopeFailed(Unavailable):
    """A manager was there, but the scope could not be made: the call that failed."""


@dataclass(frozen=True)
class Manager:
    """The systemd manager that would hand out the scope."""

    user: bool  # the user's own manager (systemd-run --user); else PID 1
    uid: int
    env: dict = field(default_factory=dict, compare=False, repr=False)  # for systemd-run
    systemd_run: str = "systemd-run"

    def flags(self) -> list[str]:
        return ["--user"] if self.user else []

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


def find_manager(*, euid: int | None = None, environ: dict | None = None,
                 root: str = "/") -> Manager:
    """Which manager to ask for a delegated scope; :class:`NoManager` says why none."""
    euid = os.geteuid() if euid is None else euid
    environ = dict(os.environ if environ is None else environ)
    if not systemd_running(root):
        raise NoManager(f"systemd is not running here (PID 1 is {_pid1(root)}; no "
                        "/run/systemd/system), so there is no manager to ask for a "
                        "delegated scope")
    path = environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
    run = shutil.which("systemd-run", path=path + ":/usr/bin:/bin")
    if run is None:
        raise NoManager("systemd is running but systemd-run is not installed "
                        f"(not on PATH {path})")
    if euid == 0:
        return Manager(False, 0, environ, run)
    runtime = environ.get("XDG_RUNTIME_DIR") or os.path.join(root, f"run/user/{euid}")
    try:
        owner = os.stat(runtime).st_uid
    except OSError:
        owner = None
    if owner != euid:
        where = "does not exist" if owner is None else f"belongs to uid {owner}"
        raise NoManager(f"no systemd user manager for uid {euid}: its runtime directory "
                        f"{runtime} {where} (user@{euid}.service runs only while the "
                        "user has a login session, or always once lingering is on)")
    private = os.path.join(runtime, "systemd", "private")
    bus = os.path.join(runtime, "bus")
    if not (os.path.exists(private) or os.path.exists(bus)
            or environ.get("DBUS_SESSION_BUS_ADDRESS")):
        raise NoManager(f"no systemd user manager for uid {euid}: neither {private} nor "
                        f"{bus} exists (user@{euid}.service is not running)")
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
        out.append(f"loginctl enable-linger {name} (once, as root): systemd then runs "
                   f"user@{uid}.service from boot on, and agent-supervise asks it for a "
                   "delegated scope (a login session of the user starts it too)")
    if uid != 0:
        out.append("run agent-supervise as root (sudo): root asks "
                   + ("the system manager for the scope" if has_systemd else
                      "for nothing and makes its cgroups itself")
                   + "; --user NAME runs the agent itself as NAME")
    out.append(f"--cgroup-root DIR on a cgroup2 directory delegated to uid {uid}"
               + (" (a unit with Delegate=yes and User=" + name + ", or "
                  "systemd-run --user --scope -p Delegate=yes)" if has_systemd else
                  " (chown of the directory, its cgroup.procs and cgroup.subtree_control, "
                  "with memory in the parent's subtree_control)"))
    return out


class DelegatedScope:
    """A transient scope with Delegate=yes, held open by a ``cat`` child process.

    ``start()`` returns the scope's cgroup directory, whose subtree the supervisor
    owns (the holder moved into ``holder/``); ``close()`` lets it go."""

    _count = 0

    def __init__(self, manager: Manager, fs, *, mount_point: str = "/sys/fs/cgroup",
                 timeout: float = START_TIMEOUT_S) -> None:
        DelegatedScope._count += 1
        self.manager = manager
        self.fs = fs
        self.mount_point = mount_point
        self.timeout = timeout
        self.unit = f"{UNIT_PREFIX}{owner_tag()}-{DelegatedScope._count}.scope"
        self.path: str | None = None
        self.proc: subprocess.Popen | None = None
        self._write_fd: int | None = None

    def describe(self) -> str:
        return f"a delegated scope {self.unit} from {self.manager.describe()}"

    def command(self, oom_policy: bool = True) -> list[str]:
        cat = shutil.which("cat") or "/bin/cat"
        return [self.manager.systemd_run, *self.manager.flags(), "--scope", "--quiet",
                "--collect", "-p", "Delegate=yes",
                *(["-p", "OOMPolicy=continue"] if oom_policy else []),
                f"--unit={self.unit}",
                f"--description=agent-supervise {os.getpid()}: agents' cages", "--", cat]

    # -- start ------------------------------------------------------------------
    def start(self) -> str:
        try:
            cgroup = self._run_holder(oom_policy=True)
        except _UnknownProperty:
            cgroup = self._run_holder(oom_policy=False)
        path = os.path.join(self.mount_point, cgroup.lstrip("/"))
        self.path = path
        try:
            holder = os.path.join(path, HOLDER)
            self.fs.mkdir(holder)
            self.fs.write(os.path.join(holder, "cgroup.procs"), str(self.proc.pid))
        except CageError as err:
            self.close()
            raise ScopeFailed(f"{self.unit} ({path}): {err}") from err
        return path

    def _run_holder(self, *, oom_policy: bool) -> str:
        """Start systemd-run; return the scope's cgroup path (as /proc shows it)."""
        cmd = self.command(oom_policy)
        shown = " ".join(cmd[:cmd.index("--")])
        read_fd, write_fd = os.pipe()  # close-on-exec on our side: agents never hold it
        try:
            proc = subprocess.Popen(cmd, stdin=read_fd, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=self.manager.env,
                                    start_new_session=True)  # no terminal ^C for it
        except OSError as err:
            os.close(write_fd)
            raise ScopeFailed(f"{shown}: {err.strerror or err}") from err
        finally:
            os.close(read_fd)
        err_fd = proc.stderr.fileno()
        os.set_blocking(err_fd, False)
        said = b""
        deadline = time.monotonic() + self.timeout
        while True:
            cgroup = _cgroup_of(proc.pid)
            if cgroup is not None and cgroup.endswith("/" + self.unit):
                break
            # --quiet: stderr speaks only on trouble; a failed systemd-run exits.
            select.select([err_fd], [], [], 0.01)
            try:
                said += os.read(err_fd, 65536)[:4096]
            except BlockingIOError:
                pass
            if proc.poll() is not None:
                os.close(write_fd)
                text = said.decode(errors="replace").strip()
                if oom_policy and "OOMPolicy" in text:
                    raise _UnknownProperty(text)
                last = text.splitlines()[-1] if text else "no message"
                raise ScopeFailed(f"{shown}: exit {proc.returncode}: {last}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                os.close(write_fd)
                raise ScopeFailed(f"{shown}: no scope after {self.timeout:g} s (its "
                                  f"cgroup is {cgroup})")
        proc.stderr.close()  # the holder keeps its own copy; it writes nothing
        self.proc, self._write_fd = proc, write_fd
        return cgroup

    # -- end ----------------------------------------------------------------------
    def close(self) -> None:
        """Let the holder go (EOF), reap it, remove its cgroup; systemd then stops
        and removes the scope once the cages are gone too."""
        if self._write_fd is None:
            return
        os.close(self._write_fd)
        self._write_fd = None
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.path is None:
            return
        holder = os.path.join(self.path, HOLDER)
        deadline = time.monotonic() + GONE_PATIENCE_S
        while self.fs.exists(holder):
            try:
                self.fs.rmdir(holder)
            except CageError:
                if time.monotonic() > deadline:
                    return  # the next start's stale cleanup takes it
                time.sleep(0.005)
        # Our cages are gone: wait (briefly) for systemd to remove the scope, so that
        # nothing of ours is left when the supervisor exits.
        while self.fs.exists(self.path) and not _has_cages(self.fs, self.path):
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


class _UnknownProperty(Exception):
    pass


def _cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _has_cages(fs, path: str) -> bool:
    try:
        return any(is_cage_name(os.path.basename(p)) for p in fs.subdirs(path))
    except CageError:
        return False


def scope_owner(name: str) -> tuple[int, str] | None:
    """(pid, starttime) of the supervisor a scope's directory name belongs to."""
    match = _UNIT_RE.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None


def clean_stale_scopes(fs, slice_dir: str, remove: Callable[[str], int],
                       keep: str | None = None) -> list[StaleCage]:
    """Scopes in ``slice_dir`` of supervisors that are gone: remove the cages left in
    them (``remove(path)`` kills what is inside, waits, rmdirs: the count killed) and
    their holder's cgroup; then the scope is empty and systemd removes it."""
    found = []
    try:
        entries = sorted(fs.listdir(slice_dir))
    except CageError:
        return found
    for entry in entries:
        owner = scope_owner(entry)
        scope = os.path.join(slice_dir, entry)
        if owner is None or scope == keep or owner_alive(*owner):
            continue
        try:
            subs = fs.subdirs(scope)
        except CageError:
            continue  # gone meanwhile
        for sub in subs:
            try:
                killed, removed = remove(sub), True
            except CageError:
                killed, removed = 0, False
            # The holder's cgroup is said only when something was wrong with it.
            if os.path.basename(sub) != HOLDER or killed or not removed:
                found.append(StaleCage(sub, owner[0], killed, removed))
    return found


class Systemd:
    """What the cgroup2 backend asks of systemd (tests give it a fake)."""

    def find_manager(self) -> Manager:
        return find_manager()

    def scope(self, manager: Manager, fs, mount_point: str) -> DelegatedScope:
        return DelegatedScope(manager, fs, mount_point=mount_point)
