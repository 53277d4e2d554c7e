"""Measure 6: the seed's headline ("70% decrease in memory usage"). Eight agents that
each hold 300 MB for a few seconds: the peak of memory in use on the machine when
they all start at once, against the default policy (2 at a time, admission on), and
what that saving costs in wall time."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import AGENT_SUPERVISE, ALLOC, PY, MiB, Section, fleet_file, median, verdict

from agent_supervise.memsource import MemorySource

MEMORY = MemorySource()


def _in_use() -> int:
    return MEMORY.total() - MEMORY.available()


def _peak_during(cmd: list[str]) -> tuple[float, float, int]:
    """(peak MiB in use above the idle level, wall seconds, exit status) while ``cmd``
    runs; the fleet exits 0 only when every task ended ok."""
    baseline = _in_use()
    peak, done = [baseline], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _in_use())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    status = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600
    ).returncode
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    return (peak[0] - baseline) / MiB, wall, status


def run(quick: bool) -> Section:
    agents, mb, hold, runs = (4, 100, 1.0, 1) if quick else (8, 300, 3.0, 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-headline-"))
    agent = (
        f"  a: {{cmd: ['{PY}', '{ALLOC}', --step, '{mb}', --interval, '0', --max, "
        f"'{mb}', --hold, '{hold}'], memory_limit: {mb + 100}M}}\n"
    )
    task = f"  - {{agent: a, repeat: {agents}}}\n"
    unthrottled = fleet_file(
        tmp / "all.yaml", agent, task, max_concurrent=agents, queue_size=agents, min_free_memory=0
    )
    default = fleet_file(tmp / "default.yaml", agent, task, min_free_memory="1G")
    results = {}
    for name, path in (("all at once", unthrottled), ("default policy", default)):
        cmd = [AGENT_SUPERVISE, "fleet", "--no-dashboard", str(path)]
        results[name] = [_peak_during(cmd) for _ in range(runs)]
    shutil.rmtree(tmp, ignore_errors=True)
    peaks = {name: median([p for p, _, _ in got]) for name, got in results.items()}
    walls = {name: median([w for _, w, _ in got]) for name, got in results.items()}
    base_peak, base_wall = peaks["all at once"], walls["all at once"]
    rows = [
        [
            name,
            f"{peaks[name]:.0f}",
            f"{(1 - peaks[name] / base_peak) * 100:.0f}%",
            f"{walls[name]:.1f}",
            f"{walls[name] / base_wall:.2f}×",
        ]
        for name in results
    ]
    lower = (1 - peaks["default policy"] / base_peak) * 100
    failed = sum(status != 0 for got in results.values() for _, _, status in got)
    notes = [
        verdict(
            lower >= 70 and not failed,
            f"peak {lower:.0f}% lower with the default policy, "
            + (
                f"{failed} runs in which a task did not end ok"
                if failed
                else "every task ok in every run"
            ),
        ),
        f"The cost: {walls['default policy'] / base_wall:.1f}"
        "× the wall time, since the agents wait their turn.",
    ]
    return Section(
        "The seed's headline: peak memory with throttling",
        f"{agents} agents that each touch {mb} MB and hold it {hold:g} s. Memory in use "
        "on the machine (MemTotal − MemAvailable, sampled every 20 ms) above its idle "
        f"level, median of {runs} runs: every agent at once (`max_concurrent: {agents}`,"
        " no admission) against the defaults (`max_concurrent: 2`, "
        "`min_free_memory: 1G`); a run counts as losing nothing when the fleet exits 0 "
        "(every task ended `ok`).",
        ["policy", "peak MiB in use", "lower by", "wall s", "wall vs all at once"],
        rows,
        target="≥ 70% lower peak, nothing lost.",
        notes=notes,
    )
