"""Measure 4: what watching costs. Per agent per tick at 10, 100 and 1,000 sleeping
agents: a cgroup usage read, the rlimit backend's tree walk, and psutil's way (what
pm2 and circus do); then the supervisor's CPU with 100 agents, with and without the
dashboard."""

from __future__ import annotations

import os
import subprocess
import time

import psutil
from common import (
    AGENT_SUPERVISE,
    Section,
    fmt,
    median,
    scratch,
    sleepers_fleet,
    verdict,
    wait_for_sleepers,
)

from agent_supervise.linux import raise_open_files_limit

MiB = 1 << 20


def _per_agent_us(fn, items, repeat: int) -> float:
    ticks = []
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        ticks.append((time.perf_counter() - start) / len(items) * 1e6)
    return median(ticks)


def _tick_costs(n: int, repeat: int) -> list:
    from agent_supervise.limits import probe_all, select_backend
    from agent_supervise.limits.rlimit import RlimitCage
    from agent_supervise.proctree import ProcessTable
    from agent_supervise.run.spawn import Spawner

    kernel = next((p.name for p in probe_all() if p.available and p.name != "rlimit"), None)
    backend = select_backend(kernel or "rlimit")
    cages, table = [], ProcessTable()
    try:
        for _ in range(n):
            cage = backend.create("sleeper", 20 * MiB)
            cage.attach(Spawner().spawn(["sleep", "600"], cage).pid)
            cages.append(cage)
        row = [n]
        row.append(fmt(_per_agent_us(lambda c: c.usage(), cages, repeat)) if kernel else "-")
        walkers = []
        for cage in cages:
            walker = RlimitCage("data", "w", 20 * MiB, table)
            walker.attach(cage.pid)
            walkers.append(walker)
        row.append(fmt(_per_agent_us(lambda w: w.usage(), walkers, repeat)))
        procs = [psutil.Process(c.pid) for c in cages]
        row.append(
            fmt(
                _per_agent_us(
                    lambda p: sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]),
                    procs,
                    max(1, repeat // 5),
                )
            )
        )
        return row
    finally:
        for cage in cages:
            cage.kill()
        for cage in cages:
            try:
                os.waitpid(cage.pid, 0)
            except ChildProcessError:
                pass
            cage.release()


def _supervisor_cpu(n: int, dashboard: bool, seconds: float) -> float:
    """% of one core used by a fleet supervisor watching ``n`` sleeping agents."""
    with scratch("bench-monitor-") as tmp:
        return _cpu_watching(sleepers_fleet(tmp, n, poll_interval="100ms"), n, dashboard, seconds)


def _cpu_watching(path, n: int, dashboard: bool, seconds: float) -> float:
    cmd = f"{AGENT_SUPERVISE} fleet {'--dashboard' if dashboard else '--no-dashboard'} {path}"
    # A terminal for the dashboard: `script` gives the command a pseudo-terminal.
    argv = ["script", "-qfec", cmd, "/dev/null"] if dashboard else cmd.split()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    sup = None
    try:
        sup = _find_supervisor(proc.pid)
        wait_for_sleepers(sup, n, timeout=60, every=0.2)
        time.sleep(1)
        before, start = sup.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, wall = sup.cpu_times(), time.monotonic() - start
        used = (after.user + after.system) - (before.user + before.system)
        return used / wall * 100
    finally:
        # SIGTERM the supervisor alone: it stops its agents and exits, then `script`
        # exits too. Killing the whole group would orphan script's children.
        if sup is not None:
            sup.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=60)


def _find_supervisor(pid: int) -> psutil.Process:
    proc = psutil.Process(pid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for p in [proc, *proc.children(recursive=True)]:
            if (
                "fleet" in p.cmdline()
                and "agent-supervise" in " ".join(p.cmdline())
                and p.name() != "script"
            ):
                return p
        time.sleep(0.05)
    raise RuntimeError("the supervisor did not start")


def run(quick: bool) -> Section:
    raise_open_files_limit()
    sizes = (10, 100) if quick else (10, 100, 1000)
    rows = [_tick_costs(n, 5 if quick else 20) for n in sizes]
    seconds = 2 if quick else 10
    plain = _supervisor_cpu(100 if not quick else 20, False, seconds)
    dash = _supervisor_cpu(100 if not quick else 20, True, seconds)
    section = Section(
        "What watching costs",
        "Sleeping agents, each in its own cage. Microseconds per agent per tick "
        "(median of ticks): reading the cage's usage file through a kept-open fd (what "
        "the cgroup backends' watchdog does), the rlimit backend's walk of the tree "
        "(/proc children files and statm), and psutil's `children(recursive=True)` plus "
        "`memory_info()` (how pm2 and circus look).",
        ["agents", "cgroup usage read", "rlimit tree walk", "psutil tree walk"],
        rows,
        target="≤ 20 µs per agent per tick on cgroup backends; growth linear.",
    )
    cgroup = [float(r[1]) for r in rows if r[1] != "-"]
    if cgroup:
        section.notes.append(
            verdict(
                max(cgroup) <= 20,
                f"cgroup usage read at most {max(cgroup):.1f} µs per agent per tick",
            )
        )
    n = 20 if quick else 100
    section.notes.append(
        f"The fleet supervisor's own CPU while {n} agents sleep, "
        f"sampled every 100 ms, over {seconds} s: **{plain:.1f}%** of a "
        f"core without the dashboard, **{dash:.1f}%** with it (redrawn "
        "at most 4 times a second, in a pseudo-terminal)."
    )
    return section
