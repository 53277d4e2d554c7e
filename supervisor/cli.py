"""The command line. ``main()`` reads as the plan; each command is a few lines.

Exit codes: the agent's own (``run``), 124 timeout, 125 the supervisor itself
failed, 126 not executable, 127 not found, 128+N signals, 137 memory kills,
2 bad input (nothing started).
"""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .agents.loader import FleetFileError, load_fleet
from .errors import BadInput, NotLinux, SuperviseError
from .outcome import Reason

RUN_OPTIONS = ("--memory", "--backend", "--rlimit", "--cgroup-root", "--timeout",
               "--grace", "--poll", "--json")


def main(argv=None) -> None:
    """Entry point of the ``agent-supervise`` console script."""
    try:
        code = cli.main(args=argv, prog_name="agent-supervise", standalone_mode=False)
    except click.exceptions.UsageError as err:
        where = f"agent-supervise {err.ctx.info_name}" if err.ctx and err.ctx.parent \
            else "agent-supervise"
        click.echo(f"{where}: {err.format_message()}", err=True)
        code = 2
    except click.exceptions.Abort:
        code = 130
    except FleetFileError as err:
        for line in err.problems:  # FILE:LINE:COL: ... as compilers print them
            click.echo(line, err=True)
        click.echo(f"agent-supervise: {len(err.problems)} problem(s); nothing was started",
                   err=True)
        code = err.exit_code
    except SuperviseError as err:
        click.echo(f"agent-supervise: {err}", err=True)
        code = err.exit_code
    sys.exit(code or 0)


def require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise NotLinux(f"agent-supervise runs on Linux only (this system is "
                       f"{sys.platform}): it needs cgroups, prctl and /proc")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agent-supervise")
def cli() -> None:
    """Run AI-agent commands under hard per-agent memory limits."""


class _RunCommand(click.Command):
    def parse_args(self, ctx, args):
        ctx.meta["dashdash"] = "--" in args
        return super().parse_args(ctx, args)


@cli.command(cls=_RunCommand, context_settings={"allow_interspersed_args": False})
@click.option("--memory", "-m", default="50M", show_default=True,
              help="Hard cap on the agent's whole process tree (50M, 1.5G, 512MiB).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "cgroup2", "cgroup1", "rlimit"]),
              help="Mechanism; auto tries cgroup2, cgroup1, rlimit in that order.")
@click.option("--rlimit", "rlimit_kind", default="data", show_default=True,
              type=click.Choice(["data", "as"]),
              help="Which rlimit the rlimit backend sets (RLIMIT_DATA or RLIMIT_AS).")
@click.option("--cgroup-root", type=click.Path(),
              help="Create the agent's cgroup under this directory.")
@click.option("--timeout", help="Stop the agent after this long (10m); exit 124.")
@click.option("--grace", default="2s", show_default=True,
              help="Time between SIGTERM and SIGKILL when stopping the agent.")
@click.option("--poll", default="100ms", show_default=True,
              help="Watchdog sampling interval (faster as the agent nears its cap).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the outcome as one JSON object on stderr.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx, memory, backend, rlimit_kind, cgroup_root, timeout, grace, poll, as_json, cmd):
    """Run CMD under a hard memory cap and exit like it, or with a precise reason.

    \b
    agent-supervise run --memory 200M -- python3 agent.py --task x
    """
    require_linux()
    from .single import RunOptions, prepare_backend, run_agent

    _check_dashdash(ctx, cmd)
    opts = RunOptions.parse(memory=memory, backend=backend, rlimit=rlimit_kind,
                            cgroup_root=cgroup_root, timeout=timeout, grace=grace, poll=poll)
    chosen = prepare_backend(opts)
    for stale in opts.stale_cleaned:
        click.echo(f"agent-supervise: removed stale cage {stale.path} of dead supervisor "
                   f"pid {stale.owner_pid} (killed {stale.killed} processes)", err=True)
    outcome = run_agent(cmd, opts, backend=chosen)
    if as_json:
        click.echo(json.dumps(outcome.to_json()), err=True)
    elif outcome.reason is not Reason.OK:
        click.echo(f"agent-supervise: {outcome.message()}", err=True)
    return outcome.exit_code


def _check_dashdash(ctx, cmd) -> None:
    """Refuse ``run CMD --memory 1G``: the user meant our option, not CMD's."""
    if ctx.meta.get("dashdash"):
        return
    for arg in cmd[1:]:
        name = arg.split("=", 1)[0]
        if name in RUN_OPTIONS:
            raise BadInput(f"option {name} comes after the command {cmd[0]!r}",
                           hint=f"put agent-supervise's options first and separate the "
                                f"command with '--': agent-supervise run {arg} ... -- "
                                f"{cmd[0]} ...")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--rlimit", "rlimit_kind", default="data", type=click.Choice(["data", "as"]))
@click.option("--cgroup-root", type=click.Path(), help="Probe under this directory.")
def doctor(as_json, rlimit_kind, cgroup_root):
    """Say which memory-limit backends work here, and why the others do not."""
    require_linux()
    from .doctor import collect, render

    report = collect(rlimit=rlimit_kind, cgroup_root=cgroup_root)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    return 0


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--max-concurrent", type=click.IntRange(min=1),
              help="Override supervisor.max_concurrent.")
@click.option("--tasks", "tasks_from", type=click.File("rb"),
              help="Also read tasks as JSON lines from this file ('-' for stdin).")
@click.option("--log-dir", type=click.Path(file_okay=False),
              help="Override supervisor.log_dir (a run folder is made inside).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout instead of a table.")
def fleet(file, max_concurrent, tasks_from, log_dir, as_json):
    """Run the fleet defined in FILE (YAML): capped agents, throttled dispatch."""
    require_linux()
    from .fleet import Supervisor
    from .printer import LinePrinter
    from .taskfeed import TaskFeed

    spec = load_fleet(file)
    if not spec.tasks and tasks_from is None:
        raise BadInput(f"{file}: no tasks to run",
                       hint="add a tasks: list, or pass --tasks - to read JSON lines")
    sup = Supervisor(spec, max_concurrent=max_concurrent, log_dir=log_dir)
    sup.events.listeners.append(LinePrinter())
    if tasks_from is not None:
        TaskFeed(tasks_from, sup, "stdin" if tasks_from.name == "<stdin>" else
                 tasks_from.name).start()
    sup.close()
    result = sup.run()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        from rich.console import Console
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # logs have no terminal width: do not wrap at 80
        console.print(result.table())
    if result.stopping:
        click.echo(f"agent-supervise: stopped: {result.message}", err=True)
    return result.exit_code


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file):
    """Check a fleet file without running anything."""
    spec = load_fleet(file)
    tasks = sum(t.repeat for t in spec.tasks)
    click.echo(f"{file}: ok ({len(spec.agents)} agents, {tasks} tasks)")
    return 0


@cli.command()
def schema():
    """Print the JSON Schema of fleet files (for editors and CI)."""
    from .agents.schema import fleet_schema

    click.echo(json.dumps(fleet_schema(), indent=2))
    return 0
