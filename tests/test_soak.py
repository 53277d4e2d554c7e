"""The soak: many short tasks through a small queue, in this very process.

1,000 tasks (``AGENT_SUPERVISE_SOAK_TASKS``; ``make soak`` runs more) through
``queue_size: 4`` and ``max_concurrent: 2``, 5% memory hogs and 5% crashing: every
task ends exactly once, the counts match, and the supervisor leaks nothing — no
zombie, no cgroup (the autouse fixture), no file descriptor (counted in /proc/self/fd
before and after), and its RSS does not grow with the number of tasks run.
"""

from __future__ import annotations

import collections
import os

import psutil

from agent_supervise.agents.loader import parse_fleet
from agent_supervise.fleet.supervisor import Supervisor
from agent_supervise.observe.observers import MemorySamples, StateWriter
from agent_supervise.observe.snapshot import Snapshotter
from agent_supervise.rundir import read_events

from conftest import ALLOC, PY, record_figure

TASKS = int(os.environ.get("AGENT_SUPERVISE_SOAK_TASKS", "1000"))
MiB = 1 << 20
#: RSS growth allowed between 10% and 100% of the tasks: allocator noise, not a
#: per-task cost (1,000 tasks at even 1 KiB each would already be 1 MiB).
RSS_SLACK = 2 * MiB


def soak_fleet(tmp_path, backend: str = "auto"):
    blocks = TASKS // 20  # each block: 18 fine, 1 crashing, 1 hog = 5% and 5%
    tasks = "".join(
        "  - {agent: fine, repeat: 9}\n  - {agent: crash}\n"
        "  - {agent: fine, repeat: 9}\n  - {agent: hog}\n"
        for _ in range(blocks)
    )
    return parse_fleet(
        f"supervisor:\n  log_dir: '{tmp_path}'\n  queue_size: 4\n  max_concurrent: 2\n"
        f"  min_free_memory: 256M\n  backend: {backend}\n"
        "agents:\n  fine: {cmd: ['true'], memory_limit: 20M}\n"
        "  crash: {cmd: [sh, -c, 'exit 3'], memory_limit: 20M}\n"
        f"  hog: {{cmd: ['{PY}', '{ALLOC}', --interval, '0.002'], memory_limit: 40M}}\n"
        f"tasks:\n{tasks}",
        "soak.yaml",
    )


def test_soak(tmp_path):
    spec = soak_fleet(tmp_path)
    total = sum(t.repeat for t in spec.tasks)
    assert total == TASKS
    me = psutil.Process()
    fds_before = sorted(os.listdir("/proc/self/fd"))
    sup = Supervisor(spec)
    rss: dict[int, int] = {}

    def measure(sup, final=False):
        # During the run: the summary built at the very end (every task's entry, read
        # back from results.jsonl for the caller) is not the loop's memory.
        done = len(sup.results)
        for mark in (TASKS // 10, TASKS):
            if done >= mark and mark not in rss and not final:
                rss[mark] = me.memory_info().rss

    snapshots = Snapshotter()
    sup.tickers += [StateWriter(snapshots), MemorySamples(), measure]
    sup.close()
    result = sup.run()
    record_figure("soak", "tasks", "run", contained=False)
    del sup, snapshots
    assert sorted(os.listdir("/proc/self/fd")) == fds_before, "file descriptors leaked"

    events = read_events(os.path.join(result.run_dir, "events.jsonl"))
    terminal = collections.Counter(e["task"] for e in events if e["event"] == "exited")
    assert len(terminal) == TASKS and set(terminal.values()) == {1}
    assert not [e for e in events if e["event"] == "retried"]
    memory = result.counts.get("oom_killed", 0) + result.counts.get("memory_exceeded", 0)
    assert result.counts["ok"] == TASKS * 90 // 100
    assert result.counts["failed"] == TASKS * 5 // 100
    assert memory == TASKS * 5 // 100
    assert sum(result.counts.values()) == TASKS == len(result.tasks)
    started = collections.Counter(e["event"] for e in events)["started"]
    assert started == TASKS
    growth = rss[TASKS] - rss[TASKS // 10]
    assert growth < RSS_SLACK, f"supervisor RSS grew {growth / MiB:.1f} MiB over the run"
    record_figure("soak", "tasks", "run", contained=True)
    record_figure("soak", "numbers", f"{TASKS} {TASKS - len(terminal)} {growth}", True)
