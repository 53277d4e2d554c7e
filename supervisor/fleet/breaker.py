"""The circuit breaker: stop starting agents while memory is short or agents keep
being memory-killed, then test the water with one probe before resuming.

States: ``closed`` (normal) -> ``open`` (no starts) -> after ``cooldown``
``half_open`` (exactly one probe task may start) -> ``closed`` if the probe ended
without a memory problem, else ``open`` again with the cooldown doubled (up to
``max_cooldown``). The probe's question is "can an agent run without memory
trouble?", so a probe that fails for another reason (its own exit 1) still closes
the breaker. Every transition is reported through ``on_change``.
"""

from __future__ import annotations

from agent_supervise.agents.spec import BreakerSettings
from agent_supervise.errors import CircuitOpen  # noqa: F401 - its old home
from agent_supervise.outcome import Reason, TextEnum
from agent_supervise.units import format_duration, format_size


class BreakerState(TextEnum):
    CLOSED = "closed"  # normal
    OPEN = "open"  # no starts
    HALF_OPEN = "half_open"  # exactly one probe task may start


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings, on_change=None) -> None:
        self.s = settings
        self.state = BreakerState.CLOSED
        self.reason = ""
        self.kills_in_a_row = 0
        self.cooldown = settings.cooldown
        self.opened_at = 0.0
        self.probe: str | None = None  # the task id of the running probe
        self.on_change = on_change or (lambda **event: None)

    def _move(self, state: BreakerState, now: float, reason: str) -> None:
        self.state, self.reason = state, reason
        if state is BreakerState.OPEN:
            self.opened_at = now
        self.on_change(state=state, reason=reason, cooldown=self.cooldown)

    def observe(self, now: float, available: int) -> None:
        """A memory sample. Low memory opens the breaker (or keeps it open)."""
        low = available < self.s.min_available
        if low and self.state is BreakerState.CLOSED:
            self._move(
                BreakerState.OPEN,
                now,
                f"available memory {format_size(available)} "
                f"is below breaker.min_available {format_size(self.s.min_available)}",
            )
        elif low and self.state is BreakerState.OPEN:
            self.opened_at = now  # the cooldown counts from when memory recovered
        elif self.state is BreakerState.OPEN and now - self.opened_at >= self.cooldown:
            self._move(BreakerState.HALF_OPEN, now, "cooldown over: one probe task may start")

    def may_start(self) -> str | None:
        """None if a task may start now; else why not."""
        if self.state is BreakerState.CLOSED:
            return None
        if self.state is BreakerState.HALF_OPEN and self.probe is None:
            return None
        if self.state is BreakerState.HALF_OPEN:
            return f"circuit breaker half-open: waiting for probe {self.probe}"
        return f"circuit breaker open ({self.reason}); retrying in {format_duration(self.cooldown)}"

    def started(self, task_id: str) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.probe = task_id

    def ended(self, now: float, task_id: str, reason: Reason) -> None:
        """An agent ended with ``reason``."""
        memory_trouble = reason.memory_ending
        self.kills_in_a_row = self.kills_in_a_row + 1 if memory_trouble else 0
        if task_id == self.probe:
            self.probe = None
            if memory_trouble:
                self.cooldown = min(self.cooldown * 2, self.s.max_cooldown)
                self._move(BreakerState.OPEN, now, f"probe {task_id} ended {reason}")
            else:
                self.cooldown = self.s.cooldown
                self._move(BreakerState.CLOSED, now, f"probe {task_id} ended {reason}")
        elif (
            self.state is BreakerState.CLOSED
            and self.kills_in_a_row >= self.s.consecutive_memory_kills
        ):
            self._move(BreakerState.OPEN, now, f"{self.kills_in_a_row} memory kills in a row")
