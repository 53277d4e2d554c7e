"""Why an agent never ran, in the words the outcome uses: :class:`SpawnFailed`, from
the C child's "step:errno" report or from the fork fallback's exec error, mapped to
the shell's conventions (127 not found, 126 not executable, 125 setup failed)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from agent_supervise.outcome import Reason

try:  # the C child's step numbers (supervisor/_spawn.c)
    from agent_supervise._spawn import (
        S_CAGE_BASE,
        S_CHDIR,
        S_EXEC,
        S_ISOLATE,
        S_PARENT_GONE,
        S_PDEATHSIG,
        S_RLIMIT,
        S_SETSID,
        S_STDIO,
    )
except ImportError:  # built without a C compiler: only the fallback reports
    pass


@dataclass
class SpawnFailed(Exception):
    """The agent never ran: the exec failed or the cage could not be entered."""

    reason: Reason
    message: str
    errno: int | None = None

    @property
    def why(self) -> str:
        """The system's own words for the failure ("Permission denied")."""
        return os.strerror(self.errno) if self.errno else self.message

    @property
    def detail(self) -> str:
        """What an outcome's ``detail`` says: nothing for "not found" (the reason says
        it all), the system's words for "not executable", else the whole message."""
        if self.reason is Reason.NOT_FOUND:
            return ""
        return self.why if self.reason is Reason.NOT_EXECUTABLE else self.message

    def __str__(self) -> str:
        return self.message


def step_failure(step: int, code: int, cmd, cwd, setup, creds) -> SpawnFailed:
    """Turn the vfork child's "step:errno" report into the same errors as the fallback."""
    if step == S_EXEC:
        return exec_failure(OSError(code, os.strerror(code), cmd[0]), cmd, None)
    if step == S_CHDIR:
        return exec_failure(OSError(code, os.strerror(code), cwd), cmd, cwd)
    if step >= S_CAGE_BASE:
        call = setup.describe_step(step - S_CAGE_BASE)
        return SpawnFailed(
            Reason.SETUP_FAILED, f"entering the cage failed: {call}: {os.strerror(code)}", code
        )
    call = {
        S_RLIMIT: "setrlimit(RLIMIT_NOFILE)",
        S_ISOLATE: "namespaces (a private /dev/shm, IPC limits, the init's fds)",
        S_PDEATHSIG: "prctl(PR_SET_PDEATHSIG)",
        S_PARENT_GONE: "getppid (the supervisor died meanwhile)",
        S_SETSID: "setsid (or setpgid + tcsetpgrp in a terminal)",
        S_STDIO: "dup2 (stdin/stdout/stderr)",
    }.get(step, f"drop privileges to {creds.user if creds else '?'}")
    return SpawnFailed(
        Reason.SETUP_FAILED, f"entering the cage failed: {call}: {os.strerror(code)}", code
    )


def exec_failure(err: OSError, cmd, cwd) -> SpawnFailed:
    """Map an exec error to the shell's conventions: 127 not found, 126 not executable."""
    if cwd is not None and err.filename == cwd:
        return SpawnFailed(
            Reason.SETUP_FAILED, f"cannot enter directory {cwd}: {err.strerror}", err.errno
        )
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return SpawnFailed(Reason.NOT_FOUND, f"{cmd[0]}: command not found", err.errno)
    if err.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM, errno.EISDIR):
        return SpawnFailed(Reason.NOT_EXECUTABLE, f"{cmd[0]}: {err.strerror}", err.errno)
    return SpawnFailed(Reason.SETUP_FAILED, f"exec {cmd[0]}: {err.strerror}", err.errno)
