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
import signal
import threading
import time

from .admission import Admission
from .agents.loader import task_problem
from .agents.spec import FleetSpec, TaskSpec, make_task
from .errors import BadInput
from .memsource import MemorySource
from .outcome import Outcome, Reason
from .rundir import EventLog, RunDir
from .summary import FleetResult, result_entry
from .taskqueue import TaskQueue
from .units import format_size


class Supervisor:
    """Runs a fleet. CLI: ``close()`` then ``run()``. API: ``start()``, ``submit()``,
    ``close()``, ``wait()``."""

    def __init__(self, fleet: FleetSpec, *, engine=None, memory=None, clock=time.monotonic,
                 max_concurrent: int | None = None, log_dir: str | None = None,
                 run_id: str | None = None) -> None:
        self.fleet = fleet
        self.settings = s = fleet.supervisor
        self.max_concurrent = max_concurrent or s.max_concurrent
        self.clock = clock
        self.memory = memory or MemorySource()
        self.admission = Admission(s.min_free_memory)
        self.total_memory = self.memory.total()
        self._check_fits(fleet.tasks)
        self.rundir = RunDir(log_dir or s.log_dir, run_id,
                             where="--log-dir" if log_dir else "supervisor.log_dir")
        self.events = EventLog(f"{self.rundir.path}/events.jsonl", clock)
        self.engine = engine or _local_engine(s, clock, self._on_interrupt)
        self.queue = TaskQueue(s.queue_size, on_put=self.engine.wake)
        self.results: list[dict] = []
        self.rejected: list[dict] = []
        self._counters: collections.Counter = collections.Counter()
        self._file_tasks = iter([(spec, i) for spec in fleet.tasks for i in range(spec.repeat)])
        self._file_done = not fleet.tasks
        self._open = True
        self._feeds = 0
        self._lock = threading.Lock()
        self._waiting: str | None = None
        self.stopping: str | None = None   # interrupted, self_guard, run_timeout
        self.stop_signal: int | None = None
        self._thread: threading.Thread | None = None
        self.result: FleetResult | None = None
        self.error: BaseException | None = None

    # -- producers (any thread) -------------------------------------------------------
    def submit(self, spec: TaskSpec, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``spec`` (``repeat`` times). Blocks while the queue is full; with
        ``block=False`` raises :class:`~agent_supervise.taskqueue.QueueFull`."""
        problem = task_problem({"agent": spec.agent, "vars": dict(spec.vars)},
                               self.fleet.agents)
        if problem:
            raise BadInput(f"{spec.where}: {problem[0]}", hint=problem[1])
        self._check_fits([spec])
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
        """A task line that could not be used: reported and counted, never dropped silently."""
        with self._lock:
            self.rejected.append({"where": where, "error": message})
        self.events.emit("rejected", where=where, error=message)

    def close(self) -> None:
        """No more ``submit()`` calls: the run ends when everything queued has ended."""
        self._open = False
        self.engine.wake()

    def start(self) -> None:
        """Run the loop in a dedicated, long-lived thread (for orchestrators). Signals
        stay the host program's; stop the fleet with ``close()``."""
        self._thread = threading.Thread(target=self._run_in_thread,
                                        name="agent-supervise-loop", daemon=True)
        self._thread.start()

    def _run_in_thread(self) -> None:
        try:
            self.run(catch_signals=False)
        except BaseException as err:  # surfaced by wait()
            self.error = err

    def wait(self, timeout: float | None = None) -> FleetResult | None:
        """The result once the run ended (None if ``timeout`` passed first)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if self.error is not None:
            raise self.error
        return self.result

    # -- the loop ---------------------------------------------------------------------
    def run(self, catch_signals: bool = True) -> FleetResult:
        """Dispatch until every task has ended (CLI: in the main thread, which takes
        SIGINT/SIGTERM/SIGHUP: stop, forward to agents, a second one kills)."""
        s = self.settings
        if catch_signals and hasattr(self.engine, "loop"):
            self.engine.loop.catch_signals()
        self.events.emit("run_started", run_id=self.rundir.run_id, fleet=self.fleet.path,
                         backend=self.engine.backend_name, max_concurrent=self.max_concurrent,
                         queue_size=s.queue_size, min_free_memory=s.min_free_memory,
                         stale_cages=[c.path for c in getattr(self.engine, "stale", [])])
        started = self.clock()
        try:
            while True:
                self._feed_file()
                if self.stopping is None:
                    self._dispatch()
                if self._finished():
                    break
                for run in self.engine.step(s.poll_interval):
                    self._record(run.task, run.outcome)
                self._guard(started)
        finally:
            self.engine.close()
        self.result = FleetResult.build(self, self.clock() - started)
        self.events.emit("run_ended", exit_code=self.result.exit_code,
                         counts=self.result.counts)
        self.events.close()
        return self.result

    def _feed_file(self) -> None:
        while not self._file_done and self.stopping is None and self.queue.free() > 0:
            item = next(self._file_tasks, None)
            if item is None:
                self._file_done = True
                break
            self.queue.put([self._maker(item[0])], block=False)

    def _dispatch(self) -> None:
        while len(self.engine.runs) < self.max_concurrent:
            task = self.queue.peek()
            if task is None:
                return
            why = self.admission.waiting_reason(self.memory.available(),
                                                self.engine.headroom(), task.memory_limit)
            if why != self._waiting:
                self._waiting = why
                if why:
                    self.events.emit("waiting", task=task.id, reason=why)
            if why:
                return
            self.queue.pop()
            started = self.engine.start(task, self.rundir)
            if isinstance(started, Outcome):
                self._record(task, started)
            else:
                out, err = self.rundir.log_paths(task.id)
                self.events.emit("started", task=task.id, agent=task.agent, pid=started.pid,
                                 cage=started.cage.name, backend=started.cage.backend,
                                 limit=task.memory_limit, cwd=task.cwd, stdout=out,
                                 stderr=err, running=len(self.engine.runs))

    def _finished(self) -> bool:
        if self.engine.runs:
            return False
        if self.stopping:
            return True
        return (self._file_done and len(self.queue) == 0 and not self._open
                and self._feeds == 0)

    def _record(self, task, outcome: Outcome) -> None:
        entry = result_entry(task, outcome, self.rundir)
        with self._lock:
            self.results.append(entry)
        self.events.emit("exited", **{k: v for k, v in entry.items() if k != "cmd"})

    # -- guards and stops ---------------------------------------------------------------
    def _guard(self, started: float) -> None:
        if self.stopping:
            return
        rss = self.memory.own_rss()
        if rss > self.settings.memory_limit:
            self._stop("self_guard", f"own memory {format_size(rss)} is above "
                       f"supervisor.memory_limit {format_size(self.settings.memory_limit)}")
            self.engine.stop_all(Reason.STOPPED, signal.SIGTERM, cause_signal=signal.SIGTERM)
        elif self.settings.run_timeout and self.clock() - started >= self.settings.run_timeout:
            self._stop("run_timeout", f"the run reached supervisor.run_timeout "
                       f"({self.settings.run_timeout:g}s)")
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
        never_started = self.queue.drain()
        never_started += [self._new_task(spec) for spec, _ in self._file_tasks]
        self._file_done = True
        for task in never_started:
            self._record(task, Outcome(Reason.CANCELLED, None, task.cmd, "-",
                                       task.memory_limit, agent=task.id, detail=message))

    def _check_fits(self, specs) -> None:
        for spec in specs:
            agent = self.fleet.agents.get(spec.agent)
            cap = spec.memory_limit or (agent.memory_limit if agent else 0)
            if agent and self.admission.never_fits(self.total_memory, cap):
                raise BadInput(
                    f"{spec.where}: agent {spec.agent}'s cap {format_size(cap)} plus "
                    f"min_free_memory {format_size(self.admission.min_free)} exceeds this "
                    f"machine's {format_size(self.total_memory)}: it could never start",
                    hint="lower memory_limit or supervisor.min_free_memory")


def _local_engine(settings, clock, on_interrupt):
    from .engine import LocalEngine
    return LocalEngine(settings, clock=clock, on_interrupt=on_interrupt)
