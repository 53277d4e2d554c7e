"""The Python API (``run_agent``) in-process: the same path as the CLI."""

from __future__ import annotations

import subprocess

from agent_supervise import Reason, RunOptions, run_agent
from agent_supervise.errors import BadInput

from conftest import ALLOC, PY


def test_run_agent_caps_a_hog(backend):
    out = run_agent(
        [PY, ALLOC, "--interval", "0.004"],
        RunOptions.parse(memory="50M", backend=backend),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert out.reason in (Reason.OOM_KILLED, Reason.MEMORY_EXCEEDED)
    assert out.exit_code == 137 and out.pid is not None


def test_run_agent_output_and_env(backend, tmp_path):
    target = tmp_path / "out"
    with open(target, "wb") as f:
        out = run_agent(
            ["sh", "-c", "echo $GREETING; pwd"],
            RunOptions.parse(
                backend=backend, env={"GREETING": "hi", "PATH": "/usr/bin:/bin"}, cwd=str(tmp_path)
            ),
            stdout=f,
        )
    assert out.ok and out.reason is Reason.OK
    assert target.read_text() == f"hi\n{tmp_path}\n"


def test_bad_options_raise_before_anything_runs():
    try:
        RunOptions.parse(memory="lots")
    except BadInput as err:
        assert err.exit_code == 2 and "try 50M" in str(err)
    else:
        raise AssertionError("BadInput expected")


def test_missing_cwd_is_a_setup_failure(backend, tmp_path):
    out = run_agent(["true"], RunOptions.parse(backend=backend, cwd=str(tmp_path / "nope")))
    assert out.reason is Reason.SETUP_FAILED and out.exit_code == 125
    assert "cannot enter directory" in out.detail
