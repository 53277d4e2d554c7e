"""One home for public errors: all SuperviseErrors, exported, picklable with fields."""

from __future__ import annotations

import inspect
import pickle

import pytest

import agent_supervise
from agent_supervise import errors
from agent_supervise.outcome import Reason

pytestmark = pytest.mark.unit

PUBLIC = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, Exception) and obj.__module__ == errors.__name__
]

EXAMPLES = [
    errors.SuperviseError("boom", agent="a", pid=7, backend="cgroup1", path="/x", hint="h"),
    errors.BadInput("--memory 'lots': not a size", hint="try 50M"),
    errors.BackendUnavailable("cgroup2", "no memory controller", hint="sudo"),
    errors.CageError("mkdir(/sys/fs/cgroup/x) failed: Permission denied", path="/x"),
    errors.NotLinux("agent-supervise needs Linux"),
    errors.FleetFileError(["f.yaml:3:5: agents.a.cmd: missing", "f.yaml:9:1: tasks: empty"]),
    errors.QueueFull("the queue is full (4 tasks)"),
    errors.QueueClosed("the supervisor is shutting down"),
    errors.CircuitOpen("available memory 100 MiB is below breaker.min_available 1 GiB"),
    errors.CageRefused("node n1 can only cap with an rlimit", backend="rlimit"),
]


def test_every_public_error_is_a_supervise_error_exported_from_the_package():
    assert {type(e) for e in EXAMPLES} == set(PUBLIC)
    for cls in PUBLIC:
        assert issubclass(cls, errors.SuperviseError), cls
        assert getattr(agent_supervise, cls.__name__) is cls
        assert cls.__doc__, cls


@pytest.mark.parametrize("err", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err) and back.args == err.args
    assert back.__dict__ == err.__dict__ and back.fields() == err.fields()
    assert back.exit_code == err.exit_code


def test_old_import_paths_still_work():
    from agent_supervise.agents.loader import FleetFileError
    from agent_supervise.fleet.breaker import CircuitOpen
    from agent_supervise.fleet.taskqueue import QueueClosed, QueueFull

    assert (FleetFileError, CircuitOpen, QueueFull, QueueClosed) == (
        errors.FleetFileError,
        errors.CircuitOpen,
        errors.QueueFull,
        errors.QueueClosed,
    )


def test_reason_categories_are_what_the_policies_use():
    memory = {r for r in Reason if r.memory_kill}
    assert memory == {Reason.OOM_KILLED, Reason.MEMORY_EXCEEDED}
    assert {r for r in Reason if r.memory_ending} == memory | {Reason.EVICTED}
    assert {r for r in Reason if r.ordinary_failure} == {
        Reason.FAILED,
        Reason.SIGNALED,
        Reason.TIMEOUT,
        Reason.EVICTED,
        Reason.LOST,  # after its one free requeue (fleet/retry.py)
    }
    # a lost attempt's end was never seen: no status to report, as for cancelled
    from agent_supervise.outcome import exit_code_for

    assert exit_code_for(Reason.LOST) is None and exit_code_for(Reason.CANCELLED) is None
    final = {r for r in Reason if r.final}
    assert Reason.OK in final and Reason.NOT_FOUND in final and Reason.CANCELLED in final
    assert not final & (memory | {Reason.FAILED, Reason.EVICTED})
    # the enum is its text at the edges
    assert f"{Reason.OOM_KILLED}" == "oom_killed" == Reason.OOM_KILLED
