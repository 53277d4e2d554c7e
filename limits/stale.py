"""Leftovers of a supervisor that died: processes still marked as one of its agents.

Every agent runs with ``AGENT_SUPERVISE_CAGE=<cage name>`` in its environment, and
its children inherit it (a double-forked ``setsid`` escapee too). A cage name holds
its supervisor's pid and start time. When that supervisor is gone (SIGKILL, a
crash), the next start finds the processes that still carry its marker and kills
them: the rlimit backend's "stale cage" has no directory, only these processes.
"""

from __future__ import annotations

import os
import signal

from agent_supervise.limits.base import StaleCage, stale_owner
from agent_supervise.proctree import ProcessTable, read_proc, signal_pids

MARKER = b"AGENT_SUPERVISE_CAGE="


def _marker(pid: int) -> str | None:
    try:
        env = read_proc(f"/proc/{pid}/environ")
    except OSError:
        return None  # gone, a kernel thread, or another user's (not ours to touch)
    for entry in env.split(b"\0"):
        if entry.startswith(MARKER):
            return entry[len(MARKER) :].decode(errors="replace")
    return None


def _ancestors() -> set[int]:
    pids, pid, table = set(), os.getpid(), ProcessTable()
    while pid > 1:
        pids.add(pid)
        st = table.stat(pid)
        if st is None:
            break
        pid = st.ppid
    return pids


def kill_marked_orphans() -> list[StaleCage]:
    """SIGKILL processes marked as agents of dead supervisors; one entry per cage."""
    spared = _ancestors()
    victims: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spared:
            continue
        name = _marker(int(entry))
        if name is not None and stale_owner(name) is not None:
            victims.setdefault(name, []).append(int(entry))
    found = []
    for name, pids in sorted(victims.items()):
        signal_pids(pids, signal.SIGKILL)
        owner = stale_owner(name) or 0  # 0 only if a pid was reused meanwhile
        found.append(StaleCage(f"processes marked {name}", owner, len(pids), True))
    return found
