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

Node also sizes V8's young generation (two semi-spaces) from the memory it believes
it has, and it reads a cgroup's limit for that (uv_get_constrained_memory) but not an
rlimit: under a cgroup cap of 512M or less its new space stays at 2 MiB, under an
rlimit at 32 MiB whatever the cap (measured, Node 20). That alone made ``npm
install`` need a third more cap under rlimit than under cgroup1. So the hints also
pass ``--max-semi-space-size`` as V8 derives it from a machine of the cap's size
(:func:`node_semi_space_mib`), which under a cgroup Node already did by itself: the
same Node heap on every backend.
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
_NODE_SEMI = "--max-semi-space-size"
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
    added: list[str] = []
    if _NODE_OWN in node:
        kept.append(f"NODE_OPTIONS' own {_NODE_OWN}")
    else:
        added.append(f"{_NODE_OWN}={max(1, int(mib * NODE_OLD_SPACE))}")
        said.append(f"NODE_OPTIONS += {added[-1]} ({NODE_OLD_SPACE:.0%} of the cap)")
    if _NODE_SEMI in node:
        kept.append(f"NODE_OPTIONS' own {_NODE_SEMI}")
    else:
        added.append(f"{_NODE_SEMI}={node_semi_space_mib(cap)}")
        said.append(f"NODE_OPTIONS += {added[-1]} (V8's own for that memory)")
    if added:
        ours = " ".join(added)
        hints["NODE_OPTIONS"] = f"{node} {ours}" if node.strip() else ours

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


def node_semi_space_mib(cap: int) -> int:
    """The semi-space (MiB) V8 picks for a machine of ``cap`` bytes, as Node gives it
    a cgroup's limit (V8's Heap::ConfigureDefaults, 64-bit without pointer
    compression, as Node ships): the old generation is half the memory, at least 256
    MiB; a semi-space is 1/256 of that up to 256 MiB, else 1/128, within 1-16 MiB.
    Checked against what Node 20 chose under cgroup1 caps of 40M-4G (new space = two
    semi-spaces: 2 MiB up to 512M, 8 at 1G, 32 at 4G)."""
    old = max(cap // 2, 256 << 20)
    ratio = 256 if old <= 256 << 20 else 128
    return min(16, max(1, (old // ratio) >> 20))
