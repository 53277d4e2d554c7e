"""The launch sequence, written once: cage -> environment (with the runtime hints)
-> spawn -> (on failure: release the cage) -> attach -> watch.

This is the only place an agent is spawned, and the rule it keeps is the project's
promise: no agent runs outside a cage. The cage exists before the child does, the
child enters it before exec (:mod:`agent_supervise.run.spawn`), and a spawn that
fails gives its cage back at once. ``agent-supervise run``
(:func:`~agent_supervise.run.single.run_agent`), the local engine and its pools
(:class:`~agent_supervise.fleet.engine.LocalEngine`) and a Ray node
(:mod:`agent_supervise.ray.node`) all start agents through :func:`launch`; what
differs between them is data in the :class:`Request` and two small hooks.

An agent that never started is an :class:`~agent_supervise.outcome.Outcome` from
:meth:`Outcome.never_started <agent_supervise.outcome.Outcome.never_started>`, the
one constructor of such outcomes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent_supervise.errors import CageError
from agent_supervise.outcome import Outcome, Reason
from agent_supervise.run.hints import runtime_hints
from agent_supervise.run.lifecycle import AgentRun
from agent_supervise.run.reaper import CAGE_ENV
from agent_supervise.run.spawn import SpawnFailed
from agent_supervise.run.states import RunSpec

# typing.TYPE_CHECKING, without importing typing on every start (type checkers
# read any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent_supervise.agents.spec import Task
    from agent_supervise.creds import Credentials
    from agent_supervise.limits.base import Backend, Cage
    from agent_supervise.run.escape import EscapeWatch
    from agent_supervise.run.loop import Loop
    from agent_supervise.run.spawn import Spawner

#: Opens the agent's stdout and stderr once its cage exists: (stdout, stderr, the
#: descriptors to close after the spawn, whatever its result).
Stdio = Callable[[], "tuple[Any, Any, tuple[int, ...]]"]


@dataclass(frozen=True)
class Request:
    """One agent to start: what it runs, its caps, its environment and stdio."""

    cmd: tuple[str, ...]
    label: str  # the cage's name ends with it
    memory: int
    pids: int  # the process cap; 0: none
    env: Mapping[str, str]  # everything but the cage marker, added here
    grace: float
    timeout: float | None
    poll: float
    creds: Credentials | None = None
    cwd: str | None = None
    stdin: Any = None
    stdout: Any = None
    stderr: Any = None
    stdio: Stdio | None = None  # instead of stdout/stderr: opened after the cage
    foreground_tty: int | None = None  # `run` in a terminal: the agent's job gets it
    task: Task | None = None  # the fleet's task, kept on the run
    agent: str | None = None  # named in a never-started outcome
    memory_high: int | None = None  # the soft limit, below ``memory``
    runtime_hints: bool = True  # tell Node, Go and the JVM the cap (run/hints.py)


def launch(
    req: Request,
    backend: Backend,
    loop: Loop,
    spawner: Spawner,
    escape: EscapeWatch,
    *,
    clock: Callable[[], float] = time.monotonic,
    before_spawn: Callable[[Cage], None] | None = None,
    cage_errors: bool = False,
) -> AgentRun | Outcome:
    """Start ``req`` in a new cage of ``backend`` and have ``loop`` watch it.

    Returns the watched :class:`AgentRun`, or the Outcome of an agent that never
    started (no cage: ``setup_failed``; the spawn failed: its reason). With
    ``cage_errors`` a cage that cannot be made raises its CageError instead (``run``
    reports it as the supervisor's own failure). ``before_spawn(cage)`` runs once the
    cage exists (a Ray node's guard, files the agent's user must own)."""
    t0 = clock()
    try:
        cage = backend.create(
            req.label, req.memory, pids=req.pids, uid=req.creds.uid if req.creds else None
        )
        if req.memory_high is not None and req.memory_high < req.memory:
            try:
                cage.set_high(req.memory_high)
            except BaseException:
                cage.release()
                raise
    except CageError as err:
        if cage_errors:
            raise
        return _never(req, Reason.SETUP_FAILED, str(err), backend.name, clock() - t0)
    env = {**req.env, CAGE_ENV: cage.name}
    if req.runtime_hints:
        hints, note = runtime_hints(env, req.memory)
        env.update(hints)
        cage.notes.append(note)
    stdout, stderr = req.stdout, req.stderr
    close: tuple[int, ...] = ()
    started = clock()
    try:
        if req.stdio is not None:
            stdout, stderr, close = req.stdio()
        if before_spawn is not None:
            before_spawn(cage)
        proc = spawner.spawn(
            req.cmd,
            cage,
            env=env,
            cwd=req.cwd,
            stdin=req.stdin,
            stdout=stdout,
            stderr=stderr,
            creds=req.creds,
            grace=req.grace,
            foreground_tty=req.foreground_tty,
        )
    except SpawnFailed as failed:
        cage.release()
        return _never(req, failed.reason, failed.detail, cage.backend, clock() - t0)
    finally:
        for fd in close:
            os.close(fd)
    cage.attach(proc.pid)
    spec = RunSpec(req.cmd, req.memory, req.label, req.timeout, req.grace, req.poll)
    run = AgentRun(spec, cage, proc.pid, started, escape=escape, task=req.task)
    run.proc = proc
    loop.watch(run)
    return run


def _never(req: Request, reason: Reason, detail: str, backend: str, duration: float) -> Outcome:
    return Outcome.never_started(
        reason,
        cmd=req.cmd,
        backend=backend,
        limit=req.memory,
        detail=detail,
        agent=req.agent,
        duration_s=duration,
    )
