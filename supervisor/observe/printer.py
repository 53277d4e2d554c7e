"""Plain lines on stderr, one per agent event, for terminals and CI logs alike."""

from __future__ import annotations

import sys

from agent_supervise.units import format_duration, format_size


def stderr_line(text: str) -> None:
    """Print a line on stderr; a closed stderr (``| head``) must not stop the fleet."""
    try:  # one write: print() makes two when stderr is unbuffered
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass


class LinePrinter:
    """An event-log listener that prints what a person watching wants to know."""

    def __init__(self, write=None) -> None:
        self.write = write or stderr_line

    def __call__(self, e: dict) -> None:
        text = self.format(e)
        if text:
            self.write(f"[{e['t']:8.2f}s] {text}")

    @staticmethod
    def format(e: dict) -> str | None:
        kind = e["event"]
        if kind == "started":
            where = f"pid {e['pid']}" if e.get("pid") else "handed to the cluster"
            return f"started {e['task']} ({where}, cap {format_size(e['limit'])}, {e['backend']})"
        if kind == "placed":
            return f"{e['task']} runs on {e.get('node', '?')} (pid {e.get('pid')})"
        if kind == "exited":
            peak = f"peak {format_size(e['peak_bytes'])} of {format_size(e['limit_bytes'])}"
            code = "" if e["exit_code"] is None else f", exit {e['exit_code']}"
            detail = f": {e['detail']}" if e.get("detail") else ""
            return (
                f"{e['task']} {e['reason']}{code} after "
                f"{format_duration(e['duration_s'])} ({peak}){detail}"
            )
        if kind == "retried":
            code = "" if e["exit_code"] is None else f", exit {e['exit_code']}"
            cap = f", cap {format_size(e['limit'])}"
            return (
                f"{e['task']} {e['reason']}{code}: attempt {e['attempt']} in "
                f"{format_duration(e['delay'])}{cap} ({e['why']})"
            )
        if kind == "evicting" and "budget" in e:
            return (
                f"evicting {e['task']}: the agents use {format_size(e['in_use'])}, over "
                f"the fleet's budget of {format_size(e['budget'])}"
            )
        if kind == "evicting":
            return (
                f"evicting {e['task']}: only {format_size(e['available'])} available, "
                f"below {format_size(e['threshold'])}"
            )
        if kind == "throttled":
            return (
                f"{e['task']} throttled: at {format_size(e['usage'])}, its memory_high is "
                f"{format_size(e['memory_high'])}"
            )
        if kind == "budget":
            return (
                f"the fleet's peak: {format_size(e['peak'])} of its "
                f"{format_size(e['limit'])} budget ({e['peak_source']})"
            )
        if kind == "breaker":
            return f"circuit breaker {e['state']}: {e['reason']}"
        if kind == "mode":
            return f"mode {e['mode']}: {format_size(e['available'])} available"
        if kind == "waiting":
            return f"{e['task']} {e['reason']}"
        if kind == "rejected":
            return f"skipped {e['error']}"
        if kind == "stopping":
            return f"stopping: {e['message']}"
        if kind == "run_started" and e.get("stale_cages"):
            return f"cleaned up after dead supervisors: {'; '.join(e['stale_cages'])}"
        return None
