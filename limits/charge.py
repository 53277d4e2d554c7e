"""What a cgroup would charge for a tree of processes, estimated from /proc for the
rlimit watchdog, so that a cap means the same on every backend.

A memory cgroup charges each page once, to the group that first touched it:
anonymous pages (copy-on-write pages a fork shares too, until one side writes),
shared memory, page cache and kernel memory. Summed RSS counts a shared page once
per process that maps it, and counts the program's own binary and libraries, which
the page cache charged to whoever read them first. Measured on the project's
machine against the cgroup1 charge of the same tree (MiB):

=======================================  ======  ======  =========  ==========
tree                                     cgroup  summed  RssAnon    PSS
                                         1       RSS     +RssShmem  anon+shmem
=======================================  ======  ======  =========  ==========
python, 50 MiB                           55      60      54         54
forks 10 children (1 MiB each)           69      642     612        67
the same, 49 children                    125     2910    2789       114
10 children read a 50 MiB shared file    18      642     62         17
10 children touch 50 MiB of shmem        70      173     144        67
=======================================  ======  ======  =========  ==========

Only PSS (``Pss_Anon + Pss_Shmem`` from smaps_rollup) follows the cgroup: a page
shared by n processes counts 1/n in each. Its price is a walk of the page tables:
130-650 us a process (6 us for statm), 18 ms for a 50-process tree. So this meter
reads statm on every sample and smaps_rollup for the whole tree every ``REFRESH_S``,
or sooner when the sharing changes (a new process, or one whose shared pages grew
by ``SHARED_STEP``: a fork or a fault on a shared mapping moves every sharer's
PSS), but never more than ``BUDGET`` of a core, averaged over bursts of up to
``BURST_S`` of reading (a fork storm of ten is read in full at every fork); when
that budget holds a full reading back, only the processes that changed are read.
Between two readings a process counts its last PSS plus the growth of its anonymous
pages since, in full: a new page is private, so a hog racing to its cap is seen on
the cheap read. A process whose last reading showed no page shared (``Pss_Anon``
equal to ``Anonymous``, no shared memory: the usual agent, one exec'd program)
counts its statm's anonymous pages as they are, and while no process of the tree
shares one the tree is read in full every ``LONE_REFRESH_S`` only (a lone 200 MiB
process: 2.9 ms a reading, 1.2% of a core at REFRESH_S): sharing starts with a fork
(a new pid, read at once) or a shared mapping (shared pages grown by
``SHARED_STEP``), both seen on statm. Where the estimate strays it errs upwards (a
sharer's stale PSS; an unreadable process counts its whole RSS), except for one
case: a child writing to pages it shares copy-on-write with its parent, unseen until
the next reading (``REFRESH_S`` at most). A process that exits between its statm and
its smaps_rollup keeps its last reading (plus its growth since): counted at its
whole RSS, as an unreadable one is, ten exiting sharers of 50 MiB read as 180 MiB;
counted as nothing, an allocator that passes its cap and exits before the reading
would pass unseen. The upward errors that remain never kill: an estimate over the
cap that rests on stale readings (some processes read alone since the last whole
reading, as in a fork storm the budget holds back, where each earlier sharer keeps
its larger share; or no whole reading for ``REFRESH_S``) is read again in full, past
the budget, before it is returned.
Kernel memory (page tables, stacks, task structs) adds 0.2 MiB a process measured,
counted as ``KERNEL_PER_PROCESS``. Page cache the agent reads or writes is not
counted: a cgroup reclaims it at the cap rather than kill for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_supervise.proctree import ProcessTable

#: The longest time between two readings of the tree's smaps_rollup.
REFRESH_S = 0.25
#: Growth of a process's shared resident pages that calls for a new reading.
SHARED_STEP = 4 << 20
#: The share of a core the smaps_rollup readings may take (it spaces the readings
#: of a big tree: 50 processes, 18 ms a reading, at most every 0.36 s) ...
BUDGET = 0.05
#: ... and the reading time that may be spent at once, saved up at that rate.
BURST_S = 0.05
#: The longest time between two readings when no process of the tree shares a
#: page (the usual lone agent: its charge is its statm's anonymous pages).
LONE_REFRESH_S = 2.0
#: Kernel memory a cgroup charges for each process (measured 0.18-0.22 MiB).
KERNEL_PER_PROCESS = 256 << 10


@dataclass(frozen=True)
class _Reading:
    """One process's smaps_rollup reading, with the statm it was read against."""

    pss: int  # Pss_Anon + Pss_Shmem
    anon: int  # statm's anonymous resident pages then
    shared: int  # statm's shared resident pages then (file + shmem)
    shares: bool  # some page shared: its PSS may move while its statm does not


class TreeCharge:
    """The estimated cgroup charge of a changing set of processes, sampled often."""

    def __init__(self, table: ProcessTable, clock) -> None:
        self.table = table
        self.clock = clock
        self._read: dict[int, _Reading] = {}  # pid -> its last reading
        self._unreadable: set[int] = set()  # not ours to read: their RSS counts
        self._due = 0.0  # the next full reading, at the latest
        self._credit = BURST_S  # seconds of reading the budget allows now
        self._then: float | None = None
        self._full_at = float("-inf")  # the last reading of the whole tree
        self._partial = False  # some processes read alone since

    def bytes(self, pids, confirm_over: int | None = None) -> int:
        """The tree's charge now. One over ``confirm_over`` (the cap) is confirmed
        by a full reading first: the kill it leads to rests on fresh PSS only."""
        now = self.clock()
        if self._then is not None:
            self._credit = min(BURST_S, self._credit + (now - self._then) * BUDGET)
        self._then = now
        pages = {pid: self.table.resident(pid) for pid in pids}
        # A pid that left the tree is forgotten, so a reused one starts afresh.
        self._read = {pid: got for pid, got in self._read.items() if pid in pages}
        self._unreadable.intersection_update(pages)
        changed = [
            pid for pid, (rss, shared) in pages.items() if rss and self._changed(pid, shared)
        ]
        if (now >= self._due or changed) and self._credit > 0:
            self._read_all(pages, now)
        elif changed:
            self._reread(pages, changed)
            self._partial = True
        total = self._total(pages)
        # Over the cap on readings that may have gone stale upwards (some sharers
        # not read since the sharing changed, or none for REFRESH_S): read them all.
        # Not when the last full reading is recent and whole: growth counted since
        # is real, and a tree held over its cap is then read every REFRESH_S only.
        stale = self._partial or (now - self._full_at >= REFRESH_S and not self._lone(pages))
        if confirm_over is not None and total > confirm_over and stale:
            self._read_all(pages, now)
            total = self._total(pages)
        return total

    def _read_all(self, pages: dict[int, tuple[int, int]], now: float) -> None:
        self._reread(pages, list(pages))
        spent = self.clock() - now
        self._credit -= spent
        # Never sooner than REFRESH_S, nor than the budget earns this reading back.
        refresh = LONE_REFRESH_S if self._lone(pages) else REFRESH_S
        self._due = now + max(refresh, spent / BUDGET)
        self._full_at, self._partial = now, False

    def _lone(self, pages: dict[int, tuple[int, int]]) -> bool:
        """No process shares a page: every charge is its anonymous pages, which
        statm reads, and only a fork or a new shared mapping (both seen on statm:
        a new pid, or shared pages grown by SHARED_STEP) can change that."""
        return not self._unreadable and all(
            pid in self._read and not self._read[pid].shares for pid in pages
        )

    def _total(self, pages: dict[int, tuple[int, int]]) -> int:
        total = 0
        for pid, (rss, shared) in pages.items():
            if not rss:  # gone, or a zombie: nothing left to charge
                continue
            got = self._read.get(pid)
            if got is None:
                total += rss + KERNEL_PER_PROCESS
                continue
            if got.shares:
                total += got.pss + max(0, rss - shared - got.anon) + KERNEL_PER_PROCESS
            else:  # nothing shared: its anonymous pages now (less, if it freed some)
                total += rss - shared + KERNEL_PER_PROCESS
        return total

    def _changed(self, pid: int, shared: int) -> bool:
        got = self._read.get(pid)
        if got is None:
            return pid not in self._unreadable
        return shared - got.shared >= SHARED_STEP

    def _reread(self, pages: dict[int, tuple[int, int]], pids) -> None:
        for pid in pids:
            rss, shared = pages[pid]
            try:
                got = self.table.private_charge(pid) if rss else None
            except ProcessLookupError:
                continue  # exiting: its last reading stands
            if got is None:
                self._read.pop(pid, None)
                if rss:
                    self._unreadable.add(pid)
            else:
                self._read[pid] = _Reading(got.bytes, rss - shared, shared, got.shares)
