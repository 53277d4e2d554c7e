"""Measure 7: output streaming. An agent writing 1 GB to stdout: the supervisor's RSS
growth, and the throughput against writing the same bytes to a file directly."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import psutil
from common import AGENT_SUPERVISE, Section, fleet_file, scratch, verdict

from agent_supervise.units import parse_size

MiB = 1 << 20


def run(quick: bool) -> Section:
    size = "100M" if quick else "1G"
    nbytes = parse_size(size)
    with scratch("bench-output-") as tmp:
        return _measure(tmp, size, nbytes)


def _measure(tmp: Path, size: str, nbytes: int) -> Section:
    start = time.monotonic()
    subprocess.run(f"head -c {size} /dev/zero > {tmp}/direct", shell=True, check=True)
    direct = time.monotonic() - start
    (tmp / "direct").unlink()
    path = fleet_file(
        tmp / "f.yaml", f"  loud: {{cmd: [head, -c, {size}, /dev/zero]}}\n", "  - {agent: loud}\n"
    )
    proc = subprocess.Popen(
        [AGENT_SUPERVISE, "fleet", "--no-dashboard", "--json", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    sup, rss, done = psutil.Process(proc.pid), [], threading.Event()
    deadline = time.monotonic() + 30
    while not sup.children() and time.monotonic() < deadline:
        time.sleep(0.005)  # the baseline: once the supervisor is up and the agent runs

    def sample():
        while not done.is_set():
            try:
                rss.append(sup.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate(timeout=300)
    done.set()
    sampler.join()
    task = json.loads(out)["tasks"][0]
    growth = (max(rss) - rss[0]) / MiB
    rows = [
        [
            "the agent's stdout is the log file",
            f"{nbytes / MiB / task['duration_s']:.0f}",
            f"{growth:.1f}",
        ],
        ["`head -c ... > file` directly", f"{nbytes / MiB / direct:.0f}", "-"],
    ]
    notes = [
        verdict(growth < 5, f"supervisor RSS grew {growth:.1f} MiB"),
        "The agent writes slower than `head` alone because it runs under its cap "
        "(the default 50M): the kernel charges the file's page cache to the agent's "
        "cgroup, so writeback is forced whenever the cap is reached. That is the cap "
        "working, not the supervisor.",
    ]
    return Section(
        "Output streaming",
        f"`head -c {size} /dev/zero` as an agent: its stdout is the task's log file, "
        "opened by the supervisor and handed to the child, so no byte passes through the "
        "supervisor. Throughput in MiB/s; the supervisor's RSS growth (sampled every "
        "10 ms) from when the agent started to its largest.",
        ["how", "MiB/s", "supervisor RSS growth MiB"],
        rows,
        target="< 5 MiB growth.",
        notes=notes,
    )
