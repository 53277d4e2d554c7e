"""Runtime hints (run/hints.py): the agent's Node, Go and JVM are told its cap
through its environment, on every backend, in ``run`` and in fleets, unless turned
off; the user's own settings stay and win."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_fleet_real import write_fleet
from test_slurm import branches, export

from agent_supervise.run.hints import node_semi_space_mib, runtime_hints
from agent_supervise.units import parse_size

from conftest import CHILDREN, IN_VM, PY, MiB, require_tool, run_cli, supervise

NODE_STRINGS = str(CHILDREN / "node_strings.js")
SHOW = 'echo "$NODE_OPTIONS|$GOMEMLIMIT|$JAVA_TOOL_OPTIONS"'


@pytest.fixture(autouse=True)
def no_hints_of_our_own(monkeypatch):
    """The tests' agents inherit these from the supervisor: none unless a test sets one."""
    for name in ("NODE_OPTIONS", "GOMEMLIMIT", "JAVA_TOOL_OPTIONS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.unit
def test_hints_are_appended_to_the_users_options_and_give_way_to_their_own():
    hints, note = runtime_hints({"NODE_OPTIONS": "--trace-warnings"}, 100 * MiB)
    assert hints == {
        "NODE_OPTIONS": "--trace-warnings --max-old-space-size=75 --max-semi-space-size=1",
        "GOMEMLIMIT": "90MiB",
        "JAVA_TOOL_OPTIONS": f"-XX:MaxRAM={100 * MiB}",
    }
    assert "NODE_OPTIONS += --max-old-space-size=75" in note and "left as" not in note
    own = {
        "NODE_OPTIONS": "--max-old-space-size=300 --max-semi-space-size=4",
        "GOMEMLIMIT": "1GiB",
        "JAVA_TOOL_OPTIONS": "-Xmx64m",
    }
    hints, note = runtime_hints(own, 100 * MiB)
    assert hints == {}
    assert note.endswith(
        "none set; left as set by the user: NODE_OPTIONS' own --max-old-space-size, "
        "NODE_OPTIONS' own --max-semi-space-size, GOMEMLIMIT, JAVA_TOOL_OPTIONS' own heap size"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "cap_mib, semi", [(28, 1), (100, 1), (512, 1), (1024, 4), (2048, 8), (4096, 16), (65536, 16)]
)
def test_the_semi_space_is_v8s_own_for_a_machine_of_the_cap(cap_mib, semi):
    assert node_semi_space_mib(cap_mib * MiB) == semi


#: Churns young objects and prints the largest new space V8 used (MiB).
NEW_SPACE = (
    "const v8 = require('v8'); let mx = 0; const keep = [];"
    "for (let r = 0; r < 150; r++) { const a = [];"
    "  for (let i = 0; i < 20000; i++) a.push({i, s: 'x' + i}); keep.push(a.slice(0, 20));"
    "  for (const s of v8.getHeapSpaceStatistics())"
    "    if (s.space_name === 'new_space') mx = Math.max(mx, s.space_size); }"
    "console.log(mx / 1048576)"
)


@pytest.mark.parametrize("cap", ["100M", "1G"])
def test_node_sizes_its_young_generation_from_the_cap_on_every_backend(backend, cap):
    """Under a cgroup Node reads the limit and sizes V8 by it; under an rlimit it
    cannot, and the semi-space hint makes it the same (without it: 32 MiB at any cap).
    """
    require_tool(shutil.which("node") is not None, "node")
    want = 2 * node_semi_space_mib(parse_size(cap))
    out, proc = supervise(backend, "node", "-e", NEW_SPACE, memory=cap, timeout=60)
    assert out["reason"] == "ok", out
    assert float(proc.stdout.decode()) == want, (proc.stdout, out["notes"])


def _run(backend: str, *cmd, extra=(), timeout: float = 60):
    return supervise(backend, *cmd, memory="100M", extra=extra, timeout=timeout)


def test_the_agent_sees_the_hints_and_the_note_says_so(backend, monkeypatch):
    monkeypatch.setenv("NODE_OPTIONS", "--no-warnings")  # the supervisor's, so the agent's
    out, proc = _run(backend, "sh", "-c", SHOW)
    assert out["reason"] == "ok", out
    assert proc.stdout.decode() == (
        f"--no-warnings --max-old-space-size=75 --max-semi-space-size=1|90MiB|"
        f"-XX:MaxRAM={100 * MiB}\n"
    )
    (note,) = [n for n in out["notes"] if n.startswith("runtime hints")]
    assert "NODE_OPTIONS += --max-old-space-size=75 (75% of the cap)" in note


def test_a_users_own_old_space_size_is_kept_and_noted(backend, monkeypatch):
    monkeypatch.setenv("NODE_OPTIONS", "--max-old-space-size=40")
    out, proc = _run(backend, "sh", "-c", SHOW)
    assert proc.stdout.decode().startswith("--max-old-space-size=40 --max-semi-space-size=1|90MiB|")
    assert any("left as set by the user: NODE_OPTIONS' own" in n for n in out["notes"])


def test_no_runtime_hints_leaves_the_environment_alone(backend):
    out, proc = _run(backend, "sh", "-c", SHOW, extra=("--no-runtime-hints",))
    assert out["reason"] == "ok" and proc.stdout.decode() == "||\n"
    assert not [n for n in out["notes"] if n.startswith("runtime hints")]


def test_node_told_its_cap_stops_at_its_own_heap_limit(backend):
    """A Node heap that keeps growing: told the cap, V8 aborts at its heap limit
    well before it (an old space of 75 MiB under 100M), quickly, on every backend."""
    require_tool(shutil.which("node") is not None, "node")
    out, proc = _run(backend, "node", NODE_STRINGS, timeout=90 if IN_VM else 30)
    assert out["duration_s"] < (45 if IN_VM else 10), out
    # rlimit's watchdog counts V8's other spaces too (limits/charge.py): at the cap it
    # may stop node a moment before V8's own abort. Either way: quickly, for memory.
    if backend == "rlimit" and out["reason"] == "memory_exceeded":
        assert out["exit_code"] == 137, out
        return
    assert (out["signal"], out["exit_code"]) == ("SIGABRT", 134), out
    assert b"JavaScript heap out of memory" in proc.stderr or backend == "rlimit", proc.stderr
    if backend != "rlimit":
        # The kernel never had to kill: V8 stopped first. (The charge's peak may touch
        # the cap all the same: it counts the page cache of node's own ~90 MiB binary,
        # which the kernel reclaims at the cap instead of killing; measured in the
        # cgroup2 guest, where the cache starts cold.)
        assert out["oom_kills"] == 0, out


def test_the_jvm_sizes_its_heap_from_the_cap(backend):
    require_tool(shutil.which("java") is not None, "java")
    out, proc = _run(backend, "java", "-XX:+PrintFlagsFinal", "-version")
    assert out["reason"] == "ok", (out, proc.stderr[-500:])
    (line,) = [x for x in proc.stdout.decode().splitlines() if " MaxHeapSize " in x]
    assert int(line.split("=")[1].split()[0]) <= 50 * MiB  # the JVM's 50% of a small RAM


def test_fleet_agents_get_hints_unless_they_opt_out(tmp_path, backend):
    fleet = write_fleet(
        tmp_path,
        "agents:\n"
        f"  told: {{cmd: [sh, -c, '{SHOW}'], memory_limit: 40M}}\n"
        f"  quiet: {{cmd: [sh, -c, '{SHOW}'], runtime_hints: false}}\n"
        "tasks:\n  - {agent: told}\n  - {agent: quiet}\n",
        f"  backend: {backend}\n",
    )
    proc = run_cli("fleet", "--json", str(fleet))
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_task = {t["task"]: t for t in json.loads(proc.stdout)["tasks"]}
    told = Path(by_task["told-1"]["stdout"]).read_text()
    assert told.startswith("--max-old-space-size=30 --max-semi-space-size=1|36MiB|-XX:MaxRAM=")
    assert Path(by_task["quiet-1"]["stdout"]).read_text() == "||\n"


def test_pool_workers_get_them_too(tmp_path, backend):
    worker = (
        "import json, os, sys\n"
        "for line in sys.stdin:\n"
        "    t = json.loads(line)\n"
        "    hint = os.environ.get('GOMEMLIMIT')\n"
        "    print(json.dumps({'task': t['task'], 'ok': True, 'result': hint}), flush=True)\n"
    )
    (tmp_path / "worker.py").write_text(worker)
    fleet = write_fleet(
        tmp_path,
        f"agents:\n  w: {{cmd: ['{PY}', '{tmp_path / 'worker.py'}'], memory_limit: 80M, "
        "pool: {size: 1}}\ntasks:\n  - {agent: w, repeat: 2}\n",
        f"  backend: {backend}\n",
    )
    proc = run_cli("fleet", "--json", str(fleet))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for task in json.loads(proc.stdout)["tasks"]:
        assert json.loads(Path(task["stdout"]).read_text())["result"] == "72MiB"


@pytest.mark.unit
def test_a_slurm_export_keeps_the_opt_out(tmp_path):
    fleet = write_fleet(
        tmp_path,
        "agents:\n  told: {cmd: ['true']}\n  quiet: {cmd: ['true'], runtime_hints: false}\n"
        "tasks:\n  - {agent: told}\n  - {agent: quiet}\n",
    )
    told, quiet = (cmd[: cmd.index("--")] for _, cmd in sorted(branches(export(fleet)).items()))
    assert "--no-runtime-hints" not in told and "--no-runtime-hints" in quiet
