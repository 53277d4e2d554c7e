"""How tasks reach a fleet: ``submit()`` from any thread, feeds such as ``--tasks -``,
and the run's thread for orchestrators (``start()``, ``close()``, ``wait()``).

The :class:`~agent_supervise.fleet.supervisor.Supervisor` inherits this; every method here is
safe to call from a thread other than the loop's.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

from agent_supervise.agents import bounds as B
from agent_supervise.agents.spec import TaskSpec, make_task
from agent_supervise.agents.tasks import task_problem
from agent_supervise.errors import BadInput, CircuitOpen
from agent_supervise.fleet.breaker import BreakerState

if TYPE_CHECKING:
    from agent_supervise.agents.spec import FleetSpec, SupervisorSettings
    from agent_supervise.fleet.policies import Policies
    from agent_supervise.fleet.seams import Engine
    from agent_supervise.fleet.summary import FleetResult
    from agent_supervise.fleet.taskqueue import TaskQueue
    from agent_supervise.rundir import EventLog


class Intake:
    # What the Supervisor gives this mixin (it sets them in its __init__): declared
    # here so that the type checker holds both to the same names and types.
    fleet: FleetSpec
    settings: SupervisorSettings
    events: EventLog
    engine: Engine
    queue: TaskQueue
    policies: Policies
    rejected: list[dict]
    rejected_count: int
    result: FleetResult | None
    error: BaseException | None
    _counters: collections.Counter
    _feeds: int
    _first_dropped: str | None
    _lock: threading.Lock
    _open: bool
    _thread: threading.Thread | None

    if TYPE_CHECKING:

        def run(self, catch_signals: bool = True) -> FleetResult: ...

        def _check_fits(self, specs: list[TaskSpec]) -> None: ...

    def submit(self, spec: TaskSpec, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``spec`` (``repeat`` times). Blocks while the queue is full; with
        ``block=False`` raises :class:`~agent_supervise.fleet.taskqueue.QueueFull`."""
        problem = task_problem(
            {"agent": spec.agent, "vars": dict(spec.vars), "repeat": spec.repeat}, self.fleet.agents
        )
        if problem:
            raise BadInput(f"{spec.where}: {problem[0]}", hint=problem[1])
        self._check_fits([spec])
        if not block and self.policies.breaker.state is BreakerState.OPEN:
            raise CircuitOpen(self.policies.breaker.reason)
        self.queue.put([self._maker(spec)] * spec.repeat, block, timeout)

    def _maker(self, spec: TaskSpec):
        def make():
            task = self._new_task(spec)
            self.events.emit("queued", task=task.id, agent=task.agent, where=task.where)
            return task

        return make

    def _new_task(self, spec: TaskSpec):
        agent = self.fleet.agents[spec.agent]
        with self._lock:
            self._counters[agent.name] += 1
            n = self._counters[agent.name]
        return make_task(agent, spec, n, self.settings.grace)

    def feed_opened(self) -> None:
        with self._lock:
            self._feeds += 1

    def feed_closed(self) -> None:
        with self._lock:
            self._feeds -= 1
        self.engine.wake()

    def reject(self, where: str, message: str) -> None:
        """A task line that could not be used: reported and counted, never dropped silently.

        Each one goes to events.jsonl (and the printer); memory keeps only the first
        KEPT_REJECTS and one entry counting the rest, so a feed of 300,000 bad lines
        costs the supervisor nothing more than a feed of 20.
        """
        message = B.clip(message)
        with self._lock:
            self.rejected_count += 1
            if len(self.rejected) < B.KEPT_REJECTS:
                self.rejected.append({"where": where, "error": message})
            else:
                if len(self.rejected) == B.KEPT_REJECTS:
                    self._first_dropped = where
                    self.rejected.append({})
                more = self.rejected_count - B.KEPT_REJECTS
                self.rejected[-1].update(
                    where=f"{self._first_dropped} to {where}",
                    more=more,
                    error=f"{more:,} more rejected lines, not kept in memory: each is in "
                    "events.jsonl",
                )
        self.events.emit("rejected", where=where, error=message)

    def close(self) -> None:
        """No more ``submit()`` calls: the run ends when everything queued has ended."""
        self._open = False
        self.engine.wake()

    def start(self) -> None:
        """Run the loop in a dedicated, long-lived thread (for orchestrators). Signals
        stay the host program's; stop the fleet with ``close()``."""
        thread = threading.Thread(
            target=self._run_in_thread, name="agent-supervise-loop", daemon=True
        )
        self._thread = thread
        thread.start()

    def _run_in_thread(self) -> None:
        try:
            self.run(catch_signals=False)
        except BaseException as err:  # noqa: BLE001 - surfaced by wait()
            self.error = err

    def wait(self, timeout: float | None = None):
        """The result once the run ended (None if ``timeout`` passed first)."""
        if self._thread is None:
            raise RuntimeError("wait() before start()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if self.error is not None:
            raise self.error
        return self.result
