"""The watchdog's sampling rule: when to look at an agent's memory next, and whether
it is over its cap.

It is the second layer on every backend and the only tree-wide one under rlimit.
Sampling is adaptive: an agent whose memory is flat is read every ``poll``; one that
grows is read again before it could reach its cap at its recent rate (half the
projected time, never faster than ``min_poll``). The rate is the fastest growth seen
lately, decaying with a half-life of a second: a program that allocates in bursts
looks flat between two of them, and forgetting its rate there would let it cross
the cap a whole ``poll`` before the next look. A sleeping fleet costs one read per
agent per ``poll``; a hog racing to its cap is caught within a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_POLL_S = 0.005
#: How fast the remembered growth rate fades when an agent stops growing.
RATE_HALF_LIFE_S = 1.0


@dataclass
class Watchdog:
    limit: int
    poll: float
    min_poll: float = MIN_POLL_S
    adaptive: bool = True
    peak: int = 0
    samples: int = 0
    next_due: float = 0.0
    rate: float = 0.0  # bytes/s: the fastest recent growth, decaying
    _last: tuple[float, int] | None = field(default=None, repr=False)

    def start(self, now: float) -> None:
        """Schedule the first sample soon after spawn, so a fast start is seen."""
        self.next_due = now + min(self.poll, 10 * self.min_poll)

    @property
    def last_usage(self) -> int:
        return self._last[1] if self._last else 0

    def observe(self, now: float, usage: int) -> bool:
        """Record a sample; schedule the next one; True when ``usage`` is over the cap."""
        self.samples += 1
        self.peak = max(self.peak, usage)
        interval = self.poll
        if self.adaptive and self._last is not None:
            then, before = self._last
            if now > then:
                now_rate = max(0.0, (usage - before) / (now - then))
                fade = 0.5 ** ((now - then) / RATE_HALF_LIFE_S)
                self.rate = max(now_rate, self.rate * fade)
            if self.rate > 0:
                time_to_cap = max(0.0, self.limit - usage) / self.rate
                interval = min(interval, max(self.min_poll, time_to_cap / 2))
        self._last = (now, usage)
        if interval < self.poll:
            self.next_due = now + interval
        else:
            # On the poll grid: every flat agent is sampled in the same wake-up, so
            # 100 agents cost the loop 10 wake-ups a second, not 1,000 staggered ones.
            self.next_due = (now // self.poll + 1) * self.poll
        return usage > self.limit


#: Refaulting at least the cap's size every second, for this long, is thrashing.
THRASH_WINDOW_S = 2.0
#: Only look for thrashing when usage is at least this fraction of the cap.
NEAR_CAP = 0.95


@dataclass
class ThrashDetector:
    """Thrashing at the cap: the kernel keeps reclaiming and re-reading pages.

    A cgroup whose working set exceeds its cap by less than its reclaimable file
    pages does not OOM: the kernel evicts the program's own code and data files,
    which it faults straight back in. Measured here: node under a 50M v1 cap sat at
    the cap refaulting 600 MB/s with no OOM kill, forever. Refault counters come from
    the cage's ``memory.stat``; the rate is compared with the cap itself per second.
    """

    limit: int
    window: float = THRASH_WINDOW_S
    since: float | None = None
    rate: float = 0.0
    _last: tuple[float, int] | None = field(default=None, repr=False)

    def observe(self, now: float, usage: int, refaults) -> bool:
        """``refaults`` is called (cheaply skipped far from the cap) for bytes refaulted."""
        if usage < NEAR_CAP * self.limit:
            self.since, self._last = None, None
            return False
        total = refaults()
        if total is None:
            return False
        if self._last is not None and now > self._last[0]:
            self.rate = (total - self._last[1]) / (now - self._last[0])
            if self.rate >= self.limit:
                self.since = self.since if self.since is not None else self._last[0]
            else:
                self.since = None
        self._last = (now, total)
        return self.since is not None and now - self.since >= self.window
