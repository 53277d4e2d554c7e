"""summary.json's layout: the top levels indented, each task's entry on one line."""

from __future__ import annotations

import json

import pytest

from agent_supervise.jsonout import dumps

pytestmark = pytest.mark.unit  # fakes only: `make unit`


def test_round_trips_and_keeps_a_task_per_line():
    data = {
        "run_id": "r",
        "counts": {"ok": 2, "failed": 1},
        "rejected": [],
        "none": None,
        "tasks": [
            {"task": "a-1", "cmd": ["sh", "-c", "x"], "detail": 'é "q"'},
            {"task": "a-2", "cmd": [], "nested": {"k": [1, {"d": 2}]}},
        ],
    }
    text = dumps(data)
    assert json.loads(text) == data
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    assert '  "counts": {' in lines and '    "ok": 2,' in lines
    task_lines = [line for line in lines if line.lstrip().startswith('{"task"')]
    assert [json.loads(line.strip().rstrip(",")) for line in task_lines] == data["tasks"]
    assert '  "rejected": [],' in lines  # empty containers stay on their key's line


def test_scalars_and_empty_values():
    for value in (1, "x", None, [], {}, [1, 2], {"a": 1}):
        assert json.loads(dumps(value)) == value
