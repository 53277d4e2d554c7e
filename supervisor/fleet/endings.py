"""How tasks end: a retry that waits out its delay, or the task's entry in
``results.jsonl`` and its ``exited`` event; and the checkpoints a running task
writes on the way (one ``stat`` per agent, twice a second, and once more at its end).

The :class:`~agent_supervise.fleet.supervisor.Supervisor` inherits this; only the
loop's thread calls it.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

from agent_supervise.fleet.summary import result_entry
from agent_supervise.outcome import Reason

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent_supervise.agents.spec import SupervisorSettings
    from agent_supervise.checkpoint import CheckpointWatch
    from agent_supervise.fleet.history import FleetPeaks
    from agent_supervise.fleet.policies import Policies
    from agent_supervise.fleet.retry import Backoffs
    from agent_supervise.fleet.seams import Engine
    from agent_supervise.fleet.summary import ResultLog
    from agent_supervise.fleet.taskqueue import TaskQueue
    from agent_supervise.outcome import Outcome
    from agent_supervise.rundir import EventLog, RunDir

#: An OOM kill this far below the agent's own cap was the budget's, not its cap's.
BUDGET_SLACK = 1 << 20

#: How often running agents' checkpoint files are looked at.
CHECKPOINT_EVERY_S = 0.5


class Endings:
    # What the Supervisor gives this mixin (it sets them in its __init__): declared
    # here so that the type checker holds both to the same names and types.
    settings: SupervisorSettings
    clock: Callable[[], float]
    rundir: RunDir
    events: EventLog
    engine: Engine
    queue: TaskQueue
    policies: Policies
    backoffs: Backoffs
    peaks: FleetPeaks
    squeezing: dict[str, bool]  # task ids the loop evicted for the budget's sum
    checkpoints: CheckpointWatch
    last_checkpoint: dict[str, str]
    results: ResultLog
    recent: collections.deque
    stopping: str | None
    _checkpoint_due: float
    _lock: threading.Lock

    @property
    def retrying(self) -> int:
        """Tasks waiting out a retry's backoff."""
        return len(self.backoffs)

    def _release_due_retries(self) -> None:
        for task in self.backoffs.pop_due(self.clock()):
            self.queue.push_front(task)

    def _next_wait(self) -> float:
        wait = self.settings.poll_interval
        due = self.backoffs.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - self.clock()))
        return wait

    def _watch_checkpoints(self) -> None:
        """A stat per running agent, twice a second (and once more when it ends)."""
        now = self.clock()
        if now < self._checkpoint_due:
            return
        self._checkpoint_due = now + CHECKPOINT_EVERY_S
        for task_id in list(self.engine.runs):
            self._checkpoint_seen(task_id)

    def _checkpoint_seen(self, task_id: str) -> None:
        line = self.checkpoints.new_line(task_id)
        if line is not None:
            self.last_checkpoint[task_id] = line
            self.events.emit("checkpoint", task=task_id, checkpoint=line)

    def _ended(self, task, outcome: Outcome, lost: bool = False) -> None:
        self._checkpoint_seen(task.id)  # one written just before the end
        squeezed = self._squeezed(task, outcome)
        if squeezed:  # it got this far at least: expect no less of its next attempt
            self.peaks.reached(task.agent, outcome.peak_bytes)
        elif not lost:
            self.peaks.observed(task.agent, outcome, task.memory_limit)
        retry = None
        if self.stopping is None:
            retry = self.policies.ended(self.clock(), task, outcome.reason, lost, squeezed)
        if retry is None:
            self._record(task, outcome)
            return
        self.events.emit(
            "retried",
            task=task.id,
            reason=outcome.reason.value,
            exit_code=outcome.exit_code,
            peak_bytes=outcome.peak_bytes,
            limit_bytes=task.memory_limit,  # the ended attempt's cap (limit: the next's)
            attempt=retry.task.attempt,
            delay=round(retry.delay, 3),
            limit=retry.task.memory_limit,
            why=retry.why,
        )
        self.backoffs.push(self.clock() + retry.delay, retry.task)

    def _squeezed(self, task, outcome: Outcome) -> bool:
        """Stopped by the fleet's budget, not by its own cap: the loop evicted it for
        the sum (rlimit), or the kernel OOM-killed it in the budget's parent cage
        while its own peak stayed below its cap (by more than a page-cache's slack)."""
        if self.settings.memory_budget is None:
            return False
        if self.squeezing.pop(task.id, False):
            return True
        return (
            outcome.reason is Reason.OOM_KILLED
            and outcome.peak_bytes is not None
            and outcome.peak_bytes < task.memory_limit - BUDGET_SLACK
        )

    def _record(self, task, outcome: Outcome) -> None:
        entry = result_entry(task, outcome, self.rundir)
        with self._lock:
            self.results.append(entry)
            self.recent.append((self.clock(), entry))
        self.last_checkpoint.pop(task.id, None)
        self.checkpoints.forget(task.id)
        self.policies.forget(task.id)
        self.events.emit("exited", **{k: v for k, v in entry.items() if k != "cmd"})
