"""One meaning of a cap on every backend: the rlimit watchdog reads a tree as a
cgroup charges it (limits/charge.py), each shared page once.

A tree of 11 processes sharing 50 MiB reads 640 MiB as summed RSS (13x the cgroup);
read as PSS it must land within ``FACTOR`` of the cgroup1 peak of the same tree. The
peaks compared are the kernel's (cgroup1) and the watchdog's samples (rlimit).
"""

from __future__ import annotations

import os

import pytest

from agent_supervise.limits.charge import KERNEL_PER_PROCESS, LONE_REFRESH_S, REFRESH_S, TreeCharge
from agent_supervise.proctree import PrivateCharge, ProcessTable

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
            got = self.pss.get(pid)
            return None if got is None else PrivateCharge(got)

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


def test_a_fork_storm_of_sharers_fits_where_a_cgroup_holds_it(backend):
    """11 processes sharing 50 MiB copy-on-write (71 MiB on cgroup1), forked at once
    and exiting at once: on rlimit, children exiting between their statm and their
    smaps_rollup were counted at their whole RSS (read as 120-240 MiB) and the tree
    was killed under caps of 76-89M, one run in two. Five runs, none killed."""
    cmd = [PY, SHARED_TREE, "cow", "--hold", "0.3"]
    for _ in range(5):
        out, _ = supervise(backend, *cmd, memory="89M")  # 1.25 x the cgroup1 charge
        assert out["reason"] == "ok", out


def test_an_estimate_over_the_cap_is_confirmed_on_fresh_readings():
    """Stale sharers push the estimate over the cap: it is read again in full before
    it is returned. A whole reading that is recent is trusted (growth since is real),
    and a tree held over its cap is read in full once per REFRESH_S only."""

    class Table(ProcessTable):
        def __init__(self):
            super().__init__()
            self.pages = {1: (50 * MiB, 0)}
            self.pss = {1: 50 * MiB}
            self.reads = 0

        def resident(self, pid):
            return self.pages.get(pid, (0, 0))

        def private_charge(self, pid):
            now[0] += 0.03  # slow readings: the budget holds full ones back
            self.reads += 1
            got = self.pss.get(pid)
            return None if got is None else PrivateCharge(got)

    now = [0.0]
    table = Table()
    meter = TreeCharge(table, lambda: now[0])
    kernel = KERNEL_PER_PROCESS
    cap = 60 * MiB
    assert meter.bytes([1], confirm_over=cap) == 50 * MiB + kernel
    # Two children fork, each read alone as the budget allows: the parent's 50 MiB is
    # stale (now 50/3), so the sum (50 + 2 x 16.7) passes the cap until read again.
    for n in (2, 3):
        table.pages = dict.fromkeys(range(1, n + 1), (50 * MiB, 0))
        table.pss = dict.fromkeys(range(1, n + 1), 50 * MiB // n)
        now[0] += 0.01
        got = meter.bytes(list(table.pages), confirm_over=cap)
        assert got <= cap, got / MiB
    assert got == 3 * (50 * MiB // 3) + 3 * kernel
    # Without a cap to confirm against, the stale estimate stands (it errs upwards).
    table.pages[4] = (50 * MiB, 0)
    table.pss = dict.fromkeys(range(1, 5), 50 * MiB // 4)
    now[0] += 0.01
    assert meter.bytes([1, 2, 3, 4]) > cap
    # Real growth right after a whole reading is trusted: no second reading.
    now[0] += 0.3
    assert meter.bytes([1, 2, 3, 4], confirm_over=cap) <= cap  # a whole reading (due)
    reads = table.reads
    table.pages = dict.fromkeys(range(1, 5), (70 * MiB, 0))  # 20 MiB more each
    now[0] += 0.01
    assert meter.bytes([1, 2, 3, 4], confirm_over=cap) == (50 + 80) * MiB + 4 * kernel
    assert table.reads == reads


def test_a_process_exiting_before_its_reading_keeps_its_last_one():
    """Between statm and smaps_rollup an exiting process releases its memory (ESRCH):
    it is counted at its last reading plus its growth, neither at its whole RSS
    (ten exiting sharers read as 180 MiB) nor at nothing (a hog exiting past its
    cap would pass unseen)."""

    class Table(ProcessTable):
        gone: frozenset[int] = frozenset()

        def resident(self, pid):
            return {1: (60 * MiB, 0), 2: (52 * MiB, 0)}[pid]

        def private_charge(self, pid):
            if pid in self.gone:
                raise ProcessLookupError(pid)
            return PrivateCharge({1: 25 * MiB, 2: 25 * MiB}[pid])

    now = [0.0]
    table = Table()
    meter = TreeCharge(table, lambda: now[0])
    kernel = KERNEL_PER_PROCESS
    assert meter.bytes([1, 2]) == 50 * MiB + 2 * kernel
    table.gone = frozenset({1, 2})
    now[0] += 1.0  # a whole reading is due; both are exiting
    assert meter.bytes([1, 2]) == 50 * MiB + 2 * kernel


@pytest.mark.unit
def test_a_lone_process_is_read_on_statm_alone():
    """No page shared (the usual agent: one big process): its charge is its
    anonymous pages, read on statm; smaps_rollup (2.9 ms at 200 MiB, four times a
    second: 1.2% of a core) only every LONE_REFRESH_S, or at once when it forks."""

    class Table(ProcessTable):
        def __init__(self):
            super().__init__()
            self.pages = {1: (60 * MiB, 10 * MiB)}  # (resident, file + shmem)
            self.reads = 0

        def resident(self, pid):
            return self.pages.get(pid, (0, 0))

        def private_charge(self, pid):
            self.reads += 1
            rss, shared = self.pages[pid]
            n = len(self.pages)  # the pages it has, shared with every other process
            return PrivateCharge((rss - shared) // n, shares=n > 1)

    now = [0.0]
    table = Table()
    meter = TreeCharge(table, lambda: now[0])
    kernel = KERNEL_PER_PROCESS
    cap = 100 * MiB
    assert meter.bytes([1], confirm_over=cap) == 50 * MiB + kernel and table.reads == 1
    for anon in (80, 30, 120):  # grows, frees, passes the cap: statm says it all
        now[0] += REFRESH_S
        table.pages = {1: ((anon + 10) * MiB, 10 * MiB)}
        assert meter.bytes([1], confirm_over=cap) == anon * MiB + kernel
    assert table.reads == 1
    now[0] += LONE_REFRESH_S
    meter.bytes([1])
    assert table.reads == 2  # the safety net
    table.pages = {1: (130 * MiB, 10 * MiB), 2: (130 * MiB, 10 * MiB)}  # it forks
    now[0] += 0.01
    assert meter.bytes([1, 2]) == 120 * MiB + 2 * kernel  # each counts its half
    reads = table.reads
    now[0] += REFRESH_S
    meter.bytes([1, 2])
    assert table.reads > reads  # sharers are read every REFRESH_S again
