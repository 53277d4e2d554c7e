"""One agent run as a state machine: running -> stopping -> killing -> done.

:class:`AgentRun` makes no system calls of its own: it acts through its cage
(usage, signal, kill) and is driven by the loop with the current time, so its
rules are unit-tested with a fake cage and a fake clock.

Rules:

* The agent is one unit. When its root process exits, whatever it left in the
  cage gets SIGTERM, ``grace``, SIGKILL. When the kernel OOM-kills anything in the
  cage, everything left is SIGKILLed at once (cgroup v1 kills only the largest
  process; v2's ``memory.oom.group`` kills all, and this makes sure of it).
* Over the cap (watchdog), timeout, or a signal to the supervisor: SIGTERM (or the
  forwarded signal) to every process, ``grace``, then SIGKILL. A memory breach that
  keeps growing during the grace is killed at once: a cap that waits is no cap.
* A cage whose own limits changed under the supervisor (the agent, as root, wrote
  to them: see limits/guard.py) and a process found outside its cage (escape.py)
  stop the agent at once as ``escaped``; a fork refused at the process cap stops it
  at once as ``pids_exceeded``. Both are looked for on every watchdog tick (the
  escape check once a second) and once more when the run ends.
* The first cause that stopped the agent is its reason (verdict.py says the rest).
"""

from __future__ import annotations

import os
import signal

from agent_supervise.outcome import Outcome, Reason
from agent_supervise.run.escape import ESCAPE_CHECK_S, EscapeState
from agent_supervise.run.states import RunSpec, RunState
from agent_supervise.run.stuck import AllocationWatch
from agent_supervise.run.verdict import outcome_of
from agent_supervise.run.watchdog import ThrashDetector, Watchdog
from agent_supervise.units import format_size

# typing.TYPE_CHECKING, without importing typing on every start (type checkers
# read any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent_supervise.agents.spec import Task
    from agent_supervise.fleet.pool import Worker


#: How often an exited agent's cage is checked for leftovers while it drains.
DRAIN_CHECK_S = 0.005
#: After SIGKILL, how long to wait for the cage to empty before giving up on it
#: (processes in uninterruptible sleep cannot die until their I/O returns).
KILL_PATIENCE_S = 10.0
#: A root killed by SIGKILL nobody here sent, with no OOM counted yet: re-read the
#: counters for this long, since the kernel bumps them after sending the kill.
SETTLE_S = 0.1
#: During the grace after a memory breach, growth beyond this fraction of the cap
#: gets SIGKILL without waiting for the grace to end.
ESCALATE_FRACTION = 0.05


class AgentRun:
    """The life of one agent process tree inside one cage."""

    def __init__(
        self, spec: RunSpec, cage, pid: int, now: float, escape=None, task: Task | None = None
    ) -> None:
        self.spec = spec
        self.cage = cage
        self.pid = pid
        self.escape = escape  # an EscapeWatch: cage members vs the process tree
        self.escape_state = EscapeState(at=now + ESCAPE_CHECK_S)  # and its next look
        #: Descendants adopted by the supervisor (shared with an rlimit cage's set).
        self.orphans: set[int] = cage.orphans
        self.started = now
        self.ended: float | None = None
        self.state = RunState.RUNNING
        self.cause: Reason | None = None
        self.cause_signal: int | None = None
        self.kill_at: float | None = None
        self.killed_at: float | None = None
        self.settle_until: float | None = None
        self.breach_usage = 0
        self.status: int | None = None  # raw waitpid status of the root
        self.oom_seen = False
        self.leftovers = 0
        self.emptied = False  # finished() saw the cage empty
        self.check_at = now
        self.outcome: Outcome | None = None
        self.task: Task | None = task  # the fleet's Task, when run by an engine
        #: The spawned child (Popen-like), kept so that it never waits on the pid itself.
        self.proc: Any = None
        #: The pool worker this process is (poolkeeper.py); None for a task's own run.
        self.worker: Worker | None = None
        self.watchdog = Watchdog(spec.limit, spec.poll, adaptive=not cage.kernel_enforced)
        self.watchdog.start(now)
        self.thrash = ThrashDetector(spec.limit)
        self.allocs = AllocationWatch(cage.refuse_limit, cage.refuse_name)
        self.detail = ""
        self.deadline = now + spec.timeout if spec.timeout else None
        self.frozen_at: float | None = None  # frozen by the pressure ladder since
        self.frozen_s = 0.0  # time frozen before, in all
        self._timeout_left: float | None = None  # the deadline, paused while frozen

    # -- events ---------------------------------------------------------------
    def sample(self, now: float) -> None:
        if self.cause is None and self._cage_breached(now):
            return
        usage = self.cage.usage()
        over = self.watchdog.observe(now, usage)
        if over and self.cause is None:
            self.breach_usage = usage
            self.stop(Reason.MEMORY_EXCEEDED, signal.SIGTERM, now)
        elif self.cause is None and self.thrash.observe(now, usage, self.cage.refaults):
            self.detail = (
                f"thrashing at its cap: refaulting "
                f"{format_size(int(self.thrash.rate))}/s for "
                f"{self.thrash.window:g}s"
            )
            self.stop(Reason.MEMORY_EXCEEDED, signal.SIGTERM, now)
        elif (
            self.cause is None
            and not self.frozen
            and (stuck := self.allocs.observe(now, self.cage))
        ):
            self.detail = stuck  # an rlimit refused it and it waits forever (stuck.py)
            self.stop(Reason.MEMORY_EXCEEDED, signal.SIGTERM, now)
        elif (
            self.cause is Reason.MEMORY_EXCEEDED
            and self.state is RunState.STOPPING
            and usage > self.breach_usage + ESCALATE_FRACTION * self.spec.limit
        ):
            self._kill(now)

    def _cage_breached(self, now: float) -> bool:
        """Tampered limits (escaped) or a fork refused at the cap (pids_exceeded):
        a few preads on kept-open fds; the agent is killed at once."""
        cause, why = self._breach()
        if why and cause is not None:
            self.detail = why
            self.stop(cause, signal.SIGKILL, now)
        return bool(why)

    def _breach(self) -> tuple[Reason | None, str | None]:
        why = self.cage.tampered()
        if why:
            return Reason.ESCAPED, why
        why = self.cage.pids_exceeded()
        return (Reason.PIDS_EXCEEDED, why) if why else (None, None)

    def notified(self, now: float) -> None:
        """The cage's notification fd woke: an OOM kill means the agent is done for."""
        if self.cage.on_notify():
            self.oom_seen = True
            self.stop(Reason.OOM_KILLED, signal.SIGKILL, now)

    def root_exited(self, status: int, now: float, leftovers: int = 0) -> None:
        """The root exited at ``now``. ``leftovers``: processes it left that its
        namespace's init has already stopped (see limits/isolation.py)."""
        self.thaw(now)  # (the kernel's OOM killer ended it frozen): the rest must drain
        self.status = status
        self.ended = now
        if self.cause is None and self.state is RunState.RUNNING:
            self.state = RunState.DRAINING
            self.leftovers = leftovers
            if not self.cage.is_empty():
                self.leftovers = self.cage.signal(signal.SIGTERM)
                self.kill_at = now + self.spec.grace
        if (
            os.WIFSIGNALED(status)
            and os.WTERMSIG(status) == signal.SIGKILL
            and self.cause is None
            and not self.oom_seen
        ):
            self.settle_until = now + SETTLE_S

    def interrupted(self, signum: int, now: float) -> None:
        """The supervisor got SIGINT/SIGTERM/SIGHUP: forward it; a second one kills."""
        if self.cause is Reason.INTERRUPTED:
            self._kill(now)
        else:
            self.stop(Reason.INTERRUPTED, signum, now, cause_signal=signum)

    def tick(self, now: float) -> None:
        """Act on whatever is due at ``now``."""
        if self.status is None and self.deadline is not None and now >= self.deadline:
            self.stop(Reason.TIMEOUT, signal.SIGTERM, now)
        if self.kill_at is not None and now >= self.kill_at:
            self._kill(now)
        elif self.state is RunState.KILLING and not self.cage.is_empty():
            self.cage.kill()  # processes forked while the first kill ran
        if self.status is None and now >= self.watchdog.next_due:
            self.sample(now)
        if self.escape is not None and self.escape_state.due(now, self.status is None):
            self._check_escape(now)
        if self.state is RunState.KILLING or self.status is not None:
            self.check_at = now + DRAIN_CHECK_S  # poll the draining cage

    def _check_escape(self, now: float) -> bool:
        """One look of the two-look escape check (escape.py): kill established
        escapees, stop the agent. True while suspects wait or escapees were found."""
        state = self.escape_state
        if state.suspects:
            found = self.escape.second_look(self, state)
        else:
            found = self.escape.first_look(self, state)
        state.schedule(now)
        if found:
            self.escape.kill(found)
            if self.cause is None:
                seen = "; ".join(f"{s.pid} ({s.where})" for s in found[:3])
                self.detail = f"{len(found)} processes left the cage: {seen}"
                self.stop(Reason.ESCAPED, signal.SIGKILL, now)
        return bool(found or state.suspects)

    def _escape_pending(self, now: float) -> bool:
        """At the end, with the cage empty: is anything of the tree still outside?"""
        if self.escape_state.suspects and now < self.escape_state.at:
            return True  # the second look is not due yet
        return self._check_escape(now)

    # -- the pressure ladder (fleet/ladder.py) ---------------------------------
    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None

    def freeze(self, now: float) -> bool:
        """Freeze the tree (limits/freezer.py). Its timeout pauses: a frozen agent
        cannot work towards it, so the time frozen does not count. False: not now
        (already frozen, stopping, or its main process has exited)."""
        if self.frozen or self.cause is not None or self.state is not RunState.RUNNING:
            return False
        self.cage.freeze()
        self.frozen_at = now
        if self.deadline is not None:
            self._timeout_left, self.deadline = max(0.0, self.deadline - now), None
        return True

    def thaw(self, now: float) -> float:
        """Let it run on; the time it was frozen (0.0: it was not)."""
        if self.frozen_at is None:
            return 0.0
        self.cage.thaw()
        took, self.frozen_at = now - self.frozen_at, None
        self.frozen_s += took
        if self._timeout_left is not None:
            self.deadline, self._timeout_left = now + self._timeout_left, None
        return took

    def stop(self, cause: Reason, sig: int, now: float, cause_signal: int | None = None) -> None:
        if self.cause is not None or self.state in (RunState.KILLING, RunState.DONE):
            return
        self.thaw(now)  # a frozen task takes no signal but SIGKILL (v1: not even that)
        self.cause, self.cause_signal = cause, cause_signal
        if sig == signal.SIGKILL:
            self._kill(now)
        else:
            self.cage.signal(sig)
            self.state = RunState.STOPPING
            self.kill_at = now + self.spec.grace

    def retire(self, now: float) -> None:
        """A pool worker being recycled (its stdin was closed, so it should exit by
        itself): no signal and no cause, but killed at the end of the grace."""
        self.state, self.kill_at = RunState.STOPPING, now + self.spec.grace

    def _kill(self, now: float) -> None:
        self.thaw(now)
        self.cage.kill()
        self.state, self.kill_at = RunState.KILLING, None
        self.killed_at = self.killed_at or now

    # -- what the fleet reads (seams.RunView) ---------------------------------
    #: A local run is on this machine, and ends by its own doing.
    node: str | None = None
    lost = False

    @property
    def usage(self) -> int:
        return self.watchdog.last_usage

    @property
    def throttled(self) -> bool:
        return self.cage.throttled(self.watchdog.last_usage)

    @property
    def peak(self) -> int:
        return self.watchdog.peak

    @property
    def cage_name(self) -> str:
        return self.cage.name

    @property
    def backend(self) -> str:
        return self.cage.backend

    # -- scheduling -----------------------------------------------------------
    def next_due(self) -> float:
        times = [
            self.kill_at,
            self.deadline if self.status is None else None,
            self.watchdog.next_due if self.status is None else None,
            self.settle_until,
            self.escape_state.next_due(self.status is None),
        ]
        if self.state is RunState.KILLING or (
            self.status is not None and self.state is not RunState.DONE
        ):
            times.append(self.check_at)
        return (
            min(t for t in times if t is not None)
            if any(t is not None for t in times)
            else float("inf")
        )

    def finished(self, now: float) -> bool:
        """Root reaped and cage empty (or given up on); counters settled."""
        if self.status is None:
            return False
        if self.settle_until is not None:
            if self.cage.oom_kills() == 0 and now < self.settle_until:
                return False
            self.settle_until = None
        if self.cage.is_empty() and not (self.escape and self._escape_pending(now)):
            self.emptied = True  # finish() follows at once: no need to read it again
            return True
        return self.killed_at is not None and now - self.killed_at > KILL_PATIENCE_S

    # -- outcome (verdict.py) ---------------------------------------------------
    def finish(self, now: float) -> Outcome:
        """Read the final counters, release the cage and say how the run ended."""
        if self.cause is None:  # changed or hit since the last tick
            self.cause, why = self._breach()
            self.detail = why or self.detail
        self.outcome = outcome_of(self, now)
        self.state = RunState.DONE
        return self.outcome
