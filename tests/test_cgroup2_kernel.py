"""The cgroup2 backend against a real cgroup v2 kernel: what only the kernel shows.

This project's machines bind the memory controller to cgroup v1, so these skip on
the host (with the reason) and run in the User-Mode Linux guest of the VM stage
(tests/vm, tests/test_vm_stage.py), where AGENT_SUPERVISE_REQUIRE_BACKENDS makes
a skip a failure. test_run_backends.py shows the end-to-end behaviour (reason
``oom_killed``, peak <= cap, event-driven OOM handling); these look inside the cage.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

import psutil
import pytest

from agent_supervise.errors import CageError
from agent_supervise.limits.base import Unavailable
from agent_supervise.limits.cgroup2 import Cgroup2Backend
from agent_supervise.limits.cgroupfs import CgroupFS, parse_flat_keyed

from conftest import ALLOC, PY, MiB, require_backend, supervise

CAP = 50 * MiB


@pytest.fixture(autouse=True)
def real_cgroup2():
    require_backend("cgroup2")


class RecordingFS(CgroupFS):
    """The real system calls, remembered: which files were written, and whether
    the cgroup was still populated when rmdir was tried."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.rmdirs: list[tuple[str, str]] = []

    def write(self, path: str, text: str) -> None:
        self.writes.append((path, text))
        super().write(path, text)

    def rmdir(self, path: str) -> None:
        self.rmdirs.append((path, self.read(os.path.join(path, "cgroup.events"))))
        super().rmdir(path)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def events(cage) -> dict[str, int]:
    return parse_flat_keyed(read(f"{cage.path}/memory.events"))


def spawn(cage, *cmd: str) -> subprocess.Popen:
    """Start ``cmd`` inside the cage the way the supervisor does: the child enters
    it before exec (the cage's own child steps: write "0" to cgroup.procs)."""
    steps = [step for _, step in cage.child_steps()]
    return subprocess.Popen(
        cmd,
        preexec_fn=lambda: [s() for s in steps],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def reap(pids, timeout: float = 10.0) -> None:
    """Wait for ``pids`` to be gone, reaping those that ended up as our children
    (this process is a subreaper: orphans of the killed tree come here)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while psutil.pid_exists(pid):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass  # not ours (yet): it is still being reparented
            assert time.monotonic() < deadline, f"pid {pid} never went away"
            time.sleep(0.01)


def test_limits_are_written_and_read_back():
    backend = Cgroup2Backend()
    cage = backend.create("readback", CAP + 123)
    try:
        assert "memory" in read(f"{backend.parent}/cgroup.subtree_control").split()
        assert "memory" in read(f"{cage.path}/cgroup.controllers").split()
        assert read(f"{cage.path}/memory.max") == str(CAP)  # stored in pages
        assert read(f"{cage.path}/memory.swap.max") == "0"
        assert read(f"{cage.path}/memory.oom.group") == "1"
        assert cage.notes == []
        # The read-back check is what catches a kernel that changed a value:
        with pytest.raises(
            CageError,
            match=r"wrote '12345' but the kernel reads back "
            r"'12288'",
        ):
            cage.write_checked("memory.swap.max", "12345")
        with pytest.raises(CageError, match=f"wrote '50M' but the kernel reads back '{CAP}'"):
            cage.write_checked("memory.max", "50M")
    finally:
        cage.release()
    assert not os.path.exists(cage.path)


def test_oom_group_kills_the_whole_tree_and_the_kernel_says_so():
    """No kill from us: memory.oom.group=1 makes the kernel kill the shell and the
    sleeper along with the allocating python, and memory.events wakes a poll."""
    cage = Cgroup2Backend().create("oom", CAP)
    fd, mask = cage.notify_fd()
    poller = select.epoll()
    poller.register(fd, mask)
    try:
        assert poller.poll(0) == []  # armed at open: a fresh fd would poll ready
        proc = spawn(cage, "sh", "-c", f"sleep 60 & {PY} {ALLOC} --interval 0.004; wait")
        pids = wait_for(lambda: len(cage.members()) == 3 and cage.members(), what="tree")
        started, fired = time.monotonic(), False
        while not fired:
            assert time.monotonic() - started < 20, f"no OOM notice: {events(cage)}"
            if poller.poll(1.0):
                fired = cage.on_notify()
        assert cage.on_notify() is False  # the same kill is reported once
        assert cage.wait_empty(10.0), "the OOM killer left part of the tree alive"
        assert proc.wait(timeout=10) == -9  # the shell too: the whole tree died
        counts = events(cage)
        # The victim is counted twice in oom_kill: once as the victim, once as a
        # member of its group. oom_group_kill counts the agent's OOM kills.
        assert counts["oom_group_kill"] == 1 and cage.oom_kills() == 1, counts
        assert counts["oom_kill"] == len(pids) + 1, counts
        assert cage.peak() <= CAP
        assert cage.peak() > CAP - 4 * MiB  # it really reached the cap
    finally:
        poller.close()
        cage.release()
    reap(pids)
    assert not os.path.exists(cage.path)


def test_kill_writes_cgroup_kill_and_the_leaf_goes_after_populated_0(monkeypatch):
    fs = RecordingFS()
    cage = Cgroup2Backend(fs).create("kill", CAP)
    pids = []
    try:
        # sh, its sleep, a setsid'd sh and its sleep: one write must end all four.
        proc = spawn(cage, "sh", "-c", "sleep 60 & setsid sh -c 'sleep 60 & wait' & wait")
        pids = wait_for(lambda: len(cage.members()) == 4 and cage.members(), what="tree")
        with monkeypatch.context() as patch:
            patch.setattr(cage, "signal", lambda sig: pytest.fail("signalled one by one"))
            assert cage.kill() == 4
        assert fs.writes[-1] == (f"{cage.path}/cgroup.kill", "1")
        cage.release()  # waits for populated 0, then rmdir: once
        tries = [state for path, state in fs.rmdirs if path == cage.path]
        assert tries == ["populated 0\nfrozen 0\n"]
        assert not os.path.exists(cage.path)
        assert proc.wait(timeout=10) == -9
    finally:
        cage.release()
        reap(pids)


def test_sub_cgroups_made_by_the_agent_are_reached_and_removed():
    """An agent running as root moves itself into a cgroup it made inside its cage:
    the cage's cgroup.procs is empty, but SIGTERM must still reach it, and the cage
    (EBUSY while it has children) must still be removed."""
    script = (
        "cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); mkdir $cg/inner; "
        "echo $$ > $cg/inner/cgroup.procs; sleep 60"
    )
    out, _ = supervise("cgroup2", "sh", "-c", script, extra=("--timeout", "500ms", "--grace", "5s"))
    assert out["reason"] == "timeout" and out["exit_code"] == 124, out
    assert out["signal"] == "SIGTERM", out  # reached it: no wait for the grace's SIGKILL
    assert out["duration_s"] < 4, out


def test_own_cgroup_with_processes_puts_leaves_beside_it():
    """The no-internal-processes rule on the real kernel: a cgroup holding processes
    cannot enable memory for children (EBUSY), so a supervisor running in one puts
    its leaf under the parent, here the root cgroup."""
    busy = "/sys/fs/cgroup/agent-supervise-test-busy"
    os.mkdir(busy)
    sleeper = None
    try:
        procs = os.open(f"{busy}/cgroup.procs", os.O_WRONLY)
        try:
            sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: os.write(procs, b"0"))
            wait_for(lambda: read(f"{busy}/cgroup.procs"), what="sleeper")
            with pytest.raises(Unavailable, match="it holds processes"):
                Cgroup2Backend(root=busy).probe()
            proc = subprocess.run(
                [
                    PY,
                    "-m",
                    "agent_supervise",
                    "run",
                    "--backend",
                    "cgroup2",
                    "--",
                    "cat",
                    "/proc/self/cgroup",
                ],
                capture_output=True,
                timeout=60,
                preexec_fn=lambda: os.write(procs, b"0"),
            )
        finally:
            os.close(procs)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode().startswith("0::/agent-supervise."), proc.stdout
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait(timeout=10)
        wait_for(lambda: read(f"{busy}/cgroup.procs") == "", what="empty test cgroup")
        os.rmdir(busy)
