"""How a fleet stops early: the self-guard, ``run_timeout``, the driver's signals,
and the emergency stop when the loop itself fails.

A stop ends dispatching at once: every task not started yet (queued, waiting out
a retry's delay, or still in the fleet file) ends ``cancelled`` with the stop's
message, while the running agents are stopped by the engine (SIGTERM, the grace,
SIGKILL). The :class:`~agent_supervise.fleet.supervisor.Supervisor` inherits this.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from agent_supervise.outcome import Outcome, Reason
from agent_supervise.units import format_size

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from agent_supervise.agents.spec import SupervisorSettings, Task, TaskSpec
    from agent_supervise.fleet.retry import Backoffs
    from agent_supervise.fleet.seams import Engine
    from agent_supervise.fleet.taskqueue import TaskQueue
    from agent_supervise.memsource import MemorySource
    from agent_supervise.rundir import EventLog


class Stops:
    # What the Supervisor gives this mixin (it sets them in its __init__): declared
    # here so that the type checker holds both to the same names and types.
    settings: SupervisorSettings
    clock: Callable[[], float]
    memory: MemorySource
    events: EventLog
    engine: Engine
    queue: TaskQueue
    backoffs: Backoffs
    stopping: str | None
    stop_message: str | None
    stop_signal: int | None
    _file_tasks: Iterator[tuple[TaskSpec, int]]
    _file_done: bool

    if TYPE_CHECKING:

        def _new_task(self, spec: TaskSpec) -> Task: ...

        def _record(self, task: Task, outcome: Outcome) -> None: ...

    def _guard(self, started: float) -> None:
        if self.stopping:
            return
        rss = self.memory.own_rss()
        if rss > self.settings.memory_limit:
            self._stop(
                "self_guard",
                f"own memory {format_size(rss)} is above "
                f"supervisor.memory_limit {format_size(self.settings.memory_limit)}",
            )
            self.engine.stop_all(Reason.STOPPED, signal.SIGTERM, cause_signal=signal.SIGTERM)
        elif self.settings.run_timeout and self.clock() - started >= self.settings.run_timeout:
            self._stop(
                "run_timeout",
                f"the run reached supervisor.run_timeout ({self.settings.run_timeout:g}s)",
            )
            self.engine.stop_all(Reason.TIMEOUT)

    def _on_interrupt(self, signum: int) -> None:
        if self.stopping is None:
            self.stop_signal = signum
            self._stop("interrupted", f"received {signal.Signals(signum).name}")
        self.engine.interrupt_all(signum)  # a second signal kills at once

    def _stop(self, why: str, message: str) -> None:
        """Stop dispatching; every task not started yet ends ``cancelled``."""
        self.stopping = why
        self.stop_message = message
        self.events.emit("stopping", why=why, message=message)
        never_started = self.queue.drain() + self.backoffs.drain()
        never_started += [self._new_task(spec) for spec, _ in self._file_tasks]
        self._file_done = True
        for task in never_started:
            self._record(
                task,
                Outcome.never_started(
                    Reason.CANCELLED,
                    cmd=task.cmd,
                    backend="-",
                    limit=task.memory_limit,
                    agent=task.id,
                    detail=message,
                ),
            )

    def _emergency_stop(self) -> None:
        """The loop itself failed: no agent may outlive it. SIGKILL all, reap them."""
        deadline = self.clock() + 10
        try:
            self.engine.stop_all(Reason.STOPPED, signal.SIGKILL)
            while self.engine.processes() and self.clock() < deadline:
                self.engine.step(0.05)
        except Exception:  # noqa: BLE001 - best effort; the first error is re-raised
            pass
