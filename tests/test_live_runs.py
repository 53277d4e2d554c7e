"""``status`` lists the ``run``s live now, ``logs TASK`` finds its run folder, and the
shell completion script is produced (README: Watching a run).

Each test registers its runs in a runtime folder of its own (``XDG_RUNTIME_DIR``),
so other runs on the machine are neither seen nor touched."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent_supervise.memsource import read_meminfo
from agent_supervise.observe import liveruns
from agent_supervise.units import format_size

from conftest import PY, reap_orphans

TOTAL = read_meminfo()["MemTotal"]


def cli(*args, env, cwd, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "agent_supervise", *args],
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A private runtime folder, as logind makes one; (env for the CLI, its folder)."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    return dict(os.environ), xdg / "agent-supervise"


def live(env, cwd) -> list[dict]:
    proc = cli("status", "--json", env=env, cwd=cwd)
    if proc.returncode == 2:
        return []
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)["live_runs"]


def test_status_lists_a_live_run_until_it_ends(backend, runtime, tmp_path):
    env, folder = runtime
    proc = subprocess.Popen(
        [PY, "-m", "agent_supervise", "run", "--backend", backend, "-m", "5%", "--", "sleep", "30"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not (runs := live(env, tmp_path)):
            assert time.monotonic() < deadline, "status never listed the run"
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        (run,) = runs
        assert run["pid"] == proc.pid and run["cmd"] == "sleep 30"
        assert run["backend"].startswith(backend) and run["cap"] == "5%"
        assert run["limit_bytes"] == 5 * TOTAL // 100
        assert 0 < run["usage_bytes"] < 64 << 20 and 0 <= run["uptime_s"] < 20
        with open(f"/proc/{run['agent_pid']}/cmdline", "rb") as f:
            assert f.read().endswith(b"sleep\x0030\x00")  # (cgroup1: under its init)
        assert (folder.stat().st_mode & 0o777) == 0o700
        text = " ".join(cli("status", env=env, cwd=tmp_path).stdout.decode().split())
        for cell in (str(proc.pid), str(run["agent_pid"]), "sleep 30", "5% = "):
            assert cell in text, (cell, text)
        assert format_size(5 * TOTAL // 100) in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 143  # as the agent ended: SIGTERM forwarded to it
    gone = cli("status", env=env, cwd=tmp_path)
    assert gone.returncode == 2 and b"no live run" in gone.stderr
    assert list(folder.iterdir()) == []


def test_the_entry_of_a_killed_run_is_removed_by_status(backend, runtime, tmp_path):
    env, folder = runtime
    proc = subprocess.Popen(
        [PY, "-m", "agent_supervise", "run", "--backend", backend, "--", "sleep", "3"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not list(folder.glob("*.run")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.kill()  # no chance to remove its entry
    proc.wait(timeout=10)
    assert [p.name for p in folder.iterdir()] == [f"{proc.pid}.run"]
    assert live(env, tmp_path) == []
    assert list(folder.iterdir()) == []
    reap_orphans(timeout=10)  # its agent, reparented to pytest, ends within 3 s
    cli("run", "--backend", backend, "--", "true", env=env, cwd=tmp_path)  # clean its cage


def _fake_run(pid: int):
    """What register() reads of a launched run: the cage's figures and the agent's pid."""
    cage = SimpleNamespace(backend="rlimit-data", limit=50 << 20, path="", usage_file="")
    return SimpleNamespace(cage=cage, proc=SimpleNamespace(pid=pid))


@pytest.mark.unit
def test_stale_entries_are_ignored_and_removed(runtime):
    _, folder = runtime
    ours = liveruns.register(_fake_run(os.getpid()), ["agent", "x\ny"], "50M")
    assert ours == str(folder / f"{os.getpid()}.run")
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now
    text = Path(ours).read_text()
    pid_line, owner_line = f"pid={os.getpid()}", f"owner={liveruns.owner_tag()}"
    (folder / f"{dead.pid}.run").write_text(
        text.replace(pid_line, f"pid={dead.pid}").replace(owner_line, f"owner={dead.pid}-1")
    )
    reused = owner_line.rsplit("-", 1)[0] + "-1"  # our pid, another process's start time
    (folder / "1.run").write_text(text.replace(owner_line, reused))
    (folder / "2.run").write_text("not an entry\n")
    (run,) = liveruns.live_runs()
    assert run.pid == os.getpid() and run.cmd == "agent x y" and run.cap == "50M"
    assert sorted(p.name for p in folder.iterdir()) == [f"{os.getpid()}.run"]
    liveruns.unregister(ours)
    assert liveruns.live_runs() == [] and list(folder.iterdir()) == []


@pytest.mark.unit
def test_the_registry_is_private(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could plant entries or links here: not used
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    fallback = (
        "/run/agent-supervise" if os.geteuid() == 0 else f"/tmp/agent-supervise-{os.geteuid()}"
    )
    assert liveruns.registry_dir() == fallback
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert liveruns.registry_dir() == fallback
    shared.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    assert liveruns.registry_dir() == str(shared / "agent-supervise")


FLEET = """\
agents:
  {name}: {{cmd: [sh, -c, 'echo {text}; echo {text} err >&2']}}
tasks:
  - {{agent: {name}}}
"""


def test_logs_finds_the_newest_run_folder_with_the_task(backend, runtime, tmp_path):
    env, _ = runtime
    for name, text in (("a", "first"), ("a", "second"), ("b", "other")):
        path = tmp_path / f"{name}-{text}.yaml"
        path.write_text(FLEET.format(name=name, text=text))
        done = cli(
            "fleet", "--no-dashboard", "--backend", backend, str(path), env=env, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        time.sleep(0.05)  # the run folders' event logs differ in time
    assert len(list((tmp_path / "runs").iterdir())) == 3
    for args, out in (
        (["a"], b"second\n"),  # the newest with it, though a newer run has only b
        (["a-1"], b"second\n"),
        (["b-1"], b"other\n"),
        (["a", "--stderr"], b"second err\n"),
        (["-f", "a-1"], b"second\n"),  # the run has ended: -f prints and returns
    ):
        got = cli("logs", *args, env=env, cwd=tmp_path, timeout=30)
        assert (got.returncode, got.stdout) == (0, out), (args, got.stderr)
    snap = json.loads(cli("status", "--json", env=env, cwd=tmp_path).stdout)
    assert snap["live_runs"] == [] and snap["finished"]  # no run live; the newest fleet
    missing = cli("logs", "nobody", env=env, cwd=tmp_path)
    assert missing.returncode == 2
    assert b"no run folder under runs/ has a log for 'nobody'" in missing.stderr
    extra = cli("logs", "x", "y", "z", env=env, cwd=tmp_path)
    assert extra.returncode == 2 and b"logs [RUN_DIR] TASK" in extra.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "shell, marker",
    [
        ("bash", "complete -o nosort -F _agent_supervise_completion agent-supervise"),
        ("zsh", "#compdef agent-supervise"),
        ("fish", "complete --no-files --command agent-supervise"),
    ],
)
def test_the_shell_completion_script_is_produced(shell, marker, tmp_path):
    env = dict(os.environ, _AGENT_SUPERVISE_COMPLETE=f"{shell}_source")
    script = cli(env=env, cwd=tmp_path)
    assert script.returncode == 0 and marker in script.stdout.decode(), script.stdout[:500]
    env = dict(
        os.environ,
        _AGENT_SUPERVISE_COMPLETE="bash_complete",
        COMP_WORDS="agent-supervise run --mem",
        COMP_CWORD="2",
    )
    assert cli(env=env, cwd=tmp_path).stdout.decode().split() == ["plain,--memory"]
