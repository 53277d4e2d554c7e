"""agent-supervise: run AI-agent commands under hard per-agent memory limits.

The installed package maps the repository's folders: ``supervisor/`` is this
package (the loop, policies, CLI), ``limits/`` is :mod:`agent_supervise.limits`
(one module per mechanism) and ``agents/`` is :mod:`agent_supervise.agents`
(agent and fleet specs).
"""

__version__ = "0.1.0"

# What ``from agent_supervise import X`` gives, each from its home, imported on first
# use (PEP 562): every `run` imports this package, and most of these it never needs.
_HOMES = {
    "checkpoint": "agent_supervise.checkpoint",
    "resume_from": "agent_supervise.checkpoint",
    "BackendUnavailable": "agent_supervise.errors",
    "BadInput": "agent_supervise.errors",
    "CageError": "agent_supervise.errors",
    "CageRefused": "agent_supervise.errors",
    "CircuitOpen": "agent_supervise.errors",
    "FleetFileError": "agent_supervise.errors",
    "NotLinux": "agent_supervise.errors",
    "QueueClosed": "agent_supervise.errors",
    "QueueFull": "agent_supervise.errors",
    "SuperviseError": "agent_supervise.errors",
    "Outcome": "agent_supervise.outcome",
    "Reason": "agent_supervise.outcome",
    # The run path imports Linux-only modules: loaded on first use, ``import
    # agent_supervise`` works everywhere (validate, schema, --help).
    "RunOptions": "agent_supervise.run.single",
    "run_agent": "agent_supervise.run.single",
}

TYPE_CHECKING = False  # typing's, without importing typing (type checkers read it true)
if TYPE_CHECKING:
    from agent_supervise.checkpoint import checkpoint, resume_from
    from agent_supervise.errors import (
        BackendUnavailable,
        BadInput,
        CageError,
        CageRefused,
        CircuitOpen,
        FleetFileError,
        NotLinux,
        QueueClosed,
        QueueFull,
        SuperviseError,
    )
    from agent_supervise.outcome import Outcome, Reason
    from agent_supervise.run.single import RunOptions, run_agent

__all__ = [
    "BackendUnavailable",
    "BadInput",
    "CageError",
    "CageRefused",
    "CircuitOpen",
    "FleetFileError",
    "NotLinux",
    "Outcome",
    "QueueClosed",
    "QueueFull",
    "Reason",
    "RunOptions",
    "SuperviseError",
    "__version__",
    "checkpoint",
    "resume_from",
    "run_agent",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agent_supervise' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
