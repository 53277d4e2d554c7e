"""How one run ended: its cage's final counters, read once, and the outcome.

The first cause that stopped the agent is its reason (lifecycle.py records it).
With none, the kernel's word comes next: an OOM kill counted in the cage (or seen on
its notification fd) is ``oom_killed`` whoever the kernel picked; then the root's
own end: a signal nobody here sent is ``signaled``, an exit ``ok`` or ``failed``. A
``failed`` or ``signaled`` end near the cap, or after an rlimit refused the agent's
allocations, is called a memory death in its detail (stuck.py): never a kill that
did not happen.
"""

from __future__ import annotations

import os

from agent_supervise.outcome import Outcome, Reason, exit_code_for
from agent_supervise.units import format_duration

# typing.TYPE_CHECKING, without importing typing on every start (type checkers
# read any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent_supervise.run.lifecycle import AgentRun


def outcome_of(run: AgentRun, now: float) -> Outcome:
    """Read the final counters, release the cage (unless processes survived
    SIGKILL) and say how the run ended."""
    cage = run.cage
    oom = cage.oom_kills()
    kernel_peak = cage.peak()
    notes = list(cage.notes)
    if run.frozen_s:
        notes.append(
            f"frozen {format_duration(run.frozen_s)} for memory pressure "
            "(not counted toward its timeout)"
        )
    remaining = [] if run.emptied else cage.members()
    if remaining:
        notes.append(
            f"{len(remaining)} processes survived SIGKILL (uninterruptible "
            "sleep?); the cage was left for the next start to clean"
        )
    else:
        cage.release()
    reason, signum, status = reason_of(run, oom)
    detail = run.detail
    if run.leftovers and run.cause is None:
        detail = f"{run.leftovers} leftover processes were stopped"
    peak = kernel_peak if kernel_peak is not None else run.watchdog.peak
    if reason in (Reason.FAILED, Reason.SIGNALED):  # its own end: was it memory?
        note = run.allocs.death_note(peak, run.spec.limit)
        detail = "; ".join(d for d in (detail, note) if d)
    return Outcome(
        reason=reason,
        exit_code=exit_code_for(reason, status, signum),
        cmd=run.spec.cmd,
        backend=cage.backend,
        limit_bytes=run.spec.limit,
        peak_bytes=peak,
        duration_s=(run.ended or now) - run.started,
        pid=run.pid,
        status=status,
        signal=signum,
        oom_kills=oom or int(run.oom_seen),
        peak_source="kernel" if kernel_peak is not None else "sampled",
        detail=detail,
        agent=run.spec.label or None,
        notes=notes,
    )


def reason_of(run: AgentRun, oom: int) -> tuple[Reason, int | None, int | None]:
    """(reason, signal, exit status) of a reaped run."""
    assert run.status is not None  # called once the root was reaped
    raw = run.status
    status = os.WEXITSTATUS(raw) if os.WIFEXITED(raw) else None
    killed_by = os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else None
    if run.cause is not None:
        return run.cause, run.cause_signal or killed_by, status
    if oom or run.oom_seen:
        return Reason.OOM_KILLED, killed_by, status
    if killed_by is not None:
        return Reason.SIGNALED, killed_by, None
    return (Reason.OK if status == 0 else Reason.FAILED), None, status
