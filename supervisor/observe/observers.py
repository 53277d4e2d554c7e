"""Loop tickers that report without holding anything up: ``state.json`` for
``agent-supervise status``, RESOURCES lines for logs, and downsampled memory samples
in ``events.jsonl`` for ``agent-supervise report``."""

from __future__ import annotations

from agent_supervise.observe.printer import stderr_line
from agent_supervise.units import format_size


class StateWriter:
    """Replaces ``state.json`` atomically (write, then rename) every ``interval``."""

    def __init__(self, snapshotter, interval: float = 1.0) -> None:
        self.snapshotter = snapshotter
        self.interval = interval
        self._last = None

    def __call__(self, sup, final: bool = False) -> None:
        now = sup.clock()
        if final or self._last is None or now - self._last >= self.interval:
            self._last = now
            sup.rundir.write_json("state.json", self.snapshotter.take(sup))


def resources_line(snap: dict) -> str:
    s, c = snap["system"], snap["counts"]
    return (
        f"RESOURCES: CPU={s['cpu_percent']:.1f}% MEM={s['mem_percent']:.1f}% "
        f"AVAIL={format_size(s['available'], short=True)} AGENTS={c['running']} "
        f"QUEUED={c['queued']} "
        f"MODE={snap['mode']} BREAKER={snap['breaker']}"
    )


class ResourceLines:
    """Every ``interval``, one RESOURCES line (for CI logs and terminals without a TTY)."""

    def __init__(self, snapshotter, interval: float = 5.0, write=None) -> None:
        self.snapshotter = snapshotter
        self.interval = interval
        self.write = write or stderr_line
        self._last = None

    def __call__(self, sup, final: bool = False) -> None:
        now = sup.clock()
        if final or (self._last is not None and now - self._last < self.interval):
            return
        self._last = now
        self.write(resources_line(self.snapshotter.take(sup)))


class MemorySamples:
    """Downsampled memory of each running agent, as ``sample`` events: written when it
    moved by ``step`` of its cap since the last one, or ``every`` seconds at least."""

    def __init__(self, interval: float = 0.25, step: float = 0.02, every: float = 5.0) -> None:
        self.interval, self.step, self.every = interval, step, every
        self._last_tick = None
        self._sent: dict[str, tuple[float, int]] = {}

    def __call__(self, sup, final: bool = False) -> None:
        now = sup.clock()
        if final or (self._last_tick is not None and now - self._last_tick < self.interval):
            return
        self._last_tick = now
        for task_id, run in list(sup.engine.runs.items()):
            usage = run.usage
            t, last = self._sent.get(task_id, (None, None))
            limit = run.task.memory_limit
            if last is None or abs(usage - last) >= self.step * limit or now - t >= self.every:
                self._sent[task_id] = (now, usage)
                sup.events.emit("sample", task=task_id, usage=usage, limit=limit)
        for task_id in list(self._sent):
            if task_id not in sup.engine.runs:
                del self._sent[task_id]


def describe(snap: dict) -> str:
    """One line for ``status`` when there is no terminal table."""
    c = snap["counts"]
    return (
        f"run {snap['run_id']}: {c['running']} running, {c['queued']} queued, "
        f"{c['done']} done, {c['failed']} failed; supervisor RSS "
        f"{format_size(snap['system']['supervisor_rss'])}"
    )
