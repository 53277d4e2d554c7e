"""Commands that look at run folders: ``status``, ``logs``, ``report``, ``recommend``."""

from __future__ import annotations

import sys

import click


def console():
    """rich's console for our tables: at a terminal its width, in a log 120 columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)  # logs: do not wrap at 80


@click.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def status(run_dir, as_json):
    """What a running (or finished) fleet is doing: RUN_DIR, or the newest under runs/;
    without RUN_DIR, also the `run`s live on this machine."""
    from agent_supervise.errors import BadInput
    from agent_supervise.observe.dashboard import render
    from agent_supervise.observe.liveruns import live_runs
    from agent_supervise.observe.runview import find_run, load_state, verdict

    runs = [] if run_dir else live_runs()
    try:
        snap = load_state(find_run(run_dir))
    except BadInput as err:
        if run_dir:
            raise
        if not runs:
            raise BadInput(f"no live run, and {err.message}", hint=err.hint) from None
        snap = None  # live runs, and no fleet folder under runs/
    if as_json:
        import json

        body = {"live_runs": [r.to_json() for r in runs]} if not run_dir else {}
        click.echo(json.dumps({**body, **(snap or {})}, indent=2))
        return 0
    view = console()
    if runs:
        view.print(live_table(runs))
    if snap is not None:
        view.print(render(snap))
        view.print(f"{snap['run_dir']}: {verdict(snap)} (as of {snap['updated']})")
    return 0


def live_table(runs):
    """The live `run`s, one row each, as ``pm2 ls`` lists its processes."""
    from rich.table import Table

    from agent_supervise.units import format_duration, format_size

    table = Table(title="live runs")
    for column in ("pid", "agent pid", "backend", "cap", "memory", "uptime", "command"):
        table.add_column(column, overflow="fold")
    for run in runs:
        row = run.to_json()
        cap = format_size(run.limit_bytes)
        table.add_row(
            str(run.pid),
            str(run.agent_pid),
            run.backend,
            f"{run.cap} = {cap}" if run.cap.endswith("%") else cap,
            format_size(row["usage_bytes"]),
            format_duration(row["uptime_s"]),
            run.cmd,
        )
    return table


@click.command()
@click.argument("where", nargs=-1, required=True, metavar="[RUN_DIR] TASK")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
@click.option("--stderr", "stream", flag_value="err", help="The .err log instead.")
def logs(where, follow, stream):
    """Print a task's log (TASK: an id such as researcher-1, or an agent name), from
    RUN_DIR or else the newest run folder under runs/ that has it."""
    from agent_supervise.observe.runview import follow as follow_files
    from agent_supervise.observe.runview import log_files, run_with_task, wait_for_logs

    if len(where) > 2:
        raise click.UsageError("give at most a run folder and a task: logs [RUN_DIR] TASK")
    task = where[-1]
    stream = stream or "out"
    run_dir = where[0] if len(where) == 2 else run_with_task(task, stream)
    out = sys.stdout.buffer
    if follow:
        paths = wait_for_logs(run_dir, task, stream)
        follow_files(paths, run_dir, lambda b: (out.write(b), out.flush()))
        return 0
    paths = log_files(run_dir, task, stream)
    for path in paths:
        if len(paths) > 1:
            out.write(f"==> {path} <==\n".encode())
        with open(path, "rb") as f:
            out.write(f.read())
    out.flush()
    return 0


@click.command()
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


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def recommend(run_dirs, as_json):
    """Right-sized memory_limit and memory_high per agent, from the peaks its attempts
    reached in RUN_DIR... (YAML to paste into the fleet file)."""
    from agent_supervise.observe.recommend import advise, to_yaml

    advice = advise(list(run_dirs))
    if as_json:
        import json

        body = {"run_dirs": list(run_dirs), "agents": {a.agent: a.to_json() for a in advice}}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(to_yaml(advice, list(run_dirs)), nl=False)
    return 0
