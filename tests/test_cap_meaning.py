"""One meaning of a cap on every backend: the rlimit watchdog reads a tree as a
cgroup charges it (limits/charge.py), each shared page once.

A tree of 11 processes sharing 50 MiB reads 640 MiB as summed RSS (13x the cgroup);
read as PSS it must land within ``FACTOR`` of the cgroup1 peak of the same tree. The
peaks compared are the kernel's (cgroup1) and the watchdog's samples (rlimit).
"""

from __future__ import annotations

import os

import pytest

from agent_supervise.limits.charge import KERNEL_PER_PROCESS, TreeCharge
from agent_supervise.proctree import ProcessTable

from conftest import CHILDREN, PY, MiB, require_backend, supervise

SHARED_TREE = str(CHILDREN / "sharedtree.py")
#: How far the rlimit reading may stray from the cgroup1 charge, either way.
FACTOR = 1.25


@pytest.fixture
def shared_file(tmp_path):
    """50 MiB written (and cached) outside any cage: mapping it charges nothing."""
    path = tmp_path / "shared.bin"
    path.write_bytes(os.urandom(50 * MiB))
    return str(path)


@pytest.mark.parametrize("mode", ["cow", "file", "shm"])
def test_shared_tree_reads_as_the_cgroup_charges(mode, shared_file):
    require_backend("cgroup1")
    require_backend("rlimit")
    cmd = [PY, SHARED_TREE, mode, "--children", "10", "--file", shared_file]
    peaks = {}
    for backend in ("cgroup1", "rlimit"):
        out, _ = supervise(backend, *cmd, memory="400M")
        assert out["reason"] == "ok", out
        peaks[backend] = out["peak_bytes"]
    ratio = peaks["rlimit"] / peaks["cgroup1"]
    assert 1 / FACTOR <= ratio <= FACTOR, {k: v / MiB for k, v in peaks.items()}


def test_forked_tree_over_the_cap_is_still_stopped(backend):
    """10 children that each allocate 10 MiB of their own under a 50M cap: the
    pages are private, so PSS counts them all and the watchdog stops the tree."""
    cmd = [PY, SHARED_TREE, "cow", "--children", "10", "--mib", "20", "--own", "10",
           "--hold", "10"]  # fmt: skip
    out, _ = supervise(backend, *cmd)
    if backend == "rlimit":
        assert out["reason"] == "memory_exceeded", out
    else:
        assert out["reason"] == "oom_killed", out


def test_meter_counts_new_pages_before_the_next_reading():
    """Between two smaps_rollup readings, growth of anonymous pages counts in full;
    a new process is read at once; an unreadable one counts its whole RSS; a gone
    one counts nothing."""

    class Table(ProcessTable):
        def __init__(self):
            super().__init__()
            self.pages = {1: (100 * MiB, 10 * MiB), 2: (30 * MiB, 10 * MiB)}
            self.pss = {1: 40 * MiB, 2: 10 * MiB}
            self.reads = 0

        def resident(self, pid):
            return self.pages.get(pid, (0, 0))

        def private_charge(self, pid):
            now[0] += 0.03  # slow readings: the budget soon holds a full one back
            self.reads += 1
            return self.pss.get(pid)

    now = [0.0]
    table = Table()
    meter = TreeCharge(table, lambda: now[0])
    kernel = KERNEL_PER_PROCESS
    assert meter.bytes([1, 2]) == 50 * MiB + 2 * kernel
    table.pages = {1: (120 * MiB, 11 * MiB), 2: (30 * MiB, 10 * MiB), 3: (5 * MiB, 0),
                   4: (8 * MiB, 0)}  # fmt: skip
    table.pss = {1: 40 * MiB, 2: 10 * MiB, 3: 2 * MiB}
    now[0] += 0.1  # before the next full reading: only the new processes are read
    assert meter.bytes([1, 2, 3, 4]) == (59 + 10 + 2 + 8) * MiB + 4 * kernel
    reads = table.reads
    assert meter.bytes([1, 2, 3, 4]) == (59 + 10 + 2 + 8) * MiB + 4 * kernel
    assert table.reads == reads  # nothing changed: statm only
    table.pages = {1: (120 * MiB, 11 * MiB)}
    assert meter.bytes([1, 2, 3, 4]) == 59 * MiB + kernel
