"""Shared pieces of the benchmarks: sections, tables, medians, the machine, commands.

Every figure in BENCHMARKS.md is measured by these scripts in one run on one machine
and reported as a median (with the spread) and as ratios: absolute times on a shared
2-core machine are noise, ratios measured side by side are not.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AGENT_SUPERVISE = str(BIN / "agent-supervise")
PY = sys.executable
ALLOC = str(ROOT / "tests" / "children" / "alloc.py")
MiB = 1 << 20


@dataclass
class Section:
    """One part of BENCHMARKS.md: a title, what was measured and how, a table."""

    title: str
    intro: str
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target: str = ""

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.intro.strip(), ""]
        if self.target:
            lines += [f"Target: {self.target}", ""]
        lines.append(table(self.headers, self.rows))
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """``median (min–max)``, in the unit the values are in."""
    return f"{fmt(median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def wall_times(
    cmd, runs: int, *, env=None, shell: bool = False, timeout: float = 600, check: bool = True
) -> list[float]:
    """Wall seconds of ``runs`` runs of ``cmd``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            cmd,
            shell=shell,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
        times.append(time.perf_counter() - start)
        if check and proc.returncode not in (0, 1):
            raise RuntimeError(f"{cmd} exited {proc.returncode}")
    return times


def hyperfine(
    commands: dict[str, str], runs: int, warmup: int = 1, rounds: int = 1
) -> dict[str, list[float]]:
    """Times of each shell command by hyperfine (if installed; else our own loop).

    With ``rounds`` > 1 the commands take turns: hyperfine runs each ``runs / rounds``
    times per round. A slow spell of a shared machine then falls on every command
    alike instead of on whichever ran during it, which would skew the ratios.
    """
    times: dict[str, list[float]] = {name: [] for name in commands}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        if not shutil.which("hyperfine"):
            for name, cmd in commands.items():
                times[name] += wall_times(cmd, per_round, shell=True)
            continue
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"hyperfine-{os.getpid()}.json"
        args = [
            "hyperfine",
            "--style",
            "none",
            "--runs",
            str(per_round),
            "--warmup",
            str(warmup),
            "--export-json",
            str(out),
            "--shell=sh",
        ]
        for name, cmd in commands.items():
            args += ["-n", name, cmd]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, timeout=1800)
        data = json.loads(out.read_text())
        out.unlink()
        for result in data["results"]:
            times[result["command"]] += result["times"]
    return times


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> dict[str, str]:
    from agent_supervise.limits import probe_all
    from agent_supervise.memsource import MemorySource

    backends = ", ".join(p.name for p in probe_all() if p.available)
    return {
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "memory": f"{MemorySource().total() / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "backends here": backends,
    }


def fleet_file(path: Path, agents: str, tasks: str, **supervisor) -> Path:
    sup = {"log_dir": str(path.parent / "runs"), "min_free_memory": "256M", **supervisor}
    body = "supervisor:\n" + "".join(f"  {k}: {v}\n" for k, v in sup.items())
    path.write_text(body + "agents:\n" + agents + "tasks:\n" + tasks)
    return path


@contextlib.contextmanager
def scratch(prefix: str):
    """A temporary folder (fleet files, run folders, agent logs), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def sleepers_fleet(tmp: Path, n: int, **supervisor) -> Path:
    """A fleet of ``n`` `sleep 600` agents, all running at once, each in its own cage."""
    return fleet_file(
        tmp / "f.yaml",
        "  s: {cmd: [sleep, '600'], memory_limit: 20M}\n",
        f"  - {{agent: s, repeat: {n}}}\n",
        max_concurrent=n,
        queue_size=n,
        min_free_memory=0,
        **supervisor,
    )


def wait_for_sleepers(sup, n: int, timeout: float, every: float) -> None:
    """Until the supervisor process ``sup`` (psutil) has ``n`` `sleep` descendants (with
    namespaces of their own, agents are children of their init)."""
    deadline = time.monotonic() + timeout
    while len([c for c in sup.children(recursive=True) if c.name() == "sleep"]) < n:
        assert time.monotonic() < deadline, "agents did not all start"
        time.sleep(every)


def verdict(met: bool, what: str) -> str:
    return f"{what}: target {'met' if met else 'missed'}."
