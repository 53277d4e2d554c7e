"""Exit reasons, their shell-style codes, and the outcome record of one agent run.

The codes follow the conventions scripts already understand: timeout(1) exits 124,
shells use 126 (not executable), 127 (not found) and 128+N (killed by signal N),
and Kubernetes/Docker report an OOM kill as 137 (128 + SIGKILL).
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field

from agent_supervise.units import format_duration, format_size


class TextEnum(str, enum.Enum):
    """An enum whose members are their text: equal to it, written as it in JSON and
    f-strings. For reasons and states, typed inside and plain text at the edges."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Reason(TextEnum):
    """Why an agent run ended. The value is what JSON and logs show."""

    OK = "ok"  # exited 0
    FAILED = "failed"  # exited non-zero on its own
    SIGNALED = "signaled"  # killed by a signal nobody here sent
    OOM_KILLED = "oom_killed"  # the kernel's OOM killer fired in the cage
    MEMORY_EXCEEDED = "memory_exceeded"  # the watchdog saw the tree over its cap
    PIDS_EXCEEDED = "pids_exceeded"  # a fork was refused at its process cap
    TIMEOUT = "timeout"  # ran longer than its timeout
    INTERRUPTED = "interrupted"  # the supervisor got SIGINT/SIGTERM/SIGHUP
    NOT_FOUND = "not_found"  # exec: no such file
    NOT_EXECUTABLE = "not_executable"  # exec: permission denied / bad format
    SETUP_FAILED = "setup_failed"  # the cage could not be made or entered
    STOPPED = "stopped"  # the supervisor stopped it (self-guard)
    EVICTED = "evicted"  # stopped to free memory (pressure rule)
    ESCAPED = "escaped"  # left its cage, or changed the cage's limits
    CANCELLED = "cancelled"  # never started: the fleet was stopped first
    LOST = "lost"  # its node died under it (Ray): how the agent itself ended is unknown

    # -- categories: what the policies and reports ask of a reason (one home) -------
    @property
    def memory_kill(self) -> bool:
        """Stopped at its own cap (kernel OOM or the watchdog): a memory retry, or a
        larger cap, may help."""
        return self in _MEMORY_KILLS

    @property
    def memory_ending(self) -> bool:
        """Ended for lack of memory: at its cap, or evicted because the machine ran
        short. What the circuit breaker counts and the report marks."""
        return self in _MEMORY_ENDINGS

    @property
    def ordinary_failure(self) -> bool:
        """A failure another try may not repeat: non-zero exit, a signal, a timeout,
        eviction, a lost node (after its one free requeue). Counts against
        ``retries``."""
        return self in _ORDINARY_FAILURES

    @property
    def final(self) -> bool:
        """No retry can change it: success, a command that cannot run or be caged,
        an escape, the process cap, and endings the supervisor chose."""
        return not (self.memory_kill or self.ordinary_failure)


_MEMORY_KILLS = frozenset({Reason.OOM_KILLED, Reason.MEMORY_EXCEEDED})
_MEMORY_ENDINGS = _MEMORY_KILLS | {Reason.EVICTED}
_ORDINARY_FAILURES = frozenset(
    {Reason.FAILED, Reason.SIGNALED, Reason.TIMEOUT, Reason.EVICTED, Reason.LOST}
)


#: Fixed codes; FAILED, SIGNALED and INTERRUPTED depend on the status or signal.
FIXED_CODES = {
    Reason.OK: 0,
    Reason.OOM_KILLED: 128 + signal.SIGKILL,
    Reason.MEMORY_EXCEEDED: 128 + signal.SIGKILL,
    Reason.PIDS_EXCEEDED: 128 + signal.SIGKILL,
    Reason.TIMEOUT: 124,
    Reason.NOT_FOUND: 127,
    Reason.NOT_EXECUTABLE: 126,
    Reason.SETUP_FAILED: 125,
    Reason.EVICTED: 128 + signal.SIGKILL,
    Reason.ESCAPED: 128 + signal.SIGKILL,
}


def exit_code_for(
    reason: Reason, status: int | None = None, signum: int | None = None
) -> int | None:
    """The shell-style exit code for a reason.

    ``status`` is the agent's own exit status (FAILED); ``signum`` the signal that
    killed it (SIGNALED) or that the supervisor received (INTERRUPTED).
    """
    if reason in FIXED_CODES:
        return FIXED_CODES[reason]
    if reason in (Reason.CANCELLED, Reason.LOST):
        return None  # it never ran, or its end was never seen: no status to report
    if reason is Reason.FAILED:
        return status or 1
    return 128 + (signum or signal.SIGKILL)


def signal_name(signum: int | None) -> str:
    if signum is None:
        return "?"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class Outcome:
    """How one agent run ended. ``to_json()`` is the documented JSON object."""

    reason: Reason
    exit_code: int | None
    cmd: tuple[str, ...]
    backend: str
    limit_bytes: int
    peak_bytes: int | None = None
    duration_s: float = 0.0
    pid: int | None = None
    status: int | None = None  # the agent's own exit status, if it exited
    signal: int | None = None  # the signal that ended it, if any
    oom_kills: int = 0
    peak_source: str = "kernel"  # "kernel" (cage counter) or "sampled" (watchdog)
    detail: str = ""  # extra facts for the message (leftovers killed…)
    agent: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK

    @classmethod
    def never_started(
        cls,
        reason: Reason,
        *,
        cmd,
        backend: str,
        limit: int,
        detail: str = "",
        agent: str | None = None,
        duration_s: float = 0.0,
    ) -> Outcome:
        """The outcome of an agent that never ran: no cage, a failed spawn, cancelled
        first. The one constructor of such outcomes (no pid, no peak, no status)."""
        return cls(
            reason=reason,
            exit_code=exit_code_for(reason),
            cmd=tuple(cmd),
            backend=backend,
            limit_bytes=limit,
            duration_s=duration_s,
            detail=detail,
            agent=agent,
        )

    def to_json(self) -> dict:
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}  # asdict is slow
        data["reason"] = self.reason.value
        data["cmd"] = list(self.cmd)
        data["notes"] = list(self.notes)
        data["duration_s"] = round(self.duration_s, 3)
        data["signal"] = signal_name(self.signal) if self.signal else None
        return data

    def message(self) -> str:
        """The one line printed to stderr when the run did not end ``ok``."""
        cmd = shell_text(self.cmd)
        limit = format_size(self.limit_bytes)
        peak = format_size(self.peak_bytes)
        sampled = " sampled" if self.peak_source == "sampled" else ""
        facts = f"peak {peak}{sampled}, backend {self.backend}"
        text = {
            Reason.OK: f"{cmd} finished",
            Reason.FAILED: f"{cmd} exited with status {self.status}",
            Reason.SIGNALED: f"{cmd} was killed by {signal_name(self.signal)}",
            Reason.OOM_KILLED: f"{cmd} killed by the kernel: memory limit {limit} reached "
            f"({facts})",
            Reason.MEMORY_EXCEEDED: f"{cmd} killed: memory limit {limit} exceeded ({facts})",
            Reason.PIDS_EXCEEDED: f"{cmd} killed at its process limit (backend {self.backend})",
            Reason.TIMEOUT: f"{cmd} timed out after {format_duration(self.duration_s)}",
            Reason.INTERRUPTED: f"{cmd} stopped: agent-supervise received "
            f"{signal_name(self.signal)}",
            Reason.NOT_FOUND: f"{cmd}: command not found",
            Reason.NOT_EXECUTABLE: f"{cmd}: not executable"
            + (f" ({self.detail})" if self.detail else ""),
            Reason.SETUP_FAILED: f"{cmd} not started",
            Reason.STOPPED: f"{cmd} stopped by agent-supervise",
            Reason.EVICTED: f"{cmd} evicted: the machine ran short of memory",
            Reason.ESCAPED: f"{cmd} broke out of its cage: stopped",
            Reason.CANCELLED: f"{cmd} never started",
        }[self.reason]
        if self.reason in (Reason.FAILED, Reason.SIGNALED) and self.detail:
            # Its own end with a memory note (run/stuck.py): show the cage's facts.
            text += f" ({facts})"
        if self.detail and self.reason is not Reason.NOT_EXECUTABLE:
            text += f"; {self.detail}"
        return text


def shell_text(cmd, width: int = 80) -> str:
    """The command quoted as a shell would show it, shortened for one line."""
    import shlex  # for messages only: off the start-up path

    text = shlex.join(cmd)
    if len(text) > width:
        text = text[: width - 3] + "..."
    return f"'{text}'" if "'" not in text else text
