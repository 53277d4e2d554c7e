"""Two supervisors side by side on one machine: each finishes its own fleet ok, neither
touches the other's agents or cages (each cage's name holds its supervisor's pid,
and a supervisor cleans up only after supervisors that are gone), nothing is left."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

from conftest import PY, cage_dirs

TASKS = 4


def _fleet(folder: Path, name: str) -> Path:
    folder.mkdir()
    path = folder / "fleet.yaml"
    path.write_text(
        f"supervisor: {{log_dir: '{folder / 'runs'}', max_concurrent: 2, "
        "min_free_memory: 0}\n"
        f"agents:\n  w: {{cmd: [sh, -c, 'sleep 0.6; echo {name} $AGENT_ID >> "
        f"{folder / 'done'}'], memory_limit: 20M}}\n"
        f"tasks:\n  - {{agent: w, repeat: {TASKS}}}\n"
    )
    return path


def _owner(cage: str) -> int:
    return int(os.path.basename(cage).split(".")[1].split("-")[0])


def _events(summary: dict) -> list[dict]:
    text = (Path(summary["run_dir"]) / "events.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _when(event: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(event["ts"])


def test_two_fleets_at_once_each_finish_ok_and_leave_nothing(tmp_path):
    names = ("left", "right")
    procs = [
        subprocess.Popen(
            [PY, "-m", "agent_supervise", "fleet", "--json", str(_fleet(tmp_path / n, n))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in names
    ]
    pids = {p.pid for p in procs}
    seen_both = False  # a moment when both had agents in cages
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        owners = {_owner(c) for c in cage_dirs()} & pids
        seen_both = seen_both or owners == pids
        time.sleep(0.05)
    results = [p.communicate(timeout=60) for p in procs]
    spans = []
    for name, proc, (out, err) in zip(names, procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        summary = json.loads(out)
        assert summary["counts"] == {"ok": TASKS}, summary["counts"]
        done = (tmp_path / name / "done").read_text().split("\n")[:-1]
        assert sorted(done) == sorted(f"{name} w-{i}" for i in range(1, TASKS + 1))
        events = _events(summary)
        started = [e for e in events if e["event"] == "started"]
        assert len(started) == TASKS
        # its agents ran in its own cages, and it cleaned up after no live supervisor
        assert all(f".{proc.pid}-" in e["cage"] for e in started), started
        (run_started,) = [e for e in events if e["event"] == "run_started"]
        other = (pids - {proc.pid}).pop()
        assert not any(f"supervisor pid {other}," in c for c in run_started["stale_cages"])
        spans.append((_when(started[0]), _when(events[-1])))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans  # the two runs overlapped in time
    if started[0]["backend"].startswith("cgroup"):  # (rlimit cages are not directories)
        assert seen_both, "the two fleets never had agents caged at the same moment"
    assert not {c for c in cage_dirs() if _owner(c) in pids}
