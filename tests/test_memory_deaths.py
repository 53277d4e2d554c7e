"""No agent hangs at its cap, and memory deaths are called by their name: real node
and python programs on every backend here, and the stuck rule on a fake cage."""

from __future__ import annotations

import json
import shutil

import pytest

from agent_supervise.run.stuck import NEAR_RLIMIT, STUCK_S, AllocationWatch

from conftest import IN_VM, PY, MiB, require_tool, run_cli, supervise
from fakes import FakeCage

#: Allocates forever: under RLIMIT_DATA 40M V8's next 8 MiB chunk is refused and
#: node waits on a futex at 0% CPU (measured: forever without the stuck rule).
NODE_HOG = "let a=[]; for(;;) a.push('x'.repeat(1e5))"
#: Holds 30 MiB for a moment (a sample sees ~85% of a 40M cap), then asks for 200 at
#: once: past rlimit's RLIMIT_DATA backstop (2 x cap + 256M, limits/rlimit.py), refused.
PY_MEMORY_ERROR = "import time; a=bytearray(30<<20); time.sleep(0.5); b=bytearray(400<<20)"
MEMORY_KILLS = ("oom_killed", "memory_exceeded")


def test_node_stuck_at_its_rlimit_ends_with_a_memory_reason(backend):
    # Without the runtime hints, which make V8 abort by itself first (test_runtime_hints).
    extra = ("--timeout", "30", "--no-runtime-hints")
    out, _ = supervise(backend, "node", "-e", NODE_HOG, memory="40M", extra=extra)
    assert out["reason"] in MEMORY_KILLS and out["exit_code"] == 137, out
    # The watchdog, or stuck for STUCK_S: not the timeout.
    assert out["duration_s"] < (20 if IN_VM else 8), out


def test_node_under_rlimit_as_does_not_hang(backend):
    """``node -e 0`` reserves ~700 MiB: under RLIMIT_AS 100M it waits forever."""
    if backend != "rlimit":
        pytest.skip("--rlimit as is the rlimit backend's")
    extra = ("--rlimit", "as", "--timeout", "30")
    out, _ = supervise(backend, "node", "-e", "0", memory="100M", extra=extra)
    assert (out["reason"], out["backend"]) == ("memory_exceeded", "rlimit-as"), out
    assert "allocations refused at its rlimit of 100.0 MiB" in out["detail"]
    assert out["duration_s"] < 8


def test_npm_at_a_tight_cap_does_not_hang(backend):
    """npm's node, under RLIMIT_DATA 30M, is refused at start and waits forever."""
    require_tool(shutil.which("npm") is not None, "npm")
    out, _ = supervise(backend, "npm", "--version", memory="30M", extra=("--timeout", "30"))
    # It fits (a cgroup, and rlimit's charge, count what it uses), or it is stopped:
    # never the timeout.
    assert out["reason"] in ("ok", *MEMORY_KILLS) and out["duration_s"] < 10, out


@pytest.mark.parametrize(
    "cmd",
    [
        # Its data sits at 95% of a 50M RLIMIT_DATA, no CPU, main thread in epoll.
        ("node", "-e", "setTimeout(() => {}, 3000)"),
        # An MCP-like server waiting on its stdin (a pipe that stays open 3 s).
        ("sh", "-c", "sleep 3 | node -e 'process.stdin.resume()'"),
        ("sleep", "3"),
    ],
    ids=["node-timer", "node-stdin", "sleep"],
)
def test_idle_agents_are_not_killed(backend, cmd):
    out, _ = supervise(backend, *cmd, memory="50M", extra=("--timeout", "30"))
    assert out["reason"] == "ok", out
    assert out["detail"] == ""


def test_python_memory_error_is_called_out_of_memory(backend):
    out, proc = supervise(backend, PY, "-c", PY_MEMORY_ERROR, memory="40M")
    if backend == "rlimit":
        # The refusal raised MemoryError: the program's own exit, with the cage's facts.
        assert (out["reason"], out["exit_code"]) == ("failed", 1), out
        assert b"MemoryError" in proc.stderr
        assert "probably out of memory" in out["detail"]
        assert "RLIMIT_DATA 40.0 MiB" in out["detail"] or "cap" in out["detail"]
    else:  # a cgroup charges the first 24 MiB and the kernel kills at the second
        assert out["reason"] in MEMORY_KILLS or "probably out of memory" in out["detail"], out


def test_the_memory_note_is_in_the_one_line_message(backend):
    if backend != "rlimit":
        pytest.skip("a cgroup OOM-kills this program: its message names the kill already")
    proc = run_cli("run", "--backend", backend, "--memory", "40M", "--", PY, "-c", PY_MEMORY_ERROR)
    assert proc.returncode == 1
    line = proc.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("agent-supervise: ") and "exited with status 1" in line, line
    assert "probably out of memory" in line and "backend rlimit-data" in line


def test_node_heap_abort_near_the_cap_gets_the_note(backend):
    """A heap limit below the cap: V8 aborts (SIGABRT) at a 29-33.5 MiB peak of 38M."""
    node = ("node", "--max-old-space-size=24", "-e", NODE_HOG)
    out, _ = supervise(backend, *node, memory="38M", extra=("--timeout", "30"))
    if out["reason"] == "signaled":
        assert out["signal"] == "SIGABRT" and out["exit_code"] == 134, out
        assert "probably out of memory" in out["detail"], out
    else:  # under rlimit node's data reaches the rlimit first and it is stuck there
        assert out["reason"] in MEMORY_KILLS and out["exit_code"] == 137, out
    if backend == "cgroup1":
        assert out["reason"] == "signaled"


@pytest.mark.parametrize(
    "cmd", [("sh", "-c", "exit 3"), (PY, "-c", "raise ValueError")], ids=["sh", "python"]
)
def test_a_failure_far_below_the_cap_gets_no_note(backend, cmd):
    out, _ = supervise(backend, *cmd, memory="100M")
    assert out["reason"] == "failed" and out["detail"] == "", out
    proc = run_cli("run", "--backend", backend, "--memory", "100M", "--", *cmd)
    assert b"agent-supervise" not in proc.stderr  # a plain failure stays quiet


def test_a_fleet_task_summary_has_the_note(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n"
        "  backend: rlimit\n"
        f"agents:\n  short: {{cmd: ['{PY}', -c, '{PY_MEMORY_ERROR}'], memory_limit: 40M}}\n"
        "tasks:\n  - {agent: short}\n"
    )
    proc = run_cli("fleet", "--json", str(fleet))
    (task,) = json.loads(proc.stdout)["tasks"]
    assert task["reason"] == "failed", task
    assert "probably out of memory" in task["detail"]


# -- the rule, on a fake cage and a fake clock -----------------------------------------


class RefusingCage(FakeCage):
    """A fake rlimit cage: per-process allocations and (cpu, main thread in futex)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.refuse_limit, self.refuse_name = limit, "RLIMIT_DATA"
        self.sizes: dict[int, int] = {}
        self.facts: dict[int, tuple[int, bool]] = {}

    def allocations(self) -> dict[int, int]:
        return dict(self.sizes)

    def progress(self, pid: int) -> tuple[int, bool] | None:
        return self.facts.get(pid)


def watch_for(cage: RefusingCage, seconds: float, step: float = 0.1) -> str | None:
    watch, now, why = AllocationWatch(cage.refuse_limit, cage.refuse_name), 0.0, None
    while now <= seconds and why is None:
        why = watch.observe(now, cage)
        now += step
    return why


def test_stuck_needs_all_three_facts():
    cage = RefusingCage(40 * MiB)
    cage.sizes = {7: 35 * MiB}
    cage.facts = {7: (6, False)}  # near, no CPU, but waiting on input: idle
    assert watch_for(cage, 10) is None
    cage.sizes = {7: int((NEAR_RLIMIT - 0.05) * 40 * MiB)}
    cage.facts = {7: (6, True)}  # no CPU, in a futex, but far from the rlimit
    assert watch_for(cage, 10) is None
    cage.sizes = {7: 35 * MiB}
    why = watch_for(cage, STUCK_S + 0.5)
    assert why and "pid 7 at 35.0 MiB" in why and "rlimit of 40.0 MiB" in why


def test_cpu_progress_resets_the_clock():
    cage = RefusingCage(40 * MiB)
    cage.sizes = {7: 35 * MiB}
    watch, now = AllocationWatch(cage.refuse_limit, cage.refuse_name), 0.0
    for tick in range(100):  # it works: a tick of CPU every sample
        cage.facts = {7: (tick, True)}
        assert watch.observe(now, cage) is None
        now += 0.1


def test_death_note_thresholds():
    watch = AllocationWatch(None)
    assert watch.death_note(48 * MiB, 50 * MiB).startswith("probably out of memory: peak")
    assert watch.death_note(20 * MiB, 50 * MiB) == ""
    assert watch.death_note(None, 50 * MiB) == ""
    refusing = AllocationWatch(40 * MiB, "RLIMIT_DATA", peak=31 * MiB)
    assert "reached 31.0 MiB of its RLIMIT_DATA 40.0 MiB" in refusing.death_note(0, 40 * MiB)
