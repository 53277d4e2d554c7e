"""A delegated scope from systemd: its holder, joining it, letting it go.

Which manager hands it out is :mod:`agent_supervise.limits.systemd`'s; here is how
the supervisor comes to own the scope and gives it back. It starts a **holder**,
``systemd-run [--user] --scope -p Delegate=yes -p OOMPolicy=continue
--unit=agent-supervise-<pid>-<start>-<n> -- cat``, whose stdin is a pipe only the
supervisor writes to, and makes the cages inside the scope's cgroup. systemd-run
does the D-Bus work and waits for the start job (errors come back as its message);
the scope's life is the holder's: ``cat`` reads EOF and exits when the supervisor
closes the pipe or dies in any way (SIGKILL included: the kernel closes its end; the
fd is close-on-exec, so no agent holds it). The supervisor stays where it was when
its children can enter the scope from there (root anywhere; a desktop terminal, or a
user service, already inside the user manager's tree): its terminal, tmux pane or
service keeps its process and its accounting. When they cannot (from
``session-N.scope``: ssh, ``su -l``, a console login, tmux started there; or a cron
job of a lingering user), the supervisor **joins** the scope: ``busctl call ...
AttachProcessesToUnit`` moves it into ``<scope>/supervisor``, since no process may
move itself out of a cgroup whose common ancestor with the target is not its own
(below). A re-exec under systemd-run would do that for the CLI only, not for the
Python API or a Ray node; asking systemd to move the pid works for every caller.

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
  A SIGKILLed supervisor's scope stays while something it left runs in a cage
  (:mod:`agent_supervise.limits.stalescope` finds and empties it).
* ``memory.events`` is hierarchical: an OOM kill in a cage counts in the scope's
  too, and scopes obey ``OOMPolicy=``, which defaults to ``stop``
  (``DefaultOOMPolicy=``; systemd 252 shows ``OOMPolicy=stop`` for a transient
  scope): one agent's OOM kill would stop the scope and kill every agent in it. So
  the scope is asked for with ``OOMPolicy=continue``; a systemd that refuses the
  property ("Unknown assignment") is asked again without it.

Every failure names the call that failed (the systemd-run command line and its
message, or the cgroup file and errno).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

from agent_supervise.errors import CageError
from agent_supervise.limits.base import is_cage_name, owner_tag
from agent_supervise.limits.sdcalls import ScopeFailed, UnknownProperty, attach, run_holder

if TYPE_CHECKING:
    from agent_supervise.limits.systemd import Manager

#: Unit names: ``agent-supervise-<pid>-<starttime>-<n>.scope`` (``n``: several
#: backends in one process, as doctor and a run make).
UNIT_PREFIX = "agent-supervise-"
#: The sub-cgroups of the scope the holder process, and (when it must join) the
#: supervisor itself, sit in.
HOLDER = "holder"
SUPERVISOR = "supervisor"
#: How long systemd-run may take to create the scope (D-Bus round trips; a slow
#: first start of a user manager's D-Bus activation).
START_TIMEOUT_S = 20.0
#: How long close() waits for systemd to remove the emptied scope.
GONE_PATIENCE_S = 2.0


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
        except UnknownProperty:
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
        """Start the holder; return the scope's cgroup path (as /proc shows it)."""
        self.proc, self._write_fd, cgroup = run_holder(
            self.command(oom_policy), self.manager.env, self.unit, self.timeout, oom_policy
        )
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
        self.joined = attach(
            busctl, self.manager.bus_flags(), self.manager.env, self.unit, SUPERVISOR, self.timeout
        )

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


def _has_cages(fs, path: str) -> bool:
    try:
        return any(is_cage_name(os.path.basename(p)) for p in fs.subdirs(path))
    except CageError:
        return False
