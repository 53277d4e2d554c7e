"""What the driver does when the cluster fails under it: a node dies, the head is lost.

Ray tells the owner of a task that its node died only once the GCS has declared the
node dead, after its health checks failed for a while (``health_check_period_ms`` ×
``health_check_failure_threshold``: about 15 s by default), and a task whose node
vanished may simply never yield again. The driver does not wait for that alone:

- **A silent node.** A running agent's node reports at least every second
  (:data:`agent_supervise.ray.node.SAMPLE_S`). One silent for :data:`SILENT_S` is
  looked at directly: gone from the cluster's alive nodes, or its raylet refusing
  connections (a killed raylet's port is closed at once), it has died, and its
  agents are ``lost``: requeued once for free (fleet/retry.py). A node that is alive
  but slow is left alone: a stalled node is not a dead one.
- **A lost head.** Every :data:`CHECK_S` the driver opens a connection to the GCS
  (the head's port). Unreachable for ``supervisor.ray.head_lost_after`` in a row, the
  cluster is lost: the fleet stops (exit :data:`agent_supervise.fleet.summary.EXIT_CLUSTER_LOST`),
  its running tasks end ``lost`` with where they may still run, and nothing more
  is asked of Ray, whose calls would now block (its own driver gives up after
  ``gcs_rpc_server_reconnect_timeout_s``, 60 s, by killing the process).

Each agent's node-side guard (ray/files.py) kills what is left of it when its
worker dies: with its raylet, or when the raylets give up on a lost head.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, cast

from agent_supervise.outcome import Reason
from agent_supervise.ray.remoterun import ray_outcome
from agent_supervise.run.states import RunState

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent_supervise.agents.spec import SupervisorSettings
    from agent_supervise.fleet.seams import RunView
    from agent_supervise.ray.cluster import Cluster
    from agent_supervise.ray.remoterun import RemoteRun

SILENT_S = 3.0  # a running agent's node reports every second: 3 s of silence is news
CHECK_S = 1.0  # how often the driver looks at the head and at silent nodes
PROBE_TIMEOUT_S = 1.0  # a connect that takes longer counts as unreachable


def reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to host:port opens (a raylet, the GCS)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class HeadWatch:
    """Is the GCS (the head) still reachable? ``lost()`` says how long it has not
    been, once that reaches ``lost_after``; checks at most every CHECK_S."""

    def __init__(self, gcs_address: str, lost_after: float, clock=time.monotonic) -> None:
        self.address = gcs_address
        self.host, self.port = split_address(gcs_address)
        self.lost_after, self.clock = lost_after, clock
        self.unreachable_since: float | None = None
        self._next = 0.0

    def lost(self, at_once: bool = False) -> float | None:
        """How long the head has been unreachable, once that is ``lost_after`` or
        more, else None. ``at_once``: there is other evidence (the nodes lost the
        orders actor): probe now, and an unreachable head counts as lost already."""
        now = self.clock()
        if now >= self._next or at_once:
            self._next = now + CHECK_S
            if reachable(self.host, self.port):
                self.unreachable_since = None
            elif self.unreachable_since is None:
                self.unreachable_since = now
        if self.unreachable_since is None:
            return None
        gone = now - self.unreachable_since
        return gone if at_once or gone >= self.lost_after else None


def node_gone(table: dict[str, dict], node_id: str | None) -> str | None:
    """Why the node ``node_id`` is gone, or None while it looks alive: ``table`` is
    Ray's node table by id (alive and dead nodes), read just now."""
    if node_id is None:
        return None
    entry = table.get(node_id)
    if entry is None or not entry.get("Alive"):
        return "is gone from the cluster (Ray marks it dead)"
    host, port = entry.get("NodeManagerAddress"), entry.get("NodeManagerPort")
    if host and port and not reachable(host, int(port)):
        return f"does not answer (its raylet at {host}:{port} refuses connections)"
    return None


def no_node_came_back(why: str, node_wait: float) -> str:
    """The ``setup_failed`` detail of a cap that fit only on nodes that left."""
    return (
        f"{why}; the nodes that could hold it left and none came back within "
        f"supervisor.ray.node_wait ({node_wait:g}s)"
    )


class NodeProbe:
    """Is a node gone? At most one read of Ray's node table and one probe of each
    node's raylet per CHECK_S, however many of its tasks ask (a partitioned node's
    probe takes PROBE_TIMEOUT_S). A node found gone is dropped from admission."""

    def __init__(self, cluster: Cluster, clock=time.monotonic) -> None:
        self.cluster, self.clock = cluster, clock
        self._table: dict[str, dict] = {}
        self._table_at = float("-inf")
        self._seen: dict[str, tuple[float, str | None]] = {}  # node -> (when, why)

    def gone(self, node_id: str) -> str | None:
        now = self.clock()
        at, why = self._seen.get(node_id, (float("-inf"), None))
        if now - at < CHECK_S:
            return why
        if now - self._table_at >= CHECK_S:
            self._table, self._table_at = self.cluster.table(), now
        why = node_gone(self._table, node_id)
        self._seen[node_id] = (now, why)
        if why:
            self.cluster.forget(node_id)
        return why


class Faults:
    """The driver's rules for a failing cluster (the module docstring), mixed into
    :class:`~agent_supervise.ray.engine.RayEngine`, which sets what is declared here."""

    ray: Any  # the ray module
    settings: SupervisorSettings
    cluster: Cluster
    clock: Callable[[], float]
    runs: dict[str, RemoteRun]
    on_lost: Callable[[str], None]
    head: HeadWatch
    probe: NodeProbe
    head_lost: bool
    orders_gone: bool  # a node stopped its agent: it lost the orders actor
    _next_look: float

    def _look(self) -> list[RunView]:
        """Every CHECK_S: is the head there, are silent nodes alive, do waiting
        tasks still fit somewhere? Returns the runs that ended: lost ones."""
        now = self.clock()
        if self.head_lost or (now < self._next_look and not self.orders_gone):
            return []
        self._next_look = now + CHECK_S
        gone = self.head.lost(at_once=self.orders_gone)
        self.orders_gone = False
        if gone is not None:
            return self._lose_head(gone)
        if self.head.unreachable_since is not None:
            return []  # not lost yet, but Ray's calls could block: ask it nothing
        silent = [
            r
            for r in self.runs.values()
            if r.state is not RunState.PENDING and now - r.heard >= SILENT_S
        ]
        ended: list[RunView] = []
        for run in silent:
            why = self.probe.gone(run.node) if run.node else None
            if why:
                run.lose(f"{run.where} {why}; its last report came {now - run.heard:.1f}s ago")
                self._drop(run)
                ended.append(run)
        self._unplaceable()
        return ended

    def _unplaceable(self) -> None:
        """A task in Ray's queue whose cap no alive node can hold any more would wait
        there forever: after node_wait, take it back (it ends setup_failed)."""
        wait = self.settings.ray.node_wait
        for run in self.runs.values():
            if run.state is not RunState.PENDING or run.cause is not None:
                continue
            why, waited = self.cluster.unfit_for(run.key, run.task.memory_limit)
            if why is not None and waited >= wait:
                self.cluster.done_waiting(run.key)
                run.cause = Reason.SETUP_FAILED
                run.cause_detail = no_node_came_back(why, wait) + " (it waited in Ray's queue)"
                self.ray.cancel(run.gen)

    def _lose_head(self, gone: float) -> list[RunView]:
        """The head is unreachable: stop the fleet; every running task ends lost,
        with where it may still be running. Nothing more is asked of Ray."""
        self.head_lost = True
        running: list[RemoteRun] = sorted(
            (r for r in self.runs.values() if r.outcome is None), key=lambda r: r.task.id
        )
        where = ", ".join(
            f"{r.task.id} on {r.where} (pid {r.pid})"
            for r in running
            if r.state is not RunState.PENDING
        )
        message = (
            f"the Ray head at {self.head.address} has been unreachable for {gone:.0f}s "
            + (
                "(supervisor.ray.head_lost_after)"
                if gone >= self.head.lost_after
                else "and the nodes lost the driver's orders channel"
            )
            + ": the cluster is lost"
            + (
                f"; these may still be running until their nodes give up on the head: {where}"
                if where
                else ""
            )
        )
        self.on_lost(message)
        for run in running:
            if run.state is RunState.PENDING:
                run.outcome = ray_outcome(run.task, Reason.CANCELLED, "the cluster was lost")
            else:
                run.lose("the driver lost the cluster's head", requeue=False)  # stopping
        return cast("list[RunView]", running)

    def _drop(self, run: RemoteRun) -> None:
        """Let go of a lost run's Ray task (its node is gone: nothing to clean there)."""
        try:
            self.ray.cancel(run.gen, force=True)
        except Exception:  # noqa: BLE001 - the task's node is dead: best effort
            pass
