"""The fleet's memory as the loop weighs it: what admission is asked (caps, or the
agents' expected peaks), the budget's sum under rlimit, the ``throttled`` events,
and the ``budget`` event at the end (supervisor.memory_budget, supervisor.admission,
memory_high: README, "Packing agents").

The :class:`~agent_supervise.fleet.supervisor.Supervisor` inherits this; only the
loop's thread calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_supervise.fleet.admission import Admission
    from agent_supervise.fleet.history import FleetPeaks
    from agent_supervise.fleet.seams import Engine
    from agent_supervise.rundir import EventLog


class Packing:
    # What the Supervisor gives this mixin (it sets them in its __init__).
    admission: Admission
    engine: Engine
    events: EventLog
    peaks: FleetPeaks
    squeezing: dict[str, bool]
    throttled: set[tuple[str, int]]
    budget_sum_peak: int

    def _hold_budget(self) -> int:
        """The sum of the agents' usage (returned), against the budget. With a cgroup
        backend the kernel holds it (a parent cage); with rlimit this is what holds
        it: over the budget, the youngest agent is stopped and requeued for free."""
        runs = self.engine.runs.values()
        in_use = sum(run.usage for run in runs)
        self.budget_sum_peak = max(self.budget_sum_peak, in_use)
        budget = self.admission.budget
        if budget is None or in_use <= budget or self.squeezing:
            return in_use
        victim = max(runs, key=lambda run: run.started)
        self.squeezing[victim.task.id] = True
        self.events.emit("evicting", task=victim.task.id, in_use=in_use, budget=budget)
        self.engine.evict(victim)
        return in_use

    def _note_throttled(self) -> None:
        """One ``throttled`` event per attempt that reached its agent's memory_high."""
        for run in self.engine.runs.values():
            task = run.task
            if task.memory_high is None or (task.id, task.attempt) in self.throttled:
                continue
            if run.throttled:
                self.throttled.add((task.id, task.attempt))
                self.events.emit(
                    "throttled", task=task.id, usage=run.usage, memory_high=task.memory_high
                )

    def _budget_report(self) -> None:
        budget = self.admission.budget
        if budget is None:
            return
        kernel = self.engine.budget_peak()
        self.events.emit(
            "budget",
            limit=budget,
            peak=kernel if kernel is not None else self.budget_sum_peak,
            peak_source="kernel" if kernel is not None else "sampled",
        )

    def _promises(self) -> tuple[int, int]:
        """(what the running agents use now, what they were promised beyond it): by
        caps, or by what their agents are expected to need. Once per dispatch pass,
        and again after each start."""
        runs = self.engine.runs.values()
        in_use = sum(run.usage for run in runs) if self.admission.budget is not None else 0
        if not self.admission.by_use:
            return in_use, self.engine.headroom()
        expect = self.peaks.expected_peak
        growth = sum(
            max(0, expect(run.task.agent, run.task.memory_limit) - run.usage) for run in runs
        )
        return in_use, growth

    def _waits_for_memory(self, task, available: int, promises: tuple[int, int]) -> str | None:
        """Admission's answer for ``task`` (fleet/admission.py)."""
        in_use, headroom = promises
        need = (
            self.peaks.expected_peak(task.agent, task.memory_limit)
            if self.admission.by_use
            else task.memory_limit
        )
        return self.admission.waiting_reason(available, headroom, need, in_use)
