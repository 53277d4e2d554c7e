"""Runtime hints: tell the agent's garbage-collected runtimes the cap they live under.

Node, Go and the JVM size their heaps from what they believe the machine has, not
from the cage: a Node agent under a 100M cgroup1 cap grows its heap until the
kernel kills it (oom_killed) instead of collecting, and under RLIMIT_DATA its
refused allocations abort it or leave it waiting. Told the cap, each collects
harder as it nears it, and at it fails in its own words ("JavaScript heap out of
memory") instead of being killed. :func:`runtime_hints` is the one home of these
variables; :func:`~agent_supervise.run.launch.launch` applies them to the agent's
environment (never the supervisor's) on every path: ``run``, fleets, pool workers
and Ray nodes. Opt out with ``--no-runtime-hints`` / ``runtime_hints: false``.

Headroom, measured on this machine (Node 20, a script that grows an array of
strings until V8 gives up, under cgroup1; BENCHMARKS.md, "Runtime hints"): with
``--max-old-space-size`` at 75% of the cap, the tree's peak was 82-94% of the cap
for caps of 50M-1G (V8's young generation, code space, the binary and native
memory make the rest, ~10 MiB plus ~8%), and V8 aborted at its heap limit every
time; at 85% of a 100M cap the kernel's charge reached the cap.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent_supervise.units import format_size

#: Node's old space as a fraction of the cap (measured, see above).
NODE_OLD_SPACE = 0.75
#: GOMEMLIMIT as a fraction of the cap. It is a soft limit on all the memory the Go
#: runtime manages (heap, stacks, its own structures), so it needs less headroom
#: than Node's old space; cgo's allocations are outside it (Go's guide suggests
#: leaving 5-10%). With TypeScript 7's tsc (a Go program) the smallest cap it
#: compiles in was the same with and without it: the hint cost nothing there.
GO_LIMIT = 0.90
#: The user's own settings these hints give way to.
_NODE_OWN = "--max-old-space-size"
_JAVA_OWN = ("-XX:MaxRAM=", "-Xmx", "-XX:MaxHeapSize=", "-XX:MaxRAMPercentage=")


def runtime_hints(env: Mapping[str, str], cap: int) -> tuple[dict[str, str], str]:
    """The variables to set in ``env`` for an agent capped at ``cap`` bytes (whole
    values: the user's NODE_OPTIONS and JAVA_TOOL_OPTIONS kept, ours appended), and
    one note saying what was set and what was left as the user had it."""
    mib = cap >> 20
    hints: dict[str, str] = {}
    said: list[str] = []
    kept: list[str] = []

    node = env.get("NODE_OPTIONS", "")
    if _NODE_OWN in node:
        kept.append(f"NODE_OPTIONS' own {_NODE_OWN}")
    else:
        old = f"{_NODE_OWN}={max(1, int(mib * NODE_OLD_SPACE))}"
        hints["NODE_OPTIONS"] = f"{node} {old}" if node.strip() else old
        said.append(f"NODE_OPTIONS += {old} ({NODE_OLD_SPACE:.0%} of the cap)")

    if "GOMEMLIMIT" in env:
        kept.append("GOMEMLIMIT")
    else:
        hints["GOMEMLIMIT"] = f"{max(1, int(mib * GO_LIMIT))}MiB"
        said.append(f"GOMEMLIMIT={hints['GOMEMLIMIT']} ({GO_LIMIT:.0%} of the cap)")

    # MaxRAM is what the JVM takes the machine's memory to be: it then sizes its heap
    # by its own container rules (MaxRAMPercentage, 50% of a cap below ~250M), as it
    # does by itself in a cgroup it can read. Under an rlimit it cannot: without this
    # its reservations, sized for the whole machine, are refused and it does not start.
    java = env.get("JAVA_TOOL_OPTIONS", "")
    if any(own in java for own in _JAVA_OWN):
        kept.append("JAVA_TOOL_OPTIONS' own heap size")
    else:
        ram = f"-XX:MaxRAM={cap}"
        hints["JAVA_TOOL_OPTIONS"] = f"{java} {ram}" if java.strip() else ram
        said.append(f"JAVA_TOOL_OPTIONS += {ram}")

    note = f"runtime hints for the {format_size(cap, short=True)} cap: " + (
        "; ".join(said) or "none set"
    )
    if kept:
        note += "; left as set by the user: " + ", ".join(kept)
    return hints, note
