"""An agent's soft limit (memory_high) with real agents on every backend: the kernel
gets it (cgroup2 memory.high, cgroup1 memory.soft_limit_in_bytes; none under rlimit),
the agent still runs to its end, and the fleet says `throttled` once it reached it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_supervise.rundir import read_events

from conftest import ALLOC, PY, run_cli

MiB = 1 << 20

#: Prints the soft limit of its own memory cgroup (or "none"), then runs the command.
#: The agent grows to 36 MiB (~46 MiB with the interpreter), a little past 40M: far
#: past it, cgroup2 would slow it to a crawl (anonymous pages with no swap cannot be
#: reclaimed; each pass over memory.high costs up to 2 s of penalty sleep).
PROBE = """
import subprocess, sys
where = {}
for line in open("/proc/self/cgroup"):
    _, ctrl, path = line.rstrip("\\n").split(":", 2)
    where[ctrl] = path
if "memory" in where:
    f = "/sys/fs/cgroup/memory" + where["memory"] + "/memory.soft_limit_in_bytes"
elif "" in where and not any("memory" in c for c in where):
    f = "/sys/fs/cgroup" + where[""] + "/memory.high"
else:
    f = None
print(open(f).read().strip() if f else "none", flush=True)
sys.exit(subprocess.call(sys.argv[1:]))
"""


def fleet(tmp_path: Path, backend: str, high: str = "40M") -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor: {{log_dir: {tmp_path / 'runs'}, min_free_memory: 64M, backend: {backend}}}\n"
        "agents:\n"
        "  soft:\n"
        f"    cmd: [{PY}, {tmp_path / 'probe.py'}, {PY}, {ALLOC}, --step, '2', --interval,"
        " '0.005', --max, '36', --hold, '0.3']\n"
        "    memory_limit: 100M\n"
        f"    memory_high: {high}\n"
        "tasks:\n  - {agent: soft}\n"
    )
    return path


def test_the_soft_limit_reaches_the_kernel_and_the_fleet_says_throttled(tmp_path, backend):
    proc = run_cli("fleet", "--json", str(fleet(tmp_path, backend)), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    (task,) = json.loads(proc.stdout)["tasks"]
    assert task["reason"] == "ok"
    seen = Path(task["stdout"]).read_text().splitlines()[0]
    if backend == "rlimit":  # no kernel soft limit of its own: the event only
        assert seen == "none" or int(seen) != 40 * MiB
    else:
        assert int(seen) == 40 * MiB
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = read_events(str(run_dir / "events.jsonl"))
    throttled = [e for e in events if e["event"] == "throttled"]
    assert len(throttled) == 1 and throttled[0]["memory_high"] == 40 * MiB, throttled


@pytest.mark.unit
def test_a_soft_limit_not_below_the_cap_is_bad_input(tmp_path):
    proc = run_cli("validate", str(fleet(tmp_path, "auto", high="100M")))
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "memory_high must be below memory_limit" in err and "fleet.yaml:" in err
