"""One error hierarchy with structured fields, in the style of psutil's.

Every error agent-supervise raises on purpose derives from :class:`SuperviseError`.
Each carries the fields a caller needs to act on it (``agent=``, ``pid=``,
``backend=``, ``path=``, ``hint=``) instead of a pre-formatted string only, and an
``exit_code`` that the CLI uses when the error ends the program.
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

    def fields(self) -> dict:
        """The structured fields, for JSON output and logs."""
        names = ("agent", "pid", "backend", "path", "hint")
        found = {name: getattr(self, name) for name in names}
        return {"error": type(self).__name__, "message": self.message,
                **{k: v for k, v in found.items() if v is not None}}


class BadInput(SuperviseError):
    """The user's input (a flag, a value, a file) is wrong. Nothing was started."""

    exit_code = 2


class BackendUnavailable(BadInput):
    """A memory-limit backend that was asked for by name cannot be used here.

    An explicit request is never downgraded silently: this is an input error.
    """

    def __init__(self, backend: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"backend {backend} is not available: {reason}",
                         backend=backend, hint=hint)
        self.reason = reason


class CageError(SuperviseError):
    """A system call on a cage failed. The message names the call and the path."""


class NotLinux(SuperviseError):
    """agent-supervise needs Linux (cgroups, prctl, /proc)."""

    exit_code = 2


def syscall_error(call: str, path: str | None, err: OSError, **fields) -> CageError:
    """Build a :class:`CageError` that names the failing call, like tini does."""
    where = f"{call}({path})" if path else call
    return CageError(f"{where} failed: {err.strerror or err}", path=path, **fields)
