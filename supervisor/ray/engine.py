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

from agent_supervise.fleet.engine import agent_env
from agent_supervise.fleet.seams import RunView
from agent_supervise.limits.base import StaleCage
from agent_supervise.outcome import Outcome, Reason, exit_code_for
from agent_supervise.ray.control import Control
from agent_supervise.ray.files import checkpoint_tail
from agent_supervise.ray.node import Job, janitor, run_on_node
from agent_supervise.run.lifecycle import RunState
from agent_supervise.run.loop import INTERRUPTS, SignalInbox
from agent_supervise.units import format_size

#: Ray errors meaning the worker process (and with it the agent) died.
WORKER_DIED = (
    "WorkerCrashedError",
    "NodeDiedError",
    "OutOfMemoryError",
    "LocalRayletDiedError",
    "TaskCancelledError",
    "OwnerDiedError",
)


class RemoteRun:
    """One task handed to Ray: pending until a node reports it started; its usage
    and peak are the node's samples."""

    #: It ends by its own doing or its worker's death, which the fleet retries as
    #: any failure: never lost.
    lost = False

    def __init__(self, task, gen, key: str, request: int, rundir, now: float) -> None:
        self.task, self.gen, self.key, self.request = task, gen, key, request
        self.rundir = rundir
        self.started = now
        self.pid: int | None = None
        self.cage_name, self.backend = f"ray:{task.id}", "ray"
        self.node: str | None = None
        self.where = "its node"
        self.state = RunState.PENDING
        self.usage = self.peak = 0
        self.outcome: Outcome | None = None
        self.cause: Reason | None = None

    def placed(self, record: dict) -> None:
        """The node started the agent in its cage."""
        self.pid, self.node, self.where = record["pid"], record["node"], record["where"]
        self.cage_name, self.backend = record["cage"], record["backend"]
        self.state = RunState.RUNNING

    def sampled(self, record: dict) -> None:
        self.usage = record["usage"]
        self.peak = max(self.peak, record["peak"])


class RayEngine:
    backend_name = "ray"
    stale: tuple[StaleCage, ...] = ()  # each node cleans its own cages (ray.node.janitor)

    def __init__(
        self, settings, cluster, *, clock=time.monotonic, on_interrupt=None, emit=None
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.settings, self.cluster, self.clock = ray, settings, cluster, clock
        self.on_interrupt = on_interrupt or (lambda signum: self.interrupt_all(signum))
        self.emit = emit or (lambda event, **fields: None)
        self.runs: dict[str, RemoteRun] = {}
        self._inbox: SignalInbox | None = None  # see catch_signals()
        self._wake = threading.Event()
        self._affinity = NodeAffinitySchedulingStrategy
        here = ray.get_runtime_context().get_node_id()
        self.control = (
            ray.remote(Control)
            .options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)
            )
            .remote()
        )
        self._task = ray.remote(run_on_node)
        self._janitors: list = []

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
        if why:  # a cap grown by a retry may no longer fit anywhere: never hand it to Ray
            return self._outcome(task, Reason.SETUP_FAILED, why)
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
        )
        gen = self._task.options(
            memory=request,
            num_cpus=r.cpus,
            resources=dict(r.resources),
            num_returns="streaming",
            max_retries=0,
            scheduling_strategy="SPREAD",
        ).remote(job, self.control)
        run = RemoteRun(task, gen, job.key, request, rundir, self.clock())
        self.runs[task.id] = run
        return run

    def reserved(self) -> int:
        """Ray memory requested by this fleet's running tasks (ClusterMemory)."""
        return sum(run.request for run in self.runs.values())

    def headroom(self) -> int:
        return 0  # whole requests are subtracted from the cluster's budget already

    # -- driving ----------------------------------------------------------------------
    def step(self, max_wait: float | None) -> list[RunView]:
        """Wait up to ``max_wait`` for records from the nodes; return the runs that
        ended. Ray's wait cannot be woken by another thread, so waits stay short."""
        self._signals()
        wait = 0.1 if max_wait is None else max_wait
        gens = {id(run.gen): run for run in self.runs.values()}
        if not gens:
            self._wake.wait(wait)
            self._wake.clear()
            self._signals()
            return []
        ended: list[RunView] = []
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
        for done in ended:
            self.runs.pop(done.task.id, None)
        self._signals()
        return ended

    def _signals(self) -> None:
        for signum in self._inbox.drain() if self._inbox else []:
            self.on_interrupt(signum)

    def _consume(self, run: RemoteRun) -> bool:
        """Handle the run's next record; True when the run has ended."""
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
            self._finish(run, record)
            return True
        return False

    def _finish(self, run: RemoteRun, record: dict) -> None:
        """Write what came back under the same names as a local run's files."""
        out = record["outcome"]
        notes = []
        paths = run.rundir.log_paths(run.task.id, run.task.attempt)
        for stream, path in zip(("stdout", "stderr"), paths, strict=True):
            data, size = record.get(stream) or (b"", 0)
            run.rundir.append(path, data)  # a full folder: held, retried (spool.py)
            if size > len(data):
                notes.append(
                    f"{stream}: only its last {format_size(len(data))} of "
                    f"{format_size(size)} came back (supervisor.ray.log_tail)"
                )
        if record.get("checkpoint"):
            run.rundir.append(run.rundir.checkpoint_path(run.task.id), record["checkpoint"])
        if notes:
            out.detail = "; ".join([out.detail, *notes]) if out.detail else "; ".join(notes)
        out.agent = run.task.id
        run.outcome = out

    def _failed(self, run: RemoteRun, err) -> bool:
        """The Ray task failed: the worker died (and the agent with it: parent-death
        signal), it was cancelled, or the node-side code itself failed."""
        name = type(err).__name__ if not isinstance(err, str) else ""
        if type(err) is self.ray.exceptions.RayTaskError and err.cause is not None:
            name = type(err.cause).__name__  # what the node-side code raised
        text = (str(err).strip().splitlines() or [name])[-1][:300]
        if run.state is RunState.PENDING and name == "TaskCancelledError":
            run.outcome = self._outcome(
                run.task, Reason.CANCELLED, "cancelled before it reached a node"
            )
            return True
        if name in WORKER_DIED:
            reason = run.cause or Reason.SIGNALED
            detail = (
                f"{run.where}: the Ray worker running it ended ({name}); the agent "
                "was killed with it (parent-death signal, cage cleaned)"
            )
            if run.node:
                self._clean(run.node)
        else:
            reason, detail = run.cause or Reason.SETUP_FAILED, f"{run.where}: {text}"
        run.outcome = self._outcome(run.task, reason, detail, pid=run.pid, signum=signal.SIGKILL)
        return True

    def _outcome(self, task, reason: Reason, detail: str, pid=None, signum=None) -> Outcome:
        signum = signum if reason in (Reason.SIGNALED, Reason.INTERRUPTED) else None
        return Outcome(
            reason=reason,
            exit_code=exit_code_for(reason, None, signum),
            cmd=tuple(task.cmd),
            backend="ray",
            limit_bytes=task.memory_limit,
            pid=pid,
            signal=signum,
            detail=detail,
            agent=task.id,
        )

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
        return list(self.runs.values())

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
        agent with it), clean those nodes, then let the control actor go."""
        for run in list(self.runs.values()):
            self.ray.cancel(run.gen, force=True)
            if run.node:
                self._clean(run.node)
        self.runs.clear()
        if self._janitors:
            self.ray.wait(self._janitors, num_returns=len(self._janitors), timeout=15)
        self.ray.kill(self.control)
        if self._inbox:
            self._inbox.close()
            self._inbox = None
        self.cluster.close()
