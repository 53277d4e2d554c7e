"""Measure 5: the supervisor's own memory with 1, 100 and 1,000 running agents."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
from common import AGENT_SUPERVISE, Section, scratch, sleepers_fleet, verdict, wait_for_sleepers

from agent_supervise.linux import raise_open_files_limit

MiB = 1 << 20


def _rss_with(n: int) -> tuple[float, float]:
    with scratch("bench-footprint-") as tmp:
        proc = subprocess.Popen(
            [AGENT_SUPERVISE, "fleet", "--no-dashboard", str(sleepers_fleet(tmp, n))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sup = psutil.Process(proc.pid)
        try:
            start = time.monotonic()
            wait_for_sleepers(sup, n, timeout=120, every=0.1)
            took = time.monotonic() - start
            time.sleep(2)  # a few watchdog rounds, a few state.json writes
            return sup.memory_info().rss / MiB, took
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


def run(quick: bool) -> Section:
    raise_open_files_limit()
    rows = []
    for n in (1, 20) if quick else (1, 100, 1000):
        rss, took = _rss_with(n)
        rows.append([n, f"{rss:.1f}", f"{took:.2f}"])
    at_100 = next((float(r[1]) for r in rows if r[0] == 100), None)
    notes = [verdict(at_100 <= 40, f"{at_100:.1f} MiB at 100 agents")] if at_100 else []
    return Section(
        "Supervisor footprint",
        "RSS of `agent-supervise fleet` once N agents (`sleep`, each in its own cage, "
        "20M cap) all run, and how long it took to start them all (one supervisor "
        f"thread; {os.cpu_count()} cores).",
        ["agents", "supervisor RSS MiB", "seconds to start them all"],
        rows,
        target="≤ 40 MiB at 100 agents.",
        notes=notes,
    )
