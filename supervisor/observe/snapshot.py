"""What a fleet is doing right now, as plain data: the dashboard, ``status`` (through
``state.json``) and the RESOURCES lines all render this one snapshot."""

from __future__ import annotations

import datetime as dt
import os

import psutil

from agent_supervise.fleet.seams import RunView

#: Ended agents stay on the dashboard this long.
RECENT_S = 30.0


class Snapshotter:
    """Builds snapshots of a live Supervisor; one per loop iteration at most."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._cached: tuple[float, dict] | None = None
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def take(self, sup) -> dict:
        now = sup.clock()
        if self._cached and self._cached[0] == now:
            return self._cached[1]
        vm = psutil.virtual_memory()
        running = [self._running(run, now, sup) for run in list(sup.engine.runs.values())]
        alive = {a["pid"] for a in running}
        for pid in list(self._procs):
            if pid not in alive:
                del self._procs[pid]
        ended = [
            dict(entry, state="ended", ended_ago=round(now - t, 1))
            for t, entry in list(sup.recent)
            if now - t <= RECENT_S
        ]
        results = sup.results
        snap = {
            "run_id": sup.rundir.run_id,
            "run_dir": sup.rundir.path,
            "fleet": sup.fleet.path,
            "supervisor_pid": os.getpid(),
            "finished": sup.result is not None,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "t": round(now - sup.started_at, 2),
            "backend": sup.engine.backend_name,
            "mode": sup.policies.mode.mode,
            "breaker": sup.policies.breaker.state,
            "stopping": sup.stopping,
            "system": {
                "cpu_percent": psutil.cpu_percent(interval=None),
                "mem_percent": vm.percent,
                "available": vm.available,
                "supervisor_rss": sup.memory.own_rss(),
            },
            "counts": {
                "running": len(running),
                "queued": len(sup.queue),
                "retrying": sup.retrying,
                "done": results.counts["ok"],
                "failed": results.failed,
            },
            "agents": running + ended[::-1],
        }
        self._cached = (now, snap)
        return snap

    def _running(self, run: RunView, now: float, sup) -> dict:
        return {
            "task": run.task.id,
            "agent": run.task.agent,
            "pid": run.pid,
            "state": "frozen" if run.frozen else run.state,
            "usage": run.usage,
            "limit": run.task.memory_limit,
            "peak": run.peak,
            # A Ray run's pid is on its node: reading it here would read a stranger.
            "cpu_percent": None if run.node else self._cpu(run.pid),
            "runtime": round(now - run.started, 1),
            "attempt": run.task.attempt,
            "checkpoint": sup.last_checkpoint.get(run.task.id),
        }

    def _cpu(self, pid: int | None) -> float | None:
        """CPU % of the agent's main process since the previous snapshot (None for an
        agent on another machine: its pid is not ours to read)."""
        if not pid:
            return None
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(interval=None)
                return None
            return proc.cpu_percent(interval=None)
        except psutil.Error:
            return None
