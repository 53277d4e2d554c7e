"""Memory-aware admission: may the next task start now, and if not, why not.

A task starts only while, after promising it its whole cap, the memory still
available stays at or above ``min_free_memory``. Running agents have been
promised their caps too, so what they have not used yet (cap - usage, their
"headroom") is subtracted first: if every agent grew to its cap at once, the
reserve would still be there.
"""

from __future__ import annotations

from dataclasses import dataclass

from .units import format_size


@dataclass(frozen=True)
class Admission:
    min_free: int

    def waiting_reason(self, available: int, headroom: int, cap: int) -> str | None:
        """None when a task with ``cap`` may start; else why it waits, in words."""
        if available - headroom - cap >= self.min_free:
            return None
        return (f"waiting for memory: {format_size(available)} available, "
                f"{format_size(headroom)} promised to running agents, the task needs "
                f"{format_size(cap)} plus the {format_size(self.min_free)} reserve")

    def never_fits(self, total: int, cap: int) -> bool:
        """A cap that cannot fit even on an idle machine would wait forever."""
        return cap + self.min_free > total
