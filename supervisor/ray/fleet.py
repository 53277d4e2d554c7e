"""The :class:`RaySupervisor`: a fleet whose agents run on a Ray cluster's nodes.

It is the local :class:`~agent_supervise.fleet.supervisor.Supervisor` with the Ray
engine, the cluster's memory for admission, the single-machine memory rules off
(:func:`for_ray`, see ray/cluster.py), and two rules of its own for a cluster that
changes under it (ray/faults.py):

- a task whose cap fit only on nodes that have left waits for one to come back, up
  to ``supervisor.ray.node_wait``, then ends ``setup_failed`` saying so; a cap that
  never fit on any node ends at once;
- the head lost: the fleet stops (``cluster_lost``, exit 5), its queued tasks end
  ``cancelled``, its running ones ``lost``, each with where it may still run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from agent_supervise.errors import BadInput
from agent_supervise.fleet.supervisor import Supervisor
from agent_supervise.ray.cluster import Cluster, ClusterMemory

if TYPE_CHECKING:
    from agent_supervise.ray.engine import RayEngine


def for_ray(settings):
    """The supervisor settings with the single-machine memory rules switched off."""
    return dataclasses.replace(
        settings,
        min_free_memory=0,
        evict_below=0,
        freeze_below=0,
        breaker=dataclasses.replace(settings.breaker, min_available=0),
        degradation=dataclasses.replace(
            settings.degradation, sequential_below=0, limited_below=0, margin=0, psi_some_avg10=0
        ),
    )


def refuse_unsupported(fleet) -> None:
    s = fleet.supervisor
    if s.backend == "rlimit" and not s.ray.allow_rlimit:
        raise BadInput(
            "supervisor.backend rlimit with --engine ray: nodes would cap agents "
            "with an rlimit only",
            hint="set supervisor.ray.allow_rlimit: true, or use a cgroup backend",
        )
    if s.memory_budget is not None or s.admission != "caps":
        key = "memory_budget" if s.memory_budget is not None else "admission: usage"
        raise BadInput(
            f"supervisor.{key} with --engine ray: a fleet budget and admission by use "
            "are for one machine so far (each Ray node caps each agent; the cluster "
            "admits by the agents' declared caps)",
            hint=f"drop supervisor.{key.split(':')[0]} for this fleet, or use --engine local",
        )
    for agent in fleet.agents.values():
        if agent.pool is not None:
            raise BadInput(
                f"agents.{agent.name}.pool: warm pools do not run on Ray",
                hint="drop pool: for this fleet, or run it with --engine local",
            )


class RaySupervisor(Supervisor):
    """A :class:`Supervisor` whose agents run on a Ray cluster's nodes."""

    def __init__(
        self, fleet, *, address: str | None = None, clock=time.monotonic, **kwargs
    ) -> None:
        refuse_unsupported(fleet)
        fleet = dataclasses.replace(fleet, supervisor=for_ray(fleet.supervisor))
        self.cluster = Cluster(fleet.supervisor.ray, address)
        self.cluster_memory = ClusterMemory(self.cluster)
        try:
            self.cluster.check_fits(fleet.tasks, fleet.agents)  # before anything starts
            super().__init__(fleet, memory=self.cluster_memory, clock=clock, psi=None, **kwargs)
        except BaseException:
            self.cluster.close()
            raise

    def _new_engine(self) -> RayEngine:
        from agent_supervise.ray.engine import RayEngine

        return RayEngine(
            self.settings,
            self.cluster,
            self.cluster_memory,
            on_interrupt=self._on_interrupt,
            on_lost=self._cluster_lost,
            emit=self.events.emit,
            clock=self.clock,
        )

    def _waits_for_memory(self, task, available: int, promises) -> str | None:
        """A cap that fit only on nodes that have left waits for one to come back
        (supervisor.ray.node_wait); then it is started, and the engine ends it
        ``setup_failed`` with the reason. One that never fit is started at once."""
        key = f"queued/{task.id}"
        why, waited = self.cluster.unfit_for(key, task.memory_limit)
        if why is None:
            return super()._waits_for_memory(task, available, promises)
        if not self.cluster.fit_before(task.memory_limit) or waited >= self.settings.ray.node_wait:
            self.cluster.done_waiting(key)
            return None  # started now: the engine ends it setup_failed, saying why
        return f"waiting for a Ray node that can hold it: {why}"

    def _cluster_lost(self, message: str) -> None:
        """The head is gone (the engine ends the running tasks ``lost``)."""
        if self.stopping is None:
            self._stop("cluster_lost", message)

    def _check_fits(self, specs) -> None:
        self.cluster.check_fits(specs, self.fleet.agents)

    @staticmethod
    def _check_users(fleet) -> None:
        """Users and groups are looked up on the nodes (a node without them refuses)."""
