"""Run one agent under a hard memory cap: the spawn -> cage -> watch -> reap path.

:func:`run_agent` is the Python API behind ``agent-supervise run``; fleets use the
same pieces (:class:`~agent_supervise.run.spawn.Spawner`, the cage, the :class:`Loop`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from agent_supervise import limits
from agent_supervise.creds import Credentials, resolve
from agent_supervise.errors import BadInput, SuperviseError
from agent_supervise.linux import become_subreaper, raise_open_files_limit
from agent_supervise.outcome import Outcome
from agent_supervise.run.escape import EscapeWatch
from agent_supervise.run.launch import Request, launch
from agent_supervise.run.loop import Loop
from agent_supervise.run.spawn import Spawner
from agent_supervise.units import parse_duration, parse_size


@dataclass
class RunOptions:
    """Validated settings for one run. Build it with :meth:`parse` from user text."""

    memory: int = 50 << 20
    backend: str = "auto"
    rlimit: str = "data"
    cgroup_root: str | None = None
    timeout: float | None = None
    grace: float = 2.0
    poll: float = 0.1
    env: dict | None = None
    cwd: str | None = None
    creds: Credentials | None = None
    stale_cleaned: list = field(default_factory=list)
    pids_limit: int = limits.DEFAULT_PIDS_LIMIT  # 0: no process cap
    runtime_hints: bool = True  # tell Node, Go and the JVM the cap (run/hints.py)

    @classmethod
    def parse(
        cls,
        *,
        memory="50M",
        backend="auto",
        rlimit="data",
        cgroup_root=None,
        timeout=None,
        grace="2s",
        poll="100ms",
        env=None,
        cwd=None,
        user=None,
        group=None,
        pids_limit=limits.DEFAULT_PIDS_LIMIT,
        runtime_hints=True,
    ) -> RunOptions:
        """Parse sizes and durations like systemd, resolve the user; raise BadInput
        naming the value."""
        timeout_s = (
            parse_duration(timeout, what="--timeout", allow_zero=True)
            if timeout is not None
            else None
        )
        try:
            creds = resolve(user, group)
        except BadInput as err:
            raise BadInput(f"--user/--group: {err.message}", hint=err.hint) from None
        return cls(
            memory=parse_size(memory, what="--memory"),
            backend=backend,
            rlimit=rlimit,
            cgroup_root=cgroup_root,
            timeout=timeout_s or None,
            grace=parse_duration(grace, what="--grace", allow_zero=True),
            poll=parse_duration(poll, what="--poll"),
            env=env,
            cwd=cwd,
            creds=creds,
            pids_limit=_parse_pids_limit(pids_limit),
            runtime_hints=runtime_hints,
        )


def _parse_pids_limit(value) -> int:
    """``--pids-limit``: a whole number of tasks, 0 for none."""
    text = str(value).strip()
    if not text.isdigit() or len(text) > 7:
        raise BadInput(
            f"--pids-limit {value!r}: not a whole number of processes (at most 9999999)",
            hint="try 4096; 0 turns the process cap off",
        )
    return int(text)


#: How often `run` in a terminal looks whether ^Z stopped its agent.
STOP_CHECK_S = 0.1


def prepare_backend(opts: RunOptions) -> limits.Backend:
    """Choose and probe the backend, become a subreaper, clean stale cages."""
    backend = limits.select_backend(opts.backend, rlimit=opts.rlimit, cgroup_root=opts.cgroup_root)
    become_subreaper()
    raise_open_files_limit()
    opts.stale_cleaned = backend.clean_stale()
    return backend


def run_agent(
    cmd,
    opts: RunOptions | None = None,
    *,
    stdin=None,
    stdout=None,
    stderr=None,
    label: str | None = None,
    backend: limits.Backend | None = None,
    clock=time.monotonic,
    on_started=None,
    terminal=None,
) -> Outcome:
    """Run ``cmd`` in a cage until it and everything it started are gone.

    Raises :class:`~agent_supervise.errors.BadInput` for bad settings (nothing is
    started). Every other ending, including "command not found", is an
    :class:`Outcome` with an exact reason and a shell-style exit code.

    ``terminal`` (a :class:`~agent_supervise.run.terminal.Terminal`): make the agent that
    terminal's foreground job, as a shell would; it is restored when the run ends.
    """
    cmd = tuple(cmd)
    if not cmd:
        raise SuperviseError("no command given")
    opts = opts or RunOptions()
    backend = backend or prepare_backend(opts)
    label = label or os.path.basename(cmd[0])
    loop = Loop(clock=clock)
    loop.catch_signals()  # from here on, even during spawn (main thread only)
    try:
        env = dict(os.environ if opts.env is None else opts.env)
        env.update(opts.creds.env() if opts.creds else {})
        req = Request(
            cmd,
            label,
            opts.memory,
            opts.pids_limit,
            env,
            opts.grace,
            opts.timeout,
            opts.poll,
            creds=opts.creds,
            cwd=opts.cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            foreground_tty=terminal.fd if terminal else None,
            runtime_hints=opts.runtime_hints,
        )
        with Spawner() as spawner:
            run = launch(
                req, backend, loop, spawner, EscapeWatch(loop.table), clock=clock, cage_errors=True
            )
        if isinstance(run, Outcome):
            return run
        cage, proc = run.cage, run.proc
        if terminal is not None:
            terminal.started(proc.pid, init=cage.init_fd is not None)
        if on_started:
            on_started(run)
        while run.outcome is None:
            if terminal is None:
                loop.step()
            else:  # a ^Z shows as a stopped group, not as an event: look often
                loop.step(max_wait=STOP_CHECK_S)
                if run.outcome is None and run.status is None:
                    terminal.check_stopped(loop.table, cage.members())
        proc.returncode = (
            run.outcome.status if run.outcome.status is not None else -(run.outcome.signal or 0)
        )  # reaped by us: keep Popen from waiting
        return run.outcome
    finally:
        loop.close()
        if terminal is not None:
            terminal.restore()
