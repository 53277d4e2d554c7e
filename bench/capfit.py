"""Measure 10: one meaning of a cap. The smallest cap at which each of six real
programs finishes, under cgroup1 and under rlimit, found by bisection; their ratio.

Programs: npm installing a package from a local tarball (offline), tsc compiling a
small project, pytest running a small suite, an MCP stdio server from npm driven by
the Python ``mcp`` client (initialize, list_tools, two calls; only the server is
capped: the client starts it through ``agent-supervise run``), the Python allocator
(tests/children/alloc.py to 60 MiB) and a tree of 10 forked children sharing 50 MiB
(tests/children/sharedtree.py). npm, tsc, the server and ``mcp`` are installed by
bench/install.sh into .bench/capfit; a program missing there is left out.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import AGENT_SUPERVISE, ALLOC, PY, ROOT, Section, scratch, verdict

TARGET = 1.25
CAPFIT = ROOT / ".bench" / "capfit"
MODULES = CAPFIT / "node_modules"
CLIENT_PY = CAPFIT / "venv" / "bin" / "python"
SHARED_TREE = str(ROOT / "tests" / "children" / "sharedtree.py")
BACKENDS = ("cgroup1", "rlimit")

MCP_CLIENT = """
import asyncio, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

async def main(run, folder):
    server = StdioServerParameters(command=run[0], args=run[1:])
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            assert (await session.list_tools()).tools
            await session.call_tool("list_directory", {"path": folder})
            got = await session.call_tool("read_text_file", {"path": folder + "/a.txt"})
            assert "hello" in str(got.content), got

asyncio.run(main(sys.argv[2:], sys.argv[1]))
"""


def programs(work: Path, quick: bool) -> dict[str, list[str]]:
    """Each program's command (run in ``work``), those whose tools are installed."""
    found = {
        # Held 0.3 s: allocated and freed within a sample, the peak is a race with the
        # rlimit watchdog's sampling, not what a cap counts (reaction and overshoot
        # have sections of their own).
        "python allocator (60 MiB)": [PY, ALLOC, "--step", "1", "--interval", "0", "--max",
                                      "60", "--hold", "0.3"],
        "10 forked children sharing 50 MiB": [PY, SHARED_TREE, "cow", "--hold", "0.3"],
    }  # fmt: skip
    if quick:
        return found
    tests = work / "suite"
    tests.mkdir()
    for i in range(10):
        (tests / f"test_{i}.py").write_text(
            "import pytest\n\n@pytest.mark.parametrize('n', range(20))\n"
            f"def test_square(n):\n    assert n * n == n ** 2 + {i} - {i}\n"
        )
    found["pytest (200 tests)"] = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   str(tests)]  # fmt: skip
    tarball = next(CAPFIT.glob("ms-*.tgz"), None)
    if tarball and shutil.which("npm"):
        found["npm install (local tarball, offline)"] = [
            "sh", "-c", f"rm -rf node_modules package-lock.json && npm install --offline "
            f"--no-audit --no-fund --cache {work}/npm-cache {tarball}",
        ]  # fmt: skip
    tsc = MODULES / "typescript" / "bin" / "tsc"
    if tsc.exists():
        project = work / "ts"
        project.mkdir()
        for i in range(20):
            (project / f"m{i}.ts").write_text(
                f"export interface Item{i} {{ id: number; name: string }}\n"
                f"export function make{i}(n: number): Item{i}[] {{\n"
                "  return Array.from({ length: n }, (_, id) => ({ id, name: `x${id}` }));\n}\n"
            )
        found["tsc (20 modules)"] = ["node", str(tsc), "--strict", "--target", "es2020",
                                     "--outDir", str(work / "out"),
                                     *map(str, sorted(project.glob("*.ts")))]  # fmt: skip
    server = MODULES / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
    if server.exists() and CLIENT_PY.exists():
        (work / "a.txt").write_text("hello\n")
        found["MCP filesystem server (mcp client)"] = [
            str(CLIENT_PY), "-c", MCP_CLIENT, str(work), "{run}", "node", str(server),
            str(work),
        ]  # fmt: skip
    return found


def finishes(cmd: list[str], backend: str, cap_mib: int, work: Path, timeout: float) -> bool:
    """Whether ``cmd`` ends ``ok`` under ``--memory cap_mib`` on ``backend``. The MCP
    client's ``{run}`` marks where the capped server's command begins."""
    run = [AGENT_SUPERVISE, "run", "--json", "--backend", backend, "--memory", f"{cap_mib}M",
           "--timeout", f"{timeout:.0f}", "--"]  # fmt: skip
    if "{run}" in cmd:
        at = cmd.index("{run}")
        full = cmd[:at] + run + cmd[at + 1 :]
    else:
        full = run + cmd
    try:
        proc = subprocess.run(full, cwd=work, capture_output=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return False
    if "{run}" in cmd:
        return proc.returncode == 0
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])["reason"] == "ok"
    except (IndexError, ValueError, KeyError):
        return False


def smallest_cap(cmd, backend: str, work: Path, precision: float, timeout: float) -> int | None:
    """The smallest cap (MiB) at which ``cmd`` finishes, to within ``precision``
    (a ratio), by bisection in log space between 8 MiB and 2 GiB."""
    low, high = 8, 256
    while not finishes(cmd, backend, high, work, timeout):
        if high >= 2048:
            return None
        low, high = high, high * 2
    while high / low > precision:
        mid = round(math.sqrt(low * high))
        if mid in (low, high):
            break
        if finishes(cmd, backend, mid, work, timeout):
            high = mid
        else:
            low = mid
    return high


def run(quick: bool) -> Section:
    from agent_supervise.limits import probe_all

    here = {p.name for p in probe_all() if p.available}
    precision = 1.25 if quick else 1.05
    rows, ratios = [], []
    with scratch("bench-capfit-") as work:
        for name, cmd in programs(work, quick).items():
            start = time.monotonic()
            ok = finishes(cmd, "rlimit", 2048, work, 120)
            # A run that cannot finish in 3x its uncapped time is stuck at its cap.
            timeout = max(10.0, 3 * (time.monotonic() - start)) if ok else 120
            caps = {b: smallest_cap(cmd, b, work, precision, timeout) if b in here else None
                    for b in BACKENDS}  # fmt: skip
            if caps["cgroup1"] and caps["rlimit"]:
                ratio = caps["rlimit"] / caps["cgroup1"]
                ratios.append(ratio)
                within = max(ratio, 1 / ratio) <= TARGET
                cells = [f"{ratio:.2f}×", "met" if within else "missed"]
            else:
                cells = ["-", "not measured"]
            rows.append([name, *(caps[b] or "-" for b in BACKENDS), *cells])
            print(f"bench: capfit {name}: {caps}", file=sys.stderr)
    worst = max((max(r, 1 / r) for r in ratios), default=math.inf)
    return Section(
        "One meaning of a cap: the smallest cap at which a program finishes",
        "The smallest `--memory` (MiB) at which each program ends `ok` under cgroup1 "
        f"and under rlimit, by bisection to {precision - 1:.0%} (bench/capfit.py); the "
        "ratio rlimit / cgroup1. The rlimit watchdog reads a tree as a cgroup charges "
        "it: PSS of anonymous and shared memory from smaps_rollup, each page once "
        "(limits/charge.py); before it summed RSS. A run that does not finish within "
        "3× its uncapped time counts as not finishing.",
        ["program", "cgroup1 MiB", "rlimit MiB", "rlimit / cgroup1", "within 1.25×"],
        rows,
        target=f"each program's smallest cap under rlimit within {TARGET}× of cgroup1's.",
        notes=[verdict(worst <= TARGET, f"the widest ratio is {worst:.2f}×")],
    )


if __name__ == "__main__":  # one program, by hand: python bench/capfit.py
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    print(run("--quick" in sys.argv).markdown())
