"""Scopes of supervisors that died, found by their unit name and emptied.

A SIGKILLed supervisor's delegated scope (:mod:`agent_supervise.limits.scope`) stays
while something it left runs in a cage: systemd stops a scope only once its cgroup
subtree is empty. The next start finds it by name (its owner's pid and start time),
kills what is left, removes the cgroups, and systemd then removes the scope.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from agent_supervise.errors import CageError
from agent_supervise.limits.base import StaleCage, owner_alive
from agent_supervise.limits.scope import HOLDER, SUPERVISOR

#: ``agent-supervise-<pid>-<starttime>-<n>.scope`` (see limits.scope.UNIT_PREFIX).
_UNIT_RE = re.compile(r"agent-supervise-(\d+)-(\d+)-(\d+)\.scope")


def scope_owner(name: str) -> tuple[int, str] | None:
    """(pid, starttime) of the supervisor a scope's directory name belongs to."""
    match = _UNIT_RE.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None


def clean_stale_scopes(
    fs, slice_dir: str, remove: Callable[[str], int], keep: str | None = None
) -> list[StaleCage]:
    """Scopes in ``slice_dir`` of supervisors that are gone: remove the cages left in
    them (``remove(path)`` kills what is inside, waits, rmdirs: the count killed) and
    their holder's cgroup; then the scope is empty and systemd removes it."""
    found: list[StaleCage] = []
    try:
        entries = sorted(fs.listdir(slice_dir))
    except CageError:
        return found
    for entry in entries:
        owner = scope_owner(entry)
        scope = os.path.join(slice_dir, entry)
        if owner is None or scope == keep or owner_alive(*owner):
            continue
        try:
            subs = fs.subdirs(scope)
        except CageError:
            continue  # gone meanwhile
        for sub in subs:
            try:
                killed, removed = remove(sub), True
            except (OSError, CageError):
                killed, removed = 0, False
            # The holder's and the supervisor's cgroups are said only when something
            # was wrong with them.
            if os.path.basename(sub) not in (HOLDER, SUPERVISOR) or killed or not removed:
                found.append(StaleCage(sub, owner[0], killed, removed))
    return found
