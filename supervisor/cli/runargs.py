"""``run``'s options, and a parser of its well-formed command lines that needs no click.

Every ``agent-supervise run`` starts a Python interpreter, and importing click costs
more than the interpreter itself (BENCHMARKS.md, "Start-up"). So the options are
declared once, here: click builds ``run``'s command from this table (its help and its
errors), and :func:`parse` reads the plain, well-formed command lines from the same
table without click. ``parse`` never reports an error: anything it is not sure of
(``--help``, an unknown option, a bad choice, a missing command) returns None, and
the command line goes to click, which says what is wrong exactly as before.
tests/test_cli_runargs.py checks that whatever ``parse`` accepts, click reads alike.
"""

from __future__ import annotations

from agent_supervise.limits import BACKEND_CHOICES


class Option:
    """One option of ``run``: its long name, its parameter, and what click needs."""

    __slots__ = ("choices", "default", "dest", "flag", "help", "is_flag", "is_path", "short")

    def __init__(
        self,
        flag: str,
        help: str,
        *,
        dest: str | None = None,
        short: str | None = None,
        default: str | None = None,
        choices: tuple[str, ...] | None = None,
        is_flag: bool = False,
        is_path: bool = False,
    ) -> None:
        self.flag, self.help, self.short = flag, help, short
        self.dest = dest or flag[2:].replace("-", "_")
        self.default, self.choices = default, choices
        self.is_flag, self.is_path = is_flag, is_path


OPTIONS = (
    Option(
        "--memory",
        "Hard cap on the agent's whole process tree (50M, 1.5G, 512MiB, 10% of RAM).",
        short="-m",
        default="50M",
    ),
    Option(
        "--backend",
        "Mechanism; auto tries cgroup2, cgroup1, rlimit in that order.",
        default="auto",
        choices=tuple(BACKEND_CHOICES),
    ),
    Option(
        "--rlimit",
        "Which rlimit the rlimit backend sets (RLIMIT_DATA or RLIMIT_AS).",
        dest="rlimit_kind",
        default="data",
        choices=("data", "as"),
    ),
    Option("--cgroup-root", "Create the agent's cgroup under this directory.", is_path=True),
    Option("--timeout", "Stop the agent after this long (10m); exit 124."),
    Option("--grace", "Time between SIGTERM and SIGKILL when stopping the agent.", default="2s"),
    Option(
        "--poll", "Watchdog sampling interval (faster as the agent nears its cap).", default="100ms"
    ),
    Option(
        "--json", "Print the outcome as one JSON object on stderr.", dest="as_json", is_flag=True
    ),
    Option("--user", "Run CMD as this user (needs root); it then cannot leave its cgroup."),
    Option("--group", "Run CMD with this group (default: the user's)."),
    Option(
        "--pids-limit",
        "Process cap: tasks (processes and threads) in the agent; a fork "
        "refused at it stops the agent, exit 137. 0: none.",
        default="4096",
    ),
    Option(
        "--no-runtime-hints",
        "Do not tell the agent's runtimes its cap (NODE_OPTIONS' "
        "--max-old-space-size and --max-semi-space-size, GOMEMLIMIT, "
        "JAVA_TOOL_OPTIONS' -XX:MaxRAM).",
        is_flag=True,
    ),
)

#: The long names: after the command, without '--', one of these is a mistake.
NAMES = tuple(o.flag for o in OPTIONS)

_BY_NAME = {o.flag: o for o in OPTIONS} | {o.short: o for o in OPTIONS if o.short}


def parse(argv: list[str]) -> tuple[dict[str, object], bool] | None:
    """``run``'s parameters (as click would pass them) and whether ``--`` was given,
    for a well-formed ``run`` command line; None for anything else."""
    if not argv or argv[0] != "run":
        return None
    params: dict[str, object] = {o.dest: False if o.is_flag else o.default for o in OPTIONS}
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break  # the command: options end here (click's allow_interspersed_args=False)
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            option = _BY_NAME.get(name)
            if option is None or (option.is_flag and eq):
                return None
        else:  # -m 50M, -m50M
            option = _BY_NAME.get(arg[:2])
            if option is None:
                return None
            eq, value = ("=", arg[2:]) if len(arg) > 2 else ("", "")
            if value.startswith("="):
                return None  # click would take '=50M' as the value: let it say so
        if option.is_flag:
            params[option.dest] = True
        else:
            if not eq:
                i += 1
                if i == len(args) or args[i].startswith("-"):
                    return None  # missing, or an option where a value should be
                value = args[i]
            if option.choices is not None and value not in option.choices:
                return None
            params[option.dest] = value
        i += 1
    cmd = tuple(args[i:])
    if not cmd:
        return None
    params["cmd"] = cmd
    return params, "--" in args
