"""Fleet files: the loader and the JSON Schema agree, and every bad file is refused.

Each file in tests/data/bad/ says in its first lines what the loader must report
(``# expect:``) and whether JSON Schema can see the problem too (``# schema: fails``)
or not (``# schema: beyond ...``: undefined agents, placeholders, duplicate keys
that YAML loaders drop silently).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from agent_supervise.agents import fields as F
from agent_supervise.agents import yamlbound
from agent_supervise.agents.loader import FleetFileError, load_fleet, parse_fleet
from agent_supervise.agents.schema import fleet_schema
from agent_supervise.agents.spec import (
    AgentSpec,
    BreakerSettings,
    DegradationSettings,
    PoolSettings,
    SupervisorSettings,
    TaskSpec,
    make_task,
)

from conftest import cage_dirs, run_cli

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
BAD = sorted((Path(__file__).parent / "data" / "bad").glob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(fleet_schema())


def header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.name} has no '# {key}:' line")


def test_there_are_configs_and_a_bad_corpus():
    assert {p.name for p in CONFIGS} >= {"example.yaml", "ci-smoke.yaml"}
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_pass_loader_and_schema(path):
    spec = load_fleet(str(path))
    assert spec.agents and spec.tasks
    VALIDATOR.validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_file_fails_the_loader_with_position_and_hint(path):
    with pytest.raises(FleetFileError) as info:
        load_fleet(str(path))
    text = str(info.value)
    assert header(path, "expect") in text
    for line in info.value.problems:
        assert line.startswith(f"{path}:"), line  # every problem names the file...
    if "empty" not in path.name:
        assert any(line.split(":")[1].isdigit() for line in info.value.problems)  # ...and line


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_file_and_the_schema(path):
    verdict = header(path, "schema")
    try:  # within the loader's bounds: a bomb would hang the validator too
        root = yamlbound.compose(path.read_text())
        document = root and yaml.constructor.SafeConstructor().construct_document(root)
    except (yaml.YAMLError, yamlbound.TooLarge, ValueError):
        assert verdict == "unparsable"
        return
    errors = list(VALIDATOR.iter_errors(document))
    if verdict == "fails":
        assert errors, f"the schema accepts {path.name}"
    else:
        assert verdict.startswith("beyond") and not errors


def test_cli_validate_reports_every_problem_and_exits_2(tmp_path):
    bad = tmp_path / "f.yaml"
    bad.write_text(
        "supervisor:\n  max_concurent: 2\nagents:\n  a: {cmd: x y, memory_limit: 5 MB}\n"
    )
    proc = run_cli("validate", str(bad))
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2
    assert (
        lines[0] == f"{bad}:2:3: supervisor.max_concurent: unknown key "
        "(did you mean max_concurrent?)"
    )
    assert lines[1].startswith(f"{bad}:4:12: agents.a.cmd: cmd must be a list")
    assert lines[2].startswith(f"{bad}:4:31: agents.a.memory_limit: '5 MB' is not a size")
    assert lines[-1] == "agent-supervise: 3 problem(s); nothing was started"


def test_cli_fleet_with_a_bad_file_starts_nothing(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "f.yaml"
    bad.write_text(
        f"agents:\n  a: {{cmd: [touch, '{marker}']}}\n  b: {{cmd: x}}\ntasks:\n  - {{agent: a}}\n"
    )
    before = cage_dirs()
    proc = run_cli("fleet", str(bad))
    assert proc.returncode == 2 and not marker.exists() and cage_dirs() == before
    assert b"agents.b.cmd" in proc.stderr


@pytest.mark.parametrize(
    "problem, expect",
    [
        ("file", "cannot create the run folder"),
        ("unwritable", "cannot create the run folder"),
    ],
)
def test_unusable_log_dir_is_bad_input(tmp_path, problem, expect):
    marker = tmp_path / "ran"
    target = tmp_path / "logs"
    if problem == "file":
        target.write_text("not a folder")
    else:
        target = Path("/proc/agent-supervise-logs")  # nobody can create folders there
    fleet = tmp_path / "f.yaml"
    fleet.write_text(
        f"supervisor: {{log_dir: '{target}'}}\n"
        f"agents:\n  a: {{cmd: [touch, '{marker}']}}\ntasks:\n  - {{agent: a}}\n"
    )
    proc = run_cli("fleet", str(fleet))
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr.decode() and "supervisor.log_dir" in proc.stderr.decode()
    assert not marker.exists()


def test_schema_command_prints_the_schema():
    proc = run_cli("schema")
    assert proc.returncode == 0 and json.loads(proc.stdout) == fleet_schema()


def test_defaults_merge_placeholders_and_paths(tmp_path):
    spec = parse_fleet(
        "defaults: {memory_limit: 80M, timeout: 1m, env: {A: '1', B: '2'}}\n"
        "agents:\n  r:\n    cmd: [echo, '{topic}', '{{literal}}']\n    env: {B: '3'}\n"
        "    cwd: work/{topic}\n"
        "tasks:\n  - {agent: r, vars: {topic: cg}, timeout: 5s}\n",
        "f.yaml",
        str(tmp_path),
    )
    agent = spec.agents["r"]
    assert (agent.memory_limit, agent.timeout, dict(agent.env)) == (
        80 << 20,
        60.0,
        {"A": "1", "B": "3"},
    )
    task = make_task(agent, spec.tasks[0], 1, 2.0)
    assert task.cmd == ("echo", "cg", "{literal}") and task.timeout == 5.0
    assert task.cwd == os.path.join(str(tmp_path), "work/cg") and task.id == "r-1"
    assert spec.supervisor.log_dir == os.path.join(str(tmp_path), "runs")
    assert spec.tasks[0].where == "f.yaml:8:5"


def test_yaml_anchors_and_merge_keys_work():
    spec = parse_fleet(
        "agents:\n  a: &a {cmd: [echo], memory_limit: 70M}\n"
        "  b: {<<: *a, cmd: [echo, b]}\ntasks:\n  - {agent: b}\n"
    )
    assert spec.agents["b"].memory_limit == 70 << 20 and spec.agents["b"].cmd == ("echo", "b")


@pytest.mark.parametrize(
    "table, cls",
    [
        (F.SUPERVISOR, SupervisorSettings),
        (F.AGENT, AgentSpec),
        (F.TASK, TaskSpec),
        (F.BREAKER, BreakerSettings),
        (F.DEGRADATION, DegradationSettings),
        (F.POOL, PoolSettings),
    ],
    ids=lambda x: getattr(x, "__name__", "table"),
)
def test_dataclass_defaults_are_the_documented_ones(table, cls):
    """The field table (README, schema) and the dataclasses (API) must not drift."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for field in table:
        if field.default is None or field.kind == "object":
            continue
        assert defaults[field.name] == field.parse(field.default, field.name), field.name
