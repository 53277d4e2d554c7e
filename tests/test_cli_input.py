"""Bad input on the command line: one line naming the problem, exit 2, nothing started."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import cage_dirs, cages_since, require_backend, required_backends, run_cli


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    text = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, text)
    assert len(text.strip().splitlines()) == 1, text
    assert text.startswith("agent-supervise")
    for needle in needles:
        assert needle in text, text
    assert proc.stdout == b""
    return text


def test_started_nothing(tmp_path):
    """The fixtures check no process or cage was left; here nothing even ran."""
    marker = tmp_path / "ran"
    proc = run_cli("run", "--memory", "50 MB", "--", "touch", str(marker))
    one_line_error(proc, "--memory", "'50 MB' is not a size", "try 50M")
    assert not marker.exists()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--backend", "cgroup3"], ["'cgroup3' is not one of", "auto"]),
        (["--rlimit", "rss"], ["'rss' is not one of"]),
        (["--memory", "-5M"], ["--memory", "try 50M"]),
        (["--memory", "0"], ["must be above zero"]),
        (["--memory", str(10**30)], ["too large"]),
        (["--timeout", "ten"], ["--timeout", "'ten' is not a duration", "try 100ms"]),
        (["--grace", "2 parsecs"], ["--grace"]),
        (["--poll", "0"], ["--poll", "above zero"]),
        (["--cgroup-root", "/nonexistent/x"], ["--cgroup-root /nonexistent/x: no such directory"]),
        (["--cgroup-root", "/tmp"], ["not inside a cgroup2 or cgroup v1 memory hierarchy"]),
    ],
)
def test_bad_option_values(tmp_path, args, needles):
    marker = tmp_path / "ran"
    proc = run_cli("run", *args, "--", "touch", str(marker))
    one_line_error(proc, *needles)
    assert not marker.exists()


def test_our_option_after_the_command_needs_dashdash(tmp_path):
    proc = run_cli("run", "python3", "agent.py", "--memory", "1G")
    one_line_error(proc, "option --memory comes after the command 'python3'", "'--'")
    # With '--' the same words belong to the command.
    ok = run_cli("run", "--", "echo", "--memory", "1G")
    assert ok.returncode == 0 and ok.stdout == b"--memory 1G\n"
    # Without '--' and without our options, the command's own flags pass through.
    ok = run_cli("run", "echo", "-n", "x")
    assert ok.returncode == 0 and ok.stdout == b"x"


def test_missing_command():
    proc = run_cli("run", "--memory", "50M")
    one_line_error(proc, "Missing argument 'CMD...'")


def test_unavailable_backend_is_an_error_not_a_downgrade():
    from agent_supervise.limits import probe_all

    missing = [p for p in probe_all() if not p.available]
    if not missing:
        pytest.skip("every backend is available on this machine")
    probe = missing[0]
    proc = run_cli("run", "--backend", probe.name, "--", "true")
    one_line_error(proc, f"backend {probe.name} is not available", "doctor")


@pytest.mark.parametrize(
    "cmd, code, needle",
    [
        (["no-such-command-xyz"], 127, "'no-such-command-xyz': command not found"),
        (["/etc/passwd"], 126, "'/etc/passwd': not executable (Permission denied)"),
        (["/tmp"], 126, "'/tmp': not executable (Permission denied)"),
    ],
)
def test_exec_failures_use_shell_codes(cmd, code, needle):
    proc = run_cli("run", "--", *cmd)
    assert proc.returncode == code
    assert proc.stderr.decode().strip() == f"agent-supervise: {needle}"


def test_exec_failure_json():
    proc = run_cli("run", "--json", "--", "no-such-command-xyz")
    out = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert (out["reason"], out["exit_code"], out["pid"]) == ("not_found", 127, None)


def test_cgroup_root_not_writable(other_user):
    """A non-root user is refused a root-owned cgroup directory, before anything runs.
    (It runs its own copy of the package: it may not read the checkout's.)"""
    require_backend("cgroup1")
    from agent_supervise.limits import select_backend

    parent = select_backend("cgroup1").probe()
    before = cage_dirs()
    proc = other_user.run_cli("run", "--cgroup-root", parent, "--", "true", timeout=30)
    one_line_error(proc, f"--cgroup-root {parent}: not writable by uid {other_user.uid}")
    assert not cages_since(before)


def test_cgroup_root_of_the_other_kind_is_refused():
    require_backend("cgroup1")
    from agent_supervise.limits import select_backend

    parent = select_backend("cgroup1").probe()
    proc = run_cli("run", "--backend", "rlimit", "--cgroup-root", parent, "--", "true")
    one_line_error(proc, "is a cgroup1 directory but --backend rlimit was asked for")


def test_explicit_cgroup_root_is_used(tmp_path):
    require_backend("cgroup1")
    from agent_supervise.limits import select_backend

    parent = select_backend("cgroup1").probe()
    sub = os.path.join(parent, f"explicit-root-test-{os.getpid()}")  # other sessions
    os.mkdir(sub)
    try:
        proc = run_cli("run", "--cgroup-root", sub, "--", "cat", "/proc/self/cgroup")
        assert proc.returncode == 0, proc.stderr
        assert f"/explicit-root-test-{os.getpid()}/agent-supervise." in proc.stdout.decode()
    finally:
        os.rmdir(sub)


def test_doctor_json_matches_what_run_picks():
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    names = [b["name"] for b in report["backends"]]
    assert names == ["cgroup2", "cgroup1", "rlimit"]
    for b in report["backends"]:
        assert b["detail"], "every backend says where cages go or why it is unavailable"
    run = run_cli("run", "--json", "--", "true")
    picked = json.loads(run.stderr.decode().splitlines()[-1])["backend"]
    assert picked.split("-")[0] == report["auto"]
    text = run_cli("doctor").stdout.decode()
    assert f"auto picks: {report['auto']}" in text and "PSI:" in text


def test_doctor_reports_every_required_backend_available():
    """What must work here (CI: cgroup1, rlimit; the VM guest: cgroup2, rlimit) is
    what ``doctor --json`` says works, and ``auto`` is the first of them in order."""
    required = required_backends()
    if not required:
        pytest.skip(
            "no backend is required here (CI=true or AGENT_SUPERVISE_REQUIRE_BACKENDS names them)"
        )
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    found = {b["name"]: b for b in report["backends"]}
    missing = {n: found[n]["detail"] for n in sorted(required) if not found[n]["available"]}
    assert not missing, f"doctor says required backends are unavailable: {missing}"
    assert report["auto"] == next(b["name"] for b in report["backends"] if b["available"])


def test_help_and_version():
    assert run_cli("--version").stdout.decode().startswith("agent-supervise, version ")
    helptext = run_cli("run", "--help").stdout.decode()
    for option in (
        "--memory",
        "--backend",
        "--rlimit",
        "--timeout",
        "--grace",
        "--poll",
        "--json",
        "--cgroup-root",
    ):
        assert option in helptext
