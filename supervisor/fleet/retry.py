"""Whether and how a task runs again after it ended, and when.

Two budgets, as Ray keeps them: ``retries`` for ordinary failures (non-zero exit,
signal, timeout, and eviction by the pressure rule), ``memory_retries`` for memory
kills, which only count when ``on_memory_kill`` is ``retry`` (same cap) or ``grow``
(cap times ``grow_factor``, up to ``max_memory_limit``). Failures that another try
cannot fix (not found, not executable, a cage that cannot be made) and endings the
supervisor chose (interrupted, stopped, cancelled) are final.

Delays grow exponentially from ``backoff`` with "equal jitter" (half fixed, half
random), capped at ``backoff_max``, so retries of many tasks do not arrive in step.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from dataclasses import dataclass

from agent_supervise.agents.spec import Task
from agent_supervise.outcome import Reason


@dataclass
class Budget:
    """What one task has used of its retry budgets so far."""

    failures: int = 0
    memory_kills: int = 0
    lost: int = 0  # requeues after the pool worker running it died under it
    squeezed: int = 0  # requeues after the fleet's memory budget stopped it


#: How often one task is requeued for free after the fleet's budget stopped it: then
#: its end is its own (the budget is too small for it beside the others).
SQUEEZED_REQUEUES = 3


@dataclass(frozen=True)
class Retry:
    task: Task  # the Task to run next (attempt + 1, maybe a larger cap)
    delay: float  # seconds to wait first
    why: str


def backoff_delay(agent, attempt: int, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1-based)."""
    full = min(agent.backoff * 2 ** (attempt - 1), agent.backoff_max)
    return full / 2 + rng.uniform(0, full / 2)


def plan_retry(
    task,
    agent,
    reason: Reason,
    budget: Budget,
    rng: random.Random,
    lost: bool = False,
    squeezed: bool = False,
) -> Retry | None:
    """The retry for a task that ended with ``reason``, or None if this is its end.

    A task whose pool worker or Ray node died under it is requeued once for free:
    the worker's death may come from what earlier tasks left in it, a node's from
    the machine (as a message broker redelivers a task whose worker was lost). One
    that the fleet's memory budget stopped (``squeezed``: the others used the room)
    is requeued for free too, up to SQUEEZED_REQUEUES times; admission starts it
    again once the budget has room.
    """
    if squeezed and budget.squeezed < SQUEEZED_REQUEUES:
        budget.squeezed += 1
        return Retry(
            dataclasses.replace(task, attempt=task.attempt + 1),
            0.0,
            f"{reason} at the fleet's memory budget, below its own cap: requeued "
            f"({budget.squeezed} of {SQUEEZED_REQUEUES})",
        )
    if lost and budget.lost == 0:
        budget.lost += 1
        return Retry(
            dataclasses.replace(task, attempt=task.attempt + 1),
            0.0,
            f"{reason}: its {'node' if reason is Reason.LOST else 'pool worker'} died "
            "under it; requeued (once, not counted against its retries)",
        )
    if reason.ordinary_failure and budget.failures < agent.retries:
        budget.failures += 1
        delay = 0.0 if reason is Reason.EVICTED else backoff_delay(agent, budget.failures, rng)
        return Retry(
            dataclasses.replace(task, attempt=task.attempt + 1),
            delay,
            f"{reason}: retry {budget.failures} of {agent.retries}",
        )
    if (
        reason.memory_kill
        and agent.on_memory_kill != "fail"
        and budget.memory_kills < agent.memory_retries
    ):
        cap = task.memory_limit
        if agent.on_memory_kill == "grow":
            if cap >= agent.max_memory_limit:
                return None
            cap = min(int(cap * agent.grow_factor), agent.max_memory_limit)
        budget.memory_kills += 1
        return Retry(
            dataclasses.replace(task, attempt=task.attempt + 1, memory_limit=cap),
            backoff_delay(agent, budget.memory_kills, rng),
            f"{reason}: memory retry {budget.memory_kills} of "
            f"{agent.memory_retries}" + (" with a larger cap" if cap != task.memory_limit else ""),
        )
    return None


class Backoffs:
    """Retries waiting out their delay, soonest first."""

    def __init__(self) -> None:
        self._heap: list = []  # (due, seq, task): seq keeps equal dues in order
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, task: Task) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), task))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Task]:
        """The tasks whose delay is over at ``now``, soonest first."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def drain(self) -> list[Task]:
        """Every waiting task (they will not run: the fleet is stopping)."""
        tasks = [task for _, _, task in self._heap]
        self._heap.clear()
        return tasks
