"""Fakes for the fleet loop: a clock, a scripted memory source, a scripted engine."""

from __future__ import annotations


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMemory:
    """MemAvailable follows a script: a list of (from_time, bytes); own RSS is settable."""

    def __init__(self, clock, available=24 << 30, total=24 << 30, rss=30 << 20) -> None:
        self.clock = clock
        self.script = [(0.0, available)]
        self._total = total
        self.rss = rss

    def available(self) -> int:
        return [v for t, v in self.script if t <= self.clock.now][-1]

    def total(self) -> int:
        return self._total

    def own_rss(self) -> int:
        return self.rss

    def close(self) -> None:
        pass


class FakeRun:
    """A seams.RunView that runs for its scripted time."""

    node = None
    lost = False
    throttled = False
    frozen = False
    state = "running"
    backend = "fake"

    def __init__(self, task, pid: int, start: float, duration: float, reason, usage: int):
        self.task, self.pid, self.start = task, pid, start
        self.started = start
        self.end, self.reason, self.usage = start + duration, reason, usage
        self.peak = usage
        self.cage_name = f"fake.{task.id}"
        self.outcome = None
        self.stop_cause = None


class FakeEngine:
    """A seams.Engine that runs tasks on a fake clock: each agent's script says how
    long it runs and how it ends. ``step`` jumps the clock to the next exit (or by
    ``max_wait``)."""

    backend_name = "fake"
    stale: tuple = ()

    def __init__(self, clock, script=None, usage: int = 0) -> None:
        self.clock = clock
        self.script = {} if script is None else script  # agent -> (seconds, Reason)
        self.usage = usage
        self.runs: dict = {}
        self.started: list[str] = []
        self.max_running = 0
        self.interrupts: list[int] = []
        self._pid = 1000

    def wake(self) -> None:
        pass

    def catch_signals(self) -> bool:
        return False  # the tests deliver signals through interrupt_all

    def retire_pools(self, why: str) -> bool:
        return False

    def start(self, task, rundir):
        from agent_supervise.outcome import Reason

        seconds, reason = self.script.get(task.agent, (1.0, Reason.OK))
        self._pid += 1
        run = FakeRun(task, self._pid, self.clock.now, seconds, reason, self.usage)
        self.runs[task.id] = run
        self.started.append(task.id)
        self.max_running = max(self.max_running, len(self.runs))
        return run

    def step(self, max_wait):
        from agent_supervise.outcome import Outcome, Reason, exit_code_for

        nxt = min((r.end for r in self.runs.values()), default=float("inf"))
        self.clock.now = min(nxt, self.clock.now + (max_wait or 0.1))
        ended = [r for r in self.runs.values() if r.end <= self.clock.now]
        for r in ended:
            reason = r.stop_cause or r.reason
            r.outcome = Outcome(
                reason,
                exit_code_for(reason, 1, 15),
                r.task.cmd,
                "fake",
                r.task.memory_limit,
                peak_bytes=r.usage,
                duration_s=self.clock.now - r.start,
                pid=r.pid,
                status=0 if reason is Reason.OK else None,
            )
            del self.runs[r.task.id]
        return ended

    def processes(self) -> list:
        return list(self.runs.values())

    def pool_state(self, task):
        return None

    def freeze(self, run) -> bool:
        """Its scripted clock stops while frozen."""
        if run.frozen:
            return False
        run.frozen, run.left, run.end = True, run.end - self.clock.now, float("inf")
        return True

    def thaw(self, run) -> float:
        run.frozen, run.end = False, self.clock.now + run.left
        return 0.0

    def evict(self, run) -> None:
        from agent_supervise.outcome import Reason

        run.stop_cause, run.end = Reason.EVICTED, min(run.end, self.clock.now + 0.5)

    def headroom(self) -> int:
        return sum(r.task.memory_limit - r.usage for r in self.runs.values())

    def budget_peak(self) -> int | None:
        return None

    def stop_all(self, cause, sig=15, cause_signal=None) -> None:
        for r in self.runs.values():
            r.stop_cause, r.end = cause, min(r.end, self.clock.now + 0.5)

    def interrupt_all(self, signum: int) -> None:
        from agent_supervise.outcome import Reason

        self.interrupts.append(signum)
        self.stop_all(Reason.INTERRUPTED)

    def close(self) -> None:
        pass
