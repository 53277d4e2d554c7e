"""``agent-supervise fleet FILE``: load the fleet, attach what reports on it, run it."""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from agent_supervise.cli import require_linux
from agent_supervise.cli.viewcmds import console
from agent_supervise.errors import BadInput
from agent_supervise.limits import BACKEND_CHOICES


@click.command()
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
    "--memory-budget",
    help="Override supervisor.memory_budget: a size, or a share of the machine (25%).",
)
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
    memory_budget,
    engine,
    address,
):
    """Run the fleet defined in FILE (YAML): capped agents, throttled dispatch."""
    require_linux()
    from agent_supervise.agents.loader import load_fleet
    from agent_supervise.fleet.supervisor import Supervisor
    from agent_supervise.fleet.taskfeed import TaskFeed
    from agent_supervise.units import parse_cap, parse_duration

    interval = parse_duration(log_interval, what="--log-interval")
    budget = None if memory_budget is None else parse_cap(memory_budget, what="--memory-budget")
    spec = load_fleet(file)
    overrides = {"backend": backend, "memory_budget": budget}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        spec = dataclasses.replace(
            spec, supervisor=dataclasses.replace(spec.supervisor, **overrides)
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
    own_stdout = sys.stdout
    if engine == "ray":
        from agent_supervise.ray.fleet import RaySupervisor

        # Ray prints the cluster's error messages ("(raylet) The node with node id
        # ... has been marked dead") to sys.stdout: ours is the result's (--json).
        sys.stdout = sys.stderr
        try:
            sup = RaySupervisor(
                spec, address=address, max_concurrent=max_concurrent, log_dir=log_dir
            )
        except BaseException:
            sys.stdout = own_stdout
            raise
    else:
        sup = Supervisor(spec, max_concurrent=max_concurrent, log_dir=log_dir)
    live = _watch(sup, dashboard, interval)
    if tasks_from is not None:
        TaskFeed(
            tasks_from, sup, "stdin" if tasks_from.name == "<stdin>" else tasks_from.name
        ).start()
    sup.close()
    try:
        result = sup.run()
    finally:
        sys.stdout = own_stdout
    if junit_path:
        from agent_supervise.observe.junit import junit_xml

        with open(junit_path, "wb") as f:
            f.write(junit_xml(result, os.path.splitext(os.path.basename(file))[0]))
    if as_json:
        from agent_supervise.jsonout import dumps

        click.echo(dumps(result.to_json()))
    else:
        out = live.console if live else console()
        out.print(result.table())
    if result.stopping:
        click.echo(f"agent-supervise: stopped: {result.message}", err=True)
    if result.stopping == "cluster_lost":
        # Everything is written; Ray's exit handlers would wait for the lost head.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_code)
    return result.exit_code


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
