"""Namespaces of an agent's own (limits/isolation.py), on every backend: shared memory
that RSS does not show is counted or bounded, and goes with the agent; the agent's
tree cannot be shed, even by a child that double-forks, calls setsid and scrubs its
environment, nor outlive a SIGKILLed supervisor; one agent cannot signal another.

These hold where the supervisor is root and the C spawner is built (CI: both).
Without, the README's Reliability section says what holds instead.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import psutil
import pytest

from agent_supervise.limits import isolation

from conftest import PY, reap_orphans, supervise

MEMORY_REASONS = ("memory_exceeded", "oom_killed")


@pytest.fixture(autouse=True)
def namespaces():
    why = isolation.unavailable()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"agents get no namespaces of their own under CI=true: {why}")
    pytest.skip(f"agents get no namespaces of their own here: {why}")


def _tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose command line holds ``tag`` (this test's own, by a uuid)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                tag in arg for arg in p.info["cmdline"] or ()
            ):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _wait_gone(tag: str, within: float, why: str) -> None:
    deadline = time.monotonic() + within
    while _tagged(tag):
        assert time.monotonic() < deadline, f"{why}: {_tagged(tag)}"
        time.sleep(0.05)


# -- class 3: memory that RSS does not show ---------------------------------------

#: What a holder exits with when the kernel refuses it the memory (ENOSPC from the
#: private /dev/shm, shmget beyond the IPC namespace's shmall).
REFUSED = 3
SYSV_HOLDER = """
import ctypes, sys, time
libc = ctypes.CDLL(None)
libc.shmat.restype = ctypes.c_void_p
for _ in range(8):  # 8 x 30 MiB, each written and detached: none of it is in RSS
    seg = libc.shmget(0, 30 << 20, 0o1600)
    if seg < 0:
        sys.exit(3)
    addr = libc.shmat(seg, None, 0)
    ctypes.memset(addr, 1, 30 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
time.sleep(5)
"""
WRITER = """
import os, sys, time
fd = {open}
for _ in range(240):
    try:
        os.write(fd, b"x" * (1 << 20))
    except OSError:
        sys.exit(3)
time.sleep(5)
"""
MEMFD_HOLDER = WRITER.format(open='os.memfd_create("hold")')
DELETED_SHM_HOLDER = WRITER.format(
    open='os.open("/dev/shm/held", os.O_RDWR | os.O_CREAT); os.unlink("/dev/shm/held")'
)

HIDDEN = {
    "dev-shm-file": [
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/big bs=1M count=240 2>/dev/null; sleep 5",
    ],  # ENOSPC at the cap, then holds it
    "sysv-detached": [PY, "-c", SYSV_HOLDER],
    "memfd": [PY, "-c", MEMFD_HOLDER],
    "deleted-shm-file": [PY, "-c", DELETED_SHM_HOLDER],
}


@pytest.mark.figure("3. memory RSS does not show (/dev/shm, memfd, SysV, deleted tmpfs)")
@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_memory_rss_does_not_show_is_capped(backend, case):
    """240 MiB of shared memory under a 50M cap: stopped for memory (kernel backends:
    the cgroup charges it; rlimit: the watchdog counts it), or refused by the
    private /dev/shm and IPC limits sized to the cap; never `ok` holding it."""
    out, _ = supervise(backend, *HIDDEN[case], timeout=30)
    stopped = out["reason"] in MEMORY_REASONS and out["exit_code"] == 137
    refused = out["reason"] == "failed" and out["exit_code"] == REFUSED
    assert stopped or refused, out
    assert out["duration_s"] < 4.5, out  # not left to sleep out its 5 s holding it


def test_rlimit_says_what_it_does_not_count():
    out, _ = supervise("rlimit", "true")
    assert any(n.startswith("not counted under rlimit: pipe buffers") for n in out["notes"])


# -- class 4: memory that outlives the agent --------------------------------------

LEAVES_SHM = """
import ctypes, os
with open("/dev/shm/{tag}", "wb") as f:
    f.write(b"x" * (3 << 20))
libc = ctypes.CDLL(None)
libc.shmat.restype = ctypes.c_void_p
seg = libc.shmget({key}, 2 << 20, 0o1600)
addr = libc.shmat(seg, None, 0)
ctypes.memset(addr, 1, 2 << 20)
libc.shmdt(ctypes.c_void_p(addr))
"""


def _host_sysv_keys() -> set[int]:
    with open("/proc/sysvipc/shm") as f:
        return {int(line.split()[0]) for line in f.readlines()[1:]}


@pytest.mark.figure("4. shared memory outliving the agent")
def test_shared_memory_does_not_outlive_the_agent(backend):
    tag, key = f"as-test-{uuid.uuid4().hex}", 0x5A000000 + os.getpid() % 0xFFFFF
    out, _ = supervise(backend, PY, "-c", LEAVES_SHM.format(tag=tag, key=key))
    assert out["reason"] == "ok", out
    assert not os.path.exists(f"/dev/shm/{tag}")  # it was never in the host's /dev/shm
    assert key not in _host_sysv_keys()
    (note,) = [n for n in out["notes"] if n.startswith("removed with the agent")]
    assert "1 files in /dev/shm (3.0 MiB)" in note and "1 SysV shared memory" in note, note


# -- class 5: shedding the tree ---------------------------------------------------


def _shedder(tag: str) -> list[str]:
    """A child that double-forks, starts a session of its own, scrubs its environment
    and holds 30 MiB; the agent's main process exits at once."""
    hold = f"import time; x = bytearray(30 << 20); time.sleep(120)  # {tag}"
    return ["sh", "-c", f"(setsid env -i {PY} -c '{hold}' &) ; sleep 0.5"]


@pytest.mark.figure("5. shedding the tree (double fork, setsid, empty env)")
def test_a_shed_child_ends_with_its_agent(backend):
    tag = f"as-test-{uuid.uuid4().hex}"
    out, _ = supervise(backend, *_shedder(tag))
    assert out["reason"] == "ok", out
    _wait_gone(tag, 1.0, "outlived its agent")


@pytest.mark.figure("5. shedding the tree (double fork, setsid, empty env)")
def test_a_shed_child_ends_with_a_sigkilled_supervisor(backend):
    tag = f"as-test-{uuid.uuid4().hex}"
    hold = f"import time; x = bytearray(30 << 20); time.sleep(120)  # {tag}"
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "agent_supervise",
            "run",
            "--backend",
            backend,
            "--",
            "sh",
            "-c",
            f"(setsid env -i {PY} -c '{hold}' &) ; sleep 120",
        ],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _tagged(tag):
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    _wait_gone(tag, 2.0, "outlived its SIGKILLed supervisor")
    reap_orphans()
    # The dead supervisor's cage directory (kernel backends) goes at the next start.
    subprocess.run(
        [PY, "-m", "agent_supervise", "run", "--backend", backend, "--", "true"],
        capture_output=True,
        timeout=30,
        check=True,
    )


# -- class 6: agents signalling their neighbours ----------------------------------


@pytest.mark.figure("6. signalling neighbours (kill -9 -1, the supervisor's pid)")
@pytest.mark.parametrize("user", ["root", "nobody"])
def test_an_agent_cannot_signal_its_neighbours(backend, user):
    """`kill -9 -1` and a kill of the supervisor's own pid, from inside an agent:
    a neighbour run as the same user, and both supervisors, live on."""
    extra = () if user == "root" else ("--user", user)
    neighbour = subprocess.Popen(
        [
            PY,
            "-m",
            "agent_supervise",
            "run",
            "--json",
            "--backend",
            backend,
            *extra,
            "--",
            "sleep",
            "3",
        ],
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    out, _ = supervise(
        backend,
        "sh",
        "-c",
        f"kill -9 -1; kill -9 {neighbour.pid} {os.getpid()}; sleep 0.2",
        extra=extra,
    )
    assert out["reason"] == "ok", out
    _, err = neighbour.communicate(timeout=20)
    assert neighbour.returncode == 0, err
    assert b'"reason": "ok"' in err.splitlines()[-1]
