"""Memory facts the cap itself does not report: an agent stuck at a refused
allocation, and an abnormal exit near the cap.

An rlimit never kills: the kernel refuses the allocation. Most programs then fail
(Python raises MemoryError, malloc returns NULL), but V8 can wait forever.
Measured here: node under RLIMIT_DATA 40M asks for an 8 MiB semi-space chunk
(mprotect -> ENOMEM) with its data at 34 MiB, then sits at 0% CPU with its main
thread in a futex wait; only a timeout ended it. The same program in a 40M
cgroup v1 is OOM-killed by the kernel in 0.3 s, so the rule below is needed only
where a cage refuses (``Cage.refuse_limit``).

*Stuck* is three facts of one process at once, for ``STUCK_S``:

* its counted allocations are near the rlimit (``NEAR_RLIMIT``): refusals come a
  whole request at a time, so the count stops short of the limit by the refused
  size (V8 8 MiB, a Python MemoryError one large request);
* its CPU time (utime + stime) has not moved;
* its main thread sleeps in a futex: waiting on another thread of its own, not
  on input, a timer or a child. An idle node MCP server under a 50M rlimit has
  its data at 95% of the limit and no CPU, but its main thread waits in epoll: it
  is idle, not stuck; ``sleep`` waits in nanosleep. (A program near its rlimit
  whose main thread joins a thread that itself uses no CPU for 2 s is taken as
  stuck too: it makes no progress either.)

``STUCK_S`` is 2 s: twenty flat watchdog samples, far longer than a GC pause or a
scheduling delay on a loaded machine (CPU time moves in 10 ms ticks), and short
enough that a stuck agent is ended within about 2 s. Cost (measured here): a walk
of the tree and a statm per process, 62 us for 2 processes and 157 us for 11 (the
rlimit usage() sample itself: 59 and 138 us), at most every ``READ_EVERY_S`` however
fast the watchdog samples; /proc/PID/stat and the main thread's wchan (14-23 us) are
read only for processes near the rlimit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent_supervise.units import format_size

#: A process whose rlimit-counted allocations reach this fraction of the rlimit
#: is near it: a refusal stops it short by the refused request.
NEAR_RLIMIT = 0.75
#: An abnormal exit with the peak at this fraction of the cap or more is called
#: probably out of memory: sampled peaks lag the real one by up to a sample, and a
#: runtime told its cap (NODE_OPTIONS, GOMEMLIMIT) stops at the cap minus headroom:
#: its old space is 75% of the cap (run/hints.py), and with its young generation
#: sized for the cap too, node --max-old-space-size=24 under 38M aborted at a peak
#: of 29-31 MiB (76-81%) on rlimit, 33.5 MiB under cgroup1.
NEAR_CAP = 0.7
#: No CPU progress this long, near the rlimit, main thread in a futex: stuck.
STUCK_S = 2.0
#: The allocations are read at most this often: a hog racing to its cap makes the
#: watchdog sample every few ms, which the cap needs but this rule does not.
READ_EVERY_S = 0.05


@dataclass
class AllocationWatch:
    """Per-process allocations against a cage's refusing limit, sample by sample."""

    limit: int | None  # the cage's refuse_limit; None: nothing is refused
    name: str = ""  # "RLIMIT_DATA"
    peak: int = 0  # the largest single process's count seen
    next_read: float = 0.0
    _quiet: dict[int, tuple[int, float]] = field(default_factory=dict, repr=False)

    def observe(self, now: float, cage) -> str | None:
        """Read the tree's allocations; why the agent is stuck, or None."""
        if not self.limit or now < self.next_read:
            return None
        self.next_read = now + READ_EVERY_S
        sizes = cage.allocations()
        self.peak = max(self.peak, *sizes.values(), 0)
        near = {p: s for p, s in sizes.items() if s >= NEAR_RLIMIT * self.limit}
        for pid in [p for p in self._quiet if p not in near]:
            del self._quiet[pid]
        for pid, size in near.items():
            facts = cage.progress(pid)
            if facts is None:
                continue
            cpu, blocked = facts
            seen = self._quiet.get(pid)
            if seen is None or seen[0] != cpu:
                self._quiet[pid] = (cpu, now)
            elif now - seen[1] >= STUCK_S and blocked:
                return (
                    f"allocations refused at its rlimit of {format_size(self.limit)} "
                    f"(pid {pid} at {format_size(size)}); no progress for "
                    f"{now - seen[1]:.0f} s"
                )
        return None

    def death_note(self, peak: int | None, cap: int) -> str:
        """What to add to an abnormal exit's detail: the cage's evidence that memory
        ran out, or "" when there is none. The exit stays the program's own."""
        if self.limit and self.peak >= NEAR_RLIMIT * self.limit:
            return (
                f"probably out of memory: its allocations reached "
                f"{format_size(self.peak)} of its {self.name} {format_size(self.limit)}, "
                "past which the kernel refuses them"
            )
        if peak is not None and cap and peak >= NEAR_CAP * cap:
            return f"probably out of memory: peak {format_size(peak)} of its {format_size(cap)} cap"
        return ""
