"""Memory-aware admission: may the next task start now, and if not, why not.

A task starts only while, after promising it its whole cap, the memory still
available stays at or above ``min_free_memory``. Running agents have been
promised their caps too, so what they have not used yet (cap - usage, their
"headroom") is subtracted first: if every agent grew to its cap at once, the
reserve would still be there.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_supervise.errors import BadInput
from agent_supervise.units import format_size


@dataclass(frozen=True)
class Admission:
    min_free: int

    def waiting_reason(self, available: int, headroom: int, cap: int) -> str | None:
        """None when a task with ``cap`` may start; else why it waits, in words."""
        if available - headroom - cap >= self.min_free:
            return None
        return (
            f"waiting for memory: {format_size(available)} available, "
            f"{format_size(headroom)} promised to running agents, the task needs "
            f"{format_size(cap)} plus the {format_size(self.min_free)} reserve"
        )

    def never_fits(self, total: int, cap: int) -> bool:
        """A cap that cannot fit even on an idle machine would wait forever."""
        return cap + self.min_free > total

    def check_fits(self, specs, agents, total: int) -> None:
        """Refuse, up front, a task whose cap could never fit on this machine."""
        for spec in specs:
            agent = agents.get(spec.agent)
            cap = spec.memory_limit or (agent.memory_limit if agent else 0)
            if agent and self.never_fits(total, cap):
                raise BadInput(
                    f"{spec.where}: agent {spec.agent}'s cap {format_size(cap)} plus "
                    f"min_free_memory {format_size(self.min_free)} exceeds this "
                    f"machine's {format_size(total)}: it could never start",
                    hint="lower memory_limit or supervisor.min_free_memory",
                )
