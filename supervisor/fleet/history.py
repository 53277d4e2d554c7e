"""Observed peaks per agent, kept across runs.

``admission: usage`` asks it what an agent is expected to need (instead of its whole
cap), and ``agent-supervise recommend`` reports it. One attempt of an agent gives
one observation:

- it ended by itself (ok, failed, a signal, a timeout): its peak is what it needed;
- it was killed at its cap (Reason.memory_kill): it needed *more* than that cap,
  so the observation is a floor, kept apart (``killed_at``).

The file is ``peaks.json`` in the fleet's ``log_dir`` (next to the run folders),
written by fleets with ``admission: usage`` only (the others leave the log dir as it
was): the newest ``KEEP`` observations of each agent, merged under an exclusive lock
of the log dir, so that two fleets sharing it both add theirs::

    {"version": 1, "agents": {"researcher": {"peaks": [...], "killed_at": [...]}}}
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from dataclasses import dataclass, field

from agent_supervise.outcome import Outcome, Reason

FILE = "peaks.json"
#: Endings whose peak is what the agent needed (the others stopped it early: a
#: timeout, an eviction, an interrupt), apart from kills at the cap.
ENDED_BY_ITSELF = frozenset({Reason.OK, Reason.FAILED, Reason.SIGNALED})
KEEP = 100  # newest observations per agent: enough for a p95, small on disk
MIN_SAMPLES = 3  # fewer: no percentile worth the name, expect the cap
PERCENTILE = 95
MARGIN = 1.2  # over the percentile: a run is never exactly like the last ones


@dataclass
class AgentPeaks:
    """One agent's observations, oldest first."""

    peaks: list[int] = field(default_factory=list)  # bytes, attempts that ended by themselves
    killed_at: list[int] = field(default_factory=list)  # caps, attempts killed at them

    def add(self, peak: int | None, cap: int, killed: bool) -> None:
        if killed:
            self.killed_at = [*self.killed_at, cap][-KEEP:]
        elif peak:
            self.peaks = [*self.peaks, peak][-KEEP:]


def percentile(values: list[int], pct: float) -> int:
    """Nearest-rank percentile (a value that was observed, never interpolated)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class PeakHistory:
    agents: dict[str, AgentPeaks] = field(default_factory=dict)
    #: agent -> (its high percentile with the margin, its largest kill cap), or None
    #: with too few peaks: admission asks for every running agent on every pass, the
    #: peaks change only when an attempt ends.
    _expected: dict[str, tuple[int, int] | None] = field(default_factory=dict, repr=False)

    def record(self, agent: str, peak: int | None, cap: int, killed: bool) -> None:
        self.agents.setdefault(agent, AgentPeaks()).add(peak, cap, killed)
        self._expected.pop(agent, None)

    def reached(self, agent: str, peak: int) -> None:
        """An attempt stopped early got to ``peak``: a floor of what it needs."""
        self.agents.setdefault(agent, AgentPeaks()).peaks.append(peak)
        self._expected.pop(agent, None)

    def expected_peak(self, agent: str, cap: int) -> int:
        """What an attempt of ``agent`` under ``cap`` is expected to need at most: the
        high percentile of its peaks with a margin, never above the cap; the cap itself
        with too few observations, or when it was ever killed at a cap this large."""
        if agent not in self._expected:
            seen = self.agents.get(agent)
            self._expected[agent] = (
                None
                if seen is None or len(seen.peaks) < MIN_SAMPLES
                else (
                    int(percentile(seen.peaks, PERCENTILE) * MARGIN),
                    max(seen.killed_at, default=0),
                )
            )
        known = self._expected[agent]
        if known is None or known[1] >= cap:  # too few peaks, or killed at a cap this large
            return cap
        return min(cap, known[0])

    # -- the file --------------------------------------------------------------------
    @classmethod
    def load(cls, log_dir: str) -> PeakHistory:
        """The history in ``log_dir`` (empty when there is none, or it is unreadable:
        a history is an optimisation, never a reason not to run)."""
        try:
            with open(os.path.join(log_dir, FILE), "rb") as f:
                return cls.from_json(f.read(1 << 22))
        except (OSError, ValueError):
            return cls()

    @classmethod
    def from_json(cls, data: bytes) -> PeakHistory:
        """Raises ValueError for anything but the documented shape."""
        raw = json.loads(data)
        try:
            agents = {
                str(name): AgentPeaks(
                    peaks=[int(p) for p in seen.get("peaks", [])][-KEEP:],
                    killed_at=[int(c) for c in seen.get("killed_at", [])][-KEEP:],
                )
                for name, seen in (raw.get("agents") or {}).items()
            }
        except (AttributeError, TypeError) as err:
            raise ValueError(f"not a peak history: {err}") from None
        return cls(agents)

    def to_json(self) -> dict:
        return {
            "version": 1,
            "agents": {
                name: {"peaks": seen.peaks, "killed_at": seen.killed_at}
                for name, seen in sorted(self.agents.items())
            },
        }

    def merge_into(self, log_dir: str) -> None:
        """Add these observations to ``log_dir``'s file, under its lock (another
        fleet may be writing its own), and replace it whole (rename)."""
        path = os.path.join(log_dir, FILE)
        # The lock is the log dir's own (flock works on a directory's fd): no lock
        # file beside the run folders, and the file itself is replaced by rename.
        lock = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = PeakHistory.load(log_dir)
            for name, seen in self.agents.items():
                into = merged.agents.setdefault(name, AgentPeaks())
                into.peaks = (into.peaks + seen.peaks)[-KEEP:]
                into.killed_at = (into.killed_at + seen.killed_at)[-KEEP:]
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(merged.to_json(), f, separators=(",", ":"))
            os.rename(tmp, path)
        finally:
            os.close(lock)


class FleetPeaks:
    """A fleet's view: the history its log dir had at the start, plus what this run
    observes; at the end, this run's observations are merged into the file."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.known = PeakHistory.load(log_dir)
        self.new = PeakHistory()

    def observed(self, agent: str, outcome: Outcome, cap: int) -> None:
        """One attempt of ``agent`` under ``cap`` ended so."""
        killed = outcome.reason.memory_kill
        if killed or outcome.reason in ENDED_BY_ITSELF:
            for history in (self.known, self.new):
                history.record(agent, outcome.peak_bytes, cap, killed)

    def reached(self, agent: str, peak: int | None) -> None:
        """An attempt stopped early (by the fleet's budget) got to ``peak``: a floor
        of what the agent needs, kept for this run's admission only."""
        if peak:
            self.known.reached(agent, peak)

    def expected_peak(self, agent: str, cap: int) -> int:
        return self.known.expected_peak(agent, cap)

    def save(self) -> None:
        """Merge this run's observations into the log dir's file; a failure to write
        it is no failure of the run (the history is an optimisation)."""
        if self.new.agents:
            try:
                self.new.merge_into(self.log_dir)
            except OSError:
                pass
