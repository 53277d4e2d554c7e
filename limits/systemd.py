"""Kernel caps without root: a delegated cgroup v2 scope, asked of systemd.

Under systemd the supervisor's own cgroup is rarely a place for cages: an ssh or
``su -l`` login sits in ``session-N.scope`` (root's), a desktop terminal or tmux in a
scope that holds processes, a root service in ``system.slice``, which systemd
manages and may rewrite. The documented way to a subtree of one's own is to ask the
manager for a transient **scope with Delegate=yes** (podman and runc's systemd
driver do so): ``systemd-run --user --scope`` from the user's manager
(``user@UID.service``), ``systemd-run --scope`` from PID 1 as root.

How the supervisor comes to own one: it starts a **holder**, ``systemd-run [--user]
--scope -p Delegate=yes -p OOMPolicy=continue --unit=agent-supervise-<pid>-<start>-<n>
-- cat``, whose stdin is a pipe only the supervisor writes to, and makes the cages
inside the scope's cgroup. systemd-run does the D-Bus work and waits for the start
job (errors come back as its message); the scope's life is the holder's: ``cat``
reads EOF and exits when the supervisor closes the pipe or dies in any way (SIGKILL
included: the kernel closes its end; the fd is close-on-exec, so no agent holds it).
The supervisor stays where it was when its children can enter the scope from there
(root anywhere; a desktop terminal, or a user service, already inside the user
manager's tree): its terminal, tmux pane or service keeps its process and its
accounting. When they cannot (from ``session-N.scope``: ssh, ``su -l``, a console
login, tmux started there; or a cron job of a lingering user), the supervisor
**joins** the scope: ``busctl call ... AttachProcessesToUnit`` moves it into
``<scope>/supervisor``, since no process may move itself out of a cgroup whose
common ancestor with the target is not its own (below). A re-exec under systemd-run
would do that for the CLI only, not for the Python API or a Ray node; asking systemd
to move the pid works for every caller.

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
* A process is moved into a cgroup (by itself or by another) only by a writer with
  write access to ``cgroup.procs`` of the common ancestor of where it is and where
  it goes ("Delegation Containment"; with ``nsdelegate``, within its cgroup
  namespace). From ``session-N.scope`` into the user's scope that ancestor is
  ``user-UID.slice``, root's: an agent child's write of ``0`` fails with EACCES.
  ``AttachProcessesToUnit(unit, subcgroup, pids)`` is systemd's way into a delegated
  unit's sub-cgroup for a caller that owns the processes; the user manager has
  PID 1 do the move. It returns once the process has moved.
* A scope ends when its cgroup is empty (``populated 0`` covers the subtree):
  systemd stops it and removes its cgroup with the empty sub-cgroups. At the end the
  cages are gone, the holder exits, its cgroup is removed: the scope goes (with a
  supervisor that joined it: when the supervisor exits).
  A SIGKILLed supervisor's scope stays while something it left runs in a cage; the
  next start finds it by name (its owner's pid and start time), kills what is left,
  removes the cgroups, and systemd removes the scope.
* ``memory.events`` is hierarchical: an OOM kill in a cage counts in the scope's
  too, and scopes obey ``OOMPolicy=``, which defaults to ``stop``
  (``DefaultOOMPolicy=``; systemd 252 shows ``OOMPolicy=stop`` for a transient
  scope): one agent's OOM kill would stop the scope and kill every agent in it. So
  the scope is asked for with ``OOMPolicy=continue``; a systemd that refuses the
  property ("Unknown assignment") is asked again without it.
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

from agent_supervise.errors import CageError
from agent_supervise.limits.base import StaleCage, Unavailable, is_cage_name, owner_alive, owner_tag

#: Unit names: ``agent-supervise-<pid>-<starttime>-<n>.scope`` (``n``: several
#: backends in one process, as doctor and a run make).
UNIT_PREFIX = "agent-supervise-"
_UNIT_RE = re.compile(r"agent-supervise-(\d+)-(\d+)-(\d+)\.scope")
#: The sub-cgroups of the scope the holder process, and (when it must join) the
#: supervisor itself, sit in.
HOLDER = "holder"
SUPERVISOR = "supervisor"
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


class DelegatedScope:
    """A transient scope with Delegate=yes, held open by a ``cat`` child process.

    ``start()`` returns the scope's cgroup directory, whose subtree the supervisor
    owns (the holder moved into ``holder/``); ``close()`` lets it go."""

    _count = 0

    def __init__(
        self,
        manager: Manager,
        fs,
        *,
        mount_point: str = "/sys/fs/cgroup",
        timeout: float = START_TIMEOUT_S,
    ) -> None:
        DelegatedScope._count += 1
        self.manager = manager
        self.fs = fs
        self.mount_point = mount_point
        self.timeout = timeout
        self.unit = f"{UNIT_PREFIX}{owner_tag()}-{DelegatedScope._count}.scope"
        self.path: str | None = None
        self.proc: subprocess.Popen | None = None
        self.joined = ""  # how this process moved into SUPERVISOR (busctl's flags), if so
        self._write_fd: int | None = None

    def describe(self) -> str:
        joined = (
            "; agent-supervise moved into it (busctl "
            + self.joined
            + " AttachProcessesToUnit), since agents could not enter it from its own "
            "cgroup"
            if self.joined
            else ""
        )
        return f"a delegated scope {self.unit} from {self.manager.describe()}{joined}"

    def command(self, oom_policy: bool = True) -> list[str]:
        cat = shutil.which("cat") or "/bin/cat"
        return [
            self.manager.systemd_run,
            *self.manager.flags(),
            "--scope",
            "--quiet",
            "--collect",
            "-p",
            "Delegate=yes",
            *(["-p", "OOMPolicy=continue"] if oom_policy else []),
            f"--unit={self.unit}",
            f"--description=agent-supervise {os.getpid()}: agents' cages",
            "--",
            cat,
        ]

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
            assert self.proc is not None  # _run_holder started it
            self.fs.write(os.path.join(holder, "cgroup.procs"), str(self.proc.pid))
        except CageError as err:
            self.close()
            raise ScopeFailed(f"{self.unit} ({path}): {err}") from err
        return path

    def _run_holder(self, *, oom_policy: bool) -> str:
        """Start systemd-run; return the scope's cgroup path (as /proc shows it)."""
        cmd = self.command(oom_policy)
        shown = " ".join(cmd[: cmd.index("--")])
        read_fd, write_fd = os.pipe()  # close-on-exec on our side: agents never hold it
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self.manager.env,
                start_new_session=True,
            )  # no terminal ^C for it
        except OSError as err:
            os.close(write_fd)
            raise ScopeFailed(f"{shown}: {err.strerror or err}") from err
        finally:
            os.close(read_fd)
        assert proc.stderr is not None  # stderr=PIPE
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
                raise ScopeFailed(
                    f"{shown}: no scope after {self.timeout:g} s (its cgroup is {cgroup})"
                )
        proc.stderr.close()  # the holder keeps its own copy; it writes nothing
        self.proc, self._write_fd = proc, write_fd
        return cgroup

    # -- the supervisor itself -----------------------------------------------------
    def join(self, busctl: str | None = None) -> None:
        """Move this process into ``<scope>/supervisor``, asking the manager.

        Needed when its children could not enter the cages themselves: a process may
        move (itself included) only if it can write ``cgroup.procs`` of the common
        ancestor of where it is and where it goes, and from ``session-N.scope`` that is
        ``user-UID.slice``, root's. ``AttachProcessesToUnit`` is systemd's own way into
        a delegated unit's sub-cgroup; the user manager gets PID 1 to do the move."""
        busctl = busctl or shutil.which(
            "busctl", path=self.manager.env.get("PATH", "") + ":/usr/bin:/bin"
        )
        if busctl is None:
            raise ScopeFailed(
                f"{self.unit}: busctl is not installed: this process "
                "cannot be moved into the scope, and its agents could not "
                "enter it from here"
            )
        assert self.path is not None  # the scope exists
        sub = os.path.join(self.path, SUPERVISOR)
        try:
            self.fs.mkdir(sub)
        except CageError as err:
            raise ScopeFailed(str(err)) from err
        tried = []
        for flags in self.manager.bus_flags():
            cmd = [
                busctl,
                *flags,
                f"--timeout={self.timeout:g}",
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "AttachProcessesToUnit",
                "ssau",
                self.unit,
                "/" + SUPERVISOR,
                "1",
                str(os.getpid()),
            ]
            try:
                done = subprocess.run(
                    cmd,
                    env=self.manager.env,
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=self.timeout + 5,
                )
            except (OSError, subprocess.TimeoutExpired) as err:
                tried.append(f"{' '.join(cmd)}: {err}")
                continue
            here = _cgroup_of(os.getpid()) or ""
            if done.returncode == 0 and here.endswith(f"/{self.unit}/{SUPERVISOR}"):
                self.joined = " ".join(flags)
                return
            said = done.stderr.decode(errors="replace").strip().splitlines()
            tried.append(
                f"{' '.join(cmd)}: exit {done.returncode}: "
                f"{said[-1] if said else 'no message'} (this process is in {here})"
            )
        raise ScopeFailed("; ".join(tried))

    # -- end ----------------------------------------------------------------------
    def close(self) -> None:
        """Let the holder go (EOF), reap it, remove its cgroup; systemd then stops
        and removes the scope once the cages are gone too."""
        if self._write_fd is None:
            return
        os.close(self._write_fd)
        self._write_fd = None
        proc = self.proc
        assert proc is not None  # started with the write end
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
        # nothing of ours is left when the supervisor exits. (Joined: it goes when
        # this process exits.)
        while not self.joined and self.fs.exists(self.path) and not _has_cages(self.fs, self.path):
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


class _UnknownProperty(Exception):
    pass


def can_enter(own: str, target: str, access=os.access) -> bool:
    """Whether a child of this process can move itself from the cgroup directory
    ``own`` into ``target``: the kernel asks for write access to ``cgroup.procs`` of
    their common ancestor (cgroup-v2.rst, "Delegation Containment")."""
    common = os.path.commonpath([own, target])
    return access(os.path.join(common, "cgroup.procs"), os.W_OK)


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


def clean_stale_scopes(
    fs, slice_dir: str, remove: Callable[[str], int], keep: str | None = None
) -> list[StaleCage]:
    """Scopes in ``slice_dir`` of supervisors that are gone: remove the cages left in
    them (``remove(path)`` kills what is inside, waits, rmdirs: the count killed) and
    their holder's cgroup; then the scope is empty and systemd removes it."""
    found: list[StaleCage] = []
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
            except (OSError, CageError):
                killed, removed = 0, False
            # The holder's and the supervisor's cgroups are said only when something
            # was wrong with them.
            if os.path.basename(sub) not in (HOLDER, SUPERVISOR) or killed or not removed:
                found.append(StaleCage(sub, owner[0], killed, removed))
    return found


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
