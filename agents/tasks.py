"""Checking one task against the agents: a ``tasks:`` entry, a ``--tasks`` JSON line,
or a ``submit()`` call all pass through :func:`task_problem` before anything runs.

The check includes what the kernel will refuse once placeholders are filled in (a
NUL, an argument longer than MAX_ARG_STRLEN, argv + environ past ARG_MAX): such a
task is bad input, refused with its position, not a ``setup_failed`` later.
"""

from __future__ import annotations

import difflib
import json
from types import MappingProxyType

from agent_supervise.agents import bounds as B
from agent_supervise.agents import fields as F
from agent_supervise.agents.kinds import FieldError
from agent_supervise.agents.spec import TaskSpec, fill
from agent_supervise.errors import BadInput


def did_you_mean(word, options) -> str | None:
    if len(str(word)) > 100:  # names are at most 64; difflib on a long word costs ms
        return None
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def task_problem(given: dict, agents, declared=()) -> tuple[str, str | None] | None:
    """Cross-checks of one task against the agents: (message, hint) or None."""
    name = given["agent"]
    if name not in agents:
        names = sorted(set(agents) | set(declared))
        return (
            f"agent {B.clip(repr(name), 80)} is not defined",
            did_you_mean(name, names) or f"agents: {', '.join(names) or 'none'}",
        )
    repeat = given.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= B.MAX_REPEAT:
        return (
            f"repeat: {B.clip(repr(repeat), 40)} is not a whole number from 1 to {B.MAX_REPEAT:,}",
            "split it into several tasks, or feed the runs as JSON lines with --tasks",
        )
    agent = agents[name]
    values = given.get("vars", {})
    for key, value in values.items():  # API callers' vars have not been through fields
        problem = B.text_problem(value) if isinstance(value, str) else "is not text"
        if problem:
            return (f"vars.{key}: {problem}", "remove it")
    if agent.pool is not None:
        return None  # vars travel to a pool worker inside its JSON task line
    needed = agent.placeholders
    unused = sorted(set(values) - needed)
    if unused:
        return (
            f"vars.{unused[0]}: agent {name} has no {{{unused[0]}}} placeholder",
            did_you_mean(unused[0], needed) or "remove it, or use it in the agent's cmd",
        )
    missing = sorted(needed - set(values))
    if missing:
        return (
            f"agent {name} needs a value for {{{missing[0]}}}",
            f"add vars: {{{missing[0]}: ...}}",
        )
    return filled_problem(agent, values)


def filled_problem(agent, values) -> tuple[str, str] | None:
    """What execve would refuse in ``agent``'s command once ``values`` fill it."""
    values = dict(values)
    problem = B.exec_problem(
        [fill(w, values) for w in agent.cmd],
        {k: fill(v, values) for k, v in agent.env.items()},
        fill(agent.cwd, values),
    )
    if problem is None:
        return None
    key, message, hint = problem
    if key == "cmd":  # the total
        return (f"agents.{agent.name}: filled in with this task's vars, {message}", hint)
    return (f"agents.{agent.name}.{key}, filled in with this task's vars, {message}", hint)


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise BadInput(f"{key}: duplicate key", hint="remove one of them")
        seen[key] = value
    return seen


def parse_task_json(line: str, agents, where: str) -> TaskSpec:
    """One ``--tasks -`` line: a JSON object with the keys of a ``tasks:`` entry."""
    try:
        data = json.loads(line, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise BadInput(
            f"{where}: not JSON: {err.msg} at column {err.colno}",
            hint='write {"agent": "name", "vars": {...}}',
        ) from None
    except BadInput as err:
        raise BadInput(f"{where}: {err.message}", hint=err.hint) from None
    except (ValueError, RecursionError) as err:  # a 5,000-digit number; [[[[...]]]]
        what = "nested too deeply" if isinstance(err, RecursionError) else B.clip(str(err))
        raise BadInput(
            f"{where}: not a task: {what}", hint='write {"agent": "name", "vars": {...}}'
        ) from None
    if not isinstance(data, dict):
        raise BadInput(
            f"{where}: a task must be a JSON object", hint='write {"agent": "name", "vars": {...}}'
        )
    known = {f.name: f for f in F.TASK}
    given = {}
    for key, value in data.items():
        if key not in known:
            raise BadInput(
                f"{where}: {B.clip(key, 80)}: unknown key",
                hint=did_you_mean(key, known) or f"known keys: {', '.join(known)}",
            )
        try:
            given[key] = known[key].parse(value, key)
        except FieldError as err:
            at = f".{err.at}" if err.at is not None else ""
            raise BadInput(f"{where}: {key}{at}: {err.message}", hint=err.hint) from None
    if "agent" not in given:
        raise BadInput(f"{where}: missing key 'agent'", hint="which agent to run")
    problem = task_problem(given, agents)
    if problem:
        raise BadInput(f"{where}: {problem[0]}", hint=problem[1])
    return TaskSpec(where=where, **{**given, "vars": MappingProxyType(given.get("vars", {}))})
