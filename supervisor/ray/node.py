"""The node side of ``--engine ray``: one Ray task runs one agent through the same
cage, watchdog and exit reasons as a local run, on whichever node Ray placed it.

Ray's ``memory=`` request only places the task (Ray never enforces it), so the cap is
enforced here, by this node's kernel, exactly as ``agent-supervise run`` does it:
the same launch sequence (:func:`agent_supervise.run.launch.launch`) and Loop, driven
from this generator so it can report while the agent runs.

The task is a streaming generator. It yields ``started`` (pid, cage, node),
``sample`` records (usage, peak, new checkpoint lines) about once a second, and
one ``ended`` record: the Outcome plus the tails of the agent's stdout and stderr,
since no shared filesystem is assumed. Orders from the driver (interrupt, stop,
kill) come through a small actor that the loop polls without blocking
(:mod:`agent_supervise.ray.control`): ``ray.cancel`` would lose the last record.

Ray runs tasks in the worker's main thread, and the agent is spawned from it: its
``PR_SET_PDEATHSIG`` fires only when that thread (the worker process) exits. What the
agent leaves behind when the worker dies is removed by its guard (:mod:`agent_supervise.ray.files`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from agent_supervise import limits
from agent_supervise.creds import resolve
from agent_supervise.errors import CageRefused, SuperviseError
from agent_supervise.linux import become_subreaper
from agent_supervise.outcome import Outcome, Reason
from agent_supervise.ray.control import Orders
from agent_supervise.ray.files import Scratch, clean_scratch, dismiss_guard, spawn_guard
from agent_supervise.run.escape import EscapeWatch
from agent_supervise.run.launch import Request, launch
from agent_supervise.run.loop import Loop
from agent_supervise.run.spawn import Spawner

SAMPLE_S = 1.0  # how often usage goes back to the driver


@dataclass(frozen=True)
class Job:
    """Everything the node needs to run one attempt of one task (picklable)."""

    key: str  # the control actor's key: run id / task id / attempt
    task_id: str
    cmd: tuple
    memory: int
    timeout: float | None
    grace: float
    poll: float
    cwd: str
    env: dict = field(default_factory=dict)
    user: str | None = None
    group: str | None = None
    backend: str = "auto"
    rlimit: str = "data"
    cgroup_root: str | None = None
    allow_rlimit: bool = False
    log_tail: int = 8 << 20
    checkpoint_seed: bytes = b""  # the task's checkpoint so far (bounded tail)
    runtime_hints: bool = True  # tell Node, Go and the JVM the cap (run/hints.py)


_BACKENDS: dict = {}  # per worker process: probed once, reused by its next tasks


def node_label() -> str:
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return f"node {ray.util.get_node_ip_address()} ({ctx.get_node_id()[:8]})"
    except Exception:  # noqa: BLE001 - a label only
        pass
    return f"node {os.uname().nodename}"


def node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001
        return None


def node_backend(job: Job):
    """This node's cage mechanism; refuse an rlimit-only node unless allowed. Also
    clean what agents of dead workers left here (cages, scratch folders)."""
    key = (job.backend, job.rlimit, job.cgroup_root)
    if key not in _BACKENDS:
        _BACKENDS[key] = limits.select_backend(
            job.backend, rlimit=job.rlimit, cgroup_root=job.cgroup_root
        )
    backend = _BACKENDS[key]
    if backend.name == "rlimit" and not job.allow_rlimit:
        why = "; ".join(
            f"{p.name}: {p.detail}"
            for p in limits.probe_all(rlimit=job.rlimit, cgroup_root=job.cgroup_root)
            if p.name != "rlimit"
        )
        raise CageRefused(
            f"no cgroup cage can be made here ({why}); refusing an rlimit-only cage",
            hint="set supervisor.ray.allow_rlimit: true to accept it",
        )
    become_subreaper()
    backend.clean_stale()
    clean_scratch()
    return backend


def janitor(backend: str, rlimit: str, cgroup_root: str | None) -> str:
    """Run by the driver on a node whose worker died under an agent: kill and remove
    what that agent left (its cage's processes, its scratch folder)."""
    found = limits.select_backend(backend, rlimit=rlimit, cgroup_root=cgroup_root)
    stale = found.clean_stale()
    return f"{node_label()}: {len(stale)} stale cages, {clean_scratch()} scratch folders"


def run_on_node(job: Job, control=None):
    """The Ray task (a generator): run ``job`` caged here, report, clean up."""
    where = node_label()
    t0 = time.monotonic()
    try:
        backend = node_backend(job)
        creds = resolve(job.user, job.group)
    except SuperviseError as err:
        yield ended(job, Reason.SETUP_FAILED, f"{where}: {err}", t0)
        return
    scratch = Scratch(job)
    try:
        yield from _supervise(job, backend, creds, scratch, Orders(control, job.key), where)
    finally:
        scratch.remove()


def ended(job: Job, reason: Reason, detail: str, t0: float, backend: str = "ray") -> dict:
    """The ``ended`` record of an agent that never ran."""
    outcome = Outcome.never_started(
        reason,
        cmd=job.cmd,
        backend=backend,
        limit=job.memory,
        duration_s=time.monotonic() - t0,
        detail=detail,
        agent=job.task_id,
    )
    return {"kind": "ended", "outcome": outcome, "node": node_id()}


def _supervise(job, backend, creds, scratch, orders, where):
    received: list[int] = []

    def on_signal(signum: int) -> None:  # forwarded to the agent, and remembered
        received.append(signum)
        loop.interrupt_all(signum)

    # reap_foreign=False: zombies that are not the agent's belong to Ray, not to us.
    loop = Loop(reap_foreign=False, on_interrupt=on_signal)
    loop.catch_signals()  # ray.cancel arrives as SIGINT: forward it like a terminal's ^C
    run = guard = None
    t0 = time.monotonic()
    try:
        if orders.fetch(t0, wait=5.0):  # stopped while it waited for a node
            yield ended(job, Reason.CANCELLED, f"{where}: stopped before it started", t0)
            return
        env = {
            **os.environ,
            **job.env,
            "AGENT_RUN_DIR": scratch.path,
            "AGENT_CHECKPOINT_FILE": scratch.checkpoint,
            **(creds.env() if creds else {}),
        }

        def stdio():
            out_fd, err_fd = scratch.open_logs()
            return out_fd, err_fd, (out_fd, err_fd)

        def guard_and_files(cage) -> None:
            nonlocal guard
            guard = spawn_guard(cage, scratch.path)
            if creds:  # as in a local run, the agent owns only its checkpoint file
                os.chown(scratch.checkpoint, creds.uid, creds.gid)

        req = Request(
            tuple(job.cmd),
            job.task_id,
            job.memory,
            limits.DEFAULT_PIDS_LIMIT,
            env,
            job.grace,
            job.timeout,
            job.poll,
            creds=creds,
            cwd=job.cwd,
            stdin=subprocess.DEVNULL,
            stdio=stdio,
            agent=job.task_id,
            runtime_hints=job.runtime_hints,
        )
        with Spawner() as spawner:
            started = launch(
                req, backend, loop, spawner, EscapeWatch(loop.table), before_spawn=guard_and_files
            )
        if isinstance(started, Outcome):
            started.detail = f"{where}: {started.detail}" if started.detail else where
            started.duration_s = time.monotonic() - t0
            yield {"kind": "ended", "outcome": started, "node": node_id()}
            return
        run = started
        cage, proc = run.cage, run.proc
        yield {
            "kind": "started",
            "pid": proc.pid,
            "cage": cage.name,
            "backend": cage.backend,
            "node": node_id(),
            "where": where,
        }
        next_sample = t0 + SAMPLE_S
        while run.outcome is None:
            loop.step(0.1)
            now = time.monotonic()
            for cause, sig, cause_signal, *why in orders.fetch(now):
                if cause == Reason.INTERRUPTED.value:
                    run.interrupted(sig, now)
                else:
                    run.detail = run.detail or (why[0] if why else "")
                    run.stop(Reason(cause), sig, now, cause_signal=cause_signal)
            lines = scratch.new_checkpoints()
            if run.outcome is None and (lines or now >= next_sample):
                next_sample = now + SAMPLE_S
                yield {
                    "kind": "sample",
                    "usage": run.watchdog.last_usage,
                    "peak": run.watchdog.peak,
                    "checkpoint": lines,
                }
        out = run.outcome
        proc.returncode = out.status if out.status is not None else -(out.signal or 0)
        out.detail = f"{where}; {out.detail}" if out.detail else where
        yield {
            "kind": "ended",
            "outcome": out,
            "node": node_id(),
            "stdout": Scratch.tail(scratch.out, job.log_tail),
            "stderr": Scratch.tail(scratch.err, job.log_tail),
            "checkpoint": scratch.new_checkpoints(final=True),
            "orders_lost": orders.lost,
        }
    finally:
        if run is not None and run.outcome is None:  # closed or failed mid-run: no orphan
            run.stop(Reason.STOPPED, signal.SIGKILL, time.monotonic())
            deadline = time.monotonic() + 10
            while run.outcome is None and time.monotonic() < deadline:
                loop.step(0.05)
        if guard is not None:  # after the files are gone: the guard is the fallback
            scratch.remove()
            dismiss_guard(guard)
        loop.close()
        if any(s in (signal.SIGTERM, signal.SIGHUP) for s in received):
            os.kill(os.getpid(), signal.SIGTERM)  # Ray wants this worker gone: let it go
