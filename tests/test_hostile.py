"""Hostile agents, each in a fleet beside a well-behaved one, on every backend here.

Each must end contained, with the right reason; the supervisor must finish its run
(summary written, exit 0/1); the well-behaved agent must end ``ok``; nothing may be
left behind (the autouse fixture checks processes, zombies and cgroups). What each
backend can promise differs, and the expectations say so: an rlimit never kills, so
a single process that allocates past it fails inside instead of being killed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from agent_supervise.limits import isolation

from conftest import (
    ALLOC,
    CHILDREN,
    ESCAPE,
    NODE_ALLOC,
    PY,
    reap_orphans,
    record_figure,
    run_cli,
)

HOSTILE = str(CHILDREN / "hostile.py")
KERNEL = ("cgroup1", "cgroup2")
MEMORY = {"oom_killed", "memory_exceeded"}

#: id -> (cmd, extra agent keys, expected reasons on kernel backends, on rlimit)
CASES = {
    "python-allocation-loop": ([PY, ALLOC, "--interval", "0.004"], "", MEMORY, MEMORY),
    "tail-dev-zero": (["tail", "/dev/zero"], "", MEMORY, MEMORY | {"failed"}),
    "node-buffer-growth": (
        ["node", NODE_ALLOC],
        "memory_limit: 150M",
        MEMORY,
        MEMORY | {"signaled"},
    ),
    "mmap-touched-page-by-page": ([PY, HOSTILE, "mmap"], "", MEMORY, MEMORY | {"failed"}),
    "fork-10-allocating-children": ([PY, HOSTILE, "fork10"], "", MEMORY, MEMORY),
    "double-forked-setsid-escapee": ([PY, ESCAPE, "200", "30"], "", MEMORY, MEMORY),
    "ignores-sigterm": ([PY, ALLOC, "--ignore-term", "--interval", "0.004"], "", MEMORY, MEMORY),
    "restarts-its-killed-worker": (
        [
            "stress-ng",
            "--vm",
            "1",
            "--vm-bytes",
            "200M",
            "--vm-keep",
            "--vm-hang",
            "0",
            "--timeout",
            "10s",
        ],
        "timeout: 8s",
        MEMORY,
        MEMORY | {"timeout", "failed"},
    ),
    "writes-1GB-to-stdout": (["head", "-c", "1G", "/dev/zero"], "", {"ok"}, {"ok"}),
    "closes-stdout-and-stays": ([PY, HOSTILE, "closed"], "timeout: 1s", {"timeout"}, {"timeout"}),
    # 500 forked interpreters outgrow 50M on a cgroup (each dirties some pages); on
    # rlimit each is small and they sleep until the timeout. Either way: all gone.
    "spawns-500-sleepers": (
        [PY, HOSTILE, "bomb", "500"],
        "timeout: 3s\n    grace: 1s",
        {"timeout"} | MEMORY,
        {"timeout"} | MEMORY,
    ),
    # Under rlimit there is no cage to leave: it is an allocation loop like mmap's.
    "moves-itself-out-of-its-cgroup": (
        [PY, HOSTILE, "escape"],
        "",
        {"escaped"},
        MEMORY | {"failed"},
    ),
}


def fleet(tmp_path: Path, backend: str, cmd: list[str], extra: str) -> Path:
    extra = "".join(f"    {line.strip()}\n" for line in extra.splitlines() if line.strip())
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n"
        f"  backend: {backend}\n  grace: 1s\n"
        f"agents:\n  hostile:\n    cmd: {json.dumps(cmd)}\n{extra}"
        f"  good:\n    cmd: [{json.dumps(PY)}, -c, 'import time; time.sleep(0.3); print(42)']\n"
        "tasks:\n  - {agent: hostile}\n  - {agent: good}\n"
    )
    return path


@pytest.mark.parametrize("case", CASES)
def test_hostile_agent_is_contained(backend, case, tmp_path):
    cmd, extra, kernel_reasons, rlimit_reasons = CASES[case]
    if cmd[0] == "stress-ng" and not shutil.which("stress-ng"):
        if os.environ.get("CI") == "true":
            pytest.fail("stress-ng is missing under CI=true (.ci/run installs it)")
        pytest.skip("stress-ng is not installed")
    record_figure("hostile", backend, case, contained=False)
    proc = run_cli(
        "fleet", "--json", "--no-dashboard", str(fleet(tmp_path, backend, cmd, extra)), timeout=120
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # the supervisor finished
    summary = json.loads(proc.stdout)
    tasks = {t["agent"]: t for t in summary["tasks"]}
    assert tasks["good"]["reason"] == "ok", tasks["good"]  # its neighbour is unharmed
    assert Path(tasks["good"]["stdout"]).read_text() == "42\n"
    hostile = tasks["hostile"]
    expected = kernel_reasons if backend in KERNEL else rlimit_reasons
    assert hostile["reason"] in expected, hostile
    if hostile["reason"] in MEMORY and backend in KERNEL:
        assert hostile["peak_bytes"] <= hostile["limit_bytes"]
    if case == "writes-1GB-to-stdout":
        log = Path(hostile["stdout"])
        assert log.stat().st_size == 1 << 30
        log.unlink()
    if case == "moves-itself-out-of-its-cgroup" and backend in KERNEL:
        assert "left the cage" in hostile["detail"]
    record_figure("hostile", backend, case, contained=True)


def test_privilege_drop_makes_the_escape_fail(backend, tmp_path, other_user):
    """As another user the agent cannot write into a root-owned cgroup.procs."""
    # The user must reach the interpreter, the script and the working folder (the
    # fleet file's): the checkout, its venv and pytest's tmp_path may be private.
    shared = other_user.folder("priv")
    script = shared / "hostile.py"
    shutil.copy(HOSTILE, script)
    path = fleet(
        tmp_path, backend, [other_user.python, str(script), "escape"], f"user: {other_user.name}"
    )
    path = Path(shutil.copy(path, shared / "fleet.yaml"))
    proc = run_cli("fleet", "--json", "--no-dashboard", str(path), timeout=120)
    summary = json.loads(proc.stdout)
    hostile = next(t for t in summary["tasks"] if t["agent"] == "hostile")
    err = Path(hostile["stderr"]).read_text()
    if backend in KERNEL:
        assert "escape refused" in err and "Permission denied" in err, err
        assert hostile["reason"] in MEMORY and "left the cage" not in hostile["detail"]
    else:
        assert hostile["reason"] in MEMORY | {"failed"}
    owner = os.stat(tmp_path / "runs").st_uid
    assert owner == 0  # the run folder (and the cage) stay root's


def test_run_as_another_user(tmp_path, other_user):
    out = run_cli(
        "run",
        "--user",
        other_user.name,
        "--",
        "sh",
        "-c",
        "id -un; echo $HOME; cat /proc/self/status | grep -E '^(Uid|Gid)'",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0] == other_user.name and lines[1] == other_user.home
    assert lines[2].split()[1:] == [str(other_user.uid)] * 4
    assert lines[3].split()[1:] == [str(other_user.gid)] * 4
    bad = run_cli("run", "--user", "no-such-user-x", "--", "true")
    assert bad.returncode == 2 and b"no such user 'no-such-user-x'" in bad.stderr


def test_unknown_user_in_a_fleet_is_bad_input(tmp_path):
    path = fleet(tmp_path, "rlimit", ["true"], "user: no-such-user-x")
    proc = run_cli("fleet", str(path))
    assert proc.returncode == 2
    assert b"agents.hostile: no such user 'no-such-user-x'" in proc.stderr


def test_sigkilled_supervisor_leaves_nothing_after_the_next_start(backend, tmp_path):
    """Main processes die with the supervisor (parent-death signal). With namespaces
    of their own (root), what they started dies with them: the kernel ends a PID
    namespace whose init is gone. Without, it lives on in the cage (or, under rlimit,
    carries the agent's marker) until the next start of agent-supervise, which kills
    it and says so; either way the next start removes the dead supervisor's cages."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor: {{log_dir: '{tmp_path}/runs', min_free_memory: 256M, "
        f"backend: {backend}}}\n"
        "agents:\n  s: {cmd: [sh, -c, 'setsid sleep 60 & sleep 60 & wait']}\n"
        "tasks:\n  - {agent: s, repeat: 2}\n"
    )
    proc = subprocess.Popen(
        [PY, "-m", "agent_supervise", "fleet", "--no-dashboard", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while len(_sleepers(tmp_path)) < 4:  # two agents, two sleepers each
        assert time.monotonic() < deadline, "agents did not start"
        time.sleep(0.05)
    roots = [e["pid"] for e in _events(tmp_path) if e["event"] == "started"]
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in roots):
        assert time.monotonic() < deadline, "an agent's main process outlived it"
        time.sleep(0.05)
    if isolation.enabled():
        deadline = time.monotonic() + 2
        while _sleepers(tmp_path):
            assert time.monotonic() < deadline, (
                f"outlived their namespace's init: {_sleepers(tmp_path)}"
            )
            time.sleep(0.05)
    else:
        assert _sleepers(tmp_path), "nothing was left to clean: the test proves nothing"
    cleanup = run_cli("run", "--backend", backend, "--", "true")
    assert cleanup.returncode == 0
    said = cleanup.stderr.decode()
    if backend in KERNEL or not isolation.enabled():
        assert f"cleaned up after dead supervisor pid {proc.pid}" in said, said
    deadline = time.monotonic() + 5
    while _sleepers(tmp_path):
        assert time.monotonic() < deadline, f"left behind: {_sleepers(tmp_path)}"
        time.sleep(0.05)
    reap_orphans()


def _events(tmp_path):
    from agent_supervise.rundir import read_events

    (run,) = (tmp_path / "runs").iterdir()
    return read_events(str(run / "events.jsonl"))


def _sleepers(tmp_path) -> list[int]:
    """Live `sleep 60` processes started by this test's agents (by their marker)."""
    found = []
    for p in psutil.process_iter(["name", "environ", "status"]):
        try:
            env = p.info["environ"] or {}
        except psutil.Error:
            continue
        if (
            p.info["name"] == "sleep"
            and p.info["status"] != psutil.STATUS_ZOMBIE
            and "AGENT_SUPERVISE_CAGE" in env
            and env.get("AGENT_RUN_DIR", "").startswith(str(tmp_path))
        ):
            found.append(p.pid)
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
