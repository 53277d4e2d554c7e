"""Fakes for the state machines: a cage with scripted memory, and a cgroup v2 filesystem.

These stand in for the kernel only where the *loop's rules* are under test; the
kernel's own behaviour is tested for real in test_run_backends.py (and on a real
cgroup v2 kernel in the VM stage).
"""

from __future__ import annotations

import errno
import os
import signal

from agent_supervise.errors import syscall_error
from agent_supervise.limits.base import Cage
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

    def child_steps(self):
        return []

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
    backend depends on: files appear on mkdir, limits are stored in pages, the
    no-internal-processes rule (EBUSY), EBUSY on rmdir of a populated cgroup,
    cgroup.kill emptying it."""

    CONTROLLERS = "cpu io memory pids"

    def __init__(self, root: str, ignore_writes: tuple[str, ...] = (),
                 missing: tuple[str, ...] = ()) -> None:
        self.root = root
        self.ignore_writes = ignore_writes
        self.missing = missing
        os.makedirs(root, exist_ok=True)
        self._seed(root, self.CONTROLLERS)

    def _put(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def _seed(self, path: str, controllers: str) -> None:
        files = {"cgroup.controllers": controllers + "\n", "cgroup.subtree_control": "\n",
                 "cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n",
                 "cgroup.kill": ""}
        if "memory" in controllers.split() and path != self.root:
            files.update({"memory.max": "max\n", "memory.swap.max": "max\n",
                          "memory.oom.group": "0\n", "memory.current": "0\n",
                          "memory.peak": "0\n", "memory.stat": "anon 0\nfile 0\n",
                          "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"
                                           "oom_group_kill 0\n"})
        for name, text in files.items():
            if name not in self.missing:
                self._put(os.path.join(path, name), text)

    # -- the kernel's side ----------------------------------------------------------
    def add_process(self, cgroup: str, pid: int) -> None:
        self._put(os.path.join(cgroup, "cgroup.procs"), f"{pid}\n")
        self._put(os.path.join(cgroup, "cgroup.events"), "populated 1\nfrozen 0\n")

    def mkdir(self, path: str) -> None:
        super().mkdir(path)
        parent = os.path.dirname(path)
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            self._seed(path, f.read().strip())

    def write(self, path: str, text: str) -> None:
        name, where = os.path.basename(path), os.path.dirname(path)
        if name in self.ignore_writes:
            return
        value = text.strip()
        if name in ("memory.max", "memory.swap.max"):
            if value != "max":
                value = str(int(value) - int(value) % 4096)
        elif name == "memory.oom.group" and value not in ("0", "1"):
            self._fail(path, text, errno.EINVAL)
        elif name == "cgroup.subtree_control":
            wanted = value.lstrip("+")
            with open(os.path.join(where, "cgroup.controllers")) as f:
                if wanted not in f.read().split():
                    self._fail(path, text, errno.ENOENT)
            with open(os.path.join(where, "cgroup.procs")) as f:
                if f.read().strip() and where != self.root:
                    self._fail(path, text, errno.EBUSY)
            with open(path) as f:
                value = " ".join(sorted(set(f.read().split()) | {wanted}))
        elif name == "cgroup.kill":
            self._put(os.path.join(where, "cgroup.procs"), "")
            self._put(os.path.join(where, "cgroup.events"), "populated 0\nfrozen 0\n")
            return
        self._put(path, value + "\n")

    def rmdir(self, path: str) -> None:
        with open(os.path.join(path, "cgroup.procs")) as f:
            if f.read().strip():
                self._fail(path, "", errno.EBUSY, call="rmdir")
        if any(os.path.isdir(os.path.join(path, e)) for e in os.listdir(path)):
            self._fail(path, "", errno.EBUSY, call="rmdir")
        for entry in os.listdir(path):
            os.unlink(os.path.join(path, entry))
        super().rmdir(path)

    def _fail(self, path: str, text: str, code: int, call: str = "write") -> None:
        err = OSError(code, os.strerror(code))
        raise syscall_error(call, path, err) from err
