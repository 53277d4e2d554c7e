"""The seams between the fleet loop, its engines and their runs, declared once.

:class:`~agent_supervise.fleet.supervisor.Supervisor` keeps the fleet's rules (queue, cap,
admission, retries, guards) and leaves running tasks to an :class:`Engine`: the
local one (:mod:`agent_supervise.fleet.engine`, with warm pools) or Ray's
(:mod:`agent_supervise.ray.engine`). What the loop and the observers (snapshot,
dashboard, memory samples) read of a task while it runs is a :class:`RunView`:
a local :class:`~agent_supervise.run.lifecycle.AgentRun`, a
:class:`~agent_supervise.fleet.pool.PooledRun` on a pool worker, or a
:class:`~agent_supervise.ray.remoterun.RemoteRun` on a Ray node. Every implementation
has every member, with its own meaning: nothing is probed for, so a third engine
or a changed run type fails the type check and tests/test_seams.py, not a fleet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agent_supervise.agents.spec import Task
    from agent_supervise.limits.base import StaleCage
    from agent_supervise.outcome import Outcome, Reason
    from agent_supervise.rundir import RunDir


@runtime_checkable
class RunView(Protocol):
    """One task on an engine, from ``start`` until ``step`` returns it ended."""

    #: The fleet's task (its id, agent, cap, attempt).
    task: Task
    #: Set once the run has ended; the engine's ``step`` returns it then.
    outcome: Outcome | None
    #: The engine's clock when the task was started (eviction takes the youngest).
    started: float

    @property
    def pid(self) -> int | None:
        """The agent's root pid; None while a Ray task waits for a node."""

    @property
    def node(self) -> str | None:
        """The Ray node it runs on: its pid is not this machine's. None locally."""

    @property
    def lost(self) -> bool:
        """Ended through no fault of its own (its pool worker died under it): the
        fleet requeues it without counting the attempt against the task."""

    @property
    def state(self) -> str:
        """What the dashboard shows: running, stopping, killing, draining, done;
        pending (Ray, not placed yet); ``on <worker>`` for a pooled task."""

    @property
    def usage(self) -> int:
        """Bytes charged to the agent at the last sample."""

    @property
    def peak(self) -> int:
        """The highest usage sampled so far."""

    @property
    def frozen(self) -> bool:
        """Frozen by the pressure ladder (fleet/ladder.py): the dashboard's ``frozen``."""

    @property
    def throttled(self) -> bool:
        """Whether it has reached its agent's ``memory_high`` (the soft limit)."""

    @property
    def cage_name(self) -> str:
        """The cage's name, as the ``started`` event gives it."""

    @property
    def backend(self) -> str:
        """The mechanism capping it (cgroup2, rlimit-data, ray, ...)."""


@runtime_checkable
class Engine(Protocol):
    """Runs the tasks the fleet loop admits. One thread (the loop's) calls every
    method but :meth:`wake`; no method blocks longer than ``step``'s wait."""

    #: What the dashboard and events call its backend.
    backend_name: str

    @property
    def stale(self) -> Sequence[StaleCage]:
        """Cages left by supervisors that died, cleaned when the engine was made."""

    @property
    def runs(self) -> Mapping[str, RunView]:
        """Task id -> its run, for every task started and not yet returned ended."""

    def start(self, task: Task, rundir: RunDir) -> RunView | Outcome:
        """Start ``task`` (in ``runs`` from now on); an Outcome: it could not start."""

    def step(self, max_wait: float | None) -> list[RunView]:
        """Drive the runs for up to ``max_wait`` seconds; return those that ended."""

    def headroom(self) -> int:
        """Memory promised to running agents and not used by them yet (admission)."""

    def budget_peak(self) -> int | None:
        """The kernel's peak of the fleet's budget cage (``memory_budget``); None
        without one (no budget, or rlimit: the loop samples the sum itself)."""

    def pool_state(self, task: Task) -> str | None:
        """For a pooled task: idle, spawn or busy; None for any other."""

    def freeze(self, run: RunView) -> bool:
        """Freeze this run's processes, memory kept (the pressure ladder); False
        where it cannot be (a pooled or remote task, one already ending)."""

    def thaw(self, run: RunView) -> float:
        """Let a frozen run go on; the seconds it was frozen (0.0: it was not)."""

    def evict(self, run: RunView) -> None:
        """Stop this run to free memory (SIGTERM, grace, SIGKILL), as ``evicted``."""

    def stop_all(self, cause: Reason, sig: int = ..., cause_signal: int | None = None) -> None:
        """Stop every process with ``sig`` (SIGKILL after the grace), as ``cause``."""

    def interrupt_all(self, signum: int) -> None:
        """Forward the supervisor's signal to every agent; a second one kills."""

    def processes(self) -> Sequence[object]:
        """Every agent process still alive (pool workers too): empty when done."""

    def retire_pools(self, why: str) -> bool:
        """Let idle pool workers go; True while any worker is left."""

    def catch_signals(self) -> bool:
        """Take SIGINT/SIGTERM/SIGHUP (main thread only); True if taken."""

    def wake(self) -> None:
        """Make a waiting ``step`` return soon; safe from any thread."""

    def close(self) -> None:
        """Nothing of the engine's may outlive this (agents, actors, fds)."""
