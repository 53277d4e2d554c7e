"""AgentRun's rules with a fake cage and a fake clock: scripted histories."""

from __future__ import annotations

import os
import signal

import pytest

from agent_supervise.outcome import Reason
from agent_supervise.run.lifecycle import KILL_PATIENCE_S, AgentRun
from agent_supervise.run.states import RunSpec
from agent_supervise.run.watchdog import ThrashDetector, Watchdog

from fakes import FakeCage

MiB = 1 << 20


pytestmark = pytest.mark.unit  # fakes only: `make unit`


def exited(code: int) -> int:
    return code << 8  # a raw waitpid status


def killed_by(sig: int) -> int:
    return sig


def start(limit=50 * MiB, kernel=True, **spec):
    cage = FakeCage(limit, kernel_enforced=kernel)
    run = AgentRun(RunSpec(("agent",), limit, grace=2.0, poll=0.1, **spec), cage, 100, 0.0)
    return run, cage


def test_clean_exit_is_ok():
    run, cage = start()
    cage.inside = []
    run.root_exited(exited(0), 1.0)
    assert run.finished(1.0)
    out = run.finish(1.0)
    assert (out.reason, out.exit_code, out.duration_s) == (Reason.OK, 0, 1.0)
    assert cage.released


def test_failure_keeps_the_status():
    run, cage = start()
    cage.inside = []
    run.root_exited(exited(3), 0.5)
    out = run.finish(0.5)
    assert (out.reason, out.exit_code, out.status) == (Reason.FAILED, 3, 3)


def test_watchdog_breach_terms_then_kills_after_grace():
    run, cage = start(kernel=False)
    cage.ignores_term = True
    cage.current = 60 * MiB
    run.tick(run.watchdog.next_due)
    assert run.cause is Reason.MEMORY_EXCEEDED and cage.sent == [signal.SIGTERM]
    run.tick(1.0)  # within the grace, not growing: wait
    assert cage.sent == [signal.SIGTERM]
    run.tick(2.1)
    assert cage.sent == [signal.SIGTERM, signal.SIGKILL] and run.state == "killing"
    run.root_exited(killed_by(signal.SIGKILL), 2.11)
    out = run.finish(2.11)
    assert (out.reason, out.exit_code, out.peak_source) == (Reason.MEMORY_EXCEEDED, 137, "sampled")
    assert out.peak_bytes == 60 * MiB


def test_breach_that_keeps_growing_is_killed_without_waiting():
    run, cage = start(kernel=False)
    cage.ignores_term = True
    cage.current = 51 * MiB
    run.tick(run.watchdog.next_due)
    cage.current = 51 * MiB + int(0.06 * 50 * MiB)
    run.tick(run.watchdog.next_due)
    assert cage.sent == [signal.SIGTERM, signal.SIGKILL]


def test_oom_notice_kills_the_rest_at_once():
    """cgroup v1 killed only the largest process; the agent is one unit."""
    run, cage = start()
    cage.pending_oom = True
    run.notified(0.3)
    assert cage.sent == [signal.SIGKILL] and run.cause is Reason.OOM_KILLED
    cage.ooms = 1
    run.root_exited(killed_by(signal.SIGKILL), 0.31)
    out = run.finish(0.31)
    assert (out.reason, out.exit_code, out.oom_kills) == (Reason.OOM_KILLED, 137, 1)


def test_kernel_kill_without_notice_settles_on_the_counter():
    """v2 with oom.group: the kernel killed everything; the counter may lag the exit."""
    run, cage = start()
    cage.inside = []
    run.root_exited(killed_by(signal.SIGKILL), 1.0)
    assert not run.finished(1.01)  # SIGKILL nobody here sent, no OOM counted yet
    cage.ooms = 1
    assert run.finished(1.02)
    assert run.finish(1.02).reason is Reason.OOM_KILLED


def test_foreign_sigkill_without_oom_is_signaled_after_settling():
    run, cage = start()
    cage.inside = []
    run.root_exited(killed_by(signal.SIGKILL), 1.0)
    assert not run.finished(1.05)
    assert run.finished(1.2)
    out = run.finish(1.2)
    assert (out.reason, out.exit_code, out.signal) == (Reason.SIGNALED, 137, signal.SIGKILL)


def test_leftovers_after_root_exit_get_term_grace_kill():
    run, cage = start()
    cage.ignores_term = True
    cage.inside = [101, 102]
    run.root_exited(exited(0), 1.0)
    assert cage.sent == [signal.SIGTERM] and not run.finished(1.0)
    run.tick(3.1)
    assert cage.sent[-1] == signal.SIGKILL and run.finished(3.1)
    out = run.finish(3.1)
    assert out.reason is Reason.OK and "2 leftover processes were stopped" in out.detail


def test_timeout():
    run, cage = start(timeout=5.0)
    run.tick(4.9)
    assert cage.sent == []
    run.tick(5.0)
    assert cage.sent == [signal.SIGTERM] and run.cause is Reason.TIMEOUT
    run.root_exited(killed_by(signal.SIGTERM), 5.01)
    out = run.finish(5.01)
    assert (out.reason, out.exit_code) == (Reason.TIMEOUT, 124)


def test_interrupt_forwards_the_signal_and_a_second_kills():
    run, cage = start()
    cage.ignores_term = True
    run.interrupted(signal.SIGINT, 1.0)
    assert cage.sent == [signal.SIGINT] and run.kill_at == 3.0
    run.interrupted(signal.SIGINT, 1.5)
    assert cage.sent == [signal.SIGINT, signal.SIGKILL]
    run.root_exited(killed_by(signal.SIGKILL), 1.51)
    out = run.finish(1.51)
    assert (out.reason, out.exit_code, out.signal) == (Reason.INTERRUPTED, 130, signal.SIGINT)


def test_first_cause_wins():
    run, cage = start(timeout=1.0)
    cage.ignores_term = True
    run.tick(1.0)
    cage.pending_oom = True
    run.notified(1.1)  # an OOM during the timeout's grace does not rename the end
    cage.ooms = 1
    run.root_exited(killed_by(signal.SIGKILL), 1.2)
    assert run.finish(1.2).reason is Reason.TIMEOUT


def test_unkillable_cage_is_given_up_on():
    run, cage = start()
    cage.signal = lambda sig: 1  # a process in uninterruptible sleep
    run.stop(Reason.TIMEOUT, signal.SIGKILL, 1.0)
    run.root_exited(killed_by(signal.SIGKILL), 1.0)
    assert not run.finished(1.0 + KILL_PATIENCE_S / 2)
    assert run.finished(1.0 + KILL_PATIENCE_S + 0.1)
    out = run.finish(20.0)
    assert not cage.released and "survived SIGKILL" in out.notes[0]


def test_next_due_never_spins():
    run, cage = start()
    assert run.next_due() == run.watchdog.next_due
    cage.inside = [101]
    run.root_exited(exited(0), 1.0)
    run.tick(1.0)
    assert run.next_due() > 1.0


def test_adaptive_sampling_speeds_up_near_the_cap():
    wd = Watchdog(limit=200 * MiB, poll=0.1)
    wd.observe(0.0, 10 * MiB)
    assert wd.next_due == 0.1  # first sample: no rate yet
    wd.observe(0.1, 20 * MiB)  # 100 MiB/s: 1.8 s to the cap -> still poll
    assert wd.next_due == 0.2
    wd.observe(0.2, 180 * MiB)  # 1.6 GiB/s: 12.5 ms to the cap -> sample in ~6 ms
    assert abs(wd.next_due - 0.2 - 0.00625) < 1e-6
    wd.observe(0.21, 199 * MiB)
    assert wd.next_due == 0.21 + wd.min_poll
    assert wd.observe(0.215, 201 * MiB) is True
    flat = Watchdog(limit=200 * MiB, poll=0.1)
    for t in range(5):
        flat.observe(t * 0.1, 150 * MiB)
        assert abs(flat.next_due - (t * 0.1 + 0.1)) < 1e-9


def test_thrash_detector_needs_a_sustained_rate_near_the_cap():
    td = ThrashDetector(limit=50 * MiB, window=2.0)
    calls = []

    def refaults():
        calls.append(1)
        return len(calls) * 60 * MiB  # 60 MiB per 100 ms = 600 MiB/s

    assert td.observe(0.0, 10 * MiB, refaults) is False and calls == []  # far: not read
    t = 0.0
    while t < 2.0:
        assert td.observe(t, 50 * MiB, refaults) is False
        t = round(t + 0.1, 1)
    assert td.observe(2.1, 50 * MiB, refaults) is True
    assert td.observe(2.2, 30 * MiB, refaults) is False  # dropped below: reset
    assert td.since is None


def test_status_helpers_match_the_kernel_encoding():
    assert os.WEXITSTATUS(exited(3)) == 3 and os.WTERMSIG(killed_by(9)) == 9


def test_bursty_growth_keeps_the_sampling_fast_near_the_cap():
    """1 MiB every 10 ms, sampled between bursts: the rate is remembered."""
    wd = Watchdog(limit=200 * MiB, poll=0.1)
    wd.observe(0.00, 150 * MiB)
    wd.observe(0.05, 155 * MiB)  # 100 MiB/s: 0.45 s to the cap
    assert wd.next_due == pytest.approx(0.1)  # far: the next tick of the poll grid
    wd.observe(0.10, 190 * MiB)  # a burst: 700 MiB/s
    assert wd.next_due - 0.10 < 0.01
    wd.observe(0.105, 190 * MiB)  # between bursts: flat...
    assert wd.next_due - 0.105 < 0.01  # ...but the rate is not forgotten
    for t in range(1, 60):  # a second later, flat all along: back to the poll
        wd.observe(0.105 + t * 0.1, 190 * MiB)
    assert wd.next_due - (0.105 + 59 * 0.1) > 0.05
