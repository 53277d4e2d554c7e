"""The pressure ladder's middle step: freeze the youngest agent when memory runs
short, thaw it when memory has come back (GNU parallel's ``--memsuspend``).

The whole ladder, from the first rung (README, "Packing agents"):

1. **Stop admitting**: nothing new starts while the machine's available memory,
   less what running agents were promised, is under ``min_free_memory``, or the
   budget would be passed (fleet/admission.py); nor while any agent is frozen
   (frozen agents go on before new ones start).
2. **Freeze** the youngest running agent when available memory is under
   ``freeze_below`` (default: ``min_free_memory``) or the agents together use
   FREEZE_AT of ``memory_budget``. A frozen agent keeps its memory but stops
   growing, so the older agents can finish and give theirs back. One agent per
   SETTLE_S (memory is measured again before the next), and never the last one
   running: someone must go on to free memory.
3. **Evict** the youngest (frozen or not) and requeue it, when available memory is
   under ``evict_below`` (fleet/policies.py) or the budget is passed under rlimit
   (fleet/packing.py).

Thaw, with hysteresis so that an agent is not frozen and thawed in turn: once
available memory is back over THAW_FACTOR × ``freeze_below`` and the budget's sum
under THAW_AT of it, the agent frozen first thaws (the oldest work first), after
at least MIN_FROZEN_S, one per SETTLE_S. A frozen agent's timeout is paused
(run/lifecycle.py): it cannot work towards it while frozen. Only a local agent
with its own cage freezes; a pooled task (its worker serves other tasks) and a Ray
task are left to the evict step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent_supervise.units import format_size

if TYPE_CHECKING:
    from agent_supervise.fleet.seams import Engine

#: Freeze when the agents together use this share of the budget...
FREEZE_AT = 0.95
#: ...and thaw once they are back under this share.
THAW_AT = 0.85
#: Thaw once available memory is back over freeze_below times this.
THAW_FACTOR = 1.25
#: Seconds between two moves of the ladder (a freeze or a thaw).
SETTLE_S = 1.0
#: No agent thaws sooner than this after it was frozen.
MIN_FROZEN_S = 1.0


class Ladder:
    """Which agents are frozen, and when the next freezes or thaws."""

    def __init__(self, freeze_below: int, budget: int | None, emit: Callable) -> None:
        self.freeze_below = freeze_below
        self.budget = budget
        self.emit = emit
        self.frozen: dict[str, float] = {}  # task id -> when frozen, in freezing order
        self.freezes = 0  # in all, for the summary
        self._moved_at = float("-inf")

    def short(self, available: int, in_use: int) -> str | None:
        """Why memory is short enough to freeze an agent, or None."""
        if self.freeze_below and available < self.freeze_below:
            return (
                f"available memory {format_size(available)} is under freeze_below "
                f"{format_size(self.freeze_below)}"
            )
        if self.budget and in_use >= FREEZE_AT * self.budget:
            return (
                f"the agents use {format_size(in_use)} of the memory_budget "
                f"{format_size(self.budget)}"
            )
        return None

    def relieved(self, available: int, in_use: int) -> bool:
        machine = not self.freeze_below or available >= THAW_FACTOR * self.freeze_below
        return machine and (not self.budget or in_use <= THAW_AT * self.budget)

    def step(self, now: float, available: int, in_use: int, engine: Engine) -> None:
        """One move at most per call: freeze the youngest, or thaw the first frozen."""
        runs = engine.runs
        for task_id in [t for t in self.frozen if t not in runs]:
            del self.frozen[task_id]  # ended meanwhile (evicted, killed, ...)
        if now - self._moved_at < SETTLE_S:
            return
        why = self.short(available, in_use)
        if why is not None:
            going = [(run.started, i, run) for i, run in enumerate(runs.values())]
            going = [g for g in going if not g[2].frozen]  # ties: the later start
            if len(going) <= 1:
                return
            for _, _, run in sorted(going, key=lambda g: g[:2], reverse=True)[:-1]:
                if engine.freeze(run):
                    self.frozen[run.task.id] = now
                    self.freezes += 1
                    self._moved_at = now
                    self.emit(
                        "frozen", task=run.task.id, usage=run.usage, reason=why, in_use=in_use
                    )
                    return
        elif self.frozen and self.relieved(available, in_use):
            task_id, since = next(iter(self.frozen.items()))
            if now - since < MIN_FROZEN_S:
                return
            del self.frozen[task_id]
            took = engine.thaw(runs[task_id])
            self._moved_at = now
            self.emit("thawed", task=task_id, frozen_s=round(took, 3), available=available)

    def waiting(self) -> str | None:
        """Why nothing new may start: frozen agents go on first."""
        if not self.frozen:
            return None
        return f"{len(self.frozen)} agent(s) frozen for memory: they go on before new ones start"
