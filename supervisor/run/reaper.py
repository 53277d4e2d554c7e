"""Adopted orphans: attributing them to their agent, and reaping them.

The supervisor is a child subreaper (``PR_SET_CHILD_SUBREAPER``): when a process
in an agent's tree exits, its children are reparented to the supervisor instead of
init. That keeps double-forked and ``setsid`` descendants visible: under the rlimit
backend they must count in the agent's memory and be killed with it, and they must
be reaped here or they stay zombies.

Reaping never uses ``waitpid(-1)``: that would steal the exit status of children
the supervisor did not create (an orchestrator embedding the Python API has its
own). Each zombie child is reaped by pid, and only if it is attributed to an agent,
or if the supervisor owns its process outright (the CLI), ``reap_foreign=True``.

Attribution of a child that is not an agent's root, in order:
  1. its session or process group is an agent's (agents are session leaders);
  2. its environment carries the agent's ``AGENT_SUPERVISE_CAGE`` marker
     (``setsid`` escapees keep their environment);
  3. it was seen in the agent's tree before.
"""

from __future__ import annotations

import os

from agent_supervise.proctree import ProcessTable

CAGE_ENV = "AGENT_SUPERVISE_CAGE"


class OrphanTracker:
    def __init__(self, table: ProcessTable, reap_foreign: bool) -> None:
        self.table = table
        self.reap_foreign = reap_foreign
        self._owner: dict[tuple[int, int], object] = {}  # (pid, starttime) -> run

    def scan(self, runs) -> None:
        """Attribute new children of the supervisor to the runs they came from."""
        roots = {run.pid: run for run in runs}
        for pid in self.table.own_children():
            if pid in roots:
                continue
            st = self.table.stat(pid)
            if st is None or (pid, st.starttime) in self._owner:
                continue
            run = roots.get(st.session) or roots.get(st.pgrp) or self._by_marker(pid, runs)
            if run is not None:
                self._owner[(pid, st.starttime)] = run
                run.orphans.add(pid)

    def _by_marker(self, pid: int, runs):
        for run in runs:
            if self.table.environ_has(pid, f"{CAGE_ENV}={run.cage.name}".encode()):
                return run
        return None

    def reap(self, managed: set[int]) -> int:
        """Reap zombie children that are not ``managed`` roots. Returns how many."""
        reaped = 0
        for pid in self.table.own_children():
            if pid in managed:
                continue
            st = self.table.stat(pid)
            if st is None or st.state != "Z":
                continue
            if not self.reap_foreign and (pid, st.starttime) not in self._owner:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
            except ChildProcessError:
                pass
            self._owner.pop((pid, st.starttime), None)
        return reaped

    def forget(self, run) -> None:
        self._owner = {k: v for k, v in self._owner.items() if v is not run}
