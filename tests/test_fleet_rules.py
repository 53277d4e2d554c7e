"""The fleet supervisor's rules with a scripted engine, a fake clock and fake memory.

Every assertion is about order and state (events, counts), never about timing.
"""

from __future__ import annotations

import random
import signal
import threading

import pytest

from agent_supervise.agents.loader import parse_fleet
from agent_supervise.agents.spec import TaskSpec
from agent_supervise.errors import BadInput
from agent_supervise.fleet.supervisor import Supervisor
from agent_supervise.fleet.taskqueue import QueueFull
from agent_supervise.outcome import Reason
from agent_supervise.rundir import read_events

from fleetfakes import FakeClock, FakeEngine, FakeMemory

GiB = 1 << 30


pytestmark = pytest.mark.unit  # fakes only: `make unit`


def fleet(tasks: str = "", supervisor: str = "", agents: str = ""):
    text = f"""
supervisor:
  max_concurrent: 2
  queue_size: 4
  min_free_memory: 1G
{supervisor}
agents:
  work: {{cmd: [work, "{{n}}"], memory_limit: 100M}}
  quick: {{cmd: [quick]}}
  hog: {{cmd: [hog], memory_limit: 1G}}
{agents}
tasks:
{tasks}
"""
    return parse_fleet(text, "fleet.yaml")


def make(spec, tmp_path, script=None, **memory):
    clock = FakeClock()
    engine = FakeEngine(clock, script)
    mem = FakeMemory(clock, **memory)
    sup = Supervisor(
        spec,
        engine=engine,
        memory=mem,
        clock=clock,
        log_dir=str(tmp_path),
        psi=None,
        rng=random.Random(7),
    )
    return sup, engine, clock, mem


def events(sup, kind=None):
    found = read_events(f"{sup.rundir.path}/events.jsonl")
    return [e for e in found if kind is None or e["event"] == kind]


def test_cap_order_and_one_terminal_state_each(tmp_path):
    spec = fleet("  - {agent: work, vars: {n: '1'}, repeat: 10}")
    sup, engine, _, _ = make(spec, tmp_path)
    sup.close()
    result = sup.run()
    assert result.exit_code == 0 and result.counts == {"ok": 10}
    assert engine.started == [f"work-{i}" for i in range(1, 11)]  # FIFO
    assert engine.max_running == 2
    exited = [e["task"] for e in events(sup, "exited")]
    assert sorted(exited) == sorted(engine.started) and len(set(exited)) == 10
    running, peak = 0, 0
    for e in events(sup):
        running += {"started": 1, "exited": -1}.get(e["event"], 0)
        peak = max(peak, running)
    assert peak == 2
    assert all(e["cmd"] == ["work", "1"] for e in result.tasks)


def test_queue_never_holds_more_than_its_size(tmp_path):
    spec = fleet("  - {agent: work, vars: {n: '1'}, repeat: 30}")
    sup, _engine, _, _ = make(spec, tmp_path)
    sup.close()
    sup.run()
    queued = 0
    for e in events(sup):
        if e["event"] == "queued":
            queued += 1
            assert queued <= 4
        elif e["event"] == "started":
            queued -= 1


def test_submit_without_blocking_raises_queue_full(tmp_path):
    sup, _engine, _, _ = make(fleet(), tmp_path)
    for _ in range(4):
        sup.submit(TaskSpec("quick"), block=False)
    with pytest.raises(QueueFull):
        sup.submit(TaskSpec("quick"), block=False)
    with pytest.raises(QueueFull):  # all or nothing: repeat needs 2 free slots
        sup.queue.pop()
        sup.submit(TaskSpec("quick", repeat=2), block=False)
    assert len(sup.queue) == 3
    with pytest.raises(QueueFull, match="stayed full"):
        sup.submit(TaskSpec("quick", repeat=2), block=True, timeout=0.05)


def test_blocking_submit_waits_for_room(tmp_path):
    sup, _engine, _, _ = make(fleet(), tmp_path)
    for _ in range(4):
        sup.submit(TaskSpec("quick"))
    done = threading.Event()

    def producer():
        sup.submit(TaskSpec("quick"))
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.2)  # blocked: the queue is full
    sup.queue.pop()
    assert done.wait(5)
    t.join(5)


def test_submit_checks_the_task(tmp_path):
    sup, _, _, _ = make(fleet(), tmp_path)
    with pytest.raises(BadInput, match="agent 'nope' is not defined"):
        sup.submit(TaskSpec("nope"))
    with pytest.raises(BadInput, match=r"needs a value for \{n\}"):
        sup.submit(TaskSpec("work"))


def test_admission_waits_for_memory_and_says_why(tmp_path):
    spec = fleet("  - {agent: work, vars: {n: '1'}, repeat: 3}")
    # 1.15 GiB available: the first 100M task fits above the 1G reserve, a second
    # would eat into it until the script frees memory at t=+5s.
    sup, _engine, clock, mem = make(
        spec, tmp_path, script={"work": (10.0, Reason.OK)}, available=int(1.15 * GiB)
    )
    mem.script.append((clock.now + 5, 8 * GiB))
    sup.close()
    result = sup.run()
    assert result.counts == {"ok": 3}
    waits = events(sup, "waiting")
    assert waits and "waiting for memory" in waits[0]["reason"]
    assert "the task needs 100.0 MiB plus the 1.0 GiB reserve" in waits[0]["reason"]
    starts = [e["t"] for e in events(sup, "started")]
    # The second start waited for the memory (t=5), not for a slot (t=10).
    assert 5 <= starts[1] < 10


def test_headroom_of_running_agents_counts(tmp_path):
    """Two 1G hogs on a machine with 2.5G available and a 1G reserve: only one at a time."""
    spec = fleet("  - {agent: hog, repeat: 2}")
    sup, engine, _, _ = make(spec, tmp_path, available=int(2.5 * GiB))
    sup.close()
    sup.run()
    assert engine.max_running == 1


def test_a_cap_that_can_never_fit_is_refused_up_front(tmp_path):
    spec = fleet("  - {agent: hog}")
    with pytest.raises(BadInput, match="could never start"):
        make(spec, tmp_path, total=int(1.5 * GiB))


def test_self_guard_stops_everything_and_exits_3(tmp_path):
    spec = fleet("  - {agent: work, vars: {n: '1'}, repeat: 6}")
    sup, _engine, _clock, mem = make(spec, tmp_path, script={"work": (10.0, Reason.OK)})
    mem.rss = 600 << 20  # above the default 500M supervisor cap
    sup.close()
    result = sup.run()
    assert result.exit_code == 3 and result.stopping == "self_guard"
    assert "own memory 600.0 MiB is above supervisor.memory_limit 500.0 MiB" in result.message
    assert result.counts == {"stopped": 2, "cancelled": 4}
    assert len(result.tasks) == 6  # nothing lost


def test_interrupt_cancels_queued_and_exits_128_plus_signal(tmp_path):
    spec = fleet("  - {agent: work, vars: {n: '1'}, repeat: 5}")
    sup, engine, clock, _ = make(spec, tmp_path, script={"work": (10.0, Reason.OK)})
    sup.close()
    real_step = engine.step

    def step(max_wait):
        if clock.now > 1002 and not engine.interrupts:
            sup._on_interrupt(signal.SIGINT)
        return real_step(max_wait)

    engine.step = step
    result = sup.run()
    assert result.exit_code == 130 and engine.interrupts == [signal.SIGINT]
    assert result.counts == {"interrupted": 2, "cancelled": 3}
    ids = sorted(e["task"] for e in result.tasks)
    assert ids == [f"work-{i}" for i in range(1, 6)]


def test_run_timeout_ends_a_run_that_cannot_admit(tmp_path):
    spec = fleet("  - {agent: work, vars: {n: '1'}, repeat: 2}", "  run_timeout: 3s")
    sup, engine, _, _ = make(spec, tmp_path, available=GiB // 2)
    sup.close()
    result = sup.run()
    assert engine.started == [] and result.exit_code == 1
    assert result.counts == {"cancelled": 2}
    assert events(sup, "waiting")[0]["reason"].startswith("waiting for memory")


def test_rejected_lines_make_the_run_not_ok(tmp_path):
    sup, _, _, _ = make(fleet("  - {agent: quick}"), tmp_path)
    sup.reject("stdin:3", "stdin:3: not JSON")
    sup.close()
    result = sup.run()
    assert result.counts == {"ok": 1} and result.exit_code == 1
    assert result.rejected == [{"where": "stdin:3", "error": "stdin:3: not JSON"}]
