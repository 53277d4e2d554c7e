"""The Ray engine: the fleet's rules stay on the driver, each agent runs on a node.

It is an :class:`~agent_supervise.fleet.seams.Engine` as the local one is, and its
:class:`RemoteRun` a :class:`~agent_supervise.fleet.seams.RunView`, so
:class:`~agent_supervise.fleet.supervisor.Supervisor` keeps the concurrency cap, the bounded
queue with its backpressure, admission and retries exactly as in local mode. That
is deliberate: Ray's own queue is unbounded, so a task goes to Ray only once the
driver has admitted it.

Each agent is one Ray task (:func:`agent_supervise.ray.node.run_on_node`) with
``memory=`` cap + ``memory_overhead`` for placement and ``max_retries=0`` (retries
are the driver's). The task streams records back; the driver turns them into the
same events, log files and summary entries as local runs. ``started`` is emitted
when the task is handed to Ray (pid unknown yet); ``placed`` when it runs on a node.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING

from agent_supervise.fleet.engine import agent_env
from agent_supervise.fleet.seams import RunView
from agent_supervise.limits.base import StaleCage
from agent_supervise.outcome import Reason
from agent_supervise.ray.control import Control
from agent_supervise.ray.faults import CHECK_S, Faults, NodeProbe, no_node_came_back
from agent_supervise.ray.files import checkpoint_tail
from agent_supervise.ray.node import Job, janitor, run_on_node
from agent_supervise.ray.remoterun import RemoteRun, ray_outcome
from agent_supervise.run.loop import INTERRUPTS, SignalInbox
from agent_supervise.run.states import RunState

if TYPE_CHECKING:
    from agent_supervise.ray.cluster import ClusterMemory


class RayEngine(Faults):
    backend_name = "ray"
    stale: tuple[StaleCage, ...] = ()  # each node cleans its own cages (ray.node.janitor)

    def __init__(
        self,
        settings,
        cluster,
        memory: ClusterMemory,
        *,
        on_interrupt,
        emit,
        on_lost=None,
        clock=time.monotonic,
    ) -> None:
        """``memory`` is told every request it must count as reserved; the driver's
        signals go to ``on_interrupt``; ``placed`` events to ``emit``; a lost head
        to ``on_lost`` (its message) before the running tasks end ``lost``."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.settings, self.cluster, self.clock = ray, settings, cluster, clock
        self.memory, self.on_interrupt, self.emit = memory, on_interrupt, emit
        self.runs: dict[str, RemoteRun] = {}
        self._inbox: SignalInbox | None = None  # see catch_signals()
        self._wake = threading.Event()
        self._affinity = NodeAffinitySchedulingStrategy
        here = ray.get_runtime_context().get_node_id()
        self.control = (
            ray.remote(Control)
            .options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
            )
            .remote()
        )
        self._task = ray.remote(run_on_node)
        self._janitors: list = []
        self.on_lost = on_lost or (lambda message: None)
        self.head = cluster.head
        self.probe = NodeProbe(cluster, clock)
        self.head_lost = False
        self.orders_gone = False
        self._next_look = 0.0

    # -- starting ---------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def catch_signals(self) -> bool:
        """Supervisor.run() asks for the driver's signals; step() drains them."""
        if self._inbox is None and threading.current_thread() is threading.main_thread():
            self._inbox = SignalInbox(INTERRUPTS)
        return self._inbox is not None

    def pool_state(self, task) -> None:
        return None  # RaySupervisor refuses pooled agents up front

    def retire_pools(self, why: str) -> bool:
        return False  # no pools (see pool_state)

    def start(self, task, rundir):
        r, s = self.settings.ray, self.settings
        request = task.memory_limit + r.memory_overhead
        why = self.cluster.unfit(task.memory_limit)
        if why:  # a grown cap, or the nodes it fit on left: never hand it to Ray
            if self.cluster.fit_before(task.memory_limit):
                why = no_node_came_back(why, r.node_wait)
            return ray_outcome(task, Reason.SETUP_FAILED, why)
        env = {**task.env, **agent_env(task, rundir)}
        job = Job(
            key=f"{rundir.run_id}/{task.id}/{task.attempt}",
            task_id=task.id,
            cmd=tuple(task.cmd),
            memory=task.memory_limit,
            timeout=task.timeout,
            grace=task.grace,
            poll=s.poll_interval,
            cwd=task.cwd,
            env=env,
            user=task.user,
            group=task.group,
            backend=s.backend,
            rlimit=s.rlimit,
            cgroup_root=s.cgroup_root,
            allow_rlimit=r.allow_rlimit,
            log_tail=r.log_tail,
            checkpoint_seed=checkpoint_tail(rundir.checkpoint_path(task.id)),
            runtime_hints=task.runtime_hints,
        )
        gen = self._task.options(
            memory=request,
            num_cpus=r.cpus,
            resources=dict(r.resources),
            num_returns="streaming",
            max_retries=0,
            scheduling_strategy="SPREAD",
        ).remote(job, self.control)
        run = RemoteRun(task, gen, job.key, rundir, self.clock())
        self.runs[task.id] = run
        self.memory.reserve(task.id, request)
        return run

    def budget_peak(self) -> int | None:
        return None  # no fleet budget under Ray (refused up front)

    def headroom(self) -> int:
        return 0  # whole requests are subtracted from the cluster's budget already

    # -- driving ----------------------------------------------------------------------
    def step(self, max_wait: float | None) -> list[RunView]:
        """Wait up to ``max_wait`` for records from the nodes; return the runs that
        ended. Ray's wait cannot be woken by another thread, so waits stay short."""
        self._signals()
        wait = 0.1 if max_wait is None else max_wait
        ended: list[RunView] = self._look()
        if ended or self.head_lost:
            return self._ended(ended)
        wait = min(wait, CHECK_S)  # the cluster is looked at every CHECK_S
        gens = {id(run.gen): run for run in self.runs.values()}
        if not gens:
            self._wake.wait(wait)
            self._wake.clear()
            self._signals()
            return []
        want = 1  # first: until any record is ready; then: whatever else is ready now
        for _ in range(1000):
            pending = [r.gen for r in gens.values()]
            ready, _ = self.ray.wait(
                pending,
                num_returns=len(pending) if want > 1 else 1,
                timeout=wait if want == 1 else 0,
            )
            if not ready:
                break
            want = 2
            for gen in ready:
                run = gens[id(gen)]
                if self._consume(run):
                    ended.append(gens.pop(id(gen)))
            if not gens:
                break
        if self.orders_gone:  # before these ends are taken as the fleet's last
            ended += self._look()
        self._signals()
        return self._ended(ended)

    def _ended(self, ended: list[RunView]) -> list[RunView]:
        for done in ended:
            self.runs.pop(done.task.id, None)
            self.memory.release(done.task.id)
        return ended

    def _signals(self) -> None:
        for signum in self._inbox.drain() if self._inbox else []:
            self.on_interrupt(signum)

    def _consume(self, run: RemoteRun) -> bool:
        """Handle the run's next record; True when the run has ended."""
        run.heard = self.clock()
        try:
            record = self.ray.get(next(run.gen), timeout=60)
        except StopIteration:
            return self._failed(run, "its Ray task ended without a result")
        except self.ray.exceptions.RayError as err:
            return self._failed(run, err)
        if record["kind"] == "started":
            run.placed(record)
            self.emit(
                "placed",
                task=run.task.id,
                node=run.node,
                where=run.where,
                pid=run.pid,
                cage=record["cage"],
                backend=record["backend"],
            )
        elif record["kind"] == "sample":
            run.sampled(record)
            if record["checkpoint"]:
                run.rundir.append(run.rundir.checkpoint_path(run.task.id), record["checkpoint"])
        else:
            run.finished(record)
            if record.get("orders_lost"):
                self.orders_gone = True  # the head too? _look() asks at once
            return True
        return False

    def _failed(self, run: RemoteRun, err) -> bool:
        """The run's Ray task failed: it has ended."""
        name = type(err).__name__ if not isinstance(err, str) else ""
        if type(err) is self.ray.exceptions.RayTaskError and err.cause is not None:
            name = type(err.cause).__name__  # what the node-side code raised
        text = (str(err).strip().splitlines() or [name])[-1][:300]
        alive = True
        if run.node and run.cause is None:  # did its node die, or only its worker?
            alive = self.probe.gone(run.node) is None
        node = run.failed(name, text, node_alive=alive)
        if run.lost and run.node:  # its node died: place nothing by its budget any more
            self.cluster.forget(run.node)
        if node:
            self._clean(node)
        return True

    def _clean(self, node: str) -> None:
        """Kill and remove on ``node`` what a dead worker's agent left in its cage."""
        s = self.settings
        remote = self.ray.remote(janitor).options(
            num_cpus=0, max_retries=0, scheduling_strategy=self._affinity(node, soft=False)
        )
        self._janitors.append(remote.remote(s.backend, s.rlimit, s.cgroup_root))

    # -- stopping ---------------------------------------------------------------------
    def _order(self, run: RemoteRun, cause: Reason, sig: int, cause_signal=None) -> None:
        run.cause = run.cause or cause
        self.control.order.remote(run.key, (cause.value, int(sig), cause_signal))
        if run.state is RunState.PENDING:  # still in Ray's queue: take it out
            self.ray.cancel(run.gen)

    def processes(self) -> list[RemoteRun]:
        """What is still ours to stop; with the head lost, nothing can be (the
        emergency stop would wait on Ray for nothing)."""
        return [] if self.head_lost else list(self.runs.values())

    def freeze(self, run) -> bool:
        return False  # the nodes' memory is theirs: the ladder evicts instead

    def thaw(self, run) -> float:
        return 0.0

    def evict(self, run) -> None:
        self._order(run, Reason.EVICTED, signal.SIGTERM)

    def stop_all(self, cause: Reason, sig: int = signal.SIGTERM, cause_signal=None) -> None:
        for run in list(self.runs.values()):
            self._order(run, cause, sig, cause_signal)

    def interrupt_all(self, signum: int) -> None:
        """Forward the driver's signal to every agent; a second one kills at once."""
        for run in list(self.runs.values()):
            self._order(run, Reason.INTERRUPTED, signum, signum)

    def close(self) -> None:
        """Nothing may outlive the run: force-cancel what is left (the worker dies, the
        agent with it), clean those nodes, then let the control actor go. With the
        head lost nothing is asked of Ray: its calls would block."""
        if self.head_lost:
            self.runs.clear()
            if self._inbox:
                self._inbox.close()
                self._inbox = None
            self.cluster.close(head_lost=True)
            return
        for run in list(self.runs.values()):
            self.ray.cancel(run.gen, force=True)
            if run.node:
                self._clean(run.node)
            self.memory.release(run.task.id)
        self.runs.clear()
        if self._janitors:
            self.ray.wait(self._janitors, num_returns=len(self._janitors), timeout=15)
        self.ray.kill(self.control)
        if self._inbox:
            self._inbox.close()
            self._inbox = None
        self.cluster.close()
