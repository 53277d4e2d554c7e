"""The leak check counts only what this test session made (conftest.py)."""

from __future__ import annotations

import subprocess

import pytest

from agent_supervise.limits.base import cage_name, owner_tag

from conftest import _SESSION_START, _made_by_this_session

pytestmark = pytest.mark.unit


def _dead_pid_tag() -> str:
    """The owner tag of a process that has exited (started after this session)."""
    proc = subprocess.Popen(["true"])
    tag = owner_tag(proc.pid)
    proc.wait()
    return tag


def test_a_cage_of_this_process_counts():
    assert _made_by_this_session(f"/cg/{cage_name(owner_tag(), 1, 'x')}")


def test_a_cage_of_a_live_supervisor_elsewhere_does_not():
    # pid 1 runs, and it is no supervisor this session started
    assert not _made_by_this_session(f"/cg/{cage_name(owner_tag(1), 1, 'x')}")


def test_a_dead_supervisor_that_started_after_this_session_counts():
    assert _made_by_this_session(f"/cg/{cage_name(_dead_pid_tag(), 1, 'x')}")


def test_a_dead_supervisor_older_than_this_session_does_not():
    pid = int(_dead_pid_tag().split("-")[0])
    older = f"{pid}-{_SESSION_START - 1}"
    assert not _made_by_this_session(f"/cg/{cage_name(older, 1, 'x')}")
    assert not _made_by_this_session("/cg/not-a-cage")
