# The C extension's interface (supervisor/_spawn.c), for type checkers.
from collections.abc import Sequence

def spawn(
    paths: Sequence[bytes],
    argv: Sequence[bytes],
    envp: Sequence[bytes],
    cwd: bytes | None,
    stdin: int,
    stdout: int,
    stderr: int,
    procs_fds: Sequence[int],
    rlimits: Sequence[tuple[int, int]],
    nofile_soft: int,
    nofile_hard: int,
    uid: int,
    gid: int,
    groups: Sequence[int] | None,
    death_signal: int,
    report_fd: int,
    ns: tuple[bytes, Sequence[tuple[bytes, bytes]], tuple[int, int]] | None = None,
    foreground_tty: int = -1,
) -> int: ...
def setns(fd: int, nstype: int, /) -> None: ...
def prctl(option: int, arg: int, /) -> int: ...

S_SETSID: int
S_STDIO: int
S_CAGE: int
S_RLIMIT: int
S_GROUPS: int
S_GID: int
S_UID: int
S_PDEATHSIG: int
S_PARENT_GONE: int
S_CHDIR: int
S_EXEC: int
S_CAGE_BASE: int
S_ISOLATE: int
