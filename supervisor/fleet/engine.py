"""The local engine: starts tasks as caged agents on this machine and drives them.

The fleet's dispatch logic (:mod:`agent_supervise.fleet.supervisor`) talks to an engine only
through :class:`~agent_supervise.fleet.seams.Engine`, so its rules are tested with a
scripted fake engine, and another engine (a cluster) can take this one's place.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import cast

from agent_supervise import limits
from agent_supervise.agents.spec import SupervisorSettings, Task
from agent_supervise.checkpoint import last_line
from agent_supervise.creds import resolve
from agent_supervise.errors import CageError
from agent_supervise.fleet.pool import PooledRun
from agent_supervise.fleet.poolkeeper import PoolKeeper
from agent_supervise.fleet.seams import RunView
from agent_supervise.linux import become_subreaper, raise_open_files_limit
from agent_supervise.outcome import Outcome, Reason
from agent_supervise.run.escape import EscapeWatch
from agent_supervise.run.launch import Request, launch
from agent_supervise.run.lifecycle import AgentRun
from agent_supervise.run.loop import Loop
from agent_supervise.run.spawn import Spawner


def agent_env(task, rundir) -> dict[str, str]:
    """What every agent finds in its environment (see the README)."""
    env = {
        "AGENT_ID": task.id,
        "AGENT_RUN_DIR": rundir.path,
        "AGENT_CHECKPOINT_FILE": rundir.checkpoint_path(task.id),
        "AGENT_ATTEMPT": str(task.attempt),
    }
    if task.attempt > 1:
        resume = last_line(env["AGENT_CHECKPOINT_FILE"])
        if resume is not None:
            env["AGENT_RESUME_FROM"] = resume
    return env


class LocalEngine:
    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        backend=None,
        clock=time.monotonic,
        on_interrupt=None,
        emit=None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.backend = backend or limits.select_backend(
            settings.backend, rlimit=settings.rlimit, cgroup_root=settings.cgroup_root
        )
        become_subreaper()
        raise_open_files_limit()
        self.stale = self.backend.clean_stale()
        #: The fleet's budget as a parent cage of every agent's (cgroup1, cgroup2).
        self.budget = (
            None
            if settings.memory_budget is None
            else self.backend.budget_cage(settings.memory_budget)
        )
        self.loop = Loop(clock=clock, on_interrupt=on_interrupt)
        self.spawner = Spawner()
        self.escape = EscapeWatch(self.loop.table)
        self._creds: dict = {}
        self._environ_raw: dict | None = None  # see _environ()
        self._environ_text: dict[str, str] = {}
        self._headroom: int | None = None  # see headroom()
        self.runs: dict[str, AgentRun | PooledRun] = {}  # PooledRun: a pooled task
        self.pools = PoolKeeper(self, emit or (lambda event, **fields: None))

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def wake(self) -> None:
        self.loop.wake()

    def catch_signals(self) -> bool:
        return self.loop.catch_signals()

    def start(self, task: Task, rundir) -> AgentRun | PooledRun | Outcome:
        """Cage and spawn ``task`` (or hand it to a pool worker). An Outcome means it
        could not start."""
        if task.pool is not None:
            run = self.pools.start(task, rundir)
        else:
            run = self.launch(
                task, task.id, rundir, stdin=subprocess.DEVNULL, stdout=None, timeout=task.timeout
            )
        if not isinstance(run, Outcome):
            self.runs[task.id] = run
            if isinstance(run, AgentRun) and self._headroom is not None:
                self._headroom += max(0, run.spec.limit - run.watchdog.last_usage)
            else:  # a pool may have started or reused a worker: count again
                self._headroom = None
        return run

    def pool_state(self, task: Task) -> str | None:
        """For a pooled task: idle, spawn or busy (see PoolKeeper.state)."""
        return self.pools.state(task) if task.pool is not None else None

    def launch(
        self,
        task: Task,
        label: str,
        rundir,
        *,
        stdin,
        stdout,
        timeout,
        err_log: str | None = None,
        extra_env=None,
    ) -> AgentRun | Outcome:
        """Start ``task.cmd`` through the launch sequence (run/launch.py)."""
        creds = self.credentials(task)
        env = {
            **self._environ(),
            **task.env,
            **agent_env(task, rundir),
            **(extra_env or {}),
            **(creds.env() if creds else {}),
        }

        def stdio():
            # A pool worker has its own stderr log (err_log); its stdout is the protocol
            # pipe. A full run folder gives /dev/null and a note (see rundir.py).
            out_fd, err_fd = rundir.open_logs(task.id, task.attempt, err_log)
            return (out_fd if stdout is None else stdout), err_fd, (out_fd, err_fd)

        def give_checkpoint(cage) -> None:
            if creds:  # the agent may not write in the root-owned run folder: its file
                rundir.give_file(rundir.checkpoint_path(task.id), creds.uid, creds.gid)

        req = Request(
            task.cmd,
            label,
            task.memory_limit,
            task.pids_limit,
            env,
            task.grace,
            timeout,
            self.settings.poll_interval,
            creds=creds,
            cwd=task.cwd,
            stdin=stdin,
            stdio=stdio,
            task=task,
            agent=task.id,
            memory_high=task.memory_high,
            runtime_hints=task.runtime_hints,
        )
        return launch(
            req,
            self.backend,
            self.loop,
            self.spawner,
            self.escape,
            clock=self.clock,
            before_spawn=give_checkpoint,
        )

    def _environ(self) -> dict[str, str]:
        """os.environ as a plain dict, decoded again only when it changed: decoding
        its ~40 entries was a tenth of the cost of starting an agent."""
        raw = getattr(os.environ, "_data", None)  # CPython's bytes view, kept in step
        if raw is None:
            return dict(os.environ)
        if raw != self._environ_raw:
            self._environ_raw, self._environ_text = dict(raw), dict(os.environ)
        return self._environ_text

    def credentials(self, task):
        """The task's user and group, resolved once (BadInput: unknown, or not root)."""
        key = (task.user, task.group)
        if key not in self._creds:
            self._creds[key] = resolve(task.user, task.group)
        return self._creds[key]

    def step(self, max_wait: float | None) -> list[RunView]:
        """Drive everything; return the task runs (plain or pooled) that ended."""
        ended: list[RunView] = []
        for run in self.loop.step(max_wait):
            out = run.outcome
            assert out is not None  # the loop returns the runs that ended
            # Reaped by the loop: tell Popen, so it never waits on the pid again.
            run.proc.returncode = out.status if out.status is not None else -(out.signal or 0)
            if run.worker is not None:
                self.pools.worker_ended(run)
            else:
                ended.append(cast(RunView, run))  # an engine's runs carry their task
        self.pools.tick(self.clock())
        ended += self.pools.done
        self.pools.done = []
        for done in ended:
            self.runs.pop(done.task.id, None)
        self._headroom = None  # samples, ends and pool workers changed it
        return ended

    def headroom(self) -> int:
        """Memory promised to agents and not used yet: sum of cap - usage.

        Usage changes only while the loop steps, so the sum is kept between steps
        and each start adds its own share: a burst of 1,000 starts costs O(n), not
        O(n²)."""
        if self._headroom is None:
            self._headroom = sum(
                max(0, run.spec.limit - run.watchdog.last_usage) for run in self.processes()
            )
        return self._headroom

    def processes(self) -> list[AgentRun]:
        """Every AgentRun alive: task runs and pool workers."""
        return [r for r in self.runs.values() if isinstance(r, AgentRun)] + [
            w.run for w in self.pools.all()
        ]

    def retire_pools(self, why: str) -> bool:
        """Recycle idle workers (end of the run). True while any worker is left."""
        self.pools.retire_all(why)
        return bool(self.pools.all())

    def freeze(self, run: RunView) -> bool:
        own = self.runs[run.task.id]
        return isinstance(own, AgentRun) and own.freeze(self.clock())

    def thaw(self, run: RunView) -> float:
        own = self.runs.get(run.task.id)
        return own.thaw(self.clock()) if isinstance(own, AgentRun) else 0.0

    def evict(self, run: RunView) -> None:
        """The pressure rule: stop this agent to free memory (SIGTERM, grace, SIGKILL)."""
        own = self.runs[run.task.id]
        target = own.worker.run if isinstance(own, PooledRun) else own
        target.stop(Reason.EVICTED, signal.SIGTERM, self.clock())

    def stop_all(self, cause: Reason, sig: int = signal.SIGTERM, cause_signal=None) -> None:
        now = self.clock()
        for run in self.processes():
            run.stop(cause, sig, now, cause_signal=cause_signal)

    def interrupt_all(self, signum: int) -> None:
        now = self.clock()
        for run in self.processes():
            run.interrupted(signum, now)

    def budget_peak(self) -> int | None:
        return self.budget.peak() if self.budget is not None else None

    def close(self) -> None:
        self.loop.close()
        self.spawner.close()
        if self.budget is not None:  # its agents' cages are gone: rmdir it
            try:
                self.budget.release()
            except CageError:  # an agent's cage was left (see finish): the next start's
                pass
