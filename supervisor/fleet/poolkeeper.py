"""Keeping warm pools: spawning workers, handing them tasks, reading their answers,
recycling them. Lives inside the local engine; see :mod:`agent_supervise.fleet.pool`."""

from __future__ import annotations

import os
import select
import signal

from agent_supervise.fleet.pool import PROTOCOL_ERROR as PROTOCOL
from agent_supervise.fleet.pool import (
    PooledRun,
    ProtocolError,
    Worker,
    judge,
    read_lines,
    recycle_reason,
    task_line,
)
from agent_supervise.outcome import Outcome, Reason, TextEnum, exit_code_for
from agent_supervise.rundir import RunDir


class PoolState(TextEnum):
    """What a pooled task would get now (PoolKeeper.state)."""

    IDLE = "idle"  # a worker can take it at once
    SPAWN = "spawn"  # a new worker may start, subject to admission
    BUSY = "busy"  # every worker of its agent is busy: it waits


class PoolKeeper:
    def __init__(self, engine, emit) -> None:
        self.engine = engine
        self.emit = emit
        self.workers: dict[str, list[Worker]] = {}
        self._count: dict[str, int] = {}
        self.done: list[PooledRun] = []  # jobs that ended since the last step
        self.rundir: RunDir | None = None  # where answers go (one run folder per run)

    def all(self) -> list[Worker]:
        return [w for ws in self.workers.values() for w in ws]

    def state(self, task) -> PoolState:
        """``idle`` (a worker can take it now), ``spawn`` (a new worker may start,
        subject to admission), or ``busy`` (all workers of the agent are busy)."""
        ws = [w for w in self.workers.get(task.agent, []) if not w.retiring]
        if any(w.job is None for w in ws):
            return PoolState.IDLE
        full = len(self.workers.get(task.agent, [])) >= task.pool.size
        return PoolState.BUSY if full else PoolState.SPAWN

    def start(self, task, rundir):
        self.rundir = rundir
        ws = [w for w in self.workers.get(task.agent, []) if not w.retiring and w.job is None]
        worker = ws[0] if ws else self._spawn(task, rundir)
        if isinstance(worker, Outcome):
            return worker
        return self._assign(worker, task, rundir)

    def _spawn(self, task, rundir):
        k = self._count[task.agent] = self._count.get(task.agent, 0) + 1
        name = f"{task.agent}-w{k}"
        to_child, stdin_fd = os.pipe2(os.O_CLOEXEC)
        stdout_fd, from_child = os.pipe2(os.O_CLOEXEC)
        try:
            run = self.engine.launch(
                task,
                name,
                rundir,
                stdin=to_child,
                stdout=from_child,
                timeout=None,
                err_log=f"{name}.err",
                extra_env={"AGENT_ID": name, "AGENT_POOL_WORKER": "1"},
            )
        finally:
            os.close(to_child)
            os.close(from_child)
        if isinstance(run, Outcome):
            os.close(stdin_fd)
            os.close(stdout_fd)
            return run
        os.set_blocking(stdin_fd, False)
        os.set_blocking(stdout_fd, False)
        worker = Worker(task.agent, name, run, stdin_fd, stdout_fd)
        run.worker = worker
        self.workers.setdefault(task.agent, []).append(worker)
        self.engine.loop.register(stdout_fd, select.EPOLLIN, lambda: self._readable(worker))
        self.emit(
            "worker_started",
            worker=name,
            agent=task.agent,
            pid=run.pid,
            cage=run.cage.name,
            limit=task.memory_limit,
        )
        return worker

    def _assign(self, worker: Worker, task, rundir) -> PooledRun:
        now = self.engine.clock()
        job = PooledRun(
            task,
            worker,
            now,
            now + task.timeout if task.timeout else None,
            peak=worker.run.cage.usage(),
            result_path=rundir.log_paths(task.id, task.attempt)[0],
        )
        worker.job = job
        worker.to_send = task_line(task)
        self._send(worker, watched=False)
        return job

    def _send(self, worker: Worker, watched: bool = True) -> None:
        """Hand the task line over; what the pipe does not take now (a line longer
        than the pipe's buffer) goes when the worker has read some."""
        try:
            n = os.write(worker.stdin_fd, worker.to_send)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:  # it is dying: its end decides about the task
            self._retire(worker, "its stdin closed")
            return
        worker.to_send = worker.to_send[n:]
        if worker.to_send and not watched:
            self.engine.loop.register(worker.stdin_fd, select.EPOLLOUT, lambda: self._send(worker))
        elif not worker.to_send and watched:
            self.engine.loop.unregister(worker.stdin_fd)

    def _readable(self, worker: Worker) -> None:
        try:
            lines = read_lines(worker)
        except ProtocolError as err:
            self.engine.loop.unregister(worker.stdout_fd)
            self._protocol_error(worker, str(err))
            return
        if lines is None:  # EOF: a crash (its end decides) or a worker gone deaf
            self.engine.loop.unregister(worker.stdout_fd)
            worker.eof = True
            if worker.job is not None:
                self._retire(worker, f"{PROTOCOL}closed its stdout during a task")
            return
        for line in lines:
            job = worker.job
            if job is None:
                self._protocol_error(worker, f"answered without a task: {line[:80]!r}")
                return
            reason, detail = judge(job, line)
            assert self.rundir is not None  # set by start(), before any worker answers
            self.rundir.append(job.result_path, line + b"\n")
            if detail.startswith(PROTOCOL):
                self._protocol_error(worker, detail[len(PROTOCOL) :])
                return
            self._finish(job, reason, detail)

    def _protocol_error(self, worker: Worker, detail: str) -> None:
        """The worker broke the protocol: its task fails now, naming the cause, and
        the worker is retired and stopped; the pool starts another for the next."""
        why = PROTOCOL + detail
        self._retire(worker, why)
        if worker.job is not None:
            self._finish(worker.job, Reason.FAILED, why)
        worker.run.stop(Reason.STOPPED, signal.SIGTERM, self.engine.clock())

    def _finish(self, job: PooledRun, reason: Reason, detail: str, status=None) -> None:
        worker, now = job.worker, self.engine.clock()
        usage = worker.run.cage.usage() if worker.run.status is None else 0
        job.peak = max(job.peak, usage)
        job.outcome = Outcome(
            reason,
            exit_code_for(reason, status or 1),
            job.task.cmd,
            worker.run.cage.backend,
            job.task.memory_limit,
            peak_bytes=job.peak,
            duration_s=now - job.started,
            pid=worker.run.pid,
            status=0 if reason is Reason.OK else status,
            peak_source="sampled",
            detail=detail,
            agent=job.task.id,
        )
        worker.job = None
        worker.tasks_done += 1
        self.done.append(job)
        if worker.run.status is None and not worker.retiring:
            why = recycle_reason(worker, job.task.pool, usage)
            if why:
                self._retire(worker, why)

    def _retire(self, worker: Worker, why: str) -> None:
        """Recycle: close its stdin (a worker exits at EOF); the grace, then SIGTERM."""
        if worker.retiring:
            return
        worker.retiring = why
        self.engine.loop.unregister(worker.stdin_fd)
        os.close(worker.stdin_fd)
        worker.stdin_fd = -1
        worker.run.retire(self.engine.clock())
        self.emit(
            "recycled",
            worker=worker.name,
            agent=worker.agent,
            why=why,
            tasks_done=worker.tasks_done,
        )

    def worker_ended(self, run) -> None:
        """The worker's process tree is gone; a task it was running is lost."""
        worker = run.worker
        self.workers[worker.agent].remove(worker)
        if worker.stdin_fd >= 0:
            self.engine.loop.unregister(worker.stdin_fd)
            os.close(worker.stdin_fd)
        self.engine.loop.unregister(worker.stdout_fd)
        os.close(worker.stdout_fd)
        out = run.outcome
        if worker.job is not None and worker.eof and run.cause is None and run.killed_at:
            # It closed its stdout and lived on until its retirement's SIGKILL: a
            # worker gone deaf, not a crash (which would have ended it by itself).
            self._finish(
                worker.job,
                Reason.FAILED,
                f"{PROTOCOL}closed its stdout during a task and did not exit",
            )
        elif worker.job is not None:
            job = worker.job
            reason = out.reason if out.reason is not Reason.OK else Reason.FAILED
            job.lost = out.reason not in (
                Reason.TIMEOUT,
                Reason.INTERRUPTED,
                Reason.STOPPED,
                Reason.EVICTED,
            )
            self._finish(
                job,
                reason,
                f"worker {worker.name} ended {out.reason.value} during the task",
                status=out.status,
            )
        self.emit(
            "worker_exited",
            worker=worker.name,
            agent=worker.agent,
            reason=out.reason.value,
            retiring=worker.retiring,
            tasks_done=worker.tasks_done,
            peak_bytes=out.peak_bytes,
        )

    def tick(self, now: float) -> None:
        """Per-task timeouts, and each job's peak from its worker's usage."""
        for worker in self.all():
            job = worker.job
            if job is None or worker.run.status is not None:
                continue
            job.peak = max(job.peak, worker.run.watchdog.last_usage)
            if job.deadline is not None and now >= job.deadline and worker.run.cause is None:
                worker.run.stop(Reason.TIMEOUT, signal.SIGTERM, now)

    def retire_all(self, why: str) -> None:
        for worker in self.all():
            if worker.job is None:
                self._retire(worker, why)
