"""``agent-supervise recommend RUN_DIR...``: right-sized caps from what agents used.

Per agent, over every attempt in the run folders' ``events.jsonl`` (retried attempts
too, not only the last): how many ended by themselves and their peaks (median, p95,
max), how many were killed at their cap, and a suggestion:

- ``memory_limit``: the largest peak seen plus 25 %, so that no attempt seen so far
  would have been killed; after a kill at cap C, at least 1.5 × C (a guess above what
  was too small: confirm it with a run);
- ``memory_high`` (the soft limit where the kernel starts reclaiming): the p95 peak
  plus 10 % (or the cap an attempt died at, if larger), so that typical attempts never
  meet it and outliers are slowed before they are killed. Left out when it would not
  be below the limit.

Both are rounded up to 8 MiB. Printed as YAML to paste under the fleet file's
``agents:``, or as JSON.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import dataclass

from agent_supervise.errors import BadInput
from agent_supervise.fleet.history import PERCENTILE, AgentPeaks, PeakHistory, percentile
from agent_supervise.outcome import Reason
from agent_supervise.units import format_size

ROUND = 8 << 20
LIMIT_MARGIN = 1.25
AFTER_KILL = 1.5
HIGH_MARGIN = 1.1
MAX_LINE = 1 << 20  # an events.jsonl line longer than this is not ours: skipped


def _round_up(n: float) -> int:
    return max(ROUND, -(-int(n) // ROUND) * ROUND)


@dataclass(frozen=True)
class Advice:
    agent: str
    seen: AgentPeaks
    cap: int  # the largest cap it ran under
    memory_limit: int | None
    memory_high: int | None

    @classmethod
    def of(cls, agent: str, seen: AgentPeaks, cap: int) -> Advice:
        limit = high = None
        if seen.peaks:
            limit = _round_up(max(seen.peaks) * LIMIT_MARGIN)
            high = _round_up(percentile(seen.peaks, PERCENTILE) * HIGH_MARGIN)
        if seen.killed_at:
            died_at = max(seen.killed_at)
            limit = max(limit or 0, _round_up(died_at * AFTER_KILL))
            high = max(high or 0, _round_up(died_at * HIGH_MARGIN))
        if limit is not None and high is not None and high >= limit:
            high = None
        return cls(agent, seen, cap, limit, high)

    def facts(self) -> str:
        p = self.seen.peaks
        parts = []
        if p:
            mid, high = int(statistics.median(p)), percentile(p, PERCENTILE)
            parts.append(
                f"{len(p)} ended by themselves: median {format_size(mid, short=True)}, "
                f"p{PERCENTILE} {format_size(high, short=True)}, "
                f"max {format_size(max(p), short=True)}"
            )
        if self.seen.killed_at:
            parts.append(
                f"{len(self.seen.killed_at)} killed at their cap (up to "
                f"{format_size(max(self.seen.killed_at), short=True)}): the limit is a guess "
                "above it, confirm it with a run"
            )
        return "; ".join(parts) + f" (cap was {format_size(self.cap, short=True)})"

    def to_json(self) -> dict:
        p = self.seen.peaks
        return {
            "attempts": len(p) + len(self.seen.killed_at),
            "count": len(p),
            "median_bytes": int(statistics.median(p)) if p else None,
            "p95_bytes": percentile(p, PERCENTILE) if p else None,
            "max_bytes": max(p) if p else None,
            "killed": len(self.seen.killed_at),
            "killed_at_bytes": max(self.seen.killed_at) if self.seen.killed_at else None,
            "cap_bytes": self.cap,
            "memory_limit": _size(self.memory_limit),
            "memory_high": _size(self.memory_high),
        }


def _size(n: int | None) -> str | None:
    return None if n is None else f"{n >> 20}M"


def gather(run_dirs: list[str]) -> tuple[PeakHistory, dict[str, int]]:
    """Every attempt's observation in the run folders, and each agent's largest cap."""
    history, caps = PeakHistory(), dict[str, int]()
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "events.jsonl")
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise BadInput(
                f"{run_dir}: not a run folder ({path}: {err.strerror})",
                hint="give folders that `agent-supervise fleet` made (runs/<run id>)",
            ) from None
        agent_of: dict[str, str] = {}
        with f:
            for line in f:
                if len(line) > MAX_LINE:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # the last line of a crashed run may be cut short
                if not isinstance(event, dict):
                    continue
                kind, task = event.get("event"), event.get("task")
                if kind == "queued" and isinstance(event.get("agent"), str):
                    agent_of[str(task)] = event["agent"]
                elif kind in ("retried", "exited"):
                    agent = event.get("agent") or agent_of.get(str(task))
                    cap = event.get("limit_bytes")  # the ended attempt's cap
                    if not isinstance(agent, str) or not isinstance(cap, int):
                        continue
                    try:
                        killed = Reason(event.get("reason")).memory_kill
                    except ValueError:
                        continue
                    peak = event.get("peak_bytes")
                    history.record(agent, peak if isinstance(peak, int) else None, cap, killed)
                    caps[agent] = max(caps.get(agent, 0), cap)
    return history, caps


def advise(run_dirs: list[str]) -> list[Advice]:
    history, caps = gather(run_dirs)
    return [
        Advice.of(name, seen, caps[name])
        for name, seen in sorted(history.agents.items())
        if seen.peaks or seen.killed_at
    ]


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def to_yaml(advice: list[Advice], run_dirs: list[str]) -> str:
    attempts = sum(len(a.seen.peaks) + len(a.seen.killed_at) for a in advice)
    lines = [
        f"# agent-supervise recommend: {len(run_dirs)} run folder(s), {attempts} "
        f"attempts of {len(advice)} agent(s)",
        "# Paste under the fleet file's agents: (each agent's other keys stay as they are).",
        "agents:",
    ]
    for a in advice:
        name = a.agent if _PLAIN.fullmatch(a.agent) else json.dumps(a.agent)
        lines += [f"  {name}:", f"    # {a.facts()}"]
        if a.memory_limit is not None:
            lines.append(f"    memory_limit: {_size(a.memory_limit)}")
        if a.memory_high is not None:
            lines.append(f"    memory_high: {_size(a.memory_high)}")
    return "\n".join(lines) + "\n"
