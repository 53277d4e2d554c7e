"""The fleet file's keys, in one table that both the loader and the JSON Schema use.

Each key is a :class:`~agent_supervise.agents.kinds.Field` of one kind, which knows
how to check and convert a YAML value and how to describe itself in JSON Schema, so
``agent-supervise schema`` cannot drift from what ``agent-supervise validate``
accepts.
"""

from __future__ import annotations

import re
from typing import Any

from agent_supervise.agents import bounds as B
from agent_supervise.agents.kinds import Field
from agent_supervise.limits import BACKEND_CHOICES

#: Agent names become log file names: letters, digits, '_', '-', '.', no '/' or '..'.
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
BACKENDS = BACKEND_CHOICES


BREAKER = (
    Field("min_available", "size", "Open when available memory falls below this.", "500M"),
    Field("consecutive_memory_kills", "int", "Open after this many memory kills in a row.", 3),
    Field("cooldown", "duration", "Stay open this long, then let one probe task run.", "30s"),
    Field(
        "max_cooldown",
        "duration",
        "Cap for the cooldown, which doubles after each failed probe.",
        "10m",
    ),
)
DEGRADATION = (
    Field(
        "sequential_below",
        "size0",
        "Below this much available memory run one agent at a time.",
        "2G",
    ),
    Field("limited_below", "size0", "Below this, run at most limited_to agents.", "4G"),
    Field("limited_to", "int", "Agents at once in limited mode.", 2),
    Field("margin", "size0", "Step back up only this far above a threshold.", "256M"),
    Field("samples", "int", "Consecutive samples needed to change mode.", 3),
    Field(
        "psi_some_avg10",
        "number",
        "Also step down while /proc/pressure/memory "
        "'some avg10' is above this percentage (0 disables).",
        20,
        minimum=0,
    ),
)
POOL = (
    Field("size", "int", "Long-lived workers of this agent.", 2),
    Field("recycle_above", "size", "Replace a worker whose memory after a task is above this."),
    Field("max_tasks", "int", "Replace a worker after this many tasks.", 100),
)
RAY = (
    Field(
        "address",
        "text",
        "The Ray cluster: auto (RAY_ADDRESS or the cluster this "
        "machine belongs to), HOST:PORT of its head, or local (start one here).",
        "auto",
    ),
    Field(
        "allow_rlimit",
        "bool",
        "Accept nodes that cannot make a cgroup cage and would "
        "cap agents with an rlimit only (otherwise such a node refuses: setup_failed).",
        False,
    ),
    Field(
        "resources",
        "resources",
        "Custom Ray resources each agent needs, so agents "
        "land only on nodes that offer them ({agent_node: 1}).",
    ),
    Field(
        "memory_overhead",
        "size0",
        "Added to each agent's cap in Ray's memory request: the node-side supervisor's own memory.",
        "100M",
    ),
    Field("cpus", "number", "CPUs each agent reserves in Ray.", 1, minimum=0),
    Field(
        "log_tail",
        "size",
        "Per stream, how much of an agent's stdout and stderr (the "
        "last bytes) comes back to the run folder.",
        "8M",
    ),
    Field(
        "node_wait",
        "duration",
        "A task whose cap fit only on nodes that have left waits this long for "
        "one that can hold it to join, then ends setup_failed.",
        "60s",
    ),
    Field(
        "head_lost_after",
        "duration",
        "The head (GCS) unreachable this long in a row: the fleet stops (exit 5) "
        "and its running tasks end lost.",
        "10s",
    ),
)
SUPERVISOR = (
    Field("max_concurrent", "int", "Agents running at once (seed: MAX_CONCURRENT_AGENTS).", 2),
    Field("queue_size", "int", "Tasks waiting to start; submitters block when it is full.", 4),
    Field(
        "min_free_memory",
        "size0",
        "No agent starts unless this much memory stays "
        "available after its cap and the running agents' headroom.",
        "1G",
    ),
    Field(
        "memory_limit",
        "size",
        "The supervisor's own RSS cap: above it, stop everything and exit 3.",
        "500M",
    ),
    Field(
        "memory_budget",
        "cap",
        "Hard ceiling on all the fleet's agents together: they live under one parent "
        "cage of this size (rlimit: the watchdog's sum); admission counts against it.",
    ),
    Field(
        "admission",
        "choice",
        "What a running agent is promised: its whole cap (caps), or what its agent's "
        "past peaks say it needs (usage; peaks.json in log_dir).",
        "caps",
        choices=("caps", "usage"),
    ),
    Field("poll_interval", "duration", "Watchdog sampling interval.", "100ms"),
    Field("grace", "duration", "Time between SIGTERM and SIGKILL.", "2s"),
    Field("log_dir", "path", "Where run folders go (relative to the fleet file).", "runs"),
    Field("backend", "choice", "Memory-limit mechanism.", "auto", choices=BACKENDS),
    Field(
        "rlimit", "choice", "Which rlimit the rlimit backend sets.", "data", choices=("data", "as")
    ),
    Field("cgroup_root", "path", "Create agents' cgroups under this directory."),
    Field("run_timeout", "duration", "Stop the whole run after this long."),
    Field(
        "freeze_below",
        "size0",
        "Below this much available memory freeze the youngest agent (it keeps its "
        "memory, stops growing) and thaw it when memory returns (default: "
        "min_free_memory; 0 disables).",
    ),
    Field(
        "evict_below",
        "size0",
        "Below this much available memory kill the youngest "
        "agent and requeue its task (default: half of min_free_memory; 0 disables).",
    ),
    Field(
        "breaker",
        "object",
        "Circuit breaker: stop starting agents while memory is "
        "short or agents keep getting memory-killed.",
        sub=BREAKER,
    ),
    Field(
        "degradation",
        "object",
        "Modes full / limited / sequential from available memory, with hysteresis.",
        sub=DEGRADATION,
    ),
    Field(
        "ray",
        "object",
        "With --engine ray: the cluster, and how agents are placed on its nodes.",
        sub=RAY,
    ),
)
AGENT = (
    Field(
        "cmd",
        "cmd",
        "The command as a list of words; {name} placeholders are filled from each task's vars.",
        required=True,
    ),
    Field(
        "memory_limit",
        "cap",
        "Hard cap on the agent's whole process tree (at least 1M, or a share of the "
        "machine's memory such as 10%).",
        "50M",
    ),
    Field(
        "memory_high",
        "cap",
        "Soft limit below memory_limit: above it the kernel reclaims the agent's memory "
        "and slows it (cgroup2 memory.high) before the hard cap kills it; a throttled event.",
    ),
    Field(
        "pids_limit",
        "int",
        "Process cap: at most this many tasks (processes and "
        "threads) in the agent; a fork refused at it stops the agent (reason "
        "pids_exceeded). 0 turns it off.",
        4096,
        minimum=0,
    ),
    Field(
        "runtime_hints",
        "bool",
        "Tell the agent's runtimes its cap: Node's --max-old-space-size (75% of it) "
        "and --max-semi-space-size appended to NODE_OPTIONS, GOMEMLIMIT (90%), "
        "-XX:MaxRAM in JAVA_TOOL_OPTIONS.",
        True,
    ),
    Field("timeout", "duration", "Stop the agent after this long (reason timeout)."),
    Field("grace", "duration", "Time between SIGTERM and SIGKILL for this agent."),
    Field("env", "env", "Extra environment variables."),
    Field("cwd", "path", "Working directory (relative to the fleet file).", "."),
    Field(
        "user",
        "ident",
        "Run the agent as this user (the supervisor must be root); "
        "then it cannot leave its cgroup.",
    ),
    Field("group", "ident", "Run the agent with this group (default: the user's)."),
    Field("retries", "int", "Retries after a failure, timeout or eviction.", 0, minimum=0),
    Field(
        "backoff", "duration", "Delay before the first retry; doubles each time, with jitter.", "1s"
    ),
    Field("backoff_max", "duration", "Cap for the retry delay.", "1m"),
    Field(
        "on_memory_kill",
        "choice",
        "After oom_killed / memory_exceeded: fail, retry at the same cap, or grow the cap.",
        "fail",
        choices=("fail", "retry", "grow"),
    ),
    Field("memory_retries", "int", "Retries after memory kills (own counter).", 2, minimum=0),
    Field(
        "grow_factor",
        "number",
        "With on_memory_kill: grow, multiply the cap by this.",
        2,
        minimum=1.01,
    ),
    Field("max_memory_limit", "cap", "With on_memory_kill: grow, the largest cap."),
    Field(
        "pool",
        "object",
        "Run as long-lived workers that take one JSON task per line "
        "on stdin and answer one JSON line on stdout.",
        sub=POOL,
    ),
)
DEFAULTS = tuple(f for f in AGENT if f.name not in ("cmd", "pool"))
TASK = (
    Field("agent", "text", "Which agent to run.", required=True),
    Field("vars", "env", "Values for the agent's {placeholders}."),
    Field(
        "repeat",
        "int",
        f"Run it this many times (at most {B.MAX_REPEAT:,}).",
        1,
        maximum=B.MAX_REPEAT,
    ),
    Field("memory_limit", "cap", "Override the agent's cap for this task."),
    Field("timeout", "duration", "Override the agent's timeout for this task."),
)
SECTIONS = ("supervisor", "defaults", "agents", "tasks")


def is_valid_name(name: Any) -> bool:
    return isinstance(name, str) and re.match(NAME_RE, name) is not None and ".." not in name
