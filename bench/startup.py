"""Measure 8: start-up. `agent-supervise run -- /bin/true` against the bare interpreter
(`python -c pass`, the same one) and against `prlimit` (util-linux), side by side.

    python bench/startup.py [--quick]     (or: python bench/run.py --only startup)

The commands take turns run by run (A B C D A B C D ...): a slow spell of the shared
machine then falls on all of them alike, and the ratios stay meaningful.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from common import AGENT_SUPERVISE, PY, Section, median, spread, verdict

from agent_supervise.limits import probe_all

TARGET = 2.0  # × `python -c pass`, on the cgroup1 and rlimit backends


def commands() -> dict[str, list[str]]:
    """What to time: the yardsticks, then `run` on each backend this machine has."""
    cmds = {"python -c pass": [PY, "-c", "pass"]}
    if shutil.which("prlimit"):
        cmds["prlimit --data=50M /bin/true"] = ["prlimit", f"--data={50 << 20}", "/bin/true"]
    here = {p.name for p in probe_all() if p.available}
    for backend in ("cgroup2", "cgroup1", "rlimit"):
        if backend in here:
            cmds[f"agent-supervise run --backend {backend} -- /bin/true"] = [
                AGENT_SUPERVISE,
                "run",
                "--backend",
                backend,
                "--",
                "/bin/true",
            ]
    return cmds


def interleaved(cmds: dict[str, list[str]], runs: int) -> dict[str, list[tuple[float, float]]]:
    """(wall ms, cpu ms) of each command, ``runs`` times each, in turns. The cpu time
    (user + system, the kernel's account of the reaped child) is the steadier figure
    when the shared machine's scheduler holds a run back for a time slice."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    for i in range(runs + 1):  # the first round warms the page cache, uncounted
        for name, cmd in cmds.items():
            start = time.perf_counter()
            pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=quiet)
            _, status, usage = os.wait4(pid, 0)
            took = (time.perf_counter() - start) * 1000
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}")
            if i:
                times[name].append((took, (usage.ru_utime + usage.ru_stime) * 1000))
    return times


def run(quick: bool) -> Section:
    runs = 10 if quick else 100
    times = interleaved(commands(), runs)
    wall = {name: [w for w, _ in got] for name, got in times.items()}
    cpu = {name: [c for _, c in got] for name, got in times.items()}
    bare, bare_cpu = median(wall["python -c pass"]), median(cpu["python -c pass"])
    rows = [
        [
            f"`{name}`",
            spread(wall[name]),
            f"{median(wall[name]) / bare:.2f}×",
            spread(cpu[name]),
            f"{median(cpu[name]) / bare_cpu:.2f}×",
        ]
        for name in times
    ]
    judged = {
        name: median(wall[name]) / bare
        for name in times
        if name.startswith("agent-supervise") and "cgroup2" not in name
    }
    worst = max(judged.values())
    notes = [
        verdict(
            worst <= TARGET,
            "`run -- /bin/true` at "
            + ", ".join(f"{ratio:.2f}× on {name.split()[3]}" for name, ratio in judged.items()),
        )
    ]
    return Section(
        "Start-up: `run -- /bin/true`",
        f"Wall time of a whole command from its start to its exit, {runs} runs each, the "
        "commands taking turns run by run (after one uncounted round), and its cpu time "
        "(user + system), median and range in ms. `python -c pass` is the interpreter the "
        "console script runs; `prlimit` is the floor of setting a limit and exec'ing. The "
        "package is byte-compiled, as "
        f"`pip install` leaves it. Ratios are to `python -c pass` ({os.cpu_count()} cores).",
        ["command", "wall ms", "wall vs python -c pass", "cpu ms", "cpu vs python -c pass"],
        rows,
        target=f"`run -- /bin/true` median ≤ {TARGET:g}× `python -c pass` on the cgroup1 "
        "and rlimit backends.",
        notes=notes,
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run as bench_run

    bench_run.compile_package()
    print(run("--quick" in sys.argv).markdown())
