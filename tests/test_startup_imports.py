"""`agent-supervise run` imports only what it uses: every module is part of every
start (measured in BENCHMARKS.md, not here). This checks the set, not the time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent_supervise.limits import probe_all

# Runs the console script's main() for `run`, then lists what got imported.
PROBE = """
import atexit, sys
atexit.register(lambda: print(" ".join(sorted(sys.modules)), file=sys.__stderr__))
from agent_supervise.cli import main
main(["run", "--backend", sys.argv[1], "--", "/bin/true"])
"""

#: Not needed to run one agent: click (a well-formed `run` is read without it), the
#: fleet, observing, Ray, YAML, rich; the stdlib's ctypes, typing, random; and on the C
#: spawn path neither subprocess nor cgroup2's systemd client (rlimit, cgroup1).
NEVER = (
    "click",
    "rich",
    "yaml",
    "psutil",
    "ray",
    "agent_supervise.fleet.supervisor",
    "agent_supervise.fleet.engine",
    "agent_supervise.observe.dashboard",
    "agent_supervise.observe.snapshot",
    "agent_supervise.agents.loader",
    "agent_supervise.doctor",
    "json",
    "subprocess",
    "ctypes",
    "typing",
    "random",
    "shutil",
    "agent_supervise.limits.cgroup2",
    "agent_supervise.limits.systemd",
)

HERE = {p.name for p in probe_all() if p.available}


@pytest.mark.parametrize("backend", ["rlimit", "cgroup1"])
def test_run_imports_stay_lean(backend):
    if backend not in HERE:
        pytest.skip(f"no {backend} backend here")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, backend], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stderr.split())
    assert "agent_supervise.run.single" in loaded  # the probe did reach the run path
    unneeded = sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in NEVER))
    assert not unneeded
