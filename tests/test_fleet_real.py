"""Fleets with real children under real caps, through the CLI and the Python API."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from agent_supervise.agents.loader import parse_fleet
from agent_supervise.agents.spec import TaskSpec
from agent_supervise.fleet.supervisor import Supervisor
from agent_supervise.fleet.taskqueue import QueueFull
from agent_supervise.memsource import MemorySource
from agent_supervise.outcome import Reason
from agent_supervise.rundir import read_events

from conftest import ALLOC, PY, run_cli

MiB = 1 << 20


def write_fleet(tmp_path: Path, body: str, supervisor: str = "") -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n{supervisor}{body}"
    )
    return path


def run_dir(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "runs").iterdir()
    return found


def test_200_tasks_queue_4_concurrency_2(tmp_path):
    fleet = write_fleet(
        tmp_path,
        "agents:\n  t: {cmd: ['true'], memory_limit: 20M}\ntasks:\n  - {agent: t, repeat: 200}\n",
        "  max_concurrent: 2\n  queue_size: 4\n",
    )
    proc = run_cli("fleet", "--json", str(fleet), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {"ok": 200}
    events = read_events(str(run_dir(tmp_path) / "events.jsonl"))
    running = queued = peak_running = peak_queued = 0
    terminal: dict[str, int] = {}
    for e in events:
        if e["event"] == "queued":
            queued += 1
        elif e["event"] == "started":
            queued, running = queued - 1, running + 1
        elif e["event"] == "exited":
            running -= 1
            terminal[e["task"]] = terminal.get(e["task"], 0) + 1
        peak_running, peak_queued = max(peak_running, running), max(peak_queued, queued)
    assert peak_running == 2 and peak_queued <= 4
    assert len(terminal) == 200 and set(terminal.values()) == {1}
    assert {t["task"] for t in summary["tasks"]} == set(terminal)


def test_stdin_tasks_feel_pipe_backpressure(tmp_path):
    """With slow agents, the supervisor stops reading stdin; the pipe fills; the
    producer's writes would block (here: EAGAIN on a non-blocking pipe)."""
    fleet = write_fleet(
        tmp_path,
        "agents:\n  s: {cmd: [sleep, '{secs}'], memory_limit: 20M}\n",
        "  max_concurrent: 2\n  queue_size: 4\n",
    )
    proc = subprocess.Popen(
        [PY, "-m", "agent_supervise", "fleet", "--json", "--tasks", "-", str(fleet)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    fd = proc.stdin.fileno()
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: a one-page pipe
    os.set_blocking(fd, False)
    line = (json.dumps({"agent": "s", "vars": {"secs": "0.3"}}) + "\n").encode()
    written, blocked = 0, False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and written < 2000:
        try:
            os.write(fd, line)
            written += 1
        except BlockingIOError:
            blocked = True
            break
    assert blocked, "the supervisor read everything: no backpressure"
    assert written < 600  # a page of pipe + the reader's buffer + 4 queued + 2 running
    os.set_blocking(fd, True)
    os.write(fd, b'{"agent": "nope"}\nnot json\n')  # blocks until there is room
    proc.stdin.close()
    proc.stdin = None
    out, err = proc.communicate(timeout=600)
    summary = json.loads(out)
    assert summary["counts"] == {"ok": written}
    wheres = [r["where"] for r in summary["rejected"]]
    assert wheres == [f"stdin:{written + 1}", f"stdin:{written + 2}"]
    assert "agent 'nope' is not defined" in summary["rejected"][0]["error"]
    assert proc.returncode == 1  # rejected lines: not everything the user gave ran
    assert f"skipped stdin:{written + 2}: not JSON".encode() in err


def test_admission_holds_back_for_real_and_run_timeout_ends_it(tmp_path):
    mem = MemorySource()
    min_free = mem.total() - 20 * MiB - 16 * MiB  # above MemAvailable, yet could fit
    assert mem.available() < min_free + 20 * MiB
    fleet = write_fleet(
        tmp_path,
        f"agents:\n  t: {{cmd: [touch, '{tmp_path}/ran'], "
        "memory_limit: 20M}\ntasks:\n  - {agent: t, repeat: 3}\n",
        f"  min_free_memory: {min_free}\n  run_timeout: 1s\n",
    )
    fleet.write_text(fleet.read_text().replace("  min_free_memory: 256M\n", "", 1))
    proc = run_cli("fleet", "--json", str(fleet))
    assert proc.returncode == 1
    assert not (tmp_path / "ran").exists()
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {"cancelled": 3} and summary["stopping"] == "run_timeout"
    assert b"waiting for memory" in proc.stderr


def test_self_guard_exits_3(tmp_path):
    fleet = write_fleet(
        tmp_path,
        "agents:\n  s: {cmd: [sleep, '30']}\ntasks:\n  - {agent: s, repeat: 3}\n",
        "  memory_limit: 1M\n",
    )
    started = time.monotonic()
    proc = run_cli("fleet", "--json", str(fleet))
    assert proc.returncode == 3
    summary = json.loads(proc.stdout)
    assert summary["stopping"] == "self_guard" and sum(summary["counts"].values()) == 3
    assert "above supervisor.memory_limit 1.0 MiB" in proc.stderr.decode()
    assert time.monotonic() - started < 15


def _spawn_fleet(tmp_path, fleet):
    return subprocess.Popen(
        [PY, "-m", "agent_supervise", "fleet", "--json", str(fleet)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_started(tmp_path, count, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list((tmp_path / "runs").glob("*/events.jsonl"))
        if runs and sum(e["event"] == "started" for e in read_events(str(runs[0]))) >= count:
            return [e for e in read_events(str(runs[0])) if e["event"] == "started"]
        time.sleep(0.05)
    raise AssertionError("agents did not start")


def test_sigint_stops_agents_and_cancels_the_rest(tmp_path):
    fleet = write_fleet(
        tmp_path, "agents:\n  s: {cmd: [sleep, '30']}\ntasks:\n  - {agent: s, repeat: 5}\n"
    )
    proc = _spawn_fleet(tmp_path, fleet)
    _wait_started(tmp_path, 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    summary = json.loads(out)
    assert summary["counts"] == {"interrupted": 2, "cancelled": 3}
    assert b"stopping: received SIGINT" in err


def test_sigkill_of_the_supervisor_leaves_no_agent(tmp_path):
    fleet = write_fleet(
        tmp_path, "agents:\n  s: {cmd: [sleep, '30']}\ntasks:\n  - {agent: s, repeat: 4}\n"
    )
    proc = _spawn_fleet(tmp_path, fleet)
    pids = [e["pid"] for e in _wait_started(tmp_path, 2)]
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    for pid in pids:
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
            assert time.monotonic() < deadline, f"agent {pid} outlived its supervisor"
            time.sleep(0.05)
        try:
            os.waitpid(pid, 0)  # reparented to pytest, a subreaper for leak checks
        except ChildProcessError:
            pass
    # The killed supervisor's cages are stale; the next start cleans them.
    again = run_cli("run", "--", "true")
    assert again.returncode == 0


def test_a_gigabyte_of_output_leaves_the_supervisor_flat(tmp_path):
    fleet = write_fleet(
        tmp_path, "agents:\n  loud: {cmd: [head, -c, 1G, /dev/zero]}\ntasks:\n  - {agent: loud}\n"
    )
    proc = _spawn_fleet(tmp_path, fleet)
    me = psutil.Process(proc.pid)
    _wait_started(tmp_path, 1)
    rss = [me.memory_info().rss]
    while proc.poll() is None:
        try:
            rss.append(me.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=60)
    summary = json.loads(out)
    assert summary["counts"] == {"ok": 1}
    log = Path(summary["tasks"][0]["stdout"])
    assert log.stat().st_size == 1 << 30
    log.unlink()
    assert max(rss) - rss[0] < 5 * MiB, [r // MiB for r in rss]


def test_logs_per_agent_and_hog_is_capped(tmp_path):
    fleet = write_fleet(
        tmp_path,
        "agents:\n"
        "  talk: {cmd: [sh, -c, 'echo out; echo err >&2; echo $AGENT_ID']}\n"
        f"  hog: {{cmd: ['{PY}', '{ALLOC}', --interval, '0.004']}}\n"
        "tasks:\n  - {agent: talk}\n  - {agent: hog}\n",
    )
    proc = run_cli("fleet", "--json", str(fleet))
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    by_task = {t["task"]: t for t in summary["tasks"]}
    assert by_task["talk-1"]["reason"] == "ok"
    assert Path(by_task["talk-1"]["stdout"]).read_text() == "out\ntalk-1\n"
    assert Path(by_task["talk-1"]["stderr"]).read_text() == "err\n"
    assert by_task["hog-1"]["reason"] in ("oom_killed", "memory_exceeded")
    assert by_task["hog-1"]["exit_code"] == 137
    assert (run_dir(tmp_path) / "summary.json").exists()


def test_python_api_submit_close_wait(tmp_path):
    spec = parse_fleet(
        f"supervisor: {{log_dir: '{tmp_path}', min_free_memory: 256M, "
        "queue_size: 2}\nagents:\n  e: {cmd: [sh, -c, 'sleep 0.2; echo {word}']}\n"
    )
    sup = Supervisor(spec)
    sup.start()
    try:
        sup.submit(TaskSpec("e", vars={"word": "one"}))
        sup.submit(TaskSpec("e", vars={"word": "two"}), block=True, timeout=10)
        with pytest.raises(QueueFull):
            for _ in range(10):
                sup.submit(TaskSpec("e", vars={"word": "x"}), block=False)
    finally:
        sup.close()
    result = sup.wait(timeout=60)
    assert result is not None and result.exit_code == 0
    outputs = sorted(Path(t["stdout"]).read_text() for t in result.tasks)
    assert outputs[-2:] == ["one\n", "two\n"] or "one\n" in outputs
    assert all(t["reason"] == "ok" for t in result.tasks)


def test_headroom_kept_between_steps_matches_a_fresh_sum(tmp_path):
    """The engine keeps the promised-memory sum between loop steps and adds each
    start's share; it must always equal the sum computed afresh."""
    from agent_supervise.agents.spec import SupervisorSettings, Task
    from agent_supervise.fleet.engine import LocalEngine
    from agent_supervise.rundir import RunDir

    def fresh(engine):
        return sum(max(0, r.spec.limit - r.watchdog.last_usage) for r in engine.runs.values())

    engine = LocalEngine(SupervisorSettings(backend="rlimit"))
    rundir = RunDir(str(tmp_path / "runs"))
    try:
        caps = [40 * MiB, 60 * MiB, 80 * MiB]
        assert engine.headroom() == 0
        for i, cap in enumerate(caps):
            task = Task(
                id=f"s-{i}",
                agent="s",
                n=i,
                memory_limit=cap,
                timeout=None,
                grace=1.0,
                cwd=str(tmp_path),
                cmd=(PY, "-c", "b = bytearray(8 << 20); import time; time.sleep(60)"),
            )
            engine.start(task, rundir)
            assert engine.headroom() == fresh(engine) == sum(caps[: i + 1])
        deadline = time.monotonic() + 10
        while fresh(engine) == sum(caps):  # until the watchdogs have sampled
            assert time.monotonic() < deadline, "no sample within 10 s"
            engine.step(0.05)
        assert engine.headroom() == fresh(engine) < sum(caps)
    finally:
        engine.stop_all(Reason.STOPPED)
        deadline = time.monotonic() + 10
        while engine.runs and time.monotonic() < deadline:
            engine.step(0.05)
        engine.close()
    assert not engine.runs
