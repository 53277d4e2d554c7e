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
    """What a running (or finished) fleet is doing: RUN_DIR, or the newest under runs/."""
    from agent_supervise.observe.dashboard import render
    from agent_supervise.observe.runview import find_run, load_state, verdict

    snap = load_state(find_run(run_dir))
    if as_json:
        import json

        click.echo(json.dumps(snap, indent=2))
        return 0
    view = console()
    view.print(render(snap))
    view.print(f"{snap['run_dir']}: {verdict(snap)} (as of {snap['updated']})")
    return 0


@click.command()
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
