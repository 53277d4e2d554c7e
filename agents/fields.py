"""The fleet file's keys, in one table that both the loader and the JSON Schema use.

Each :class:`Field` knows how to check and convert a YAML value and how to describe
itself in JSON Schema, so ``agent-supervise schema`` cannot drift from what
``agent-supervise validate`` accepts.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from agent_supervise.agents import bounds as B
from agent_supervise.errors import BadInput
from agent_supervise.limits import BACKEND_CHOICES
from agent_supervise.units import parse_cap, parse_duration, parse_size

#: Agent names become log file names: letters, digits, '_', '-', '.', no '/' or '..'.
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_UNIT = r"([KMGTkmgt]([Ii][Bb])?|[Bb])?"
SIZE_RE = rf"^(?!0+(\.0+)?{_UNIT}$)[0-9]+(\.[0-9]+)?{_UNIT}$"  # not zero
DURATION_RE = r"^([0-9]+(\.[0-9]+)?(us|ms|sec|min|s|m|h|d))+$|^[0-9]+(\.[0-9]+)?$"
BACKENDS = BACKEND_CHOICES


class FieldError(Exception):
    """A value is wrong; ``message`` has no position, the loader adds it."""

    def __init__(self, message: str, hint: str | None = None, at=None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint
        self.at = at  # the list index or mapping key of the offending element


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
        type(None): "empty",
    }.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # size, size0, cap, duration, int, choice, path, cmd, env, text,
    # bool, resources, object
    doc: str
    default: Any = None
    minimum: float = 1
    maximum: int | None = None  # kind int: the documented bound (bounds.MAX_REPEAT)
    choices: tuple[str, ...] = ()
    required: bool = False
    sub: tuple = ()  # kind "object": the nested fields (the loader recurses)

    def parse(self, value: Any, what: str) -> Any:
        """Convert a YAML value; raise :class:`FieldError`."""
        try:
            return getattr(self, f"_{self.kind}")(value, what)
        except BadInput as err:  # the unit parsers name the value and give a hint
            raise FieldError(err.message.split(": ", 1)[-1], err.hint) from None

    def _size(self, value, what):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise FieldError(f"{value!r} is not a size", "try 50M")
        return parse_size(value, what=what, allow_zero=self.kind == "size0")

    _size0 = _size

    def _cap(self, value, what):
        """An agent's memory cap: a size of at least bounds.MIN_CAP."""
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise FieldError(f"{value!r} is not a size", "try 50M")
        return parse_cap(value, what=what)

    def _duration(self, value, what):
        if value is None:
            return None
        if not isinstance(value, (int, float, str)) or isinstance(value, bool):
            raise FieldError(f"{value!r} is not a duration", "try 2s, 100ms or 10m")
        return parse_duration(value, what=what)

    def _number(self, value, what):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise FieldError(
                f"{value!r} is {_type_name(value)}, not a number", f"try {self.default}"
            )
        if value < self.minimum:
            raise FieldError(
                f"{value} is below the minimum of {self.minimum}", f"try {self.default}"
            )
        return float(value)

    def _int(self, value, what):
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldError(
                f"{value!r} is {_type_name(value)}, not a whole number",
                f"try {self.default or self.minimum}",
            )
        if value < self.minimum:
            raise FieldError(
                f"{value} is below the minimum of {self.minimum}",
                f"try {self.default or self.minimum}",
            )
        if self.maximum is not None and value > self.maximum:
            raise FieldError(
                f"{B.clip(str(value), 40)} is above the maximum of {self.maximum:,}",
                f"split it into several tasks of at most {self.maximum:,}",
            )
        return value

    def _choice(self, value, what):
        if value not in self.choices:
            raise FieldError(
                f"{value!r} is not one of {', '.join(self.choices)}", f"try {self.choices[0]}"
            )
        return value

    def _text(self, value, what):
        if not isinstance(value, str) or not value:
            raise FieldError(
                f"{_quote(value)} is {_type_name(value)}, not text", "quote it: 'value'"
            )
        _kernel_text(value)
        return value

    _path = _text

    def _bool(self, value, what):
        if not isinstance(value, bool):
            raise FieldError(
                f"{value!r} is {_type_name(value)}, not true or false", "write true or false"
            )
        return value

    def _resources(self, value, what):
        """Ray resources: names to amounts (``{agent_node: 1}``)."""
        if not isinstance(value, dict):
            raise FieldError(f"{_type_name(value)} is not a mapping", "write resources: {name: 1}")
        for key, amount in value.items():
            if not isinstance(key, str) or not key or key in ("memory", "CPU", "GPU"):
                raise FieldError(
                    f"the resource name {key!r} is not allowed",
                    "memory comes from the cap, CPU from cpus; name a custom resource",
                )
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
                raise FieldError(f"{amount!r} is not a positive amount", f"write {key}: 1", at=key)
        return {k: float(v) for k, v in value.items()}

    def _ident(self, value, what):
        """A user or group: a name, or a numeric id."""
        if (
            isinstance(value, bool)
            or not isinstance(value, (str, int))
            or value == ""
            or (isinstance(value, int) and value < 0)
        ):
            raise FieldError(
                f"{_quote(value)} is not a user or group name or id",
                "write a name such as nobody, or an id such as 65534",
            )
        if isinstance(value, str):
            _kernel_text(value)
        return str(value)

    def _cmd(self, value, what):
        if isinstance(value, str):
            words = shlex.split(value) if _splits(value) else [value]
            raise FieldError(
                "cmd must be a list of words, not one string",
                f"write cmd: {words}, or ['sh', '-c', '...'] for shell syntax",
            )
        if not isinstance(value, list) or not value:
            raise FieldError(f"{_type_name(value)} is not a command", "write cmd: [prog, arg]")
        for i, word in enumerate(value):
            if not isinstance(word, str):
                raise FieldError(
                    f"word {i} is {_type_name(word)} ({_quote(word)}), not text",
                    f"quote it: '{B.clip(str(word), 40)}'",
                    at=i,
                )
            _kernel_text(word, at=i)
        if not value[0]:  # exec would fail: exit 126, with an agent's slot spent
            raise FieldError(
                "the program name (word 0) is empty", "name a program: cmd: [python3, ...]", at=0
            )
        return tuple(value)

    def _env(self, value, what):
        if not isinstance(value, dict):
            raise FieldError(f"{_type_name(value)} is not a mapping", "write env: {KEY: value}")
        for key, val in value.items():
            if not isinstance(key, str) or not key:
                raise FieldError(
                    f"the key {_quote(key)} is not text", f"quote it: '{B.clip(str(key), 40)}'"
                )
            if not isinstance(val, str):
                what_values = "placeholder" if self.name == "vars" else "environment"
                raise FieldError(
                    f"{_quote(val)} is {_type_name(val)}; {what_values} values are text",
                    f"quote it: {key}: '{B.clip(str(val), 40)}'",
                    at=key,
                )
            if self.name == "env" and "=" in key:
                raise FieldError(
                    f"the name {_quote(key)} contains '='",
                    "environment names cannot: the first '=' ends the name",
                    at=key,
                )
            _kernel_text(key, at=key)
            _kernel_text(val, at=key)
        return dict(value)

    def schema(self) -> dict:
        """This field in JSON Schema (agents/schema.py knows each kind's shape)."""
        from agent_supervise.agents.schema import field_schema

        return field_schema(self)


def _quote(value) -> str:
    """repr() of a value for a message, cut short: it may be a megabyte long."""
    return B.clip(repr(value), 80)


def _kernel_text(value: str, at=None) -> None:
    """Refuse text no argv, environ or path can carry (a NUL), now, not at spawn."""
    problem = B.text_problem(value)
    if problem:
        raise FieldError(f"{_quote(value)} {problem}", "remove it", at=at)


def _splits(text: str) -> bool:
    try:
        shlex.split(text)
        return True
    except ValueError:
        return False


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
        "memory_limit", "cap", "Hard cap on the agent's whole process tree (at least 1M).", "50M"
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
