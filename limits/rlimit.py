"""rlimit: RLIMIT_DATA (default) or RLIMIT_AS, set in the child before exec.

An rlimit is per process, not per tree, and the kernel never kills for it: an
allocation past the limit fails inside the program (MemoryError, bad_alloc, "memory
exhausted"), which then usually exits non-zero. The whole-tree cap on this backend is
therefore the watchdog's: it sums the RSS of the agent's tree, including descendants
that double-forked away and were adopted by the supervisor (a child subreaper).

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
import signal

from ..proctree import ProcessTable
from .base import Backend, Cage, ChildSetup, Unavailable, cage_name, owner_tag

KINDS = {"data": resource.RLIMIT_DATA, "as": resource.RLIMIT_AS}


class RlimitCage(Cage):
    peak_source = "sampled"
    kernel_enforced = False

    def __init__(self, kind: str, name: str, limit: int, table: ProcessTable) -> None:
        self.kind = kind
        self.backend = f"rlimit-{kind}"
        self.name = name
        self.limit = limit
        self.table = table
        self.pid: int | None = None
        #: Descendants adopted by the supervisor after their parent died.
        self.orphans: set[int] = set()
        self.notes: list[str] = []
        soft, hard = resource.getrlimit(KINDS[kind])
        # Raising a hard limit needs CAP_SYS_RESOURCE; a lower one is already stricter.
        self._value = limit if hard == resource.RLIM_INFINITY or hard >= limit else hard

    def child_setup(self) -> ChildSetup:
        return ChildSetup(rlimits=((KINDS[self.kind], self._value),))

    def members(self) -> list[int]:
        roots = ([self.pid] if self.pid else []) + sorted(self.orphans)
        found = self.table.descendants(roots)
        self.orphans.intersection_update(found)
        return [p for p in found if self.table.alive(p)]

    def usage(self) -> int:
        """Summed RSS of the tree. Shared pages count once per process, so this
        over-counts (a safe direction for a cap); PSS would cost 5-20x more. A zombie
        or a process gone meanwhile reads as 0: no liveness check is needed here."""
        roots = ([self.pid] if self.pid else []) + sorted(self.orphans)
        return sum(self.table.rss(p) for p in self.table.descendants(roots))

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

    def kill(self) -> int:
        return self.signal(signal.SIGKILL)

    def release(self) -> None:
        self.orphans.clear()
        self.close_init()


class RlimitBackend(Backend):
    def __init__(self, kind: str = "data", table: ProcessTable | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"rlimit kind must be one of {sorted(KINDS)}, not {kind!r}")
        self.kind = kind
        self.name = "rlimit"
        self.table = table or ProcessTable()
        self._seq = 0
        self._owner: str | None = None

    def probe(self) -> str:
        try:
            resource.getrlimit(KINDS[self.kind])
        except (OSError, ValueError) as err:
            raise Unavailable(f"getrlimit: {err}") from err
        if not os.path.exists(f"/proc/{os.getpid()}/statm"):
            raise Unavailable("/proc is not mounted: the watchdog cannot read memory")
        return f"RLIMIT_{self.kind.upper()} per process + watchdog on the tree's RSS"

    def clean_stale(self):
        """Processes of agents whose supervisor died (see stale.py)."""
        from .stale import kill_marked_orphans
        return kill_marked_orphans()

    def create(self, label: str, limit: int) -> RlimitCage:
        self._seq += 1
        self._owner = self._owner or owner_tag()
        return RlimitCage(self.kind, cage_name(self._owner, self._seq, label), limit,
                          self.table)
