"""Keeping warm pools: spawning workers, handing them tasks, reading their answers,
recycling them. Lives inside the local engine; see :mod:`agent_supervise.pool`."""

from __future__ import annotations

import os
import select
import signal

from .outcome import Outcome, Reason, exit_code_for
from .pool import PooledRun, Worker, judge, read_lines, recycle_reason, task_line


class PoolKeeper:
    def __init__(self, engine, emit) -> None:
        self.engine = engine
        self.emit = emit
        self.workers: dict[str, list[Worker]] = {}
        self._count: dict[str, int] = {}
        self.done: list[PooledRun] = []  # jobs that ended since the last step

    def all(self) -> list[Worker]:
        return [w for ws in self.workers.values() for w in ws]

    def state(self, task) -> str:
        """``idle`` (a worker can take it now), ``spawn`` (a new worker may start,
        subject to admission), or ``busy`` (all workers of the agent are busy)."""
        ws = [w for w in self.workers.get(task.agent, []) if not w.retiring]
        if any(w.job is None for w in ws):
            return "idle"
        return "spawn" if len(self.workers.get(task.agent, [])) < task.pool.size else "busy"

    def start(self, task, rundir):
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
            run = self.engine.launch(task, name, rundir, stdin=to_child, stdout=from_child,
                                     timeout=None, err_log=f"{name}.err",
                                     extra_env={"AGENT_ID": name, "AGENT_POOL_WORKER": "1"})
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
        self.emit("worker_started", worker=name, agent=task.agent, pid=run.pid,
                  cage=run.cage.name, limit=task.memory_limit)
        return worker

    def _assign(self, worker: Worker, task, rundir) -> PooledRun:
        now = self.engine.clock()
        job = PooledRun(task, worker, now, now + task.timeout if task.timeout else None,
                        peak=worker.run.cage.usage(),
                        result_path=rundir.log_paths(task.id, task.attempt)[0])
        worker.job = job
        try:
            os.write(worker.stdin_fd, task_line(task))
        except (BlockingIOError, BrokenPipeError) as err:
            self._fail_worker(worker, f"could not hand it the task: {err}")
        return job

    def _readable(self, worker: Worker) -> None:
        lines = read_lines(worker)
        if lines is None:  # EOF or an overlong line: the worker is no longer usable
            self.engine.loop.unregister(worker.stdout_fd)
            if worker.job is not None:
                self._fail_worker(worker, "closed its stdout, or wrote an overlong line")
            return
        for line in lines:
            job = worker.job
            if job is None:
                self._fail_worker(worker, f"answered without a task: {line[:80]!r}")
                return
            reason, detail = judge(job, line)
            with open(job.result_path, "ab") as f:
                f.write(line + b"\n")
            self._finish(job, reason, detail)
            if reason is not Reason.OK and detail.startswith("protocol error"):
                self._retire(worker, detail)

    def _finish(self, job: PooledRun, reason: Reason, detail: str, status=None) -> None:
        worker, now = job.worker, self.engine.clock()
        usage = worker.run.cage.usage() if worker.run.status is None else 0
        job.peak = max(job.peak, usage)
        job.outcome = Outcome(reason, exit_code_for(reason, status or 1), job.task.cmd,
                              worker.run.cage.backend, job.task.memory_limit,
                              peak_bytes=job.peak, duration_s=now - job.started,
                              pid=worker.run.pid, status=0 if reason is Reason.OK else status,
                              peak_source="sampled", detail=detail, agent=job.task.id)
        worker.job = None
        worker.tasks_done += 1
        self.done.append(job)
        if worker.run.status is None and not worker.retiring:
            why = recycle_reason(worker, job.task.pool, usage)
            if why:
                self._retire(worker, why)

    def _fail_worker(self, worker: Worker, why: str) -> None:
        self._retire(worker, why)
        worker.run.stop(Reason.STOPPED, signal.SIGTERM, self.engine.clock())

    def _retire(self, worker: Worker, why: str) -> None:
        """Recycle: close its stdin (a worker exits at EOF); the grace, then SIGTERM."""
        if worker.retiring:
            return
        worker.retiring = why
        os.close(worker.stdin_fd)
        worker.stdin_fd = -1
        worker.run.kill_at = self.engine.clock() + worker.run.spec.grace
        worker.run.state = "stopping"
        self.emit("recycled", worker=worker.name, agent=worker.agent, why=why,
                  tasks_done=worker.tasks_done)

    def worker_ended(self, run) -> None:
        """The worker's process tree is gone; a task it was running is lost."""
        worker = run.worker
        self.workers[worker.agent].remove(worker)
        if worker.stdin_fd >= 0:
            os.close(worker.stdin_fd)
        self.engine.loop.unregister(worker.stdout_fd)
        os.close(worker.stdout_fd)
        out = run.outcome
        if worker.job is not None:
            job = worker.job
            reason = out.reason if out.reason is not Reason.OK else Reason.FAILED
            job.lost = out.reason not in (Reason.TIMEOUT, Reason.INTERRUPTED,
                                          Reason.STOPPED, Reason.EVICTED)
            self._finish(job, reason, f"worker {worker.name} ended {out.reason.value} "
                         "during the task", status=out.status)
        self.emit("worker_exited", worker=worker.name, agent=worker.agent,
                  reason=out.reason.value, retiring=worker.retiring,
                  tasks_done=worker.tasks_done, peak_bytes=out.peak_bytes)

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
