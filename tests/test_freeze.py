"""The pressure ladder's freeze step (fleet/ladder.py, limits/freezer.py): with real
agents on every backend, and its rules on the scripted engine."""

from __future__ import annotations

import itertools
import sys
import time

from agent_supervise.agents.loader import parse_fleet
from agent_supervise.fleet.supervisor import Supervisor
from agent_supervise.memsource import MemorySource
from agent_supervise.rundir import read_events

from fleetfakes import FakeClock, FakeEngine, FakeMemory

MiB = 1 << 20
#: Writes a monotonic stamp every 20 ms for ``argv[2]`` seconds of its own running
#: (time it spends stopped does not count), into ``argv[1]``/$AGENT_ID.
TICKER = (
    "import os, sys, time\n"
    "name = os.path.join(sys.argv[1], os.environ['AGENT_ID'])\n"
    "out, left, last = open(name, 'w', buffering=1), float(sys.argv[2]), "
    "time.monotonic()\n"
    "while left > 0:\n"
    "    time.sleep(0.02); now = time.monotonic()\n"
    "    left -= min(now - last, 0.1); last = now; out.write(f'{now}\\n')\n"
)


class Squeeze(MemorySource):
    """The real machine, except that MemAvailable reads ``low`` once ``after`` agents
    have started, until ``hold`` seconds after the first ``frozen`` event."""

    def __init__(self, low: int, hold: float, after: int = 2) -> None:
        super().__init__()
        self.low, self.hold, self.after = low, hold, after
        self.started, self.frozen_at, self.thawed_at = 0, None, None
        self.levels: list[int] = []  # optional later lows, one per frozen event

    def __call__(self, event: dict) -> None:  # an event-log listener
        self.started += event["event"] == "started"
        if event["event"] == "frozen" and self.frozen_at is None:
            self.frozen_at = time.monotonic()
        if event["event"] == "thawed":
            self.thawed_at = time.monotonic()

    def available(self) -> int:
        if self.started < self.after:
            return super().available()
        if self.frozen_at is None or time.monotonic() - self.frozen_at < self.hold:
            return self.low
        return super().available()


def fleet(tmp_path, backend: str, body: str):
    return parse_fleet(
        f"supervisor: {{log_dir: '{tmp_path}', backend: {backend}, min_free_memory: 256M, "
        "max_concurrent: 2, breaker: {min_available: 1M}}\n" + body
    )


def supervise(spec, memory) -> tuple[Supervisor, list[dict]]:
    sup = Supervisor(spec, memory=memory, psi=None)
    sup.events.listeners.append(memory)
    seen: list = []
    sup.tickers.append(
        lambda s, final=False: seen.extend(r.task.id for r in s.engine.runs.values() if r.frozen)
    )
    sup.close()
    sup.result = sup.run()
    sup.frozen_seen = seen  # type: ignore[attr-defined]
    return sup, read_events(f"{sup.rundir.path}/events.jsonl")


def stamps(path) -> list[float]:
    return [float(line) for line in path.read_text().split()]


def test_youngest_is_frozen_then_thawed_and_its_timeout_waits(tmp_path, backend):
    """Below freeze_below the youngest agent is frozen (it really stops: no stamps),
    thawed once memory is back, and not timed out for the time it was frozen."""
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "ticker.py"
    script.write_text(TICKER)
    spec = fleet(
        tmp_path,
        backend,
        f"agents:\n  tick: {{cmd: ['{sys.executable}', '{script}', "
        f"'{out}', '1.5'], timeout: 2500ms}}\n"
        "tasks:\n  - {agent: tick, repeat: 2}\n",
    )
    memory = Squeeze(low=200 * MiB, hold=2.0)
    sup, events = supervise(spec, memory)
    frozen = [e for e in events if e["event"] == "frozen"]
    thawed = [e for e in events if e["event"] == "thawed"]
    assert [e["task"] for e in frozen] == ["tick-2"]  # the youngest, and only it
    assert "under freeze_below" in frozen[0]["reason"]
    assert [e["task"] for e in thawed] == ["tick-2"] and thawed[0]["frozen_s"] >= 1.9
    assert "tick-2" in sup.frozen_seen  # RunView.frozen while frozen (the dashboard)
    assert sup.result.counts == {"ok": 2}  # not timed out: 1.5 s of work + 2 s frozen
    window = (memory.frozen_at + 0.05, memory.thawed_at - 0.05)
    young, old = stamps(out / "tick-2"), stamps(out / "tick-1")
    assert not [t for t in young if window[0] < t < window[1]]  # no progress frozen
    assert [t for t in old if window[0] < t < window[1]]  # the oldest ran on
    assert max(b - a for a, b in itertools.pairwise(old)) < 1.0
    (entry,) = [t for t in sup.result.tasks if t["task"] == "tick-2"]
    assert entry["duration_s"] > 3.4  # 1.5 s of work, 2 s frozen: past its 2.5 s timeout


def test_a_frozen_agent_is_evicted_when_memory_keeps_falling(tmp_path, backend):
    """Freeze first; under evict_below the youngest (frozen) agent is stopped at once
    (thawed for the signals) and requeued; then everything ends right."""
    spec = fleet(
        tmp_path,
        backend,
        "agents:\n  s: {cmd: [sleep, '1.5'], retries: 1, backoff: 100ms}\n"
        "tasks:\n  - {agent: s, repeat: 2}\n",
    )

    class Falling(Squeeze):
        evicted = 0

        def __call__(self, event: dict) -> None:
            super().__call__(event)
            self.evicted += event["event"] == "evicting"

        def available(self) -> int:
            if self.evicted:
                return MemorySource.available(self)
            if self.frozen_at is not None:
                return self.low // 4  # under evict_below (128M) now
            return super().available()

    sup, events = supervise(spec, Falling(low=200 * MiB, hold=60))
    names = [(e["event"], e.get("task")) for e in events if e["event"] in ("frozen", "evicting")]
    assert names == [("frozen", "s-2"), ("evicting", "s-2")]
    retried = [e for e in events if e["event"] == "retried"]
    assert [(e["task"], e["reason"]) for e in retried] == [("s-2", "evicted")]
    assert sup.result.counts == {"ok": 2}


def test_a_frozen_agent_stops_when_the_run_times_out(tmp_path, backend):
    """A frozen agent still ends when the fleet stops: thawed for SIGTERM (a frozen v1
    task does not even die from SIGKILL), nothing left behind."""
    spec = parse_fleet(
        f"supervisor: {{log_dir: '{tmp_path}', backend: {backend}, min_free_memory: 256M, "
        "max_concurrent: 2, run_timeout: 2s, breaker: {min_available: 1M}}\n"
        "agents:\n  s: {cmd: [sleep, '30']}\ntasks:\n  - {agent: s, repeat: 2}\n"
    )
    started = time.monotonic()
    sup, events = supervise(spec, Squeeze(low=200 * MiB, hold=60))
    assert [e["task"] for e in events if e["event"] == "frozen"] == ["s-2"]
    assert time.monotonic() - started < 10  # 2 s, then SIGTERM: no wait for a grace
    assert sup.result.stopping == "run_timeout"
    assert not sup.engine.processes()


# -- the rules, on the scripted engine ---------------------------------------------


def scripted(min_free="1G", **extra):
    body = "".join(f"  {k}: {v}\n" for k, v in extra.items())
    spec = parse_fleet(
        f"supervisor:\n  max_concurrent: 3\n  min_free_memory: {min_free}\n{body}"
        "agents:\n  a: {cmd: [x]}\ntasks:\n  - {agent: a, repeat: 3}\n"
    )
    clock = FakeClock()
    memory = FakeMemory(clock)
    engine = FakeEngine(clock, script={"a": (10.0, None)})
    return spec, clock, memory, engine


def test_rules_freeze_one_at_a_time_never_the_last_and_thaw_with_hysteresis(tmp_path):
    from agent_supervise.outcome import Reason

    spec, clock, memory, engine = scripted()
    engine.script = {"a": (10.0, Reason.OK)}
    sup = Supervisor(spec, engine=engine, memory=memory, clock=clock, log_dir=str(tmp_path))
    sup.close()
    # short from t=1, then over freeze_below but under 1.25 x it, then back
    memory.script = [(0.0, 24 << 30), (1001.0, 900 << 20), (1005.0, 1100 << 20), (1006.0, 2 << 30)]
    sup.run(catch_signals=False)
    events = read_events(f"{sup.rundir.path}/events.jsonl")
    moves = [
        (e["event"], e["task"], round(e["t"])) for e in events if e["event"] in ("frozen", "thawed")
    ]
    frozen = [m for m in moves if m[0] == "frozen"]
    assert [m[1] for m in frozen] == ["a-3", "a-2"]  # youngest first; a-1 never
    assert frozen[1][2] - frozen[0][2] >= 1  # one per settle period
    thawed = [m for m in moves if m[0] == "thawed"]
    assert [m[1] for m in thawed] == ["a-3", "a-2"]  # the first frozen thaws first
    assert all(m[2] >= 6 for m in thawed)  # not at 1.1 G: under 1.25 x freeze_below
    assert sup.result.counts == {"ok": 3}


def test_rules_freeze_near_the_budget_and_frozen_agents_hold_admission(tmp_path):
    from agent_supervise.fleet.ladder import FREEZE_AT, Ladder

    ladder = Ladder(0, 1000, lambda *a, **k: None)
    assert ladder.short(10 << 30, int(FREEZE_AT * 1000)) is not None
    assert ladder.short(10 << 30, int(FREEZE_AT * 1000) - 1) is None
    assert not ladder.relieved(10 << 30, 900) and ladder.relieved(10 << 30, 850)
    ladder.frozen["x"] = 0.0
    assert "frozen for memory" in ladder.waiting()
    assert Ladder(0, None, print).short(0, 1 << 40) is None  # freeze_below 0: off
