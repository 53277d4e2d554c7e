"""One error hierarchy with structured fields, in the style of psutil's: the home of
every public error.

Every error agent-supervise raises to a user (CLI or Python API) derives from
:class:`SuperviseError` and is defined here (and exported by ``agent_supervise``).
Each carries the fields a caller needs to act on it (``agent=``, ``pid=``,
``backend=``, ``path=``, ``hint=``, and its own) instead of a pre-formatted string
only, and an ``exit_code`` that the CLI uses when the error ends the program. Each
pickles with its fields (it must cross Ray between a node and the head).

Internal signals that never reach a user stay beside their code and are turned into
one of these, or into an :class:`~agent_supervise.outcome.Outcome`, before they do:
``run.spawn.SpawnFailed`` (an outcome: not found, not executable, setup failed),
``limits.base.Unavailable`` (a probe's answer: doctor's text, or
:class:`BackendUnavailable` when asked for by name), ``fleet.pool.ProtocolError``
(a pool worker's outcome detail), ``agents.kinds.FieldError`` and
``agents.yamlbound.TooLarge`` (lines of a :class:`FleetFileError`).
"""

from __future__ import annotations


class SuperviseError(Exception):
    """Base class. ``str(err)`` is a one-line message fit for a terminal."""

    #: Exit status when this error ends the CLI. 125 follows timeout(1)/env(1):
    #: "the supervisor itself failed", distinct from any status of the agent.
    exit_code = 125

    def __init__(
        self,
        message: str,
        *,
        agent: str | None = None,
        pid: int | None = None,
        backend: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.agent = agent
        self.pid = pid
        self.backend = backend
        self.path = path
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __reduce__(self):
        # Rebuild from the fields, whatever the subclass's __init__ takes (psutil's
        # errors define __reduce__ for the same reason: pickle calls cls(*args)).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def fields(self) -> dict:
        """The structured fields, for JSON output and logs."""
        names = ("agent", "pid", "backend", "path", "hint")
        found = {name: getattr(self, name) for name in names}
        return {
            "error": type(self).__name__,
            "message": self.message,
            **{k: v for k, v in found.items() if v is not None},
        }


def _rebuild(cls, message: str, state: dict) -> SuperviseError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class BadInput(SuperviseError):
    """The user's input (a flag, a value, a file) is wrong. Nothing was started."""

    exit_code = 2


class BackendUnavailable(BadInput):
    """A memory-limit backend that was asked for by name cannot be used here.

    An explicit request is never downgraded silently: this is an input error.
    """

    def __init__(self, backend: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"backend {backend} is not available: {reason}", backend=backend, hint=hint
        )
        self.reason = reason


class CageError(SuperviseError):
    """A system call on a cage failed. The message names the call and the path."""


class NotLinux(SuperviseError):
    """agent-supervise needs Linux (cgroups, prctl, /proc)."""

    exit_code = 2


class FleetFileError(BadInput):
    """One or more problems in a fleet file; ``problems`` holds one line each
    (``file:line:column: key: what is wrong (hint)``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class QueueFull(SuperviseError):
    """``submit(block=False)`` found no room (or ``timeout`` passed while blocking)."""


class QueueClosed(SuperviseError):
    """The supervisor is shutting down and takes no more tasks."""


class CircuitOpen(SuperviseError):
    """``submit(block=False)`` while the circuit breaker is open; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the circuit breaker is open: {reason}")
        self.reason = reason


class CageRefused(SuperviseError):
    """A Ray node can only cap with an rlimit, and the fleet did not allow that."""


def syscall_error(call: str, path: str | None, err: OSError, **fields) -> CageError:
    """Build a :class:`CageError` that names the failing call, like tini does."""
    where = f"{call}({path})" if path else call
    return CageError(f"{where} failed: {err.strerror or err}", path=path, **fields)
