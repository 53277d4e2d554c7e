"""Fakes for the state machines: a cage with scripted memory, and a cgroup v2 filesystem.

These stand in for the kernel only where the *loop's rules* are under test; the
kernel's own behaviour is tested for real in test_run_backends.py (and on a real
cgroup v2 kernel in the VM stage).
"""

from __future__ import annotations

import errno
import os
import signal
import time

from agent_supervise.errors import syscall_error
from agent_supervise.limits.base import Cage, ChildSetup
from agent_supervise.limits.cgroupfs import CgroupFS


class FakeCage(Cage):
    """A cage whose usage, members and OOM notices are set by the test."""

    backend = "fake"
    name = "agent-supervise.1-1.1.fake"

    def __init__(self, limit: int, kernel_enforced: bool = True) -> None:
        self.limit = limit
        self.kernel_enforced = kernel_enforced
        self.current = 0
        self.inside = [100]
        self.sent: list[int] = []
        self.ooms = 0
        self.pending_oom = False
        self.released = False
        self.refault_bytes = 0
        self.ignores_term = False

    def child_setup(self):
        return ChildSetup()

    def usage(self) -> int:
        return self.current

    def peak(self):
        return None

    def oom_kills(self) -> int:
        return self.ooms

    def refaults(self):
        return self.refault_bytes

    def on_notify(self) -> bool:
        fired, self.pending_oom = self.pending_oom, False
        return fired

    def members(self):
        return list(self.inside)

    def signal(self, sig: int) -> int:
        self.sent.append(sig)
        count = len(self.inside)
        if sig == signal.SIGKILL or (sig == signal.SIGTERM and not self.ignores_term):
            self.inside = []
        return count

    def release(self) -> None:
        self.released = True


class FakeCgroup2FS(CgroupFS):
    """A cgroup2 hierarchy in a temporary folder, with the kernel's rules that the
    backend depends on, as seen on a real 6.1 kernel (User-Mode Linux, tests/vm):

    * a child gets the controllers in its parent's ``cgroup.subtree_control``, and
      ``memory.*`` files only when memory is among them; the root cgroup has no
      ``memory.max``, ``cgroup.events`` or ``cgroup.kill``;
    * limits are stored in pages (``memory.max``, ``memory.swap.max``); ``pids.*``
      files come with the pids controller, as ``memory.*`` ones with memory;
    * ``cgroup.subtree_control``: an unknown controller is EINVAL, one the cgroup
      lacks ENOENT, and a non-root cgroup with processes of its own EBUSY (the
      no-internal-processes rule); it lists controllers in the kernel's order and
      reads back empty (not even a newline) when none is enabled;
    * ``populated`` in ``cgroup.events`` covers the whole subtree;
    * ``cgroup.kill`` kills the subtree, but not at once: the dying processes stay
      listed in ``cgroup.procs`` and ``populated 1`` for ``KILL_LATENCY_S`` (about
      3 ms measured), and rmdir is EBUSY meanwhile, as it is with sub-cgroups.
    """

    CONTROLLERS = "cpu io memory pids"
    #: The kernel's order (cgroup_subsys.h) of the controllers cgroup2 knows.
    KERNEL_ORDER = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
    KILL_LATENCY_S = 0.003

    def __init__(
        self, root: str, ignore_writes: tuple[str, ...] = (), missing: tuple[str, ...] = ()
    ) -> None:
        self.root = root
        self.ignore_writes = ignore_writes
        self.missing = missing
        self.writes: list[tuple[str, str]] = []  # every write the backend made
        self.rmdirs: list[tuple[str, bool]] = []  # (path, populated at that moment)
        self._dying: dict[str, float] = {}  # cgroup -> when its killed processes are gone
        os.makedirs(root, exist_ok=True)
        self._seed(root, self.CONTROLLERS)

    def _put(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def _get(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def _seed(self, path: str, controllers: str) -> None:
        files = {
            "cgroup.controllers": controllers + "\n" if controllers else "",
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
        }
        if path != self.root:
            files.update({"cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": ""})
        if "memory" in controllers.split() and path != self.root:
            files.update(
                {
                    "memory.max": "max\n",
                    "memory.swap.max": "max\n",
                    "memory.oom.group": "0\n",
                    "memory.current": "0\n",
                    "memory.peak": "0\n",
                    "memory.stat": "anon 0\nfile 0\n",
                    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
                }
            )
        if "pids" in controllers.split() and path != self.root:
            files.update({"pids.max": "max\n", "pids.current": "0\n", "pids.events": "max 0\n"})
        for name, text in files.items():
            if name not in self.missing:
                self._put(os.path.join(path, name), text)

    # -- the kernel's side ----------------------------------------------------------
    def add_process(self, cgroup: str, pid: int) -> None:
        procs = os.path.join(cgroup, "cgroup.procs")
        self._put(procs, self._get(procs) + f"{pid}\n")
        self._update_populated(cgroup)

    def _populated(self, cgroup: str) -> bool:
        if self._get(os.path.join(cgroup, "cgroup.procs")).strip():
            return True
        return any(
            self._populated(os.path.join(cgroup, e))
            for e in os.listdir(cgroup)
            if os.path.isdir(os.path.join(cgroup, e))
        )

    def _update_populated(self, cgroup: str) -> None:
        """``populated`` of this cgroup and of every ancestor but the root."""
        while cgroup != self.root and cgroup.startswith(self.root):
            events = os.path.join(cgroup, "cgroup.events")
            if os.path.exists(events):
                self._put(events, f"populated {int(self._populated(cgroup))}\nfrozen 0\n")
            cgroup = os.path.dirname(cgroup)

    def _settle(self) -> None:
        """Killed processes whose exit has finished leave their cgroups."""
        now = time.monotonic()
        for cgroup, gone_at in list(self._dying.items()):
            if now < gone_at:
                continue
            del self._dying[cgroup]
            for top, _, _ in os.walk(cgroup):
                self._put(os.path.join(top, "cgroup.procs"), "")
            self._update_populated(cgroup)

    # -- the system calls -----------------------------------------------------------
    def read(self, path: str) -> str:
        self._settle()
        return super().read(path)

    def exists(self, path: str) -> bool:
        self._settle()
        return super().exists(path)

    def listdir(self, path: str) -> list[str]:
        self._settle()
        return super().listdir(path)

    def mkdir(self, path: str) -> None:
        super().mkdir(path)
        parent = os.path.dirname(path)
        self._seed(path, self._get(os.path.join(parent, "cgroup.subtree_control")).strip())

    def write(self, path: str, text: str) -> None:
        self._settle()
        name, where = os.path.basename(path), os.path.dirname(path)
        self.writes.append((path, text))
        if name in self.ignore_writes:
            return
        value = text.strip()
        if name in ("memory.max", "memory.swap.max"):
            if value != "max":
                value = str(int(value) - int(value) % 4096)
        elif name == "memory.oom.group" and value not in ("0", "1"):
            self._fail(path, text, errno.EINVAL)
        elif name == "cgroup.subtree_control":
            value = self._subtree_control(path, text)
        elif name == "cgroup.kill":
            if value != "1":
                self._fail(path, text, errno.ERANGE)
            if self._populated(where):
                self._dying.setdefault(where, time.monotonic() + self.KILL_LATENCY_S)
            return
        self._put(path, value + "\n" if value else "")

    def _subtree_control(self, path: str, text: str) -> str:
        where = os.path.dirname(path)
        enabled = set(self._get(path).split())
        available = self._get(os.path.join(where, "cgroup.controllers")).split()
        for word in text.split():
            name = word[1:]
            if word[:1] not in ("+", "-") or name not in self.KERNEL_ORDER:
                self._fail(path, text, errno.EINVAL)
            if name not in available:
                self._fail(path, text, errno.ENOENT)
            if (
                word[0] == "+"
                and where != self.root
                and self._get(os.path.join(where, "cgroup.procs")).strip()
            ):
                self._fail(path, text, errno.EBUSY)
            enabled = enabled | {name} if word[0] == "+" else enabled - {name}
        return " ".join(n for n in self.KERNEL_ORDER if n in enabled)

    def rmdir(self, path: str) -> None:
        self._settle()
        populated = self._populated(path)
        self.rmdirs.append((path, populated))
        if populated or any(os.path.isdir(os.path.join(path, e)) for e in os.listdir(path)):
            self._fail(path, "", errno.EBUSY, call="rmdir")
        for entry in os.listdir(path):
            os.unlink(os.path.join(path, entry))
        super().rmdir(path)

    def _fail(self, path: str, text: str, code: int, call: str = "write") -> None:
        err = OSError(code, os.strerror(code))
        raise syscall_error(call, path, err) from err
