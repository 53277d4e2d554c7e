"""The README documents every fleet key and every exit reason the code has."""

from __future__ import annotations

from pathlib import Path

from agent_supervise.agents import fields as F
from agent_supervise.outcome import Reason

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_fleet_key_is_documented():
    for section, table in (("supervisor", F.SUPERVISOR), ("agents.NAME", F.AGENT),
                           ("tasks[]", F.TASK)):
        for field in table:
            assert f"{section}.{field.name}`" in README, field.name


def test_every_reason_is_documented():
    for reason in Reason:
        assert f"| `{reason.value}` |" in README, reason.value


def test_the_two_commands_come_first():
    head = README.splitlines()[:8]
    assert any(line.startswith("make run") for line in head)
    assert any(line.startswith("make test") for line in head)
