"""One task on Ray as the driver sees it, and what its node's records make of it.

:class:`RemoteRun` is the :class:`~agent_supervise.fleet.seams.RunView` of a task
handed to Ray. The node streams records back (``started``, ``sample``, the result);
here they become the run's state, the same log and checkpoint files a local run
writes, and its :class:`~agent_supervise.outcome.Outcome`, also when the Ray task
itself failed. Driving the tasks is :class:`~agent_supervise.ray.engine.RayEngine`'s.
"""

from __future__ import annotations

import signal

from agent_supervise.outcome import Outcome, Reason, exit_code_for
from agent_supervise.run.states import RunState
from agent_supervise.units import format_size

#: Ray errors meaning the node under the task died (its raylet, or the machine).
NODE_DIED = ("NodeDiedError", "LocalRayletDiedError")
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

    #: memory_high is not passed to the nodes (yet): never throttled here.
    throttled = False
    #: The driver's ladder does not reach into the nodes: never frozen.
    frozen = False

    def __init__(self, task, gen, key: str, rundir, now: float) -> None:
        self.task, self.gen, self.key = task, gen, key
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
        self.cause_detail = ""  # why we took it back from Ray's queue, if we did
        #: Its node died under it (fleet/retry.py: requeued once, not counted).
        self.lost = False
        #: When its node last reported (placed, a sample): silence means trouble.
        self.heard = now

    def placed(self, record: dict) -> None:
        """The node started the agent in its cage."""
        self.pid, self.node, self.where = record["pid"], record["node"], record["where"]
        self.cage_name, self.backend = record["cage"], record["backend"]
        self.state = RunState.RUNNING

    def sampled(self, record: dict) -> None:
        self.usage = record["usage"]
        self.peak = max(self.peak, record["peak"])

    def finished(self, record: dict) -> None:
        """Write what came back under the same names as a local run's files."""
        out = record["outcome"]
        notes = []
        paths = self.rundir.log_paths(self.task.id, self.task.attempt)
        for stream, path in zip(("stdout", "stderr"), paths, strict=True):
            data, size = record.get(stream) or (b"", 0)
            self.rundir.append(path, data)  # a full folder: held, retried (spool.py)
            if size > len(data):
                notes.append(
                    f"{stream}: only its last {format_size(len(data))} of "
                    f"{format_size(size)} came back (supervisor.ray.log_tail)"
                )
        if record.get("checkpoint"):
            self.rundir.append(self.rundir.checkpoint_path(self.task.id), record["checkpoint"])
        if notes:
            out.detail = "; ".join([out.detail, *notes]) if out.detail else "; ".join(notes)
        out.agent = self.task.id
        self.outcome = out

    def failed(self, name: str, text: str, node_alive: bool = True) -> str | None:
        """Its Ray task failed with the error ``name`` (``text``: its last line): its
        node died, the worker died (and the agent with it: parent-death signal), it
        was cancelled, or the node-side code itself failed. ``node_alive``: whether
        its node is still among the cluster's alive nodes. Returns the node whose
        worker died under the agent, which has a cage left to clean; else None."""
        if self.state is RunState.PENDING and name == "TaskCancelledError":
            why = self.cause_detail or "cancelled before it reached a node"
            self.outcome = ray_outcome(self.task, self.cause or Reason.CANCELLED, why)
            return None
        if self.cause is None and self.node and (name in NODE_DIED or not node_alive):
            self.lose(f"{self.where} died under it ({name})")
            return None
        died = name in WORKER_DIED
        if died:
            reason = self.cause or Reason.SIGNALED
            detail = (
                f"{self.where}: the Ray worker running it ended ({name}); the agent "
                "was killed with it (parent-death signal, cage cleaned)"
            )
        else:
            reason, detail = self.cause or Reason.SETUP_FAILED, f"{self.where}: {text}"
        self.outcome = ray_outcome(self.task, reason, detail, pid=self.pid, signum=signal.SIGKILL)
        return self.node if died else None

    def lose(self, why: str, requeue: bool = True) -> None:
        """Its node is gone (or the driver lost the cluster): how the agent ended is
        not known. A node that is down took the agent with it; one whose raylet alone
        died lost its workers, and each agent's guard kills what is left of it.
        ``requeue``: the fleet requeues it once for free (not when it is stopping)."""
        self.lost = requeue
        self.outcome = ray_outcome(
            self.task,
            Reason.LOST,
            f"{why}; how the agent itself ended is not known (pid {self.pid} there); "
            "its node's guard kills what is left of it if the machine is up",
            pid=self.pid,
        )


def ray_outcome(task, reason: Reason, detail: str, pid=None, signum=None) -> Outcome:
    """The outcome of a task whose agent did not report its own end."""
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
