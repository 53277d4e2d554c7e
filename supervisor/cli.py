"""The command line. ``main()`` reads as the plan; each command is a few lines.

Exit codes: the agent's own (``run``), 124 timeout, 125 the supervisor itself
failed, 126 not executable, 127 not found, 128+N signals, 137 memory kills,
2 bad input (nothing started).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from agent_supervise import __version__, stdio
from agent_supervise.errors import BadInput, NotLinux, SuperviseError
from agent_supervise.limits import BACKEND_CHOICES
from agent_supervise.outcome import Reason

RUN_OPTIONS = (
    "--memory",
    "--backend",
    "--rlimit",
    "--cgroup-root",
    "--timeout",
    "--grace",
    "--poll",
    "--json",
    "--user",
    "--group",
    "--pids-limit",
)


def main(argv=None) -> None:
    """Entry point of the ``agent-supervise`` console script."""
    stdio.install()  # our lines arrive whole even on a non-blocking stdout/stderr
    try:
        code = cli.main(args=argv, prog_name="agent-supervise", standalone_mode=False)
    except click.exceptions.UsageError as err:
        where = (
            f"agent-supervise {err.ctx.info_name}"
            if err.ctx and err.ctx.parent
            else "agent-supervise"
        )
        click.echo(f"{where}: {err.format_message()}", err=True)
        code = 2
    except click.exceptions.Abort:
        code = 130
    except BrokenPipeError:  # `agent-supervise ... | head`: the reader left; say nothing
        sys.stderr = sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - until exit
        code = 141
    except SuperviseError as err:
        problems = getattr(err, "problems", None)  # a fleet file's: FILE:LINE:COL: ...
        for line in problems or [f"agent-supervise: {err}"]:
            click.echo(line, err=True)
        if problems:
            click.echo(
                f"agent-supervise: {len(problems)} problem(s); nothing was started", err=True
            )
        code = err.exit_code
    sys.exit(code or 0)


def require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise NotLinux(
            f"agent-supervise runs on Linux only (this system is "
            f"{sys.platform}): it needs cgroups, prctl and /proc"
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agent-supervise")
def cli() -> None:
    """Run AI-agent commands under hard per-agent memory limits."""


class _RunCommand(click.Command):
    def parse_args(self, ctx, args):
        ctx.meta["dashdash"] = "--" in args
        return super().parse_args(ctx, args)


@cli.command(cls=_RunCommand, context_settings={"allow_interspersed_args": False})
@click.option(
    "--memory",
    "-m",
    default="50M",
    show_default=True,
    help="Hard cap on the agent's whole process tree (50M, 1.5G, 512MiB).",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    type=click.Choice(BACKEND_CHOICES),
    help="Mechanism; auto tries cgroup2, cgroup1, rlimit in that order.",
)
@click.option(
    "--rlimit",
    "rlimit_kind",
    default="data",
    show_default=True,
    type=click.Choice(["data", "as"]),
    help="Which rlimit the rlimit backend sets (RLIMIT_DATA or RLIMIT_AS).",
)
@click.option(
    "--cgroup-root", type=click.Path(), help="Create the agent's cgroup under this directory."
)
@click.option("--timeout", help="Stop the agent after this long (10m); exit 124.")
@click.option(
    "--grace",
    default="2s",
    show_default=True,
    help="Time between SIGTERM and SIGKILL when stopping the agent.",
)
@click.option(
    "--poll",
    default="100ms",
    show_default=True,
    help="Watchdog sampling interval (faster as the agent nears its cap).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the outcome as one JSON object on stderr."
)
@click.option("--user", help="Run CMD as this user (needs root); it then cannot leave its cgroup.")
@click.option("--group", help="Run CMD with this group (default: the user's).")
@click.option(
    "--pids-limit",
    default="4096",
    show_default=True,
    help="Process cap: tasks (processes and threads) in the agent; a fork "
    "refused at it stops the agent, exit 137. 0: none.",
)
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx,
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
    cmd,
):
    """Run CMD under a hard memory cap and exit like it, or with a precise reason.

    \b
    agent-supervise run --memory 200M -- python3 agent.py --task x
    """
    require_linux()
    from agent_supervise.agents.bounds import check_command
    from agent_supervise.run.single import RunOptions, prepare_backend, run_agent
    from agent_supervise.units import parse_cap

    _check_dashdash(ctx, cmd)
    check_command(cmd)  # '' or what execve refuses: bad input, not exit 126 or 125
    parse_cap(memory, what="--memory")  # at least 1M
    opts = RunOptions.parse(
        memory=memory,
        backend=backend,
        rlimit=rlimit_kind,
        cgroup_root=cgroup_root,
        timeout=timeout,
        grace=grace,
        poll=poll,
        user=user,
        group=group,
        pids_limit=pids_limit,
    )
    chosen = prepare_backend(opts)
    for stale in opts.stale_cleaned:
        click.echo(
            f"agent-supervise: cleaned up after dead supervisor pid "
            f"{stale.owner_pid}: {stale.path} (killed {stale.killed} processes)",
            err=True,
        )
    from agent_supervise.run.terminal import Terminal

    terminal = Terminal.attach()  # in a terminal's foreground: the agent's job now
    outcome = run_agent(cmd, opts, backend=chosen, terminal=terminal)
    if as_json:
        import json

        click.echo(json.dumps(outcome.to_json()), err=True)
    elif outcome.reason not in QUIET_REASONS:
        # Only when agent-supervise acted (or the command never ran), as timeout(1)
        # adds nothing to a command's own failure.
        start = Terminal.clean_line() if terminal else ""
        click.echo(f"{start}agent-supervise: {outcome.message()}", err=True)
    return outcome.exit_code


#: Endings that are the command's own: `run` adds no line of its own to them.
QUIET_REASONS = frozenset({Reason.OK, Reason.FAILED, Reason.SIGNALED})


def _check_dashdash(ctx, cmd) -> None:
    """Refuse ``run CMD --memory 1G``: the user meant our option, not CMD's."""
    if ctx.meta.get("dashdash"):
        return
    for arg in cmd[1:]:
        name = arg.split("=", 1)[0]
        if name in RUN_OPTIONS:
            raise BadInput(
                f"option {name} comes after the command {cmd[0]!r}",
                hint=f"put agent-supervise's options first and separate the "
                f"command with '--': agent-supervise run {arg} ... -- "
                f"{cmd[0]} ...",
            )


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


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--max-concurrent", type=click.IntRange(min=1), help="Override supervisor.max_concurrent."
)
@click.option(
    "--tasks",
    "tasks_from",
    type=click.File("rb"),
    help="Also read tasks as JSON lines from this file ('-' for stdin).",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False),
    help="Override supervisor.log_dir (a run folder is made inside).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as JSON on stdout instead of a table.",
)
@click.option(
    "--dashboard/--no-dashboard",
    default=None,
    help="Live dashboard (default: when stdout is a terminal).",
)
@click.option(
    "--log-interval",
    default="5s",
    show_default=True,
    help="How often to print a RESOURCES line when there is no dashboard.",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False),
    help="Also write JUnit XML, one testcase per task (for CI).",
)
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), help="Override supervisor.backend.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Run agents here, or on the nodes of a Ray cluster (each caged there).",
)
@click.option(
    "--address",
    help="With --engine ray: HOST:PORT of the cluster's head, auto "
    "or local (overrides supervisor.ray.address).",
)
def fleet(
    file,
    max_concurrent,
    tasks_from,
    log_dir,
    as_json,
    dashboard,
    log_interval,
    junit_path,
    backend,
    engine,
    address,
):
    """Run the fleet defined in FILE (YAML): capped agents, throttled dispatch."""
    require_linux()
    from agent_supervise.agents.loader import load_fleet
    from agent_supervise.fleet.supervisor import Supervisor
    from agent_supervise.fleet.taskfeed import TaskFeed
    from agent_supervise.units import parse_duration

    interval = parse_duration(log_interval, what="--log-interval")
    spec = load_fleet(file)
    if backend:
        spec = dataclasses.replace(
            spec, supervisor=dataclasses.replace(spec.supervisor, backend=backend)
        )
    if not spec.tasks and tasks_from is None:
        raise BadInput(
            f"{file}: no tasks to run",
            hint="add a tasks: list, or pass --tasks - to read JSON lines",
        )
    if address is not None and engine != "ray":
        raise BadInput("--address is for --engine ray", hint="add --engine ray")
    if tasks_from is not None:
        from agent_supervise.agents.bounds import stream_problem

        problem = stream_problem(tasks_from.fileno())
        if problem:
            shown = "-" if tasks_from.name == "<stdin>" else tasks_from.name
            raise BadInput(
                f"--tasks {shown}: {problem}",
                hint="give a file or a pipe of JSON lines, or '-' for stdin",
            )
    if engine == "ray":
        from agent_supervise.ray.cluster import RaySupervisor

        sup = RaySupervisor(spec, address=address, max_concurrent=max_concurrent, log_dir=log_dir)
    else:
        sup = Supervisor(spec, max_concurrent=max_concurrent, log_dir=log_dir)
    live = _watch(sup, dashboard, interval)
    if tasks_from is not None:
        TaskFeed(
            tasks_from, sup, "stdin" if tasks_from.name == "<stdin>" else tasks_from.name
        ).start()
    sup.close()
    result = sup.run()
    if junit_path:
        from agent_supervise.observe.junit import junit_xml

        with open(junit_path, "wb") as f:
            f.write(junit_xml(result, os.path.splitext(os.path.basename(file))[0]))
    if as_json:
        from agent_supervise.jsonout import dumps

        click.echo(dumps(result.to_json()))
    else:
        console = live.console if live else _console()
        console.print(result.table())
    if result.stopping:
        click.echo(f"agent-supervise: stopped: {result.message}", err=True)
    return result.exit_code


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)  # logs: do not wrap at 80


def _watch(sup, dashboard, interval):
    """Attach what reports on the run: the dashboard on a terminal, plain lines
    elsewhere; state.json for `status`; memory samples for `report`."""
    from agent_supervise.observe.observers import MemorySamples, ResourceLines, StateWriter
    from agent_supervise.observe.printer import LinePrinter
    from agent_supervise.observe.snapshot import Snapshotter

    snapshots = Snapshotter()
    sup.tickers += [StateWriter(snapshots), MemorySamples()]
    if dashboard is None:
        dashboard = sys.stdout.isatty()
    if dashboard:
        from agent_supervise.observe.dashboard import LiveDashboard

        live = LiveDashboard(snapshots)
        sup.events.listeners.append(LinePrinter(live.print_line))
        sup.tickers.append(live)
        live.start()
        return live
    sup.events.listeners.append(LinePrinter())
    sup.tickers.append(ResourceLines(snapshots, interval))
    return None


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def status(run_dir, as_json):
    """What a running (or finished) fleet is doing: RUN_DIR, or the newest under runs/."""
    from agent_supervise.observe.dashboard import render
    from agent_supervise.observe.runview import find_run, load_state, verdict

    snap = load_state(find_run(run_dir))
    if as_json:
        import json

        click.echo(json.dumps(snap, indent=2))
        return 0
    console = _console()
    console.print(render(snap))
    console.print(f"{snap['run_dir']}: {verdict(snap)} (as of {snap['updated']})")
    return 0


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("task")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
@click.option("--stderr", "stream", flag_value="err", help="The .err log instead.")
def logs(run_dir, task, follow, stream):
    """Print a task's log (TASK: an id such as researcher-1, or an agent name)."""
    from agent_supervise.observe.runview import follow as follow_files
    from agent_supervise.observe.runview import log_files, wait_for_logs

    out = sys.stdout.buffer
    if follow:
        paths = wait_for_logs(run_dir, task, stream or "out")
        follow_files(paths, run_dir, lambda b: (out.write(b), out.flush()))
        return 0
    paths = log_files(run_dir, task, stream or "out")
    for path in paths:
        if len(paths) > 1:
            out.write(f"==> {path} <==\n".encode())
        with open(path, "rb") as f:
            out.write(f.read())
    out.flush()
    return 0


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--out",
    "out",
    default="report.html",
    show_default=True,
    help="Output file: .html (chart + summary), .png or .svg.",
)
def report(run_dir, out):
    """Chart memory over time per task, with caps and kills, from a run folder."""
    from agent_supervise.observe.report import build

    click.echo(f"wrote {build(run_dir, out)}")
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
