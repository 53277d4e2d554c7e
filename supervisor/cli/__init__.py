"""The command line. ``main()`` reads as the plan; each command is a few lines.

Exit codes: the agent's own (``run``), 124 timeout, 125 the supervisor itself
failed, 126 not executable, 127 not found, 128+N signals, 137 memory kills,
2 bad input (nothing started).

- :mod:`.runargs`: ``run``'s options, and its fast reader of well-formed command lines
- :mod:`.runcmd`: what ``run`` does, without click (every ``run`` starts here)
- :mod:`.commands`: the click group: ``run``'s help and errors, and every other command
- :mod:`.fleetcmd`, :mod:`.viewcmds`: ``fleet``; ``status``, ``logs``, ``report``
"""

from __future__ import annotations

import os
import sys

from agent_supervise import stdio
from agent_supervise.errors import FleetFileError, NotLinux, SuperviseError


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``agent-supervise`` console script."""
    stdio.install()  # our lines arrive whole even on a non-blocking stdout/stderr
    args = sys.argv[1:] if argv is None else list(argv)
    from agent_supervise.cli.runargs import parse

    quick = parse(args)  # a well-formed `run ...`: no need to import click
    try:
        if quick is None:
            from agent_supervise.cli.commands import invoke

            code = invoke(args)
        else:
            from agent_supervise.cli.runcmd import run_command

            params, dashdash = quick
            try:
                code = run_command(**params, dashdash=dashdash)
            except (EOFError, KeyboardInterrupt):  # as click's main() does
                sys.stderr.write("\n")
                code = 130
    except BrokenPipeError:  # `agent-supervise ... | head`: the reader left; say nothing
        sys.stderr = sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - until exit
        code = 141
    except SuperviseError as err:
        report(err)
        code = err.exit_code
    sys.exit(code or 0)


def report(err: SuperviseError) -> None:
    """Say what went wrong on stderr: a fleet file's problems one per line
    (FILE:LINE:COL: ...), anything else as one line."""
    lines = [f"agent-supervise: {err}"]
    if isinstance(err, FleetFileError) and err.problems:
        n = len(err.problems)
        lines = [*err.problems, f"agent-supervise: {n} problem(s); nothing was started"]
    for line in lines:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise NotLinux(
            f"agent-supervise runs on Linux only (this system is "
            f"{sys.platform}): it needs cgroups, prctl and /proc"
        )


def __getattr__(name: str):
    # ``agent_supervise.cli.cli``, the click group, for click's test runner and
    # completion; imported on first use, as `run` does without it.
    if name == "cli":
        from agent_supervise.cli.commands import cli

        return cli
    raise AttributeError(name)
