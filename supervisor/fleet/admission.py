"""Memory-aware admission: may the next task start now, and if not, why not.

A task starts only while, after promising it what it may need, the memory still
available stays at or above ``min_free_memory``. Running agents have been promised
theirs too, so what they have not used yet (their "headroom") is subtracted first:
if every agent grew to its promise at once, the reserve would still be there.

What is promised is ``supervisor.admission``'s choice:

- ``caps``: the whole cap. Nothing a running agent does can take the reserve, but
  agents capped high and using little leave the machine idle.
- ``usage``: the agent's expected peak (fleet/history.py: the p95 of its past peaks,
  with a margin; its cap while there is no history). More agents run at once; when
  one grows past what was expected, the hard cap still holds it, the fleet budget
  still holds them all, and eviction frees memory if the machine runs short.

With ``supervisor.memory_budget``, the same promise must also fit in the budget
minus what the fleet's agents use now (the budget has no reserve: its parent cage
is the hard ceiling, and admission only keeps the agents from meeting it).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_supervise.errors import BadInput
from agent_supervise.units import format_size


@dataclass(frozen=True)
class Admission:
    min_free: int
    budget: int | None = None
    by_use: bool = False  # admission: usage

    def waiting_reason(
        self, available: int, headroom: int, need: int, in_use: int = 0
    ) -> str | None:
        """None when a task that may need ``need`` can start; else why it waits.
        ``headroom``: what running agents were promised and do not use yet;
        ``in_use``: what they use now (counted against the budget)."""
        promised = "expected to grow by" if self.by_use else "promised to"
        needs = "is expected to need" if self.by_use else "needs"
        if self.budget is not None and self.budget - in_use - headroom - need < 0:
            return (
                f"waiting for the fleet's budget: {format_size(in_use)} of "
                f"{format_size(self.budget)} in use, running agents {promised} "
                f"{format_size(headroom)}, the task {needs} {format_size(need)}"
            )
        if available - headroom - need >= self.min_free:
            return None
        return (
            f"waiting for memory: {format_size(available)} available, "
            f"{format_size(headroom)} {promised} running agents, the task {needs} "
            f"{format_size(need)} plus the {format_size(self.min_free)} reserve"
        )

    def never_fits(self, total: int, cap: int) -> bool:
        """A cap that cannot fit even on an idle machine would wait forever."""
        return cap + self.min_free > total

    def check_fits(self, specs, agents, total: int) -> None:
        """Refuse, up front, a task whose cap could never fit on this machine, or
        would be larger than the whole fleet's budget."""
        for spec in specs:
            agent = agents.get(spec.agent)
            cap = spec.memory_limit or (agent.memory_limit if agent else 0)
            if agent and self.budget is not None and cap > self.budget:
                raise BadInput(
                    f"{spec.where}: agent {spec.agent}'s cap {format_size(cap)} is larger "
                    f"than supervisor.memory_budget {format_size(self.budget)}",
                    hint="lower memory_limit, or raise the budget",
                )
            if agent and self.never_fits(total, cap):
                raise BadInput(
                    f"{spec.where}: agent {spec.agent}'s cap {format_size(cap)} plus "
                    f"min_free_memory {format_size(self.min_free)} exceeds this "
                    f"machine's {format_size(total)}: it could never start",
                    hint="lower memory_limit or supervisor.min_free_memory",
                )
