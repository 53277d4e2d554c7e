"""Processes that left their cage: the agent's tree, compared with its cgroups.

An agent running as root can write its pid into another cgroup's ``cgroup.procs``
(or, on v1, one thread's id into another cgroup's ``tasks``) and leave its cage,
taking its memory or its forks out of the cap. It is still the agent's descendant
(or an orphan adopted by the supervisor, a child subreaper), so the process tree
finds it. Leaving the cage is hostile: the whole agent is stopped as ``escaped``.
Running agents as another user (``user:``, ``--user``) makes the move itself fail
with EACCES; this check is the defence in depth, once a second.

An escape must be *established*, never inferred from one racy read, because an
agent that keeps many short-lived children (``make -j``, a test runner) always has
some that are exiting, and the kernel shows those outside:

* On cgroup v1, ``cgroup_exit()`` moves an exiting task to the root css_set before
  it becomes a zombie: /proc/PID/cgroup then shows ``/`` in every hierarchy, and the
  task has left the cage's ``cgroup.procs``/``tasks``, while /proc/PID/stat still
  says R or D. It has PF_EXITING (0x4 in the stat flags field) from the start of
  do_exit(), before cgroup_exit().
* So each look reads the thread's cgroup *first* and its stat *after*: a thread that
  is not a zombie and has no PF_EXITING at the second read had none at the first
  (the flag is never cleared), so the path it showed was not an exit artefact.
* A pid can be reused between the tree walk and the reads. The first look pins the
  process with a pidfd; the second look, ``CONFIRM_AFTER_S`` later, needs that very
  process not exited (its pidfd not readable), in the tree again, alive and still
  outside. The kill goes through the pidfd, so it can never hit a stranger.
* A child being forked is visible in /proc before the kernel gives it its parent's
  cgroups (``cgroup_fork()`` starts it on the root css_set, ``cgroup_post_fork()``
  moves it after ``attach_pid()``): it too shows ``/``, and is not exiting. The
  second look clears it.
* A process seen outside and then back inside moved twice: it is remembered, looked
  at every ``CONFIRM_AFTER_S`` from then on, and the next time it is seen outside
  one look is enough. The checks are jittered (lifecycle.py), so that a process
  hopping out and back cannot keep in step with them.

Threads are checked one by one (v1 lets a single thread move), through the cage's
thread list (``tasks``, ``cgroup.threads``) and /proc/PID/task/TID.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, field

from agent_supervise.proctree import ProcessTable, read_proc

#: How often the process tree is compared with the cage, on average.
ESCAPE_CHECK_S = 1.0
#: The second look of an escape check comes this long after the first.
CONFIRM_AFTER_S = 0.05
#: do_exit() sets it first thing (include/linux/sched.h).
PF_EXITING = 0x4
#: A process younger than this at the first look may have been seen between
#: attach_pid() and cgroup_post_fork(): back inside later, it did not move back.
YOUNG_S = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Suspect:
    pid: int
    starttime: int
    pidfd: int | None
    where: str  # "TID in /path" as the first look saw it
    young: bool = False  # started just now: maybe seen in the fork window


@dataclass
class EscapeState:
    """One run's check in progress, and when its next look is."""

    suspects: dict[int, Suspect] = field(default_factory=dict)
    confirm_at: float | None = None
    moved_back: set[tuple[int, int]] = field(default_factory=set)  # (pid, starttime)
    at: float = 0.0  # the next look

    def due(self, now: float, running: bool) -> bool:
        """A look is due: the agent runs, or a suspect waits for its second look."""
        return now >= self.at and (running or bool(self.suspects))

    def next_due(self, running: bool) -> float | None:
        """When the loop must wake for a look (None: the watchdog's ticks suffice)."""
        return self.at if self.suspects or (self.moved_back and running) else None

    def schedule(self, now: float) -> None:
        """Jittered, so that an agent hopping out of its cage and back cannot keep
        in step with the checks; a second look soon after a suspect, and looks that
        soon while a process that moved out and back in before is alive."""
        if self.suspects or self.moved_back:
            self.at = now + CONFIRM_AFTER_S
        else:  # from the kernel's random pool: an agent cannot predict it (nor seed it)
            jitter = int.from_bytes(os.urandom(2), "little") / 0xFFFF
            self.at = now + ESCAPE_CHECK_S * (0.5 + jitter)


def _task_stat(pid: int, tid: int) -> tuple[str, int] | None:
    """(state, flags) of one thread; None once it is gone."""
    try:
        data = read_proc(f"/proc/{pid}/task/{tid}/stat")
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[6])


def _task_cgroups(pid: int, tid: int) -> dict[str, str] | None:
    """Hierarchy key -> path of one thread, as in own_cgroups(); None once gone."""
    try:
        text = read_proc(f"/proc/{pid}/task/{tid}/cgroup").decode(errors="replace")
    except OSError:
        return None
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            path = parts[2].removesuffix(" (deleted)")  # v2: a removed cgroup
            for key in parts[1].split(",") if parts[1] else [""]:
                paths[key] = path
    return paths


def _inside(path: str, place, name: str) -> bool:
    if place.cgroup is not None:
        top = place.cgroup.rstrip("/")
        return path == place.cgroup or path.startswith(top + "/")
    return name in path.split("/")


class EscapeWatch:
    def __init__(self, table: ProcessTable | None = None) -> None:
        self.table = table or ProcessTable()

    def tree(self, run) -> list[int]:
        """The agent's tree: its root, descendants and adopted orphans, zombies
        included (a zombie leader may still have live threads)."""
        return self.table.descendants([run.pid, *sorted(run.orphans)])

    @staticmethod
    def _threads(pid: int) -> list[int]:
        try:
            return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            return []

    def _look(self, pid: int, tids, places, name: str) -> str | None:
        """Whether a live, non-exiting thread of ``pid`` among ``tids`` is outside
        one of ``places``: "TID in PATH", else None."""
        for tid in tids:
            paths = _task_cgroups(pid, tid)  # first the cgroup ...
            if paths is None:
                continue
            out = [
                paths[p.hierarchy]
                for p in places
                if p.hierarchy in paths and not _inside(paths[p.hierarchy], p, name)
            ]
            if not out:
                continue
            st = _task_stat(pid, tid)  # ... then the state: see the module docstring
            if st is None or st[0] in "ZXx" or st[1] & PF_EXITING:
                continue
            return f"thread {tid} in {out[0]}"
        return None

    def first_look(self, run, state: EscapeState) -> list[Suspect]:
        """Suspects for a second look; those that moved back before are returned
        confirmed at once (the list returned); the rest wait in ``state``."""
        places = run.cage.placements()
        if not places:
            return []  # no cgroup: an rlimit cage without a pids companion *is* the tree
        tree = self.tree(run)
        state.moved_back = {k for k in state.moved_back if k[0] in tree}
        if not tree:
            return []
        inside = set.intersection(*(p.threads() for p in places))
        found = []
        for pid in tree:
            tids = [t for t in self._threads(pid) if t not in inside]
            seen = self._look(pid, tids, places, run.cage.name) if tids else None
            if seen is None:
                continue
            suspect = self._pin(pid, seen)
            if suspect is None:
                continue
            if (pid, suspect.starttime) in state.moved_back:
                found.append(suspect)
            else:
                state.suspects[pid] = suspect
        return found

    def _pin(self, pid: int, seen: str) -> Suspect | None:
        """Hold the process by a pidfd (then its start time names it)."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except (AttributeError, OSError):
            pidfd = None  # no pidfd (Linux < 5.3): the start time alone names it
        st = self.table.stat(pid)
        suspect = Suspect(pid, st.starttime if st else -1, pidfd, seen)
        if st is not None:
            age = time.clock_gettime(time.CLOCK_BOOTTIME) - st.starttime / CLK_TCK
            suspect.young = age < YOUNG_S
        if st is None or _exited(suspect):
            _close(suspect)
            return None
        return suspect

    def second_look(self, run, state: EscapeState) -> list[Suspect]:
        """The suspects still the agent's, alive and outside: established escapes."""
        places = run.cage.placements()
        tree = set(self.tree(run)) if state.suspects else set()
        found = []
        for pid, suspect in state.suspects.items():
            st = self.table.stat(pid)
            same = (
                pid in tree
                and st is not None
                and st.starttime == suspect.starttime
                and not _exited(suspect)
            )
            if same and self._look(pid, self._threads(pid), places, run.cage.name):
                found.append(suspect)
                continue
            if same and _alive(pid) and not suspect.young:
                state.moved_back.add((pid, suspect.starttime))
            _close(suspect)
        state.suspects = {}
        return found

    @staticmethod
    def kill(suspects: list[Suspect]) -> None:
        """SIGKILL each established escapee through its pidfd (never a reused pid)."""
        for suspect in suspects:
            try:
                if suspect.pidfd is not None:
                    signal.pidfd_send_signal(suspect.pidfd, signal.SIGKILL)
                else:
                    os.kill(suspect.pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
            _close(suspect)


def _alive(pid: int) -> bool:
    """Some thread of the process is neither a zombie nor exiting."""
    for tid in EscapeWatch._threads(pid):
        st = _task_stat(pid, tid)
        if st is not None and st[0] not in "ZXx" and not st[1] & PF_EXITING:
            return True
    return False


def _exited(suspect: Suspect) -> bool:
    """A pidfd polls readable once its process has exited."""
    if suspect.pidfd is None:
        return False
    poller = select.poll()
    poller.register(suspect.pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _close(suspect: Suspect) -> None:
    if suspect.pidfd is not None:
        os.close(suspect.pidfd)
        suspect.pidfd = None
