"""Measure 6: the seed's headline ("70% decrease in memory usage"). Eight agents that
each hold 300 MB for a few seconds: the peak of memory in use on the machine when
they all start at once, against the default policy (2 at a time, admission on), and
what that saving costs in wall time."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import AGENT_SUPERVISE, PY, Section, fleet_file, median, verdict

MiB = 1 << 20
HOLD = ("import sys, time; b = bytearray(int(sys.argv[1]) << 20); "
        "b[::4096] = b'x' * len(b[::4096]); time.sleep(float(sys.argv[2]))")


def _in_use() -> int:
    with open("/proc/meminfo") as f:
        info = {k: int(v.split()[0]) * 1024 for k, _, v in
                (line.partition(":") for line in f)}
    return info["MemTotal"] - info["MemAvailable"]


def _peak_during(cmd: list[str]) -> tuple[float, float]:
    """(peak MiB in use above the idle level, wall seconds) while ``cmd`` runs."""
    baseline = _in_use()
    peak, done = [baseline], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _in_use())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    return (peak[0] - baseline) / MiB, wall


def run(quick: bool) -> Section:
    agents, mb, hold, runs = (4, 100, 1.0, 1) if quick else (8, 300, 3.0, 3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-headline-"))
    agent = f"  a: {{cmd: ['{PY}', -c, \"{HOLD}\", '{mb}', '{hold}'], memory_limit: {mb + 100}M}}\n"
    task = f"  - {{agent: a, repeat: {agents}}}\n"
    unthrottled = fleet_file(tmp / "all.yaml", agent, task, max_concurrent=agents,
                             queue_size=agents, min_free_memory=0)
    default = fleet_file(tmp / "default.yaml", agent, task, min_free_memory="1G")
    results = {}
    for name, path in (("all at once", unthrottled), ("default policy", default)):
        cmd = [AGENT_SUPERVISE, "fleet", "--no-dashboard", str(path)]
        results[name] = [_peak_during(cmd) for _ in range(runs)]
    rows = []
    base_peak = median([p for p, _ in results["all at once"]])
    base_wall = median([w for _, w in results["all at once"]])
    for name, got in results.items():
        peak, wall = median([p for p, _ in got]), median([w for _, w in got])
        rows.append([name, f"{peak:.0f}", f"{(1 - peak / base_peak) * 100:.0f}%",
                     f"{wall:.1f}", f"{wall / base_wall:.2f}×"])
    peak = median([p for p, _ in results["default policy"]])
    lower = (1 - peak / base_peak) * 100
    notes = [verdict(lower >= 70, f"peak {lower:.0f}% lower with the default policy"),
             f"The cost: {median([w for _, w in results['default policy']]) / base_wall:.1f}"
             "× the wall time, since the agents wait their turn."]
    return Section(
        "The seed's headline: peak memory with throttling",
        f"{agents} agents that each touch {mb} MB and hold it {hold:g} s. Memory in use "
        "on the machine (MemTotal − MemAvailable, sampled every 20 ms) above its idle "
        f"level, median of {runs} runs: every agent at once (`max_concurrent: {agents}`,"
        " no admission) against the defaults (`max_concurrent: 2`, "
        "`min_free_memory: 1G`). Every task ended `ok` in both.",
        ["policy", "peak MiB in use", "lower by", "wall s", "wall vs all at once"], rows,
        target="≥ 70% lower peak, nothing lost.", notes=notes)
