"""Graceful degradation: how many agents may run, from how much memory is available.

Modes (the seed's defaults): ``sequential`` (1 agent) below 2 GiB available,
``limited`` (2) below 4 GiB, ``full`` (max_concurrent) otherwise. Memory pressure
(PSI ``some avg10`` of /proc/pressure/memory, where the kernel has it) above a
threshold steps one mode further down: it reports stalls before memory runs out.

Hysteresis keeps a mode from flapping at a boundary: stepping down needs
``samples`` consecutive samples below the threshold; stepping back up needs
``samples`` consecutive samples above the threshold *plus* ``margin``. Stepping
down never kills a running agent; it only lowers how many may start.
"""

from __future__ import annotations

from agent_supervise.agents.spec import DegradationSettings
from agent_supervise.memsource import psi_avg10, read_psi
from agent_supervise.outcome import TextEnum


class Mode(TextEnum):
    """How many agents may run: one, ``limited_to``, or the full concurrency."""

    SEQUENTIAL = "sequential"
    LIMITED = "limited"
    FULL = "full"


MODES = (Mode.SEQUENTIAL, Mode.LIMITED, Mode.FULL)  # from the least to the most


def read_psi_some_avg10(path: str = "/proc/pressure/memory") -> float | None:
    return psi_avg10(read_psi(path)[0])


class Degradation:
    def __init__(self, settings: DegradationSettings, on_change=None) -> None:
        self.s = settings
        self.mode = Mode.FULL
        self._pending: Mode | None = None
        self._count = 0
        self.on_change = on_change or (lambda **event: None)

    def _target(self, available: int, psi: float | None, current: Mode) -> Mode:
        """The mode these figures call for; ``margin`` applies only upward."""
        level = MODES.index(current)
        up = self.s.margin
        seq = self.s.sequential_below + (up if level <= 0 else 0)
        lim = self.s.limited_below + (up if level <= 1 else 0)
        target = 0 if available < seq else 1 if available < lim else 2
        if psi is not None and self.s.psi_some_avg10 and psi > self.s.psi_some_avg10:
            target = max(0, min(target, level) - 1) if target >= level else target
        return MODES[target]

    def observe(self, available: int, psi: float | None = None) -> Mode:
        target = self._target(available, psi, self.mode)
        if target == self.mode:
            self._pending, self._count = None, 0
            return self.mode
        if target != self._pending:
            self._pending, self._count = target, 0
        self._count += 1
        if self._count >= self.s.samples:
            self.mode, self._pending, self._count = target, None, 0
            self.on_change(mode=self.mode, available=available, psi_some_avg10=psi)
        return self.mode

    def limit(self, max_concurrent: int) -> int:
        return {
            Mode.SEQUENTIAL: 1,
            Mode.LIMITED: min(self.s.limited_to, max_concurrent),
            Mode.FULL: max_concurrent,
        }[self.mode]
