"""Warm agent pools: long-lived workers that take one task after another.

An agent with ``pool: {size, recycle_above, max_tasks}`` runs as up to ``size``
workers, each its own caged process under the agent's hard cap. The supervisor
writes one JSON task per line to a worker's stdin and reads one JSON result per
line from its stdout (the README documents the protocol). A worker serves the next
task of its agent as soon as it answers; it is *recycled* (stdin closed, then
SIGTERM, grace, SIGKILL) when its memory after a task is above ``recycle_above``
or it reached ``max_tasks``, as Celery's ``worker_max_memory_per_child`` does.
A worker that dies mid-task loses that task, which the fleet requeues.

A worker that breaks the protocol (an answer that is not JSON, or for another task,
or longer than :data:`MAX_LINE`; an answer with no task; stdout closed while it
lives on) fails the task it has with a detail that starts with
:data:`PROTOCOL_ERROR` and names the cause, and is retired: the pool starts a fresh
worker for the next task. It is never the worker's *process* ending that decides,
so such a task does not end ``stopped`` (that is the self-guard's word).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent_supervise.outcome import Outcome, Reason

if TYPE_CHECKING:
    from agent_supervise.agents.spec import Task
    from agent_supervise.run.lifecycle import AgentRun

#: A result line longer than this is a protocol error (it would have to be held).
MAX_LINE = 1 << 20
PROTOCOL_ERROR = "pool protocol error: "


class ProtocolError(Exception):
    """The worker broke the protocol; ``str()`` says how."""


@dataclass
class Worker:
    agent: str
    name: str  # "<agent>-w<k>"
    run: AgentRun  # its process tree in its cage
    stdin_fd: int
    stdout_fd: int
    buffer: bytes = b""
    job: PooledRun | None = None
    tasks_done: int = 0
    retiring: str | None = None  # why it is being recycled
    eof: bool = False  # it closed its stdout
    to_send: bytes = b""  # the rest of a task line the stdin pipe did not take yet


@dataclass
class PooledRun:
    """One task executing on a worker (a seams.RunView: the worker's process, the
    task's own peak)."""

    task: Task
    worker: Worker
    started: float
    deadline: float | None
    outcome: Outcome | None = None
    lost: bool = False  # the worker died under it: requeue it
    peak: int = 0
    result_path: str = ""
    fields: dict = field(default_factory=dict)
    node: str | None = None  # a pool is local
    frozen = False  # its worker serves the pool's other tasks too: never frozen

    @property
    def pid(self) -> int:
        return self.worker.run.pid

    @property
    def cage_name(self) -> str:
        return self.worker.run.cage.name

    @property
    def backend(self) -> str:
        return self.worker.run.cage.backend

    @property
    def state(self) -> str:
        return f"on {self.worker.name}"

    @property
    def usage(self) -> int:
        return self.worker.run.watchdog.last_usage

    @property
    def throttled(self) -> bool:
        return self.worker.run.throttled


def task_line(task) -> bytes:
    return (
        json.dumps({"task": task.id, "vars": dict(task.vars), "attempt": task.attempt}) + "\n"
    ).encode()


def read_lines(worker: Worker) -> list[bytes] | None:
    """Lines now readable on the worker's stdout; None at EOF. Raises ProtocolError
    for a line over MAX_LINE, complete or not (the buffer never holds more than
    MAX_LINE plus one read)."""
    try:
        chunk = os.read(worker.stdout_fd, 65536)
    except BlockingIOError:
        return []
    if not chunk:
        return None
    worker.buffer += chunk
    *lines, worker.buffer = worker.buffer.split(b"\n")
    if len(worker.buffer) > MAX_LINE or any(len(line) > MAX_LINE for line in lines):
        worker.buffer = b""
        raise ProtocolError(f"reply line over {MAX_LINE} bytes")
    return [line for line in lines if line.strip()]


def judge(job: PooledRun, line: bytes) -> tuple[Reason, str]:
    """What a result line says about the job: (reason, detail)."""
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
        return Reason.FAILED, f"{PROTOCOL_ERROR}not a JSON line: {line[:80]!r}"
    if not isinstance(answer, dict) or answer.get("task") != job.task.id:
        return Reason.FAILED, f"{PROTOCOL_ERROR}expected an answer for {job.task.id}"
    if answer.get("ok") is True:
        return Reason.OK, ""
    return Reason.FAILED, str(answer.get("error", "the worker said ok: false"))[:500]


def recycle_reason(worker: Worker, pool, usage: int) -> str | None:
    if worker.tasks_done >= pool.max_tasks:
        return f"served {worker.tasks_done} tasks (max_tasks {pool.max_tasks})"
    if pool.recycle_above is not None and usage > pool.recycle_above:
        return (
            f"memory {usage >> 20} MiB after a task is above recycle_above "
            f"{pool.recycle_above >> 20} MiB"
        )
    return None
