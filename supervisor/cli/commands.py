"""The click group: every command but ``fleet``'s body and the run-folder views, and
``run``'s help and errors (its body is :mod:`.runcmd`, its options :mod:`.runargs`)."""

from __future__ import annotations

import click

from agent_supervise import __version__
from agent_supervise.cli import require_linux
from agent_supervise.cli.fleetcmd import fleet
from agent_supervise.cli.runargs import OPTIONS
from agent_supervise.cli.runcmd import run_command
from agent_supervise.cli.viewcmds import logs, recommend, report, status


def invoke(args: list[str]) -> int:
    """Run the command line through click; its usage errors are exit 2."""
    try:
        return cli.main(args=args, prog_name="agent-supervise", standalone_mode=False)
    except click.exceptions.UsageError as err:
        where = (
            f"agent-supervise {err.ctx.info_name}"
            if err.ctx and err.ctx.parent
            else "agent-supervise"
        )
        click.echo(f"{where}: {err.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        return 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agent-supervise")
def cli() -> None:
    """Run AI-agent commands under hard per-agent memory limits."""


class _RunCommand(click.Command):
    def parse_args(self, ctx, args):
        ctx.meta["dashdash"] = "--" in args
        return super().parse_args(ctx, args)


def _with_run_options(f):
    """``run``'s click options, from the one table of them (runargs.OPTIONS)."""
    for o in reversed(OPTIONS):  # decorators apply inside out
        names = [o.flag, o.short] if o.short else [o.flag]
        if o.dest != o.flag[2:].replace("-", "_"):
            names.append(o.dest)
        if o.is_flag:
            f = click.option(*names, is_flag=True, help=o.help)(f)
        else:
            f = click.option(
                *names,
                default=o.default,
                show_default=o.default is not None,
                type=click.Choice(o.choices) if o.choices else click.Path() if o.is_path else None,
                help=o.help,
            )(f)
    return f


@cli.command(cls=_RunCommand, context_settings={"allow_interspersed_args": False})
@_with_run_options
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx, **params):
    """Run CMD under a hard memory cap and exit like it, or with a precise reason.

    \b
    agent-supervise run --memory 200M -- python3 agent.py --task x
    """
    return run_command(**params, dashdash=ctx.meta["dashdash"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--rlimit", "rlimit_kind", default="data", type=click.Choice(["data", "as"]))
@click.option("--cgroup-root", type=click.Path(), help="Probe under this directory.")
def doctor(as_json, rlimit_kind, cgroup_root):
    """Say which memory-limit backends work here, and why the others do not."""
    require_linux()
    import json

    from agent_supervise.doctor import collect, render

    report = collect(rlimit=rlimit_kind, cgroup_root=cgroup_root)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    return 0


@cli.group("export")
def export_group():
    """Write a fleet out for another scheduler."""


@export_group.command("slurm")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    help="Override supervisor.max_concurrent (the array throttle %N).",
)
@click.option(
    "--headroom",
    default="64M",
    show_default=True,
    help="Added to the largest cap in --mem: agent-supervise's own memory.",
)
@click.option(
    "--agent-supervise",
    "exe",
    default="agent-supervise",
    show_default=True,
    help="The agent-supervise command on the compute nodes.",
)
def export_slurm(file, max_concurrent, headroom, exe):
    """Print an sbatch script: one array task per fleet task, each under
    `agent-supervise run` (agent-supervise export slurm FILE > fleet.sbatch)."""
    from agent_supervise.agents.loader import load_fleet
    from agent_supervise.slurm import sbatch_script
    from agent_supervise.units import parse_size

    room = parse_size(headroom, what="--headroom", allow_zero=True)
    click.echo(
        sbatch_script(load_fleet(file), exe=exe, headroom=room, max_concurrent=max_concurrent),
        nl=False,
    )
    return 0


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file):
    """Check a fleet file without running anything."""
    from agent_supervise.agents.loader import load_fleet

    spec = load_fleet(file)
    tasks = sum(t.repeat for t in spec.tasks)
    click.echo(f"{file}: ok ({len(spec.agents)} agents, {tasks} tasks)")
    return 0


@cli.command()
def schema():
    """Print the JSON Schema of fleet files (for editors and CI)."""
    import json

    from agent_supervise.agents.schema import fleet_schema

    click.echo(json.dumps(fleet_schema(), indent=2))
    return 0


for _command in (fleet, status, logs, report, recommend):
    cli.add_command(_command)
