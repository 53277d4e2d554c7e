"""Measure 5: the supervisor's own memory with 1, 100 and 1,000 running agents."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from common import AGENT_SUPERVISE, Section, fleet_file, raise_nofile, verdict

MiB = 1 << 20


def _rss_with(n: int) -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    path = fleet_file(tmp / "f.yaml", "  s: {cmd: [sleep, '600'], memory_limit: 20M}\n",
                      f"  - {{agent: s, repeat: {n}}}\n", max_concurrent=n, queue_size=n,
                      min_free_memory=0)
    proc = subprocess.Popen([AGENT_SUPERVISE, "fleet", "--no-dashboard", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sup = psutil.Process(proc.pid)
    try:
        start, deadline = time.monotonic(), time.monotonic() + 120
        while len([c for c in sup.children() if c.name() == "sleep"]) < n:
            assert time.monotonic() < deadline, "agents did not all start"
            time.sleep(0.1)
        took = time.monotonic() - start
        time.sleep(2)  # a few watchdog rounds, a few state.json writes
        return sup.memory_info().rss / MiB, took
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def run(quick: bool) -> Section:
    raise_nofile()
    rows = []
    for n in ((1, 20) if quick else (1, 100, 1000)):
        rss, took = _rss_with(n)
        rows.append([n, f"{rss:.1f}", f"{took:.2f}"])
    at_100 = next((float(r[1]) for r in rows if r[0] == 100), None)
    notes = [verdict(at_100 <= 40, f"{at_100:.1f} MiB at 100 agents")] if at_100 else []
    return Section(
        "Supervisor footprint",
        "RSS of `agent-supervise fleet` once N agents (`sleep`, each in its own cage, "
        "20M cap) all run, and how long it took to start them all (one supervisor "
        f"thread; {os.cpu_count()} cores).",
        ["agents", "supervisor RSS MiB", "seconds to start them all"], rows,
        target="≤ 40 MiB at 100 agents.", notes=notes)
