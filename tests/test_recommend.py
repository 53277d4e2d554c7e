"""Observed peaks (fleet/history.py) and `agent-supervise recommend` on real run folders."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import yaml

from agent_supervise.fleet.history import FILE, KEEP, PeakHistory, percentile

from conftest import ALLOC, PY, run_cli

MiB = 1 << 20


@pytest.mark.unit
def test_percentile_is_an_observed_value():
    assert percentile([5], 95) == 5
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([10, 1, 7], 50) == 7


@pytest.mark.unit
def test_expected_peak_is_the_cap_until_there_is_history_then_p95_with_margin():
    h = PeakHistory()
    assert h.expected_peak("a", 1000 * MiB) == 1000 * MiB  # nothing known
    h.record("a", 100 * MiB, 1000 * MiB, killed=False)
    h.record("a", 120 * MiB, 1000 * MiB, killed=False)
    assert h.expected_peak("a", 1000 * MiB) == 1000 * MiB  # too few
    h.record("a", 110 * MiB, 1000 * MiB, killed=False)
    assert h.expected_peak("a", 1000 * MiB) == int(120 * MiB * 1.2)
    assert h.expected_peak("a", 130 * MiB) == 130 * MiB  # never above the cap
    h.record("a", None, 500 * MiB, killed=True)  # once needed more than 500M
    assert h.expected_peak("a", 400 * MiB) == 400 * MiB
    assert h.expected_peak("a", 1000 * MiB) == int(120 * MiB * 1.2)


def _merge(log_dir: str, agent: str, n: int) -> None:
    for i in range(n):
        h = PeakHistory()
        h.record(agent, (i + 1) * MiB, 100 * MiB, killed=False)
        h.merge_into(log_dir)


@pytest.mark.unit
def test_two_fleets_sharing_a_log_dir_both_keep_their_peaks(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_merge, args=(str(tmp_path), a, 30)) for a in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    h = PeakHistory.load(str(tmp_path))
    assert sorted(h.agents["x"].peaks) == [(i + 1) * MiB for i in range(30)]
    assert sorted(h.agents["y"].peaks) == [(i + 1) * MiB for i in range(30)]
    _merge(str(tmp_path), "x", KEEP + 5)
    assert len(PeakHistory.load(str(tmp_path)).agents["x"].peaks) == KEEP  # the newest
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.unit
@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"agents": {"a": {"peaks": ["x"]}}}'])
def test_a_broken_history_is_no_history(tmp_path, body):
    (tmp_path / FILE).write_bytes(body)
    assert PeakHistory.load(str(tmp_path)).expected_peak("a", 5 * MiB) == 5 * MiB


FLEET = f"""
supervisor:
  log_dir: @RUNS@
  min_free_memory: 64M
  max_concurrent: 2
  backend: @BACKEND@
agents:
  small:
    cmd: [{PY}, {ALLOC}, --step, "4", --max, "@SMALL@", --hold, "0.3", --interval, "0.002"]
    memory_limit: 200M
  hog:
    cmd: [{PY}, {ALLOC}, --step, "4", --interval, "0.002"]
    memory_limit: 60M
tasks:
  - {{agent: small, repeat: 3}}
  - {{agent: hog}}
"""


def test_recommend_from_real_run_folders(tmp_path, backend):
    runs = tmp_path / "runs"
    for small in (24, 40):  # two runs: the small agent peaks at ~24M+ and ~40M+
        fleet = tmp_path / f"fleet{small}.yaml"
        fleet.write_text(
            FLEET.replace("@RUNS@", str(runs))
            .replace("@BACKEND@", backend)
            .replace("@SMALL@", str(small))
        )
        proc = run_cli("fleet", "--json", str(fleet), timeout=120)
        assert proc.returncode == 1, proc.stderr[-2000:]  # the hog is killed at its cap
    folders = sorted(str(p) for p in runs.iterdir() if p.is_dir())
    peaks, hog_ends = [], []  # every attempt, retried ones too
    for folder in folders:
        agent_of = {}
        for line in (Path(folder) / "events.jsonl").read_text().splitlines():
            e = json.loads(line)
            if e["event"] == "queued":
                agent_of[e["task"]] = e["agent"]
            elif e["event"] in ("exited", "retried"):
                if agent_of[e["task"]] == "small":
                    peaks.append(e["peak_bytes"])
                else:
                    hog_ends.append(e["reason"])
    # The kernel or the watchdog kills it at its cap; under rlimit its allocation may
    # be refused first (a MemoryError: failed), which is no kill.
    killed = sum(r in ("oom_killed", "memory_exceeded") for r in hog_ends)
    assert killed or backend == "rlimit", hog_ends

    proc = run_cli("recommend", "--json", *folders)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["agents"]
    small = got["small"]
    assert small["count"] == 6 and small["killed"] == 0 and small["max_bytes"] == max(peaks)
    assert small["p95_bytes"] == percentile(peaks, 95)
    limit = int(small["memory_limit"][:-1]) * MiB
    assert max(peaks) * 1.25 <= limit < max(peaks) * 1.25 + 8 * MiB
    hog = got["hog"]
    assert hog["killed"] == killed and hog["count"] == len(hog_ends) - killed
    assert hog["cap_bytes"] == 60 * MiB
    if killed:
        assert int(hog["memory_limit"][:-1]) * MiB >= 90 * MiB  # 1.5 x the cap it died at

    text = run_cli("recommend", *folders)
    assert text.returncode == 0, text.stderr
    pasted = yaml.safe_load(text.stdout)["agents"]
    assert pasted["small"]["memory_limit"] == small["memory_limit"]
    assert pasted["hog"]["memory_limit"] == hog["memory_limit"]


def test_recommend_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = run_cli("recommend", str(tmp_path))
    assert proc.returncode == 2
    assert f"{tmp_path}: not a run folder" in proc.stderr.decode()
