"""The README documents every fleet key and every exit reason the code has."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_supervise.agents import fields as F
from agent_supervise.outcome import Reason

pytestmark = pytest.mark.unit  # fakes only: `make unit`


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _keys(prefix, table):
    for field in table:
        yield f"{prefix}.{field.name}"
        if field.kind == "object":
            yield from _keys(f"{prefix}.{field.name}", field.sub)


def test_every_fleet_key_is_documented():
    for section, table in (
        ("supervisor", F.SUPERVISOR),
        ("agents.NAME", F.AGENT),
        ("tasks[]", F.TASK),
    ):
        for key in _keys(section, table):
            assert f"{key}`" in README, key


def test_every_reason_is_documented():
    for reason in Reason:
        assert f"| `{reason.value}` |" in README, reason.value


def test_the_two_commands_come_first():
    head = README.splitlines()[:8]
    assert any(line.startswith("make run") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_every_event_kind_is_documented():
    import re

    source = ""
    for path in (Path(__file__).resolve().parent.parent / "supervisor").rglob("*.py"):
        source += path.read_text()
    kinds = set(re.findall(r'emit\("(\w+)"', source))
    kinds |= {"breaker", "mode"}  # emitted through the policies' on_change callbacks
    assert len(kinds) > 10
    for kind in kinds:
        assert f"`{kind}`" in README, kind
