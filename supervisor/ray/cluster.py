"""``--engine ray``: connecting to the cluster and checking caps against its nodes
(the :class:`~agent_supervise.ray.fleet.RaySupervisor` that runs a fleet on it is in
ray/fleet.py).

Ray accepts any ``memory=`` request (``10**15`` bytes is scheduled and then waits
forever), so every cap is checked here against the nodes' memory budgets before
anything runs, and again when a retry grows it.

Admission under Ray counts the cluster's ``memory`` resource: the budgets of the
nodes that can take our agents (``ray start --memory``), minus what this fleet's
running tasks requested. The rules that watch one machine's memory
(``min_free_memory``, ``evict_below``, ``breaker.min_available``, ``degradation``)
have no single machine to watch on the driver, so they are off: each node's budget
is the reserve, and each agent's cage enforces its cap on its node.
"""

from __future__ import annotations

import logging
import re
import socket
import time

from agent_supervise.errors import BadInput
from agent_supervise.memsource import MemorySource
from agent_supervise.ray.faults import HeadWatch, split_address
from agent_supervise.units import format_size

ADDRESS_RE = re.compile(r"^(auto|local|[A-Za-z0-9_.-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5})$")
NODES_TTL_S = 5.0  # how long the node table is trusted before asking Ray again
CONNECT_TIMEOUT_S = 3.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise BadInput(
            "--engine ray needs Ray, which is not installed",
            hint="pip install 'agent-supervise[ray]'",
        ) from None
    return ray


def check_address(address: str, where: str) -> tuple[str, int] | None:
    """Refuse a malformed or unreachable address before Ray retries it for minutes."""
    if address.startswith("ray://"):
        raise BadInput(
            f"{where} {address}: Ray Client addresses are not supported",
            hint="run the fleet on a node of the cluster and give HOST:PORT of its head, or auto",
        )
    if not ADDRESS_RE.match(address):
        raise BadInput(
            f"{where} {address!r} is not a Ray address",
            hint="write HOST:PORT of the head (127.0.0.1:6379), auto or local",
        )
    if address in ("auto", "local"):
        return None
    host, port = split_address(address)
    if not 0 < port < 65536:
        raise BadInput(f"{where} {address}: port {port} is out of range")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise BadInput(
            f"{where} {address}: cannot reach a Ray head there: {err.strerror or err}",
            hint="start it with 'ray start --head', or check the address",
        ) from None
    return host, port


class Cluster:
    """The connection to Ray and a cached table of its nodes."""

    def __init__(
        self, settings, address: str | None = None, where: str = "supervisor.ray.address"
    ) -> None:
        self.settings = settings
        where = "--address" if address else where
        address = address or settings.address
        check_address(address, where)
        self.ray = ray = import_ray()
        self.owns = not ray.is_initialized()
        if self.owns:
            try:
                ray.init(
                    address=None if address == "local" else address,
                    namespace="agent-supervise",
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    **({"include_dashboard": False} if address == "local" else {}),
                )
            except Exception as err:  # noqa: BLE001 - Ray raises many kinds here
                lines = str(err).strip().splitlines() or [type(err).__name__]
                raise BadInput(
                    f"{where} {address}: cannot connect to Ray: {lines[0]}",
                    hint="is a cluster running there? ray status shows it",
                ) from None
        self._nodes: list[dict] = []
        self._every: list[dict] = []
        self._nodes_at = float("-inf")
        #: Ray's calls block while the GCS is down: the head is looked at first.
        self.head = HeadWatch(ray.get_runtime_context().gcs_address, settings.head_lost_after)
        #: The largest memory budget any usable node has offered during the run: a
        #: cap above it never fit; one below it fit on a node that may come back.
        self.largest_seen = 0
        #: Nodes the driver found dead before Ray says so (ray/faults.py): a node id
        #: is never reused, so they stay out of the table.
        self.dead: set[str] = set()
        self._unfit_since: dict[str, float] = {}  # a waiting task's key -> since when

    def nodes(self, fresh: bool = False) -> list[dict]:
        """Alive nodes that offer what each agent asks for (CPUs, custom resources)."""
        now = time.monotonic()
        if fresh or now - self._nodes_at > NODES_TTL_S:
            self._read(now)
        return self._nodes

    def forget(self, node_id: str) -> None:
        """The node is dead: no task is placed by its budget any more."""
        self.dead.add(node_id)
        self._nodes = [n for n in self._nodes if n["NodeID"] != node_id]

    def table(self) -> dict[str, dict]:
        """Every node Ray knows, alive or dead, by id, read now (and the cache too)."""
        return {n["NodeID"]: n for n in self._read(time.monotonic())}

    def _read(self, now: float) -> list[dict]:
        self.head.lost()
        if self.head.unreachable_since is not None:
            return self._every  # the last table: asking Ray now would block
        r = self.settings
        need = {**r.resources, "CPU": r.cpus}
        every = self._every = self.ray.nodes()
        self._nodes = [
            n
            for n in every
            if n.get("Alive")
            and n["NodeID"] not in self.dead
            and all(n["Resources"].get(k, 0) >= v for k, v in need.items() if v)
        ]
        self._nodes_at = now
        self.largest_seen = max([self.largest_seen, *self.budgets()])
        return every

    def budgets(self) -> list[int]:
        return [int(n["Resources"].get("memory", 0)) for n in self.nodes()]

    def fit_before(self, cap: int) -> bool:
        """The cap fit on a node seen earlier in the run (one that may come back)."""
        return cap + self.settings.memory_overhead <= self.largest_seen

    def unfit_for(self, key: str, cap: int) -> tuple[str | None, float]:
        """(why the cap fits on no alive node, or None; for how long it has not):
        the clock of supervisor.ray.node_wait, per waiting task ``key``."""
        why = self.unfit(cap)
        if why is None:
            self._unfit_since.pop(key, None)
            return None, 0.0
        now = time.monotonic()
        return why, now - self._unfit_since.setdefault(key, now)

    def done_waiting(self, key: str) -> None:
        self._unfit_since.pop(key, None)

    def unfit(self, cap: int) -> str | None:
        """Why an agent with this cap could run on no node, or None."""
        overhead = self.settings.memory_overhead
        largest = max(self.budgets(), default=0)
        if cap + overhead <= largest:
            return None
        among = (
            f" among nodes offering {dict(self.settings.resources)}"
            if self.settings.resources
            else ""
        )
        if not self.nodes():
            return (
                f"no alive Ray node offers what an agent needs{among} (cpus {self.settings.cpus:g})"
            )
        return (
            f"cap {format_size(cap)} plus memory_overhead {format_size(overhead)} fits "
            f"on no Ray node: the largest memory budget{among} is "
            f"{format_size(largest)}"
        )

    def check_fits(self, specs, agents) -> None:
        for spec in specs:
            agent = agents.get(spec.agent)
            if agent is None:
                continue
            why = self.unfit(spec.memory_limit or agent.memory_limit)
            if why:
                raise BadInput(
                    f"{spec.where}: agent {spec.agent}: {why}",
                    hint="lower memory_limit, or start nodes with a larger --memory (ray start)",
                )

    def close(self, head_lost: bool = False) -> None:
        """Disconnect. With the head lost, Ray's shutdown would block on the GCS for
        as long as Ray keeps retrying it: the connection is left to the process's exit
        (the CLI ends with os._exit once everything is written)."""
        if self.owns and self.ray.is_initialized() and not head_lost:
            self.ray.shutdown()


class ClusterMemory:
    """What admission sees under Ray (see the module docstring). ``available`` is what
    is left for the next agent's cap once its ``memory_overhead`` is counted. The
    engine reserves each task's Ray request here when it starts the task and
    releases it when the task has ended."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._reserved: dict[str, int] = {}  # task id -> its Ray memory request
        self._own = MemorySource()

    def reserve(self, task_id: str, request: int) -> None:
        self._reserved[task_id] = request

    def release(self, task_id: str) -> None:
        self._reserved.pop(task_id, None)

    def available(self) -> int:
        left = sum(self.cluster.budgets()) - sum(self._reserved.values())
        return max(0, left - self.cluster.settings.memory_overhead)

    def total(self) -> int:
        return sum(self.cluster.budgets())

    def own_rss(self) -> int:
        return self._own.own_rss()

    def close(self) -> None:
        self._own.close()
