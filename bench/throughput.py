"""Measure 1: throughput. 500 short agents (/bin/true) at concurrency 8, each under a
hard cap, against xargs -P8 and GNU parallel -j8 (no caps); and where the time goes."""

from __future__ import annotations

import os
import select
import shutil
import tempfile
import time
from pathlib import Path

from common import AGENT_SUPERVISE, Section, fleet_file, fmt, hyperfine, median, spread

MiB = 1 << 20


def _cost_split(backends: list[str], n: int) -> list[list]:
    """Per-agent costs inside the supervisor, in microseconds (medians)."""
    from agent_supervise.limits import select_backend
    from agent_supervise.run import spawn as spawning

    rows = []
    for name in backends:
        backend = select_backend(name)
        create, release, spawn, reap = [], [], [], []
        for _ in range(n):
            t0 = time.perf_counter()
            cage = backend.create("bench", 20 * MiB)
            t1 = time.perf_counter()
            child = spawning.Spawner().spawn(["true"], cage)
            t2 = time.perf_counter()
            cage.attach(child.pid)
            fd = os.pidfd_open(child.pid)
            select.select([fd], [], [], 10)
            t3 = time.perf_counter()
            os.waitpid(child.pid, 0)
            os.close(fd)
            t4 = time.perf_counter()
            cage.release()
            t5 = time.perf_counter()
            create.append((t1 - t0) * 1e6)
            spawn.append((t2 - t1) * 1e6)
            reap.append((t4 - t3) * 1e6)
            release.append((t5 - t4) * 1e6)
        way = "vfork" if spawning.fast_path() else "fork + preexec_fn"
        rows.append(
            [
                name,
                fmt(median(create)),
                fmt(median(release)),
                f"{fmt(median(spawn))} ({way})",
                fmt(median(reap)),
            ]
        )
    return rows


def run(quick: bool) -> Section:
    from agent_supervise.limits import probe_all

    n, runs, rounds = (100, 3, 1) if quick else (500, 15, 5)
    backends = [p.name for p in probe_all() if p.available]
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    commands = {"xargs -P8": f"seq {n} | xargs -P8 -I{{}} true"}
    if shutil.which("parallel"):
        commands["GNU parallel -j8"] = f"seq {n} | parallel --will-cite -j8 true"
    for name in backends:
        path = fleet_file(
            tmp / f"{name}.yaml",
            "  t: {cmd: ['true'], memory_limit: 20M}\n",
            f"  - {{agent: t, repeat: {n}}}\n",
            max_concurrent=8,
            queue_size=16,
            backend=name,
        )
        commands[f"agent-supervise ({name})"] = (
            f"{AGENT_SUPERVISE} fleet --no-dashboard --json {path} > /dev/null"
        )
    times = hyperfine(commands, runs, rounds=rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    xargs = median(times["xargs -P8"])
    parallel = median(times["GNU parallel -j8"]) if "GNU parallel -j8" in times else None
    rows = []
    for name, ts in times.items():
        rows.append(
            [
                name,
                spread(ts),
                f"{median(ts) / xargs:.2f}×",
                f"{median(ts) / parallel:.2f}×" if parallel else "-",
            ]
        )
    section = Section(
        f"Throughput: {n} short agents at concurrency 8",
        f"`/bin/true` {n} times, 8 at a time; agent-supervise gives each its own cage "
        "(a 20M cap), a log file pair, events and a summary. Wall seconds over "
        f"{runs} runs (hyperfine; in {rounds} rounds in which the runners take turns, "
        "so that a slow spell of the shared machine falls on all of them alike), "
        "median (min–max), and the ratio of medians.",
        ["runner", "seconds", "vs xargs", "vs GNU parallel"],
        rows,
        target="≤ 2.0× xargs; ≥ 2× faster than GNU parallel (ratio ≤ 0.5).",
    )
    for name, ts in times.items():
        if not name.startswith("agent-supervise"):
            continue
        ratio = median(ts) / xargs
        line = f"{name}: {ratio:.2f}× xargs — target ≤ 2.0× {'met' if ratio <= 2 else 'missed'}"
        if parallel:
            vs = median(ts) / parallel
            line += (
                f"; {1 / vs:.1f}× faster than GNU parallel — target ≥ 2× "
                f"{'met' if vs <= 0.5 else 'missed'}"
            )
        section.notes.append(line + ".")
    section.notes.append(
        "Why agent-supervise cannot match xargs here: xargs only forks and waits. For "
        "each agent, agent-supervise's one Python thread also makes and removes a "
        "cage, opens two log files, writes three event lines and a result line, "
        "reads memory figures for admission, and waits (vfork) for the child's own "
        "cage steps before it can go on; with `/bin/true` as the agent that is all "
        "there is to measure. The cost split below says where the time goes."
    )
    split = _cost_split(backends, 50 if quick else 300)
    from common import table

    nested = "  " + table(
        ["backend", "cage create", "cage remove", "spawn", "reap"], split
    ).replace("\n", "\n  ")
    section.notes.append(
        "Where agent-supervise's time goes, per agent, medians in µs "
        "(one supervisor thread does all of it; spawn includes the "
        "child's own steps up to exec, which vfork waits for; on cgroup "
        "v1 writing `cgroup.procs` is most of the difference):\n\n" + nested
    )
    return section
