"""The fleet supervisor: a bounded queue, a concurrency cap, memory-aware admission,
self-guard, and a summary — dispatching tasks to an engine that runs them caged.

One loop thread does all dispatching and spawning (``PR_SET_PDEATHSIG`` fires when
the *thread* that forked an agent exits, so spawns come from the long-lived loop).
Other threads only put tasks in the queue: :meth:`Supervisor.submit` from an
orchestrator, the ``--tasks -`` reader. Its clock, memory source and engine are
injected: the rules are unit-tested with a scripted engine, and again for real.
"""

from __future__ import annotations

import collections
import os
import threading
import time

from agent_supervise.agents.spec import FleetSpec
from agent_supervise.checkpoint import CheckpointWatch
from agent_supervise.errors import BadInput
from agent_supervise.fleet.admission import Admission
from agent_supervise.fleet.endings import Endings
from agent_supervise.fleet.history import FleetPeaks
from agent_supervise.fleet.intake import Intake
from agent_supervise.fleet.ladder import Ladder
from agent_supervise.fleet.packing import Packing
from agent_supervise.fleet.policies import Policies
from agent_supervise.fleet.poolkeeper import PoolState
from agent_supervise.fleet.retry import Backoffs
from agent_supervise.fleet.seams import Engine
from agent_supervise.fleet.stops import Stops
from agent_supervise.fleet.summary import FleetEnd, FleetResult, ResultLog
from agent_supervise.fleet.taskqueue import TaskQueue
from agent_supervise.memsource import MemorySource
from agent_supervise.outcome import Outcome
from agent_supervise.rundir import EventLog, RunDir
from agent_supervise.stdio import forget_stalls


class Supervisor(Intake, Endings, Stops, Packing):
    """Runs a fleet. CLI: ``close()`` then ``run()``. API: ``start()``, ``submit()``,
    ``close()``, ``wait()``."""

    def __init__(
        self,
        fleet: FleetSpec,
        *,
        engine: Engine | None = None,
        memory=None,
        clock=time.monotonic,
        max_concurrent: int | None = None,
        log_dir: str | None = None,
        run_id: str | None = None,
        rng=None,
        psi="auto",
    ) -> None:
        self.fleet = fleet
        self.settings = s = fleet.supervisor
        self.max_concurrent = max_concurrent or s.max_concurrent
        self.clock = clock
        self.memory = memory or MemorySource()
        self.admission = Admission(s.min_free_memory, s.memory_budget, s.admission == "usage")
        self.total_memory = self.memory.total()
        self._check_fits(fleet.tasks)
        self.rundir = RunDir(
            log_dir or s.log_dir, run_id, where="--log-dir" if log_dir else "supervisor.log_dir"
        )
        self.events = EventLog(f"{self.rundir.path}/events.jsonl", clock, self.rundir.health)
        self.peaks = FleetPeaks(os.path.dirname(self.rundir.path))  # peaks.json beside runs
        self.squeezing: dict[str, bool] = {}
        self.throttled: set[tuple[str, int]] = set()  # (task, attempt) said throttled
        self.budget_sum_peak = 0  # the largest sampled sum of the agents' usage
        self._check_users(fleet)
        self.engine: Engine = engine or self._new_engine()
        self.queue = TaskQueue(s.queue_size, on_put=self.engine.wake)
        extra = {} if psi == "auto" else {"psi": psi}
        self.policies = Policies(s, fleet.agents, self.events.emit, rng, **extra)
        self.ladder = Ladder(s.freeze_threshold, s.memory_budget, self.events.emit)
        self.backoffs = Backoffs()  # retries waiting out their delay
        self.checkpoints = CheckpointWatch(self.rundir.checkpoint_path)
        self._checkpoint_due = 0.0
        self.last_checkpoint: dict[str, str] = {}
        self.recent: collections.deque = collections.deque(maxlen=20)  # (ended at, entry)
        #: Called every loop iteration as ticker(supervisor), and once more at the end
        #: with final=True: the dashboard, RESOURCES lines, state.json, memory samples.
        self.tickers: list = []
        self.started_at = clock()
        #: Every task's entry goes to results.jsonl as it ends; in memory only counts
        #: and the last few stay, so a long run does not grow the supervisor.
        self.results = ResultLog(f"{self.rundir.path}/results.jsonl", self.rundir.health)
        self.rejected: list[dict] = []
        self.rejected_count = 0  # all of them (rejected keeps the first few)
        self._counters: collections.Counter = collections.Counter()
        self._file_tasks = iter([(spec, i) for spec in fleet.tasks for i in range(spec.repeat)])
        self._file_done = not fleet.tasks
        self._open = True
        self._feeds = 0
        self._lock = threading.Lock()
        self._waiting: str | None = None
        self.stopping: str | None = None  # interrupted, self_guard, run_timeout
        self.stop_message: str | None = None
        self.stop_signal: int | None = None
        self._thread: threading.Thread | None = None
        self.result: FleetResult | None = None
        self.error: BaseException | None = None

    # -- the loop ---------------------------------------------------------------------
    def run(self, catch_signals: bool = True) -> FleetResult:
        """Dispatch until every task has ended (CLI: in the main thread, which takes
        SIGINT/SIGTERM/SIGHUP: stop, forward to agents, a second one kills)."""
        s = self.settings
        if catch_signals:
            self.engine.catch_signals()
        self.events.emit(
            "run_started",
            run_id=self.rundir.run_id,
            fleet=self.fleet.path,
            backend=self.engine.backend_name,
            max_concurrent=self.max_concurrent,
            queue_size=s.queue_size,
            min_free_memory=s.min_free_memory,
            stale_cages=[
                f"{c.path} (supervisor pid {c.owner_pid}, killed {c.killed})"
                for c in self.engine.stale
            ],
        )
        started = self.started_at = self.clock()
        try:
            while True:
                self._feed_file()
                if self.stopping is None:
                    self._release_due_retries()
                    self._dispatch()
                if self._finished():
                    break
                for run in self.engine.step(self._next_wait()):
                    assert run.outcome is not None  # step() returns the runs that ended
                    self._ended(run.task, run.outcome, run.lost)
                self._watch_checkpoints()
                self._guard(started)
                self.rundir.health.retry(self.events.emit)  # a full folder (spool.py)
                self._tick()
            self._retire_pools()
        except BaseException:
            self._emergency_stop()
            raise
        finally:
            self._budget_report()
            self.engine.close()
            self.memory.close()
        forget_stalls()  # the agents are gone: the last lines get full patience
        self.result = FleetResult.build(self._end(self.clock() - started))
        self.result.written = self.rundir.write_summary(self.result.to_json())
        if self.admission.by_use:  # the history its next run will expect from
            self.peaks.save()
        self.rundir.health.retry(self.events.emit)
        self.events.emit("run_ended", exit_code=self.result.exit_code, counts=self.result.counts)
        self._tick(final=True)
        self.result.settle(self.rundir, self.results)  # a full folder: wait, or stderr
        self.events.close()
        return self.result

    def _end(self, duration: float) -> FleetEnd:
        """How the run ended, as plain values for its FleetResult. Counts are kept in
        memory for every task, even one whose entry the full folder made drop."""
        health = self.rundir.health
        health.retry()  # what is held first: results.jsonl is read next
        return FleetEnd(
            self.rundir.run_id,
            self.rundir.path,
            duration,
            self.stopping,
            self.stop_message,
            self.stop_signal,
            list(self.rejected),
            self.results.read(),
            dict(self.results.counts),
            health.error is not None,
            health.report(),
        )

    def _tick(self, final: bool = False) -> None:
        """Run the reporting tickers. One that cannot write any more (its terminal
        hung up, its pipe closed) is dropped: reporting must never stop a fleet."""
        for ticker in list(self.tickers):
            try:
                ticker(self, final=True) if final else ticker(self)
            except OSError:
                self.tickers.remove(ticker)

    def _retire_pools(self) -> None:
        """Every task has ended: let the pool workers go (stdin closed, then killed)."""
        while self.engine.retire_pools("the run is over"):
            self.engine.step(self.settings.poll_interval)

    def _feed_file(self) -> None:
        while not self._file_done and self.stopping is None and self.queue.free() > 0:
            item = next(self._file_tasks, None)
            if item is None:
                self._file_done = True
                break
            self.queue.put([self._maker(item[0])], block=False)

    def _dispatch(self) -> None:
        now, available = self.clock(), self.memory.available()
        self.policies.sample(now, available)
        victim = self.policies.eviction(available, self.engine.runs)
        if victim is not None:
            self.events.emit(
                "evicting",
                task=victim.task.id,
                available=available,
                threshold=self.policies.evict_below,
            )
            self.engine.evict(victim)
        in_use = self._hold_budget() if self.admission.budget is not None else 0
        if victim is None and not self.squeezing and self.policies.evicting not in self.engine.runs:
            self.ladder.step(now, available, in_use, self.engine)  # one move at a time
        self._note_throttled()
        promises = None
        for task in self.queue.snapshot():
            if len(self.engine.runs) >= self.policies.concurrency(self.max_concurrent):
                return
            pool = self.engine.pool_state(task)
            if pool is PoolState.BUSY:
                continue  # its pool's workers are all busy: let other agents' tasks by
            why = self.policies.blocked() or self.ladder.waiting()
            if why is None and pool is not PoolState.IDLE:  # a new process: does it fit?
                promises = promises or self._promises()
                why = self._waits_for_memory(task, available, promises)
            if why != self._waiting:
                self._waiting = why
                if why:
                    self.events.emit("waiting", task=task.id, reason=why)
            if why:
                return
            self.queue.remove(task)
            self._start(task)
            available, promises = self.memory.available(), None

    def _start(self, task) -> None:
        started = self.engine.start(task, self.rundir)
        if isinstance(started, Outcome):
            self._ended(task, started)
            return
        self.policies.started(task)
        out: str | None
        err: str | None
        out, err = self.rundir.log_paths(task.id, task.attempt)
        if self.rundir.logs_note(task.id, task.attempt):
            out = err = None  # the folder was full: its output goes to /dev/null
        self.events.emit(
            "started",
            task=task.id,
            agent=task.agent,
            pid=started.pid,
            attempt=task.attempt,
            cage=started.cage_name,
            backend=started.backend,
            limit=task.memory_limit,
            cwd=task.cwd,
            stdout=out,
            stderr=err,
            running=len(self.engine.runs),
        )

    def _finished(self) -> bool:
        if self.engine.runs or (self.backoffs and not self.stopping):
            return False
        if self.stopping:
            return True
        return self._file_done and len(self.queue) == 0 and not self._open and self._feeds == 0

    # -- checks before anything starts ------------------------------------------------
    @staticmethod
    def _check_users(fleet) -> None:
        """Switching users needs root: say so now, before anything starts."""
        from agent_supervise.creds import resolve

        for agent in fleet.agents.values():
            if agent.user is not None or agent.group is not None:
                try:
                    resolve(agent.user, agent.group)
                except BadInput as err:
                    raise BadInput(f"agents.{agent.name}: {err.message}", hint=err.hint) from None

    def _check_fits(self, specs) -> None:
        self.admission.check_fits(specs, self.fleet.agents, self.total_memory)

    def _new_engine(self):
        """The engine when none is given, made once the events exist: it reports to
        them and hands the driver's signals to :meth:`_on_interrupt` (RaySupervisor:
        the Ray engine)."""
        from agent_supervise.fleet.engine import LocalEngine

        return LocalEngine(
            self.settings, clock=self.clock, on_interrupt=self._on_interrupt, emit=self.events.emit
        )
