"""Agent and fleet specs: frozen dataclasses, validated once by the loader.

A fleet file (see configs/example.yaml) has four sections: ``supervisor`` (how the
fleet is dispatched), ``defaults`` (agent settings used where an agent sets none),
``agents`` (named commands with their caps) and ``tasks`` (which agent to run, with
which ``{placeholder}`` values, how many times). A :class:`Task` is one runnable
agent invocation, fully resolved.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

EMPTY: Mapping = MappingProxyType({})  # an empty, read-only default of any mapping field


@dataclass(frozen=True)
class BreakerSettings:
    """``supervisor.breaker``: when to stop starting agents, and for how long."""

    min_available: int = 500 << 20
    consecutive_memory_kills: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 600.0


@dataclass(frozen=True)
class DegradationSettings:
    """``supervisor.degradation``: how many agents may run, by available memory."""

    sequential_below: int = 2 << 30
    limited_below: int = 4 << 30
    limited_to: int = 2
    margin: int = 256 << 20
    samples: int = 3
    psi_some_avg10: float = 20.0


@dataclass(frozen=True)
class PoolSettings:
    """``agents.NAME.pool``: long-lived workers, one JSON task per line."""

    size: int = 2
    recycle_above: int | None = None
    max_tasks: int = 100


@dataclass(frozen=True)
class RaySettings:
    """``supervisor.ray``: the cluster for ``--engine ray`` and how agents are placed."""

    address: str = "auto"
    allow_rlimit: bool = False
    resources: Mapping[str, float] = field(default_factory=lambda: EMPTY)
    memory_overhead: int = 100 << 20
    cpus: float = 1.0
    log_tail: int = 8 << 20
    node_wait: float = 60.0  # a task that fit only on nodes that left waits this long
    head_lost_after: float = 10.0  # the head unreachable this long: the fleet stops


@dataclass(frozen=True)
class SupervisorSettings:
    """The ``supervisor:`` section. Defaults are the seed's measures."""

    max_concurrent: int = 2
    queue_size: int = 4
    min_free_memory: int = 1 << 30
    memory_limit: int = 500 << 20
    memory_budget: int | None = None
    admission: str = "caps"  # or "usage"
    poll_interval: float = 0.1
    grace: float = 2.0
    log_dir: str = "runs"
    backend: str = "auto"
    rlimit: str = "data"
    cgroup_root: str | None = None
    run_timeout: float | None = None
    evict_below: int | None = None  # None: half of min_free_memory
    freeze_below: int | None = None  # None: min_free_memory
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    degradation: DegradationSettings = field(default_factory=DegradationSettings)
    ray: RaySettings = field(default_factory=RaySettings)

    @property
    def eviction_threshold(self) -> int:
        return self.min_free_memory // 2 if self.evict_below is None else self.evict_below

    @property
    def freeze_threshold(self) -> int:
        return self.min_free_memory if self.freeze_below is None else self.freeze_below


@dataclass(frozen=True)
class AgentSpec:
    """One named agent: a command template and its limits."""

    name: str
    cmd: tuple[str, ...]
    memory_limit: int = 50 << 20
    memory_high: int | None = None  # the soft limit (cgroup2 memory.high)
    pids_limit: int = 4096  # limits.base.DEFAULT_PIDS_LIMIT; 0: no process cap
    runtime_hints: bool = True  # tell Node, Go and the JVM the cap (run/hints.py)
    timeout: float | None = None
    grace: float | None = None
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    cwd: str = "."
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 60.0
    on_memory_kill: str = "fail"
    memory_retries: int = 2
    grow_factor: float = 2.0
    max_memory_limit: int | None = None
    pool: PoolSettings | None = None
    user: str | None = None
    group: str | None = None

    @property
    def placeholders(self) -> frozenset[str]:
        """The ``{names}`` its cmd, env values and cwd need values for."""
        return frozenset(
            n for text in (*self.cmd, *self.env.values(), self.cwd) for n in placeholder_names(text)
        )


@dataclass(frozen=True)
class TaskSpec:
    """One entry of ``tasks:`` (or one JSON line of ``--tasks -``)."""

    agent: str
    vars: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    repeat: int = 1
    memory_limit: int | None = None
    timeout: float | None = None
    where: str = "api"  # where it came from, for messages: file:line:col, stdin:N


@dataclass(frozen=True)
class Task:
    """One runnable agent invocation: placeholders filled, limits resolved."""

    id: str  # "<agent>-<n>": also its log file stem
    agent: str
    n: int
    cmd: tuple[str, ...]
    memory_limit: int
    timeout: float | None
    grace: float
    cwd: str
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    vars: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    where: str = "api"
    attempt: int = 1
    pool: PoolSettings | None = None
    user: str | None = None
    group: str | None = None
    pids_limit: int = 4096
    memory_high: int | None = None
    runtime_hints: bool = True


@dataclass(frozen=True)
class FleetSpec:
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    agents: Mapping[str, AgentSpec] = field(default_factory=lambda: EMPTY)
    tasks: tuple[TaskSpec, ...] = ()
    path: str | None = None


def placeholder_names(text: str) -> list[str]:
    """``"run {topic} {{literal}}"`` -> ``["topic"]``. Raises ValueError on bad syntax."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def fill(text: str, values: Mapping[str, str]) -> str:
    return text.format_map(values)


def make_task(agent: AgentSpec, spec: TaskSpec, n: int, default_grace: float) -> Task:
    """Resolve one task of ``agent`` (the loader has checked every placeholder)."""
    values = dict(spec.vars)
    return Task(
        id=f"{agent.name}-{n}",
        agent=agent.name,
        n=n,
        cmd=tuple(fill(word, values) for word in agent.cmd),
        memory_limit=spec.memory_limit or agent.memory_limit,
        timeout=spec.timeout if spec.timeout is not None else agent.timeout,
        grace=agent.grace if agent.grace is not None else default_grace,
        cwd=fill(agent.cwd, values),
        env=MappingProxyType({k: fill(v, values) for k, v in agent.env.items()}),
        vars=spec.vars,
        where=spec.where,
        pool=agent.pool,
        user=agent.user,
        group=agent.group,
        pids_limit=agent.pids_limit,
        memory_high=agent.memory_high,
        runtime_hints=agent.runtime_hints,
    )
