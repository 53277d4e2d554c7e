"""The fleet's resilience rules in one place, consulted by the dispatch loop:
circuit breaker, graceful degradation, the pressure rule, and retries.

The pressure rule (GNU parallel's ``--memfree``, Ray's one-at-a-time): when
available memory drops below ``evict_below`` (half of ``min_free_memory`` unless
set), the youngest running agent is stopped and its task goes back to the queue
(it counts against its ``retries``). Only one eviction is in flight at a time:
memory is measured again after the evicted agent is gone, before another goes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from agent_supervise.fleet.breaker import CircuitBreaker
from agent_supervise.fleet.degrade import Degradation, read_psi_some_avg10
from agent_supervise.fleet.retry import Budget, Retry, plan_retry
from agent_supervise.fleet.seams import RunView
from agent_supervise.outcome import Reason


class Policies:
    def __init__(
        self, settings, agents, emit, rng: random.Random | None = None, psi=read_psi_some_avg10
    ) -> None:
        self.agents = agents
        self.breaker = CircuitBreaker(settings.breaker, on_change=lambda **e: emit("breaker", **e))
        self.mode = Degradation(settings.degradation, on_change=lambda **e: emit("mode", **e))
        self.evict_below = settings.eviction_threshold
        self.budgets: dict[str, Budget] = {}
        self.evicting: str | None = None
        self.rng = rng or random.Random()
        self.psi = psi

    def sample(self, now: float, available: int) -> None:
        self.breaker.observe(now, available)
        self.mode.observe(available, self.psi() if self.psi else None)

    def concurrency(self, max_concurrent: int) -> int:
        return self.mode.limit(max_concurrent)

    def blocked(self) -> str | None:
        return self.breaker.may_start()

    def started(self, task) -> None:
        self.breaker.started(task.id)

    def eviction(self, available: int, runs: Mapping[str, RunView]) -> RunView | None:
        """The run to evict now, if the pressure rule calls for one."""
        if not self.evict_below or available >= self.evict_below or not runs:
            return None
        if self.evicting in runs:
            return None  # one at a time: wait for it to be gone, then measure again
        # Youngest: started last (ties: the later start, as runs keeps start order).
        youngest = max(enumerate(runs.values()), key=lambda pair: (pair[1].started, pair[0]))[1]
        self.evicting = youngest.task.id
        return youngest

    def forget(self, task_id: str) -> None:
        """The task has ended for good: drop its retry budget."""
        self.budgets.pop(task_id, None)

    def ended(
        self, now: float, task, reason: Reason, lost: bool = False, squeezed: bool = False
    ) -> Retry | None:
        """Record an ending; return the retry to schedule, if any. An agent the fleet's
        budget stopped (``squeezed``) is no sign of trouble: the breaker skips it."""
        if not squeezed:
            self.breaker.ended(now, task.id, reason)
        if task.id == self.evicting:
            self.evicting = None
        budget = self.budgets.setdefault(task.id, Budget())
        return plan_retry(task, self.agents[task.agent], reason, budget, self.rng, lost, squeezed)
