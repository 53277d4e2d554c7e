"""What ``agent-supervise run`` does, once its command line is read (by click or by
:mod:`.runargs`): check, choose the cage, run the agent, exit like it. No click here:
this is every ``run``'s start-up path."""

from __future__ import annotations

import sys

from agent_supervise.cli.runargs import NAMES
from agent_supervise.errors import BadInput
from agent_supervise.outcome import Reason

#: Endings that are the command's own: `run` adds no line of its own to them.
QUIET_REASONS = frozenset({Reason.OK, Reason.FAILED, Reason.SIGNALED})


def say(line: str) -> None:
    """One line of ours on stderr, whole and at once (as click.echo writes it)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_command(
    *,
    memory,
    backend,
    rlimit_kind,
    cgroup_root,
    timeout,
    grace,
    poll,
    as_json,
    user,
    group,
    pids_limit,
    no_runtime_hints,
    cmd,
    dashdash: bool,
) -> int:
    """Run CMD under its cap; return the exit status ``run`` exits with."""
    from agent_supervise.cli import require_linux

    require_linux()  # before the run path's imports, which are Linux-only
    from agent_supervise.agents.bounds import check_command
    from agent_supervise.run.single import RunOptions, prepare_backend, run_agent
    from agent_supervise.units import parse_cap, size_note

    if not dashdash:
        check_dashdash(cmd)
    check_command(cmd)  # '' or what execve refuses: bad input, not exit 126 or 125
    cap = parse_cap(memory, what="--memory")  # at least 1M; 10% resolved here, once
    opts = RunOptions.parse(
        memory=cap,
        backend=backend,
        rlimit=rlimit_kind,
        cgroup_root=cgroup_root,
        timeout=timeout,
        grace=grace,
        poll=poll,
        user=user,
        group=group,
        pids_limit=pids_limit,
        runtime_hints=not no_runtime_hints,
    )
    chosen = prepare_backend(opts)
    for stale in opts.stale_cleaned:
        say(
            f"agent-supervise: cleaned up after dead supervisor pid "
            f"{stale.owner_pid}: {stale.path} (killed {stale.killed} processes)"
        )
    from agent_supervise.observe import liveruns
    from agent_supervise.run.terminal import Terminal

    terminal = Terminal.attach()  # in a terminal's foreground: the agent's job now
    entry: list[str | None] = []  # for `status`: registered once the agent runs
    try:
        outcome = run_agent(
            cmd,
            opts,
            backend=chosen,
            terminal=terminal,
            on_started=lambda run: entry.append(liveruns.register(run, cmd, str(memory))),
        )
    finally:
        for path in entry:
            liveruns.unregister(path)
    note = size_note(memory, cap, what="--memory")
    if note:
        outcome.notes.insert(0, note)
    if as_json:
        import json

        say(json.dumps(outcome.to_json()))
    elif outcome.reason not in QUIET_REASONS or outcome.detail:
        # Only when agent-supervise acted (or the command never ran), as timeout(1)
        # adds nothing to a command's own failure, unless the cage knows more about
        # that failure (memory ran out, leftovers were stopped: the detail).
        start = Terminal.clean_line() if terminal else ""
        say(f"{start}agent-supervise: {outcome.message()}")
    return outcome.exit_code or 0


def check_dashdash(cmd) -> None:
    """Refuse ``run CMD --memory 1G``: the user meant our option, not CMD's."""
    for arg in cmd[1:]:
        name = arg.split("=", 1)[0]
        if name in NAMES:
            raise BadInput(
                f"option {name} comes after the command {cmd[0]!r}",
                hint=f"put agent-supervise's options first and separate the "
                f"command with '--': agent-supervise run {arg} ... -- "
                f"{cmd[0]} ...",
            )
