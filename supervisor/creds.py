"""Running an agent as another user: ``user:``/``group:`` in a fleet, ``--user`` on run.

As root, the supervisor creates and owns the cage; the child enters it, then drops
its privileges before exec, so the agent cannot write its pid into another cgroup's
``cgroup.procs`` (EACCES) or raise its rlimit. Names are resolved in the parent:
the child only makes raw system calls (setgroups, setresgid, setresuid), as the
spawn path requires. Changing credentials clears the parent-death signal, which is
why the spawner sets that after this step.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from agent_supervise.errors import BadInput


@dataclass(frozen=True)
class Credentials:
    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    def child_steps(self):
        uid, gid, groups = self.uid, self.gid, list(self.groups)

        def drop() -> None:
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)

        return [(f"drop privileges to {self.user} (setgroups/setresgid/setresuid)", drop)]

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user}


def lookup_user(user: str | int) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(str(user))
    except KeyError:
        raise BadInput(f"no such user {user!r}", hint="see /etc/passwd") from None


def lookup_group(group: str | int) -> int:
    try:
        return int(group) if str(group).isdigit() else grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise BadInput(f"no such group {group!r}", hint="see /etc/group") from None


def resolve(user: str | int | None, group: str | int | None = None) -> Credentials | None:
    """Credentials for ``user`` (and ``group``), or None to keep the supervisor's."""
    if user is None and group is None:
        return None
    entry = lookup_user(user) if user is not None else pwd.getpwuid(os.geteuid())
    gid = lookup_group(group) if group is not None else entry.pw_gid
    if os.geteuid() != 0 and (entry.pw_uid != os.geteuid() or gid != os.getegid()):
        raise BadInput(
            f"running agents as user {entry.pw_name!r} needs root",
            hint="run agent-supervise as root, or leave user/group out",
        )
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return Credentials(entry.pw_name, entry.pw_uid, gid, groups, entry.pw_dir)
