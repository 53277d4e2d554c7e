"""Loading fleet files: YAML in, frozen specs out, every error with its position.

Errors read ``FILE:LINE:COL: key.path: what is wrong (the fix)`` and are all
collected before the file is refused, so one run of ``validate`` shows them all.
Duplicate keys, which PyYAML silently resolves to the last one, are errors: nothing
the user wrote may be dropped without a word. The file is read and composed within
the limits of :mod:`.bounds` (a regular file of at most 1 MiB, 100,000 values with
aliases expanded, 64 levels deep): a hostile file is refused in milliseconds.
"""

from __future__ import annotations

import os
from types import MappingProxyType

import yaml

from agent_supervise.agents import bounds as B
from agent_supervise.agents import fields as F
from agent_supervise.agents import yamlbound
from agent_supervise.agents.nodes import Checker, is_null, node_kind
from agent_supervise.agents.spec import (
    AgentSpec,
    BreakerSettings,
    DegradationSettings,
    FleetSpec,
    PoolSettings,
    RaySettings,
    SupervisorSettings,
    TaskSpec,
    placeholder_names,
)
from agent_supervise.agents.tasks import did_you_mean, parse_task_json, task_problem
from agent_supervise.errors import BadInput, FleetFileError

__all__ = ["FleetFileError", "load_fleet", "parse_fleet", "parse_task_json", "task_problem"]


def load_fleet(path: str) -> FleetSpec:
    """Read and validate a fleet file; raise :class:`FleetFileError` listing problems."""
    data = B.read_regular_file(path)  # not a FIFO, not /dev/zero, at most 1 MiB
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise FleetFileError(
            [
                f"{path}:{line}: not UTF-8 text ({err.reason} at byte "
                f"{err.start}) (save the file as UTF-8)"
            ]
        ) from None
    return parse_fleet(text, path, os.path.dirname(os.path.abspath(path)))


def parse_fleet(text: str, name: str = "<fleet>", base_dir: str = ".") -> FleetSpec:
    check = Checker(name)
    if len(text) > B.MAX_FILE_BYTES:  # the API's path: load_fleet has checked bytes
        raise FleetFileError(
            [
                f"{name}: larger than {B.MAX_FILE_BYTES // B.MiB} MiB, the "
                "limit for a fleet file (pass many tasks as JSON lines with "
                "--tasks FILE)"
            ]
        )
    try:
        root = yamlbound.compose(text)
    except yamlbound.TooLarge as err:
        raise FleetFileError(
            [f"{name}:{err.where}: {err.path + ': ' if err.path else ''}{err.message} ({err.hint})"]
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise FleetFileError([f"{where}: YAML syntax error: {err.problem or err}"]) from None
    except yaml.reader.ReaderError as err:  # a character YAML forbids (NUL, controls)
        line = text.count("\n", 0, err.position) + 1
        raise FleetFileError(
            [f"{name}:{line}: YAML syntax error: character {err.character:#04x}: {err.reason}"]
        ) from None
    except yaml.YAMLError as err:
        raise FleetFileError([f"{name}: YAML error: {err}"]) from None
    if root is None:
        raise FleetFileError(
            [
                f"{name}: the file is empty (a fleet needs 'agents:' and "
                "'tasks:'; see configs/example.yaml)"
            ]
        )
    sections = check.items(root, "")
    if sections is None:
        raise FleetFileError(check.problems)
    nodes = {}
    for key, key_node, value_node in sections:
        if key not in F.SECTIONS:
            check.error(
                key_node,
                str(key),
                "unknown section",
                did_you_mean(key, F.SECTIONS) or f"sections: {', '.join(F.SECTIONS)}",
            )
        else:
            nodes[key] = value_node
    sup = (
        check.fields(nodes["supervisor"], "supervisor", F.SUPERVISOR)
        if "supervisor" in nodes
        else {}
    )
    defaults = (
        check.fields(nodes["defaults"], "defaults", F.DEFAULTS) if "defaults" in nodes else {}
    )
    agents = _agents(check, nodes.get("agents"), defaults, base_dir, root)
    agents_node = nodes.get("agents")
    declared = (
        {str(k.value) for k, _ in agents_node.value}
        if isinstance(agents_node, yaml.MappingNode)
        else set()
    )
    tasks = _tasks(check, nodes.get("tasks"), agents, declared)
    if check.problems:
        raise FleetFileError(check.problems)
    for key in ("log_dir",):
        if key in sup:
            sup[key] = os.path.join(base_dir, sup[key])
    sup.setdefault("log_dir", os.path.join(base_dir, "runs"))
    sup["breaker"] = BreakerSettings(**sup.get("breaker", {}))
    sup["degradation"] = DegradationSettings(**sup.get("degradation", {}))
    ray = sup.get("ray", {})
    sup["ray"] = RaySettings(**{**ray, "resources": MappingProxyType(ray.get("resources", {}))})
    return FleetSpec(SupervisorSettings(**sup), MappingProxyType(agents), tuple(tasks), path=name)


def _agents(check: Checker, node, defaults: dict, base_dir: str, root) -> dict:
    if node is None:
        check.error(root, "agents", "missing section", "add 'agents:' with at least one agent")
        return {}
    agents = {}
    for name, key_node, value_node in check.items(node, "agents") or []:
        path = f"agents.{name}"
        if not F.is_valid_name(name):
            check.error(
                key_node,
                path,
                f"{name!r} is not a valid agent name",
                "use letters, digits, '_', '-' and '.', no '/' or '..': it names log files",
            )
            continue
        given = check.fields(value_node, path, F.AGENT)
        if "cmd" not in given:
            continue
        merged = {**defaults, **given}
        merged["env"] = MappingProxyType({**defaults.get("env", {}), **given.get("env", {})})
        merged["cwd"] = os.path.join(base_dir, merged.get("cwd", "."))
        if "pool" in merged:
            merged["pool"] = PoolSettings(**merged["pool"])
        problem = _agent_problem(merged)
        if problem:
            check.error(value_node, path, *problem)
            continue
        agent = AgentSpec(name=name, **merged)
        for text in (*agent.cmd, *agent.env.values(), agent.cwd):
            try:
                bad = [n for n in placeholder_names(text) if not n.isidentifier()]
            except ValueError as err:
                check.error(
                    value_node,
                    path,
                    f"bad placeholder in {text!r}: {err}",
                    "write {name}; double the braces for a literal: {{ }}",
                )
                break
            if bad:
                check.error(
                    value_node,
                    path,
                    f"placeholder {{{bad[0]}}} in {text!r} is not a plain name",
                    "use {name}; double braces for a literal",
                )
                break
        else:
            agents[name] = agent
    return agents


def _agent_problem(merged: dict) -> tuple[str, str] | None:
    from agent_supervise.creds import lookup_group, lookup_user

    try:
        if merged.get("user") is not None:
            lookup_user(merged["user"])
        if merged.get("group") is not None:
            lookup_group(merged["group"])
    except BadInput as err:
        return (err.message, err.hint or "")
    limit = merged.get("memory_limit", AgentSpec.memory_limit)
    high = merged.get("memory_high")
    if high is not None and high >= limit:
        return ("memory_high must be below memory_limit", "lower memory_high, or drop it")
    if merged.get("on_memory_kill") == "grow":
        top = merged.get("max_memory_limit")
        if top is None:
            return ("on_memory_kill: grow needs max_memory_limit", "add max_memory_limit: 1G")
        if top <= limit:
            return (
                "max_memory_limit must be above memory_limit",
                "raise max_memory_limit or lower memory_limit",
            )
    if merged.get("pool") is not None:
        words = (*merged["cmd"], *merged["env"].values(), merged["cwd"])
        if any(placeholder_names(w) for w in words if "{" in w):
            return (
                "a pooled agent's cmd cannot have {placeholders}: its workers are long-lived",
                "tasks reach the workers as JSON lines on stdin instead",
            )
        problem = B.exec_problem(merged["cmd"], merged["env"], merged["cwd"])
        if problem:  # (other agents are checked per task, once their values are in)
            return (f"{problem[0]}: {problem[1]}", problem[2])
    return None


def _tasks(check: Checker, node, agents: dict, declared: set) -> list[TaskSpec]:
    if node is None or is_null(node):
        return []
    if not isinstance(node, yaml.SequenceNode):
        check.error(
            node, "tasks", f"must be a list, not {node_kind(node)}", "write '- {agent: name}' lines"
        )
        return []
    tasks, runs = [], 0
    for i, item in enumerate(node.value):
        path, known = f"tasks[{i}]", len(check.problems)
        given = check.fields(item, path, F.TASK)
        if "agent" not in given or len(check.problems) > known:
            continue  # (a value it has is wrong: no cross-checks that would follow from it)
        if given["agent"] not in agents and given["agent"] in declared:
            continue  # the agent itself has errors, reported already
        where = f"{check.name}:{item.start_mark.line + 1}:{item.start_mark.column + 1}"
        problem = task_problem(given, agents, declared)
        if problem:
            check.error(item, path, *problem)
            continue
        runs += given.get("repeat", 1)
        if runs > B.MAX_FILE_RUNS:  # the file's runs are listed before the loop starts
            check.error(
                item,
                f"{path}.repeat",
                f"the file's tasks add up to more than {B.MAX_FILE_RUNS:,} runs",
                "feed the rest as JSON lines with --tasks, which are read as they are used",
            )
            break
        tasks.append(
            TaskSpec(where=where, **{**given, "vars": MappingProxyType(given.get("vars", {}))})
        )
    return tasks
