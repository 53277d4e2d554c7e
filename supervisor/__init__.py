"""agent-supervise: run AI-agent commands under hard per-agent memory limits.

The installed package maps the repository's folders: ``supervisor/`` is this
package (the loop, policies, CLI), ``limits/`` is :mod:`agent_supervise.limits`
(one module per mechanism) and ``agents/`` is :mod:`agent_supervise.agents`
(agent and fleet specs).
"""

__version__ = "0.1.0"

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


def __getattr__(name):
    # The run path imports Linux-only modules; load it on first use so that
    # ``import agent_supervise`` works everywhere (validate, schema, --help).
    if name in ("RunOptions", "run_agent"):
        from agent_supervise.run import single

        return getattr(single, name)
    raise AttributeError(name)
