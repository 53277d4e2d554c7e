"""The documented limits on what agent-supervise reads, and the checks that apply them.

Each limit exists because without it a few bytes of input could cost the supervisor
unbounded time or memory, or pass ``validate`` and fail only later, with agents
already running. The README's "Limits on input" lists them; tests/test_bad_input_bombs.py
tries each one.
"""

from __future__ import annotations

import os
import resource
import stat

from agent_supervise.errors import BadInput

KiB, MiB = 1 << 10, 1 << 20

#: A fleet file. Hand-written and generated files are far smaller; more tasks than
#: that belong in a JSON-lines feed (``--tasks``), which is read as it is used.
MAX_FILE_BYTES = 1 * MiB
#: YAML values after aliases are expanded (an alias counts its whole anchor each
#: time): what stops "billion laughs". ~14,000 tasks' worth, ~50 MiB of nodes.
MAX_NODES = 100_000
#: Scalar text after aliases are expanded: a long anchored string used many times.
MAX_EXPANDED_TEXT = 4 * MiB
#: Nested collections. A fleet file needs 6; the limit keeps every walk of the
#: document far from Python's recursion limit.
MAX_DEPTH = 64
#: One ``--tasks`` line (without its newline). Longer lines are skipped unread.
MAX_LINE_BYTES = 1 * MiB
#: ``repeat`` of one task, and all repeats of a file's tasks together: the runs of a
#: file are listed before the loop starts.
MAX_REPEAT = 10_000
MAX_FILE_RUNS = 100_000
#: Rejected input lines kept in memory (and in summary.json); the rest are counted,
#: and each one is in events.jsonl.
KEPT_REJECTS = 20
#: Characters of one error message: a message quotes the value it refuses.
MAX_MESSAGE_CHARS = 400
#: The smallest agent cap. Below ~256 KiB not even /bin/true starts (measured: 4 KiB
#: cannot hold the process moving in, 64 KiB is killed during exec); and a byte
#: count under 1 MiB is almost always a forgotten unit (``--memory 1`` meant 1M).
MIN_CAP = 1 * MiB

#: The kernel's limit on one argument or environment string, its NUL included
#: (MAX_ARG_STRLEN = 32 pages): longer ones make execve fail with E2BIG.
MAX_ARG_STRLEN = 32 * 4096
PATH_MAX = 4096
#: What the supervisor adds to an agent's environment (AGENT_ID, AGENT_RUN_DIR,
#: AGENT_CHECKPOINT_FILE, the cage's name, a user's HOME...) and the program's path,
#: which the kernel copies too.
EXEC_RESERVE = 16 * KiB


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def read_regular_file(
    path: str,
    limit: int = MAX_FILE_BYTES,
    what: str = "fleet file",
    hint: str = "give the path of a fleet YAML file",
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; BadInput otherwise.

    O_NONBLOCK: opening a FIFO must not wait for a writer. fstat refuses what is not a
    file (a FIFO, /dev/zero, a directory) before reading; the read stops at
    ``limit + 1`` bytes whatever fstat said (/proc files say 0, a file may grow).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise BadInput(
            f"{path}: {getattr(err, 'strerror', None) or err}", path=path, hint=hint
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(
                f"{path}: not a regular file ({_kind(info.st_mode)})", path=path, hint=hint
            )
        if info.st_size > limit:
            raise _too_big(path, what, limit)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _too_big(path, what, limit)
        return b"".join(chunks)
    except OSError as err:
        raise BadInput(f"{path}: {err.strerror}", path=path, hint=hint) from None
    finally:
        os.close(fd)


def _too_big(path: str, what: str, limit: int) -> BadInput:
    return BadInput(
        f"{path}: larger than {limit // MiB} MiB, the limit for a {what}",
        path=path,
        hint="pass many tasks as JSON lines with --tasks FILE",
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO or pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def stream_problem(fd: int) -> str | None:
    """Why an open ``--tasks`` stream cannot be a task feed, or None.

    Files, pipes, FIFOs, sockets and terminals give lines; /dev/null gives none. Any
    other device (/dev/zero, /dev/urandom, a disk) gives bytes without end.
    """
    mode = os.fstat(fd)
    if stat.S_ISDIR(mode.st_mode):
        return "is a directory"
    if stat.S_ISBLK(mode.st_mode) or (
        stat.S_ISCHR(mode.st_mode) and not os.isatty(fd) and mode.st_rdev != os.makedev(1, 3)
    ):
        return f"is {_kind(mode.st_mode)}, not a file or a pipe of JSON lines"
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot reach the kernel as a C string (argv, environ, a path)."""
    if "\0" in value:
        return (
            f"contains a NUL byte at character {value.index(chr(0))}: no command "
            "line, environment or path can carry one"
        )
    try:
        os.fsencode(value)
    except UnicodeEncodeError as err:
        return f"is not encodable text ({err.reason} at character {err.start})"
    return None


def arg_max() -> int:
    """The kernel's room for argv + environ at execve: a quarter of the stack rlimit,
    at most 6 MiB (3/4 of _STK_LIM), at least 128 KiB (ARG_MAX)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    limit = 6 * MiB if soft == resource.RLIM_INFINITY else min(6 * MiB, soft // 4)
    return max(limit, 128 * KiB)


def _environ_bytes() -> tuple[int, int]:
    env = os.environb
    return sum(map(len, env)) + sum(map(len, env.values())) + 2 * len(env), len(env)


def exec_problem(argv, env=None, cwd: str | None = None) -> tuple[str, str, str] | None:
    """(key, message, hint) for the first thing execve would refuse in a command with
    ``env`` added to the supervisor's own environment, or None."""
    if not argv or not argv[0]:
        return ("cmd[0]", "the program name is empty", "name a program: cmd: [python3, ...]")
    total, count = _environ_bytes()
    strings = [(f"cmd[{i}]", word) for i, word in enumerate(argv)]
    strings += [(f"env.{key}", f"{key}={value}") for key, value in (env or {}).items()]
    for key, text in strings:
        problem = text_problem(text)
        if problem:
            return (key, problem, "remove it")
        size = len(os.fsencode(text)) + 1
        if size > MAX_ARG_STRLEN:
            return (
                key,
                f"is {size - 1:,} bytes; the kernel takes at most "
                f"{MAX_ARG_STRLEN - 1:,} in one argument or variable (MAX_ARG_STRLEN)",
                "pass large values in a file, or on the agent's stdin",
            )
        total += size
    total += 8 * (len(strings) + count + 2) + EXEC_RESERVE
    if total > arg_max():
        return (
            "cmd",
            f"the command and its environment take {total:,} bytes; the kernel "
            f"takes at most {arg_max():,} (ARG_MAX: a quarter of the stack limit)",
            "pass large values in a file or on stdin, or raise ulimit -s",
        )
    if cwd is not None:
        problem = text_problem(cwd)
        if problem:
            return ("cwd", problem, "remove it")
        if len(os.fsencode(cwd)) >= PATH_MAX:
            return (
                "cwd",
                f"is longer than {PATH_MAX - 1:,} bytes (PATH_MAX)",
                "use a shorter path",
            )
    return None


def check_command(cmd) -> None:
    """``run -- CMD``: refuse, as bad input, a command execve would refuse."""
    problem = exec_problem(list(cmd))
    if problem is None:
        return
    key, message, hint = problem
    if key == "cmd[0]" and not cmd[0]:
        raise BadInput(
            "the command is empty text",
            hint="name a program after '--': agent-supervise run -- python3 agent.py",
        )
    where = "" if key == "cmd" else f"word {key[4:-1]} of the command "
    raise BadInput(f"{where}{message}", hint=hint)
