"""The local engine: starts tasks as caged agents on this machine and drives them.

The fleet's dispatch logic (:mod:`agent_supervise.fleet`) talks to an engine only
through ``start``, ``step``, ``headroom``, ``stop_all`` and ``close``, so its rules
are tested with a scripted fake engine, and another engine (a cluster) can take
this one's place.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from . import limits
from .agents.spec import SupervisorSettings, Task
from .errors import CageError
from .lifecycle import AgentRun, RunSpec
from .linux import become_subreaper
from .loop import Loop
from .outcome import Outcome, Reason, exit_code_for
from .reaper import CAGE_ENV
from .spawn import Spawner, SpawnFailed


class LocalEngine:
    def __init__(self, settings: SupervisorSettings, *, backend=None, clock=time.monotonic,
                 on_interrupt=None) -> None:
        self.settings = settings
        self.clock = clock
        self.backend = backend or limits.select_backend(
            settings.backend, rlimit=settings.rlimit, cgroup_root=settings.cgroup_root)
        become_subreaper()
        self.stale = self.backend.clean_stale()
        self.loop = Loop(clock=clock, on_interrupt=on_interrupt)
        self.spawner = Spawner()
        self.runs: dict[str, AgentRun] = {}  # task id -> run

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "name", "?")

    def wake(self) -> None:
        self.loop.wake()

    def start(self, task: Task, rundir) -> AgentRun | Outcome:
        """Cage and spawn ``task``. An Outcome means it could not start."""
        now = self.clock()
        try:
            cage = self.backend.create(task.id, task.memory_limit)
        except CageError as err:
            return self._not_started(task, Reason.SETUP_FAILED, str(err), now)
        out_fd, err_fd = rundir.open_logs(task.id)
        env = {**os.environ, **task.env, CAGE_ENV: cage.name, "AGENT_ID": task.id,
               "AGENT_RUN_DIR": rundir.path}
        try:
            proc = self.spawner.spawn(task.cmd, cage, env=env, cwd=task.cwd,
                                      stdin=subprocess.DEVNULL, stdout=out_fd,
                                      stderr=err_fd)
        except SpawnFailed as failed:
            cage.release()
            detail = failed.why if failed.reason is Reason.NOT_EXECUTABLE else (
                "" if failed.reason is Reason.NOT_FOUND else failed.message)
            return self._not_started(task, failed.reason, detail, now, cage.backend)
        finally:
            os.close(out_fd)
            os.close(err_fd)
        cage.attach(proc.pid)
        spec = RunSpec(task.cmd, task.memory_limit, task.id, task.timeout, task.grace,
                       self.settings.poll_interval)
        run = AgentRun(spec, cage, proc.pid, now)
        run.proc, run.task = proc, task
        self.loop.watch(run)
        self.runs[task.id] = run
        return run

    def _not_started(self, task, reason, detail, now, backend=None) -> Outcome:
        return Outcome(reason=reason, exit_code=exit_code_for(reason), cmd=task.cmd,
                       backend=backend or self.backend_name, limit_bytes=task.memory_limit,
                       duration_s=self.clock() - now, detail=detail, agent=task.id)

    def step(self, max_wait: float | None) -> list[AgentRun]:
        ended = self.loop.step(max_wait)
        for run in ended:
            self.runs.pop(run.task.id, None)
            out = run.outcome
            # Reaped by the loop: tell Popen, so it never waits on the pid again.
            run.proc.returncode = out.status if out.status is not None else -(out.signal or 0)
        return ended

    def headroom(self) -> int:
        """Memory promised to running agents and not used yet: sum of cap - usage."""
        return sum(max(0, run.spec.limit - run.watchdog.last_usage)
                   for run in self.runs.values())

    def stop_all(self, cause: Reason, sig: int = signal.SIGTERM, cause_signal=None) -> None:
        now = self.clock()
        for run in self.runs.values():
            run.stop(cause, sig, now, cause_signal=cause_signal)

    def interrupt_all(self, signum: int) -> None:
        now = self.clock()
        for run in self.runs.values():
            run.interrupted(signum, now)

    def close(self) -> None:
        self.loop.close()
