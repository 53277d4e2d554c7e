"""Measure 8: start-up. `agent-supervise run -- /bin/true` against the bare interpreter
(`python -c pass`, the same one) and against `prlimit` (util-linux), side by side, with
the parts of the difference: the run path's imports alone, and what the kernel takes to
put a process into a cgroup v1 group for the first time in a while.

What is timed is a real install (`pip install` of a wheel into a fresh venv, bytecode
written by pip), as users have it: the project's own venv is an editable install,
whose import hook makes every start slower (and `python -c pass` with it). Quick mode
(the test suite's) times the project's venv instead.

    python bench/startup.py [--quick]     (or: python bench/run.py --only startup)

The commands take turns run by run (A B C D A B C D ...): a slow spell of the shared
machine then falls on all of them alike, and the ratios stay meaningful.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import AGENT_SUPERVISE, PY, ROOT, Section, median, spread, verdict

from agent_supervise.limits import probe_all

TARGET = 2.0  # × `python -c pass`, on the cgroup1 and rlimit backends


#: What `run` imports before it does anything (cli/runcmd.py and the run path).
RUN_IMPORTS = "import agent_supervise.cli.runcmd, agent_supervise.run.single"


@contextlib.contextmanager
def installed():
    """(python, agent-supervise) of a fresh venv with the wheel of this checkout
    installed, byte-compiled (its dependencies from the package index or pip's cache)."""
    with tempfile.TemporaryDirectory(prefix="agent-supervise-startup.") as tmp:
        venv = Path(tmp) / "venv"
        quiet = {"stdout": subprocess.DEVNULL, "check": True}
        subprocess.run(
            [PY, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, ROOT],
            **quiet,
        )
        (wheel,) = Path(tmp).glob("agent_supervise-*.whl")
        subprocess.run([PY, "-m", "venv", venv], **quiet)
        # pip writes the bytecode at install, unless PYTHONDONTWRITEBYTECODE is set
        # (as on the project's machines): then every start would compile every module.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([venv / "bin" / "pip", "install", "-q", wheel], env=env, **quiet)
        yield str(venv / "bin" / "python"), str(venv / "bin" / "agent-supervise")


@contextlib.contextmanager
def v1_group():
    """A memory group of cgroup v1 of our own (root only), or None."""
    from agent_supervise.limits.cgroupfs import cgroup_mounts

    mounts = [m for m in cgroup_mounts() if m.fstype == "cgroup" and "memory" in m.options]
    if not mounts or os.geteuid() != 0:
        yield None
        return
    path = os.path.join(mounts[0].point, f"bench-startup.{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def commands(py: str, exe: str, group: str | None) -> dict[str, list[str]]:
    """What to time: the yardsticks and the parts, then `run` on each backend here."""
    cmds = {"python -c pass": [py, "-c", "pass"]}
    if shutil.which("prlimit"):
        cmds["prlimit --data=50M /bin/true"] = ["prlimit", f"--data={50 << 20}", "/bin/true"]
    if group:
        # The kernel's part of entering a v1 cage: moving a task takes a write lock on
        # every thread group (cgroup_threadgroup_rwsem); its first taking after a
        # quiet spell waits for an RCU grace period. Both backends here enter one
        # (cgroup1: memory and pids; rlimit: the pids group of its process cap).
        cmds["sh: enter a v1 group, exec /bin/true"] = [
            "/bin/sh",
            "-c",
            f"echo 0 > {group}/cgroup.procs && exec /bin/true",
        ]
    cmds["python: the run path's imports"] = [py, "-c", RUN_IMPORTS]
    # One of them alone: dataclasses brings inspect, ast, dis and tokenize with it.
    cmds["python -c 'import dataclasses'"] = [py, "-c", "import dataclasses"]
    here = {p.name for p in probe_all() if p.available}
    for backend in ("cgroup2", "cgroup1", "rlimit"):
        if backend in here:
            cmds[f"agent-supervise run --backend {backend} -- /bin/true"] = [
                exe,
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
    with contextlib.ExitStack() as stack:
        py, exe = (PY, AGENT_SUPERVISE) if quick else stack.enter_context(installed())
        group = stack.enter_context(v1_group())
        times = interleaved(commands(py, exe, group), runs)
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
    worst_name = max(judged, key=judged.get)
    over = median(wall[worst_name]) - bare
    imports = median(wall["python: the run path's imports"]) - bare
    alone = median(wall["python -c 'import dataclasses'"]) - bare
    parts = [f"its imports {imports:.0f} ms (dataclasses alone {alone:.0f} ms)"]
    if "sh: enter a v1 group, exec /bin/true" in wall and "prlimit --data=50M /bin/true" in wall:
        entry = median(wall["sh: enter a v1 group, exec /bin/true"]) - median(
            wall["prlimit --data=50M /bin/true"]
        )
        parts.append(f"the kernel's first move into a v1 group ~{entry:.0f} ms")
    budget = (TARGET - 1) * bare
    notes.append(
        f"Where the time goes ({worst_name.split()[3]}): {over:.0f} ms over the bare "
        f"interpreter, against a budget of {budget:.0f} ms for {TARGET:g}×; of it "
        + ", ".join(parts)
        + ", the rest is the run itself (cage, spawn, watchdog thread, reaping)."
    )
    return Section(
        "Start-up: `run -- /bin/true`",
        f"Wall time of a whole command from its start to its exit, {runs} runs each, the "
        "commands taking turns run by run (after one uncounted round), and its cpu time "
        "(user + system), median and range in ms. `python -c pass` is the interpreter the "
        "console script runs; `prlimit` is the floor of setting a limit and exec'ing; "
        "`sh: enter a v1 group` is the floor of entering a cgroup v1 group before exec; "
        "the imports row is the run path's imports without the run. "
        + (
            "Timed in the project's (editable) venv, quick mode. "
            if quick
            else "Timed in a fresh venv with the wheel installed, as users have it. "
        )
        + f"Ratios are to `python -c pass` ({os.cpu_count()} cores).",
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
