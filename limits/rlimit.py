"""rlimit: RLIMIT_DATA (default) or RLIMIT_AS, set in the child before exec.

An rlimit is per process, not per tree, and the kernel never kills for it: an
allocation past the limit fails inside the program (MemoryError, bad_alloc, "memory
exhausted"), which then usually exits non-zero. The whole-tree cap on this backend is
therefore the watchdog's: it reads what a cgroup would charge for the agent's tree
(charge.py: each anonymous and shared page once), including descendants that
double-forked away and were adopted by the supervisor (a child subreaper).

Why RLIMIT_DATA and not RLIMIT_AS by default (measured on the project's machines):
RLIMIT_AS counts reserved address space, not memory. ``node -e 0`` reserves 711 MiB
and dies or hangs under ``--as=50M..500M``; glibc reserves up to 64 MiB per thread
arena, so Python with 8 threads fails at 50M and 200M. RLIMIT_DATA (private writable
mappings and brk, Linux >= 4.7) lets python, threaded python and node start and
still stops a 100 MB allocation under a 50M cap.
"""

from __future__ import annotations

import os
import resource
import time

from agent_supervise.limits.base import (
    DEFAULT_PIDS_LIMIT,
    Backend,
    Cage,
    ChildSetup,
    Placement,
    Unavailable,
    cage_name,
    owner_tag,
)
from agent_supervise.limits.cgroupfs import CgroupFS
from agent_supervise.limits.charge import TreeCharge
from agent_supervise.limits.pids import PidsHierarchy, PidsLeaf
from agent_supervise.proctree import PAGE_SIZE, ProcessTable

KINDS = {"data": resource.RLIMIT_DATA, "as": resource.RLIMIT_AS}
#: RLIMIT_DATA is set above the cap, as a backstop: it counts private writable
#: address space, reserved or not, which no cgroup charges (``node`` at rest: 48 MiB
#: of it for 6 MiB of anonymous pages; python: 8 for 7). At the cap itself it would
#: refuse allocations long before the tree holds what a cgroup would charge, and a
#: cap would mean less here than on the kernel backends. The watchdog is the cap;
#: this still refuses at once one allocation of more than twice the cap plus the
#: extra. The extra is what Node reserves beyond what it touches: ``npm install``
#: peaks at 146 MiB of it for 30 MiB of anonymous pages, tsc at 165 for 124 (thread
#: stacks, V8's committed but discarded pages); at 64 MiB npm was refused at caps it
#: fits in under a cgroup.
DATA_FACTOR, DATA_EXTRA = 2, 256 << 20


class RlimitCage(Cage):
    peak_source = "sampled"
    kernel_enforced = False
    #: The v1 pids leaf it joins where one can be made (pids.py): the process cap,
    #: and a membership that double forks and a scrubbed environment cannot shed.
    companion: PidsLeaf | None = None
    #: RLIMIT_NPROC to set (0: none), see RlimitBackend.create.
    nproc = 0
    _count = 0  # processes in the tree at the last usage() walk
    #: Shared memory RSS does not show (with namespaces only: shmmeter.py).
    shared = None

    def __init__(self, kind: str, name: str, limit: int, table: ProcessTable) -> None:
        self.kind = kind
        self.backend = f"rlimit-{kind}"
        self.name = name
        self.limit = limit
        self.table = table
        self.charge = TreeCharge(table, time.monotonic)
        self.pid: int | None = None
        _soft, hard = resource.getrlimit(KINDS[kind])
        value = limit * DATA_FACTOR + DATA_EXTRA if kind == "data" else limit
        # Raising a hard limit needs CAP_SYS_RESOURCE; a lower one is already stricter.
        self._value = value if hard == resource.RLIM_INFINITY or hard >= value else hard
        self.refuse_limit = self._value
        self.refuse_name = f"RLIMIT_{kind.upper()}"

    def child_setup(self) -> ChildSetup:
        rlimits: tuple[tuple[int, int], ...] = ((KINDS[self.kind], self._value),)
        if self.nproc:
            rlimits += ((resource.RLIMIT_NPROC, self.nproc),)
        procs = (self.companion.child_proc(),) if self.companion else ()
        return ChildSetup(procs=procs, rlimits=rlimits)

    def attach(self, pid: int) -> None:
        super().attach(pid)
        if self.companion is not None:
            self.companion.attach()
        from agent_supervise.limits.shmmeter import SharedMemoryMeter, rlimit_uncounted

        if self.init_fd is not None:  # namespaces of its own: its shared memory counts
            self.shared = SharedMemoryMeter.open(pid)
        self.notes.append(rlimit_uncounted(self.shared is not None))

    def members(self) -> list[int]:
        roots = ([self.pid] if self.pid else []) + sorted(self.orphans)
        found = self.table.descendants(roots)
        self.orphans.intersection_update(found)
        alive = [p for p in found if self.table.alive(p)]
        return alive + self._outside_tree(found)

    def _outside_tree(self, tree) -> list[int]:
        """Companion members the tree walk did not reach (live: cgroup.procs drops
        a process when it exits)."""
        if self.companion is None:
            return []
        seen = set(tree)
        return [p for p in self.companion.members() if p not in seen]

    def tampered(self) -> str | None:
        from agent_supervise.limits.guard import first_change

        return first_change(self.companion.guards) if self.companion else None

    def pids_exceeded(self) -> str | None:
        """The companion's refusal counter; without one, the tree's process count
        (from the last usage walk) reaching the cap."""
        if self.companion is not None:
            return self.companion.exceeded()
        if self.pids_limit > 0 and self._count >= self.pids_limit:
            return (
                f"process limit {self.pids_limit} reached: {self._count} processes "
                "in the tree (counted: no pids cgroup here)"
            )
        return None

    def placements(self) -> list[Placement]:
        return [self.companion.placement()] if self.companion else []

    def usage(self) -> int:
        """What a cgroup would charge for the tree (charge.py), plus the shared
        memory RSS does not show where it can be metered. A zombie or a process gone
        meanwhile reads as 0: no liveness check is needed here."""
        roots = ([self.pid] if self.pid else []) + sorted(self.orphans)
        tree = self.table.descendants(roots)
        self._count = len(tree)
        pids = tree + self._outside_tree(tree)
        shared = 0 if self.shared is None else self.shared.bytes(pids, time.monotonic())
        # Over the cap, the estimate is confirmed on fresh readings (charge.py).
        return shared + self.charge.bytes(pids, confirm_over=self.limit - shared)

    def allocations(self) -> dict[int, int]:
        """statm's data (RLIMIT_DATA: brk, private writable mappings and the stack)
        or size (RLIMIT_AS: all address space) per process. A second walk of the
        tree next to usage(): ~10 us a process each sample."""
        roots = ([self.pid] if self.pid else []) + sorted(self.orphans)
        tree = self.table.descendants(roots)
        field = 5 if self.kind == "data" else 0
        sizes = {}
        for pid in tree + self._outside_tree(tree):
            pages = self.table.statm(pid)
            if pages:
                sizes[pid] = pages[field] * PAGE_SIZE
        return sizes

    def progress(self, pid: int) -> tuple[int, bool] | None:
        st = self.table.stat(pid)
        if st is None or st.state == "Z":
            return None
        return st.cpu, self.table.main_thread_in(pid, b"futex")

    def peak(self) -> int | None:
        return None

    def oom_kills(self) -> int:
        return 0

    def signal(self, sig: int) -> int:
        sent = super().signal(sig)
        if self.pid:
            # The agent is a session and process-group leader: the group catches
            # descendants forked after the tree was read.
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def release(self) -> None:
        self.orphans.clear()
        self.close_init()
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        if self.companion is not None:
            self.companion.release()
            self.companion = None


class RlimitBackend(Backend):
    def __init__(
        self,
        kind: str = "data",
        table: ProcessTable | None = None,
        pids: PidsHierarchy | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"rlimit kind must be one of {sorted(KINDS)}, not {kind!r}")
        self.kind = kind
        self.name = "rlimit"
        self.table = table or ProcessTable()
        self._seq = 0
        self._owner: str | None = None
        self.pids = pids or PidsHierarchy(CgroupFS())

    def probe(self) -> str:
        try:
            resource.getrlimit(KINDS[self.kind])
        except (OSError, ValueError) as err:
            raise Unavailable(f"getrlimit: {err}") from err
        if not os.path.exists(f"/proc/{os.getpid()}/statm"):
            raise Unavailable("/proc is not mounted: the watchdog cannot read memory")
        return f"RLIMIT_{self.kind.upper()} per process + watchdog on the tree's charge"

    def clean_stale(self):
        """Processes of agents whose supervisor died (see stale.py)."""
        from agent_supervise.limits.stale import kill_marked_orphans

        return kill_marked_orphans() + self.pids.clean_stale()

    def create(
        self, label: str, limit: int, *, pids: int = DEFAULT_PIDS_LIMIT, uid: int | None = None
    ) -> RlimitCage:
        """The rlimits, plus the process cap: a pids companion leaf where the machine
        has a writable v1 pids hierarchy (made even without a cap, for membership);
        else the watchdog counts the tree, and an agent running as a dropped user also
        gets RLIMIT_NPROC. That rlimit is per user, not per agent: the kernel counts
        every task of the uid on the machine (other agents and programs of that user
        too) and exempts root, so it is set only where nothing better exists."""
        self._seq += 1
        self._owner = self._owner or owner_tag()
        cage = RlimitCage(self.kind, cage_name(self._owner, self._seq, label), limit, self.table)
        cage.pids_limit = max(0, pids)
        try:
            cage.companion = self.pids.create(cage.name, cage.pids_limit)
        except Unavailable as why:
            if cage.pids_limit:
                cage.notes.append(
                    f"no process cap from the kernel ({why}): the watchdog "
                    "counts the agent's tree instead"
                )
            if cage.pids_limit and uid is not None and uid != 0:
                cage.nproc = cage.pids_limit
        return cage
