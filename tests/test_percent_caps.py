"""Caps as a share of the machine's memory (``--memory 10%``), as systemd's
``MemoryMax=10%``: a share of MemTotal, resolved once when the command line or the
fleet file is read, on every backend here; bad percentages are exit 2 with nothing
started."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from agent_supervise.agents.loader import FleetFileError, load_fleet
from agent_supervise.agents.schema import fleet_schema
from agent_supervise.errors import BadInput
from agent_supervise.memsource import read_meminfo
from agent_supervise.units import format_size, parse_cap, parse_size, size_note

from conftest import run_cli, supervise

TOTAL = read_meminfo()["MemTotal"]
BAD = ["0%", "0.0%", "150%", "100.5%", "-5%", "10.5.%", "%", "ten%", "10 %%", "1e1%"]


@pytest.mark.unit
@pytest.mark.parametrize("text, share", [("10%", 10), ("12.5%", 12.5), ("100%", 100), (" 1% ", 1)])
def test_a_percentage_is_a_share_of_memtotal(text, share):
    value = parse_cap(text)
    assert isinstance(value, int) and value == int(share * TOTAL // 100)
    note = size_note(text, value, what="--memory")
    assert note == f"--memory {text.strip()} of {format_size(TOTAL)} = {format_size(value)}"
    assert size_note("50M", 50 << 20, what="--memory") is None


@pytest.mark.unit
@pytest.mark.parametrize("text", BAD)
def test_bad_percentages_name_the_option_and_the_fix(text):
    with pytest.raises(BadInput) as info:
        parse_cap(text, what="--memory")
    assert "--memory" in info.value.message and repr(text.strip()) in info.value.message
    assert "%" in (info.value.hint or "") and info.value.exit_code == 2


@pytest.mark.unit
def test_a_share_too_small_for_a_cap_is_refused_and_sizes_take_no_percent():
    with pytest.raises(BadInput, match="below the smallest cap"):
        parse_cap("0.000001%")
    with pytest.raises(BadInput, match="not a size"):  # min_free_memory and such
        parse_size("10%", what="supervisor.min_free_memory")


def test_run_resolves_the_percentage_and_keeps_the_text(backend):
    out, _ = supervise(backend, "true", memory="5%")
    assert out["reason"] == "ok" and out["limit_bytes"] == 5 * TOTAL // 100
    assert out["notes"][0] == (
        f"--memory 5% of {format_size(TOTAL)} = {format_size(5 * TOTAL // 100)}"
    )


@pytest.mark.parametrize("text", ["0%", "150%", "-5%", "10.5.%", "%"])
def test_run_refuses_a_bad_percentage_and_starts_nothing(text, tmp_path):
    marker = tmp_path / "ran"
    proc = run_cli("run", "--memory", text, "--", "touch", str(marker))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "--memory" in err and "%" in err, err
    assert not marker.exists()


CAPS = """\
supervisor: {{memory_budget: {budget}, log_dir: {runs}}}
defaults: {{memory_high: 0.5%}}
agents:
  a: {{cmd: [sh, -c, 'echo hi'], memory_limit: 1%, max_memory_limit: 2%}}
tasks:
  - {{agent: a, memory_limit: {task}}}
"""


@pytest.mark.unit
def test_every_cap_key_of_a_fleet_file_takes_a_percentage(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(CAPS.format(budget="20%", runs=tmp_path / "runs", task="1.5%"))
    spec = load_fleet(str(path))
    agent = spec.agents["a"]
    assert spec.supervisor.memory_budget == 20 * TOTAL // 100
    assert agent.memory_limit == TOTAL // 100 and agent.max_memory_limit == 2 * TOTAL // 100
    assert agent.memory_high == int(0.5 * TOTAL // 100)
    assert spec.tasks[0].memory_limit == int(1.5 * TOTAL // 100)
    jsonschema.Draft202012Validator(fleet_schema()).validate(yaml.safe_load(path.read_text()))


@pytest.mark.unit
@pytest.mark.parametrize("key", ["budget", "task"])
@pytest.mark.parametrize("text", ["0%", "150%", "-5%", "10.5.%", "%"])
def test_a_bad_percentage_in_a_fleet_file_names_the_key(tmp_path, key, text):
    values = {"budget": "20%", "task": "1%", key: repr(text)}
    path = tmp_path / "f.yaml"
    path.write_text(CAPS.format(runs=tmp_path / "runs", **values))
    with pytest.raises(FleetFileError) as info:
        load_fleet(str(path))
    where = "supervisor.memory_budget" if key == "budget" else "tasks[0].memory_limit"
    assert where in str(info.value) and repr(text) in str(info.value)
    errors = list(
        jsonschema.Draft202012Validator(fleet_schema()).iter_errors(
            yaml.safe_load(path.read_text())
        )
    )
    assert errors  # the schema refuses it too


def test_a_fleet_runs_its_agents_under_the_resolved_caps(backend, tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(CAPS.format(budget="20%", runs=tmp_path / "runs", task="1.5%"))
    proc = run_cli("fleet", "--json", "--no-dashboard", "--backend", backend, str(path))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    (task,) = json.loads(proc.stdout)["tasks"]
    assert task["reason"] == "ok" and task["limit_bytes"] == int(1.5 * TOTAL // 100)
    assert task["backend"].startswith(backend)
    bad = tmp_path / "bad.yaml"
    bad.write_text(CAPS.format(budget="150%", runs=tmp_path / "bad-runs", task="1%"))
    proc = run_cli("fleet", "--backend", backend, str(bad))
    assert proc.returncode == 2 and b"supervisor.memory_budget: '150%'" in proc.stderr
    assert not (tmp_path / "bad-runs").exists()
