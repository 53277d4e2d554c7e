"""Bad input through the real CLI: exit 2, a message with the file, line, key and a
hint, and nothing started — checked by putting fake ``echo``/``true``/... first on
PATH (the corpus's agents use them): if any agent ran, a marker file appears.

Cages are counted by owner: a cage's name holds its supervisor's pid, and only the
supervisors a test started are its own (other test sessions and fleets may be
running on the same machine, making and removing cages of their own meanwhile)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import PY, cage_dirs, record_figure

BAD = sorted((Path(__file__).parent / "data" / "bad").glob("*.yaml"))
SPIES = ("echo", "true", "sleep", "sh", "python3", "touch", "node")


@pytest.fixture
def spied_env(tmp_path):
    """An environment whose PATH finds spies first: each records that it ran."""
    spies = tmp_path / "spies"
    spies.mkdir()
    marker = tmp_path / "something-ran"
    for name in SPIES:
        spy = spies / name
        spy.write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        spy.chmod(spy.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{spies}:{os.environ['PATH']}")
    return env, marker


def run_own(*args, env=None, input: bytes | None = None, timeout: float = 60):
    """``agent-supervise ARGS`` as a real process; (completed, its pid)."""
    proc = subprocess.Popen(
        [PY, "-m", "agent_supervise", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def cages_of(pids) -> set[str]:
    """The cages whose names say one of ``pids`` made them
    (``agent-supervise.<pid>-<start>.<seq>...``, limits/base.py cage_name)."""
    return {
        c for c in cage_dirs() if int(os.path.basename(c).split(".")[1].split("-")[0]) in set(pids)
    }


def header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.name}: no '# {key}:' line")


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_fleet_file_is_refused_and_nothing_runs(path, tmp_path, spied_env):
    env, marker = spied_env
    record_figure("badinput", "all", path.name, contained=False)
    pids = []
    for command in ("fleet", "validate"):
        proc, pid = (
            run_own(command, "--log-dir", str(tmp_path / "runs"), str(path), env=env)
            if command == "fleet"
            else run_own(command, str(path), env=env)
        )
        pids.append(pid)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (command, err)
        assert header(path, "expect") in err, err
        first = err.splitlines()[0]
        assert first.startswith(f"{path}:"), first  # the file...
        if "empty" not in path.name:
            assert first.split(":")[1].isdigit(), first  # ...and the line
        if "syntax" not in path.name and "python_tag" not in path.name:
            assert "(" in first and first.rstrip().endswith(")"), first  # a hint
        assert err.splitlines()[-1].endswith("nothing was started")
    assert not marker.exists(), f"an agent ran: {marker.read_text()}"
    assert not (tmp_path / "runs").exists() and not cages_of(pids)
    record_figure("badinput", "all", path.name, contained=True)


FLAG_CASES = {
    "max-concurrent-zero": (["--max-concurrent", "0"], "0 is not in the range x>=1"),
    "max-concurrent-text": (["--max-concurrent", "two"], "'two' is not a valid integer"),
    "log-interval-bad": (["--log-interval", "often"], "--log-interval: 'often' is not a duration"),
    "backend-unknown": (["--backend", "cgroup3"], "'cgroup3' is not one of"),
    "tasks-missing-file": (["--tasks", "/nonexistent/tasks.jsonl"], "No such file"),
    "log-dir-is-a-file": (["--log-dir", "FILE"], "Directory '{FILE}' is a file"),
    "unknown-flag": (
        ["--max-concurent", "2"],
        "No such option '--max-concurent'. Did you mean '--max-concurrent'?",
    ),
}


@pytest.mark.parametrize("case", FLAG_CASES)
def test_bad_fleet_flags_are_refused_and_nothing_runs(case, tmp_path, spied_env):
    env, marker = spied_env
    record_figure("badinput", "all", f"flag {case}", contained=False)
    args, expect = FLAG_CASES[case]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"supervisor: {{log_dir: '{tmp_path}/runs'}}\n"
        "agents:\n  a: {cmd: [echo, hi]}\ntasks:\n  - {agent: a}\n"
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    args = [str(a_file) if a == "FILE" else a for a in args]
    expect = expect.replace("{FILE}", str(a_file))
    proc, pid = run_own("fleet", *args, str(fleet), env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert expect in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists() and not (tmp_path / "runs").exists() and not cages_of([pid])
    record_figure("badinput", "all", f"flag {case}", contained=True)
