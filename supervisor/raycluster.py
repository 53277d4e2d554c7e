"""The old path of :mod:`agent_supervise.ray.cluster` (kept: the README of 0.1
documented ``from agent_supervise.raycluster import RaySupervisor``)."""

from agent_supervise.ray.fleet import RaySupervisor  # noqa: F401
