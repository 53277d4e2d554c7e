"""What a run is given and where it is: the types the loop, the fleet and the Ray
driver share, without the state machine itself (lifecycle.py)."""

from __future__ import annotations

from dataclasses import dataclass

from agent_supervise.outcome import TextEnum


class RunState(TextEnum):
    """Where a run is: running -> (draining: its main process exited, its cage is
    emptied) or (stopping: SIGTERM sent, grace running -> killing: SIGKILL sent) ->
    done. A Ray run is pending while it waits for a node."""

    PENDING = "pending"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    KILLING = "killing"
    DONE = "done"


@dataclass(frozen=True)
class RunSpec:
    """What to run and under which limits (the loop's view of an agent task)."""

    cmd: tuple[str, ...]
    limit: int
    label: str = ""
    timeout: float | None = None
    grace: float = 2.0
    poll: float = 0.1
