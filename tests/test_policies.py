"""Breaker, degradation, pressure rule and retries: state machines on scripted histories."""

from __future__ import annotations

import random

import pytest

from agent_supervise.agents.loader import parse_fleet
from agent_supervise.agents.spec import (
    AgentSpec,
    BreakerSettings,
    DegradationSettings,
    Task,
    TaskSpec,
)
from agent_supervise.checkpoint import last_line
from agent_supervise.fleet.breaker import BreakerState, CircuitBreaker, CircuitOpen
from agent_supervise.fleet.degrade import Degradation, Mode
from agent_supervise.fleet.retry import Budget, backoff_delay, plan_retry
from agent_supervise.fleet.supervisor import Supervisor
from agent_supervise.outcome import Reason
from agent_supervise.rundir import read_events

from fleetfakes import FakeClock, FakeEngine, FakeMemory

MiB, GiB = 1 << 20, 1 << 30


# -- circuit breaker ---------------------------------------------------------------------

pytestmark = pytest.mark.unit  # fakes only: `make unit`


def breaker(**kw):
    changes = []
    b = CircuitBreaker(BreakerSettings(**kw), on_change=lambda **e: changes.append(e))
    return b, changes


def test_breaker_opens_on_low_memory_and_probes_after_cooldown():
    b, changes = breaker(cooldown=30.0)
    b.observe(0, 2 * GiB)
    assert b.state == "closed" and b.may_start() is None
    b.observe(1, 400 * MiB)
    assert b.state == "open" and "below breaker.min_available" in b.reason
    assert b.may_start().startswith("circuit breaker open")
    b.observe(20, 400 * MiB)  # still low: the cooldown restarts from recovery
    b.observe(45, 2 * GiB)
    assert b.state == "open"
    b.observe(50, 2 * GiB)
    assert b.state == "half_open" and b.may_start() is None
    b.started("t-1")
    assert "waiting for probe t-1" in b.may_start()  # exactly one probe
    b.ended(60, "t-1", Reason("ok"))
    assert b.state == "closed" and b.may_start() is None
    assert [c["state"] for c in changes] == ["open", "half_open", "closed"]


def test_breaker_failed_probe_doubles_cooldown_up_to_the_cap():
    b, _changes = breaker(cooldown=10.0, max_cooldown=25.0, consecutive_memory_kills=2)
    b.ended(0, "a-1", Reason("oom_killed"))
    assert b.state == "closed"
    b.ended(1, "a-2", Reason("memory_exceeded"))
    assert b.state == "open" and b.reason == "2 memory kills in a row"
    for expected in (20.0, 25.0, 25.0):
        b.observe(b.opened_at + b.cooldown, 8 * GiB)
        assert b.state == "half_open"
        b.started("p")
        b.ended(b.opened_at + b.cooldown + 1, "p", Reason("oom_killed"))
        assert b.state == "open" and b.cooldown == expected
    b.observe(b.opened_at + b.cooldown, 8 * GiB)
    b.started("p")
    b.ended(1000, "p", Reason("failed"))  # not a memory problem: the question is answered
    assert b.state == "closed" and b.cooldown == 10.0


def test_breaker_counts_memory_kills_in_a_row_only():
    b, _ = breaker(consecutive_memory_kills=3)
    for reason in ("oom_killed", "oom_killed", "ok", "oom_killed", "oom_killed"):
        b.ended(0, "x", Reason(reason))
    assert b.state == "closed"
    b.ended(0, "x", Reason("evicted"))
    assert b.state == "open"


# -- degradation ---------------------------------------------------------------------------


def modes(history, psi=None, **kw):
    d = Degradation(DegradationSettings(**kw))
    return [d.observe(a, p) for a, p in zip(history, psi or [None] * len(history), strict=True)]


def test_modes_follow_the_seed_thresholds_after_enough_samples():
    seen = modes([8 * GiB] * 3 + [3 * GiB] * 3 + [1 * GiB] * 3)
    assert seen == ["full"] * 5 + ["limited"] * 3 + ["sequential"]
    d = Degradation(DegradationSettings())
    d.mode = Mode.LIMITED
    assert d.limit(8) == 2 and Degradation(DegradationSettings()).limit(8) == 8


def test_no_flapping_at_a_boundary():
    just_below, just_above = 4 * GiB - 10 * MiB, 4 * GiB + 10 * MiB
    seen = modes([just_below, just_above] * 10, samples=3)
    assert set(seen) == {"full"}  # never three in a row
    seen = modes([just_below] * 3 + [just_above] * 10, samples=3)
    assert seen[-1] == "limited"  # above, but not by the margin
    seen = modes([just_below] * 3 + [4 * GiB + 300 * MiB] * 3, samples=3)
    assert seen[-1] == "full"


def test_psi_pressure_steps_down_without_memory_shortage():
    seen = modes([16 * GiB] * 9, psi=[50.0] * 9, psi_some_avg10=20.0)
    assert seen[2] == "limited" and seen[5] == "sequential"
    seen = modes([16 * GiB] * 6, psi=[5.0] * 6, psi_some_avg10=20.0)
    assert set(seen) == {"full"}
    seen = modes([16 * GiB] * 6, psi=[90.0] * 6, psi_some_avg10=0)  # 0 disables
    assert set(seen) == {"full"}


# -- retries ----------------------------------------------------------------------------


def task(cap=50 * MiB, attempt=1):
    return Task("a-1", "a", 1, ("x",), cap, None, 2.0, "/", attempt=attempt)


def test_backoff_is_exponential_jittered_and_capped():
    agent = AgentSpec("a", ("x",), backoff=1.0, backoff_max=10.0)
    rng = random.Random(1)
    for attempt, full in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)):
        delays = [backoff_delay(agent, attempt, rng) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full
        assert max(delays) - min(delays) > full / 4  # really jittered


@pytest.mark.parametrize(
    "reason, agent_kw, expect",
    [
        ("failed", {"retries": 1}, "retry"),
        ("failed", {"retries": 0}, None),
        ("timeout", {"retries": 2}, "retry"),
        ("not_found", {"retries": 5}, None),
        ("interrupted", {"retries": 5}, None),
        ("oom_killed", {"retries": 5}, None),  # on_memory_kill: fail
        ("oom_killed", {"on_memory_kill": "retry"}, "same cap"),
        ("memory_exceeded", {"on_memory_kill": "grow", "max_memory_limit": 200 * MiB}, "grow"),
        ("evicted", {"retries": 1}, "now"),
        ("evicted", {"retries": 0}, None),
    ],
)
def test_retry_matrix(reason, agent_kw, expect):
    agent = AgentSpec("a", ("x",), **agent_kw)
    retry = plan_retry(task(), agent, Reason(reason), Budget(), random.Random(0))
    if expect is None:
        assert retry is None
        return
    assert retry.task.attempt == 2
    if expect == "grow":
        assert retry.task.memory_limit == 100 * MiB
    else:
        assert retry.task.memory_limit == 50 * MiB
    if expect == "now":
        assert retry.delay == 0


def test_memory_retries_have_their_own_budget_and_growth_stops_at_the_top():
    agent = AgentSpec(
        "a", ("x",), retries=1, on_memory_kill="grow", memory_retries=5, max_memory_limit=300 * MiB
    )
    budget, t, caps = Budget(), task(), []
    while retry := plan_retry(t, agent, Reason.OOM_KILLED, budget, random.Random(0)):
        t = retry.task
        caps.append(t.memory_limit // MiB)
    assert caps == [100, 200, 300] and budget.failures == 0
    assert plan_retry(t, agent, Reason.FAILED, budget, random.Random(0)) is not None  # own budget


# -- the fleet with policies ---------------------------------------------------------------


def fleet(agent_extra="", supervisor_extra="", tasks="  - {agent: a, repeat: 3}\n"):
    return parse_fleet(
        f"supervisor:\n  min_free_memory: 1G\n{supervisor_extra}"
        f"agents:\n  a:\n    cmd: [x]\n    memory_limit: 100M\n{agent_extra}"
        f"tasks:\n{tasks}",
        "f.yaml",
    )


def run(spec, tmp_path, script, memory=None, setup=None):
    clock = FakeClock()
    engine = FakeEngine(clock, script)
    mem = FakeMemory(clock, **(memory or {}))
    sup = Supervisor(
        spec,
        engine=engine,
        memory=mem,
        clock=clock,
        log_dir=str(tmp_path),
        psi=None,
        rng=random.Random(3),
    )
    if setup:
        setup(sup, engine, clock, mem)
    sup.close()
    return sup.run(), engine, read_events(f"{sup.rundir.path}/events.jsonl"), sup


def test_failed_task_is_retried_with_backoff_and_succeeds(tmp_path):
    spec = fleet("    retries: 2\n    backoff: 5s\n", tasks="  - {agent: a}\n")
    outcomes = iter([Reason.FAILED, Reason.OK])

    class Script(dict):
        def get(self, agent, default=None):
            return (1.0, next(outcomes))

    result, _engine, events, _ = run(spec, tmp_path, Script())
    assert result.counts == {"ok": 1} and result.tasks[0]["attempts"] == 2
    retried = [e for e in events if e["event"] == "retried"]
    assert len(retried) == 1 and 2.5 <= retried[0]["delay"] <= 5
    starts = [e["t"] for e in events if e["event"] == "started"]
    assert starts[1] - starts[0] >= 1 + retried[0]["delay"] - 1e-3


def test_grow_retries_at_a_larger_cap(tmp_path):
    spec = fleet("    on_memory_kill: grow\n    max_memory_limit: 400M\n", tasks="  - {agent: a}\n")
    caps = []

    class Script(dict):
        def get(self, agent, default=None):
            return (1.0, Reason.OK if len(caps) >= 3 else Reason.OOM_KILLED)

    def setup(sup, engine, clock, mem):
        real_start = engine.start

        def start(task, rundir):
            caps.append(task.memory_limit // MiB)
            return real_start(task, rundir)

        engine.start = start

    result, _, _, _ = run(spec, tmp_path, Script(), setup=setup)
    assert caps == [100, 200, 400] and result.counts == {"ok": 1}
    assert result.tasks[0]["limit_bytes"] == 400 * MiB


def test_breaker_blocks_starts_and_nonblocking_submits(tmp_path):
    spec = fleet(
        tasks="  - {agent: a, repeat: 6}\n",
        supervisor_extra="  breaker: {consecutive_memory_kills: 2, cooldown: 10s}\n",
    )
    result, _engine, events, sup = run(spec, tmp_path, {"a": (1.0, Reason.OOM_KILLED)})
    states = [e["state"] for e in events if e["event"] == "breaker"]
    assert states[:2] == ["open", "half_open"] and "open" in states[2:]
    # While open nothing started: every start after the opening was a lone probe.
    opened = next(e["t"] for e in events if e["event"] == "breaker")
    later = [e for e in events if e["event"] == "started" and e["t"] > opened]
    assert all(e["running"] == 1 for e in later)
    assert result.counts == {"oom_killed": 6}
    sup.policies.breaker.state, sup.policies.breaker.reason = BreakerState.OPEN, "test"
    sup.queue._closed = False
    with pytest.raises(CircuitOpen, match="the circuit breaker is open: test"):
        sup.submit(TaskSpec("a"), block=False)


def test_pressure_rule_evicts_the_youngest_once_and_requeues(tmp_path):
    """Memory recovers once the first victim is gone: nobody else is evicted."""
    spec = fleet("    retries: 1\n", tasks="  - {agent: a, repeat: 2}\n")

    def setup(sup, engine, clock, mem):
        mem.script = [(0, 8 * GiB), (clock.now + 0.5, 300 * MiB), (clock.now + 0.9, 8 * GiB)]

    result, engine, events, _ = run(
        spec, tmp_path, {"a": (5.0, Reason.OK)}, memory={"available": 8 * GiB}, setup=setup
    )
    evictions = [e for e in events if e["event"] == "evicting"]
    assert [e["task"] for e in evictions] == ["a-2"]  # the youngest, and only one
    assert engine.started.count("a-2") == 2
    assert result.counts == {"ok": 2}


def test_pressure_rule_measures_again_and_evicts_another_if_still_short(tmp_path):
    spec = fleet("    retries: 1\n", tasks="  - {agent: a, repeat: 2}\n")

    def setup(sup, engine, clock, mem):
        mem.script = [(0, 8 * GiB), (clock.now + 0.5, 300 * MiB), (clock.now + 3, 8 * GiB)]

    result, _engine, events, _ = run(spec, tmp_path, {"a": (5.0, Reason.OK)}, setup=setup)
    evictions = [(e["t"], e["task"]) for e in events if e["event"] == "evicting"]
    exits = {e["task"]: e["t"] for e in reversed(events) if e["event"] in ("retried", "exited")}
    assert [task for _, task in evictions] == ["a-2", "a-1"]  # youngest first
    assert evictions[1][0] >= exits["a-2"]  # the second only after the first was gone
    assert result.counts == {"ok": 2}


def test_eviction_without_retries_left_is_final(tmp_path):
    spec = fleet(tasks="  - {agent: a}\n")

    def setup(sup, engine, clock, mem):
        mem.script = [(0, 8 * GiB), (clock.now + 0.5, 300 * MiB)]

    result, _, _, _ = run(spec, tmp_path, {"a": (5.0, Reason.OK)}, setup=setup)
    assert result.counts == {"evicted": 1} and result.tasks[0]["exit_code"] == 137


def test_last_line_reads_a_bounded_tail(tmp_path):
    path = tmp_path / "c"
    assert last_line(str(path)) is None
    path.write_bytes(b"step 1\nstep 2\n" + b"x" * 100 + b"\nstep 3\npartial")
    assert last_line(str(path)) == "step 3"  # an unfinished line is not a checkpoint
    path.write_bytes(b"a" * 200_000 + b"\nlast\n")
    assert last_line(str(path), limit=1024) == "last"
    path.write_bytes(b"b" * 200_000 + b"\n")
    assert last_line(str(path), limit=1024) is None  # a line longer than the window


def test_a_lost_node_requeues_once_for_free_then_counts_against_retries():
    """Ray: a task whose node died under it (reason lost) is requeued at once without
    using a retry; a second loss is an ordinary failure under ``retries``."""
    budget, rng = Budget(), random.Random(0)
    first = plan_retry(task(), AgentSpec("a", ("x",), retries=0), Reason.LOST, budget, rng, True)
    assert first is not None and first.delay == 0 and budget.failures == 0
    assert "its node died under it; requeued (once" in first.why
    again = plan_retry(
        first.task, AgentSpec("a", ("x",), retries=0), Reason.LOST, budget, rng, True
    )
    assert again is None  # no retries left, and the free requeue is spent
    budget = Budget(lost=1)
    third = plan_retry(task(), AgentSpec("a", ("x",), retries=1), Reason.LOST, budget, rng, True)
    assert third is not None and budget.failures == 1 and "retry 1 of 1" in third.why
