"""A fleet budget (supervisor.memory_budget) and admission by use, with real agents.

Agents that together try to take more than the budget never get it (cgroup1,
cgroup2: one parent cage of the budget's size holds them all; rlimit: the loop
samples the sum and stops the youngest), and every task still ends ok: an agent the
budget stopped below its own cap is requeued for free and started again once there
is room."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_supervise.fleet.history import FILE, PeakHistory
from agent_supervise.rundir import read_events

from conftest import ALLOC, PY, run_cli

MiB = 1 << 20
BUDGET = 160 * MiB

FLEET = """
supervisor:
  log_dir: @RUNS@
  min_free_memory: 64M
  max_concurrent: 4
  backend: @BACKEND@
  memory_budget: 160M
  admission: @ADMISSION@
agents:
  grower:
    cmd: [@PY@, @ALLOC@, --step, "2", --interval, "0.01", --max, "70", --hold, "0.4"]
    memory_limit: 100M
tasks:
  - {agent: grower, repeat: 4}
"""


def fleet_file(tmp_path: Path, backend: str, admission: str) -> Path:
    path = tmp_path / "fleet.yaml"
    text = FLEET
    for key, value in {
        "@RUNS@": str(tmp_path / "runs"),
        "@BACKEND@": backend,
        "@ADMISSION@": admission,
        "@PY@": PY,
        "@ALLOC@": ALLOC,
    }.items():
        text = text.replace(key, value)
    path.write_text(text)
    return path


def events_of(tmp_path: Path) -> list[dict]:
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return read_events(str(run / "events.jsonl"))


def test_agents_together_never_get_more_than_the_budget(tmp_path, backend):
    # A history that says each attempt needs ~20M: admission by use starts all four
    # at once, and then each grows to ~72M (4 x 72M against a 160M budget).
    (tmp_path / "runs").mkdir()
    seeded = PeakHistory()
    for _ in range(5):
        seeded.record("grower", 20 * MiB, 100 * MiB, killed=False)
    seeded.merge_into(str(tmp_path / "runs"))

    proc = run_cli("fleet", "--json", str(fleet_file(tmp_path, backend, "usage")), timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {"ok": 4}  # every task ended right
    events = events_of(tmp_path)
    assert max(e["running"] for e in events if e["event"] == "started") >= 3  # packed
    (budget,) = [e for e in events if e["event"] == "budget"]
    assert budget["limit"] == BUDGET
    requeued = [e for e in events if e["event"] == "retried"]
    assert requeued, "the budget never had to stop an agent: the test packed too little"
    assert all("fleet's memory budget" in e["why"] for e in requeued)
    if backend == "rlimit":
        # Sampled each poll: the sum may pass the budget by what the agents grow in
        # one poll (4 agents x 2 MiB per 10 ms x 100 ms) before the youngest stops.
        assert budget["peak_source"] == "sampled"
        assert budget["peak"] <= BUDGET + 4 * 20 * MiB
        assert any(e["event"] == "evicting" and "budget" in e for e in events)
    else:
        assert budget["peak_source"] == "kernel"
        assert budget["peak"] <= BUDGET  # the parent cage's own peak: never above
    # This run's peaks were added to the history; the seeded ones are still there.
    history = PeakHistory.load(str(tmp_path / "runs"))
    peaks = history.agents["grower"].peaks
    assert len(peaks) == 5 + 4 and min(peaks[5:]) >= 70 * MiB
    assert (tmp_path / "runs" / FILE).exists()


def test_caps_admission_under_a_budget_runs_what_fits(tmp_path, backend):
    """admission: caps promises each agent its cap: one 100M agent at a time fits
    in 160M, so the four run one after the other and none is stopped."""
    proc = run_cli("fleet", "--json", str(fleet_file(tmp_path, backend, "caps")), timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert json.loads(proc.stdout)["counts"] == {"ok": 4}
    events = events_of(tmp_path)
    assert max(e["running"] for e in events if e["event"] == "started") == 1
    assert not [e for e in events if e["event"] == "retried"]
    assert any("fleet's budget" in e["reason"] for e in events if e["event"] == "waiting")


@pytest.mark.unit
def test_a_cap_larger_than_the_budget_is_refused_up_front(tmp_path):
    path = fleet_file(tmp_path, "auto", "caps")
    path.write_text(path.read_text().replace("memory_budget: 160M", "memory_budget: 50M"))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 0  # a valid file; the check is the fleet's, before any start
    proc = run_cli("fleet", str(path))
    assert proc.returncode == 2
    assert "larger than supervisor.memory_budget" in proc.stderr.decode()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.unit
def test_memory_budget_on_the_command_line_overrides_the_file(tmp_path):
    """``fleet --memory-budget`` replaces supervisor.memory_budget (a size or a
    percentage): here one too small for the agents' caps, refused before any start;
    a bad value is exit 2 naming the option."""
    path = fleet_file(tmp_path, "auto", "caps")
    proc = run_cli("fleet", "--memory-budget", "50M", str(path))
    assert proc.returncode == 2
    assert "larger than supervisor.memory_budget" in proc.stderr.decode()
    proc = run_cli("fleet", "--memory-budget", "150%", str(path))
    assert proc.returncode == 2 and "--memory-budget" in proc.stderr.decode()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
