"""The ``run``s live on this machine, for ``status``: one small file per run.

Each ``agent-supervise run`` writes ``<pid>.run`` when its agent has started and
removes it when it exits. The folder is the user's runtime directory, as pm2 and
systemd user services keep theirs: ``$XDG_RUNTIME_DIR/agent-supervise`` (logind's
per-user tmpfs, 0700, emptied at logout), else ``/run/agent-supervise`` for root (a
tmpfs emptied at boot), else ``/tmp/agent-supervise-UID``, made 0700 and used only
if it is ours and nobody else can write it (``/tmp`` is shared: another user could
have made it first). So each user sees their own runs; ``sudo`` resets the
environment, and root's runs are in ``/run``.

An entry is written atomically (a temporary file renamed over it), so a reader never
sees half of one. A run killed with SIGKILL leaves its entry behind: a reader
ignores, and removes, an entry whose pid is gone or now names another process (its
start time differs: pids are reused).

The format is ``key=value`` lines, not JSON: this is every ``run``'s start path,
which does not import :mod:`json` (tests/test_startup_imports.py).
"""

from __future__ import annotations

import os
import stat
import time

from agent_supervise.limits.base import owner_alive, owner_tag
from agent_supervise.proctree import ProcessTable


def registry_dir() -> str:
    """Where this user's live runs register."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _private_dir(xdg):
        return os.path.join(xdg, "agent-supervise")
    if os.geteuid() == 0:
        return "/run/agent-supervise"
    return f"/tmp/agent-supervise-{os.geteuid()}"


def _private_dir(path: str) -> bool:
    """A real directory of ours that nobody else can write (no symlink planted)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    # lstat: a symlink (someone else's planted path) is not a directory here
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


class LiveRun:
    """One registered ``run``, read back from its entry's ``key=value`` lines. (A
    plain class: a dataclass would cost every ``run`` a millisecond at import.)"""

    __slots__ = (
        "agent_pid",
        "backend",
        "cap",
        "cmd",
        "limit_bytes",
        "owner",
        "pid",
        "started",
        "usage_file",
    )

    def __init__(self, fields: dict[str, str]) -> None:
        self.pid = int(fields["pid"])  # the supervisor's
        self.owner = fields["owner"]  # PID-STARTTIME of it (limits.base.owner_tag)
        self.agent_pid = int(fields["agent_pid"])
        self.started = float(fields["started"])  # wall clock (time.time())
        self.backend = fields["backend"]
        self.limit_bytes = int(fields["limit_bytes"])
        self.cap = fields["cap"]  # as the user wrote it (50M, 10%)
        self.usage_file = fields["usage_file"]  # the cage's kernel counter; "" under rlimit
        self.cmd = fields["cmd"]  # for display only: the words joined by spaces

    def usage(self) -> int | None:
        """What the cage counts now: the cgroup's counter, or under rlimit the summed
        RSS of the supervisor's descendants (it is their subreaper, so the whole tree);
        None once the run is gone."""
        if self.usage_file:
            try:
                with open(self.usage_file, "rb") as f:
                    return int(f.read())
            except (OSError, ValueError):
                return None
        table = ProcessTable()
        return sum(table.rss(p) for p in table.descendants([self.pid]) if p != self.pid)

    def to_json(self) -> dict:
        return {
            "pid": self.pid,
            "agent_pid": self.agent_pid,
            "cmd": self.cmd,
            "backend": self.backend,
            "cap": self.cap,
            "limit_bytes": self.limit_bytes,
            "usage_bytes": self.usage(),
            "uptime_s": round(max(0.0, time.time() - self.started), 1),
        }


def register(run, cmd, cap: str) -> str | None:
    """Write this run's entry (``run``: the launched agent); its path, or None where
    no private folder can be had (the run goes on, unlisted)."""
    folder = registry_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return None
    if not _private_dir(folder):
        return None
    cage = run.cage
    fields = {
        "pid": os.getpid(),
        "owner": owner_tag(),
        "agent_pid": run.proc.pid,
        "started": time.time(),
        "backend": cage.backend,
        "limit_bytes": cage.limit,
        "cap": cap,
        "usage_file": os.path.join(cage.path, cage.usage_file) if cage.path else "",
        "cmd": " ".join(cmd),
    }
    text = "".join(f"{k}={_one_line(str(v))}\n" for k, v in fields.items())
    path = os.path.join(folder, f"{os.getpid()}.run")
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def unregister(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def live_runs() -> list[LiveRun]:
    """The registered runs whose supervisor still lives, oldest first; stale entries
    are removed on the way."""
    folder = registry_dir()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    runs = []
    for name in names:
        if not name.endswith(".run"):
            continue
        path = os.path.join(folder, name)
        entry = _read(path)
        if entry is None or not owner_alive(entry.pid, entry.owner.partition("-")[2]):
            unregister(path)
            continue
        runs.append(entry)
    return sorted(runs, key=lambda r: r.started)


def _read(path: str) -> LiveRun | None:
    try:
        with open(path) as f:
            return LiveRun(dict(line.rstrip("\n").partition("=")[::2] for line in f))
    except (OSError, KeyError, ValueError):
        return None  # gone meanwhile, or not one of ours: treated as stale


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")
