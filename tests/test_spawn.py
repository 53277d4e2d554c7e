"""The spawner's two paths (vfork through the C extension, fork + preexec_fn) behave
the same: checked on both, with real children."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from agent_supervise.creds import resolve
from agent_supervise.limits import select_backend
from agent_supervise.outcome import Reason
from agent_supervise.run import spawn as spawn_module
from agent_supervise.run.spawn import Spawner, SpawnFailed

from conftest import PY, require_backend

MiB = 1 << 20


@pytest.fixture(params=["vfork", "python"])
def path(request, monkeypatch):
    if request.param == "vfork":
        if spawn_module._spawn is None:
            if os.environ.get("CI") == "true":
                pytest.fail("the C extension was not built under CI=true")
            pytest.skip("agent_supervise._spawn was not built (no C compiler)")
        monkeypatch.delenv("AGENT_SUPERVISE_SPAWN", raising=False)
    else:
        monkeypatch.setenv("AGENT_SUPERVISE_SPAWN", "python")
    return request.param


def run(cage, cmd, **kw):
    """Spawn, wait, release; return (status, stdout text)."""
    r, w = os.pipe()
    try:
        child = Spawner().spawn(cmd, cage, stdout=w, **kw)
    finally:
        os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    status = child.wait()
    cage.release()
    return status, out.decode()


@pytest.mark.parametrize("backend_name", ["cgroup1", "rlimit"])
def test_the_agent_is_caged_from_its_first_instruction(path, backend_name):
    require_backend(backend_name)
    cage = select_backend(backend_name).create("spawn-test", 64 * MiB)
    status, out = run(
        cage,
        [
            PY,
            "-c",
            "import resource, os; print(open('/proc/self/"
            "cgroup').read()); print(resource.getrlimit(resource."
            "RLIMIT_DATA)); print(os.getsid(0) in (os.getpid(), 1))",
        ],
    )
    assert os.waitstatus_to_exitcode(status) == 0, out
    if backend_name == "cgroup1":
        assert cage.name in out
    else:
        # RLIMIT_DATA is a backstop above the cap (limits/rlimit.py); it is set in the child
        value = cage.refuse_limit
        assert value > 64 * MiB and f"({value}, {value})" in out
    # A session of its own, or its namespace init's (the init is a session leader).
    assert out.strip().endswith("True")


def test_exec_failures_map_to_shell_codes(path, tmp_path):
    cage = select_backend("rlimit").create("x", 64 * MiB)
    with pytest.raises(SpawnFailed) as info:
        Spawner().spawn(["no-such-command-xyz"], cage)
    assert info.value.reason is Reason.NOT_FOUND
    script = tmp_path / "not-exec"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(SpawnFailed) as info:
        Spawner().spawn([str(script)], cage)
    assert info.value.reason is Reason.NOT_EXECUTABLE and info.value.why == "Permission denied"
    with pytest.raises(SpawnFailed) as info:
        Spawner().spawn(["true"], cage, cwd=str(tmp_path / "nope"))
    assert info.value.reason is Reason.SETUP_FAILED
    assert info.value.message.startswith(f"cannot enter directory {tmp_path / 'nope'}")
    cage.release()


def test_a_failed_cage_entry_names_the_call(path):
    require_backend("cgroup1")
    cage = select_backend("cgroup1").create("x", 64 * MiB)
    readonly = os.open(os.path.join(cage.path, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(readonly, cage._procs_fd)  # the same fd, now read-only: the write fails
    os.close(readonly)
    with pytest.raises(SpawnFailed) as info:
        Spawner().spawn(["true"], cage)
    assert info.value.reason is Reason.SETUP_FAILED
    assert "entering the cage failed: write(0 > " in info.value.message
    assert "cgroup.procs" in info.value.message
    cage.release()


def test_stdio_env_cwd_fds_and_signals(path, tmp_path):
    cage = select_backend("rlimit").create("x", 64 * MiB)
    extra = os.open("/dev/null", os.O_RDONLY)  # not close-on-exec: must not leak anyway
    os.set_inheritable(extra, True)
    old = signal.signal(signal.SIGUSR1, lambda *a: None)  # a handler here...
    try:
        # sh, not python: python itself ignores SIGPIPE at start-up.
        script = (
            f"echo $GREETING $(pwd) $(test -e /proc/self/fd/{extra} && echo leaked); "
            "grep -E '^Sig(Ign|Blk|Cgt)' /proc/self/status"
        )
        status, out = run(
            cage,
            ["sh", "-c", script],
            env={"GREETING": "hi", "PATH": "/bin"},
            cwd=str(tmp_path),
            stdin=subprocess.DEVNULL,
        )
    finally:
        signal.signal(signal.SIGUSR1, old)
        os.close(extra)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = out.splitlines()
    assert lines[0].split() == ["hi", str(tmp_path)]  # no leaked fd
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in lines[1:]}
    assert masks["SigBlk"] == 0  # the vfork path blocks signals: unblocked again
    assert not masks["SigIgn"] & (1 << (signal.SIGPIPE - 1))  # SIGPIPE back to default


def test_parent_death_signal_is_set_even_after_a_user_change(path, other_user):
    cage = select_backend("rlimit").create("x", 64 * MiB)
    creds = resolve(other_user.name)
    _status, out = run(
        cage,
        [
            "sh",
            "-c",
            "id -u; grep PPid /proc/self/status; cat /proc/self/status | grep -c NoNewPrivs",
        ],
        creds=creds,
    )
    assert out.split()[0] == str(creds.uid)
    # The death signal: a child of a process that dies gets SIGKILL.
    helper = subprocess.Popen(
        [
            PY,
            "-c",
            (
                "import os, sys, time; from agent_supervise.run.spawn import Spawner; "
                "from agent_supervise.limits import select_backend; "
                "c = select_backend('rlimit').create('x', 64 << 20); "
                "p = Spawner().spawn(['sleep', '60'], c); print(p.pid, flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        env=dict(os.environ),
    )
    child = int(helper.stdout.readline())
    helper.kill()
    helper.wait(timeout=10)
    deadline = time.monotonic() + 5
    while True:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.02)
    try:
        os.waitpid(child, 0)  # reparented to pytest (a subreaper)
    except ChildProcessError:
        pass
    # The helper's rlimit cage has a pids companion leaf (limits/pids.py); its owner
    # was SIGKILLed, so it is stale: what the next start of agent-supervise removes.
    from agent_supervise.limits.cgroupfs import CgroupFS
    from agent_supervise.limits.pids import PidsHierarchy

    PidsHierarchy(CgroupFS()).clean_stale()


def test_a_remembered_command_is_checked_again(tmp_path, monkeypatch):
    """The spawner remembers where a command was found; a command removed since is
    not found, and one that appears on PATH after a miss is found."""
    if spawn_module._spawn is None:
        pytest.skip("the lookup cache belongs to the vfork path (no C extension here)")
    monkeypatch.delenv("AGENT_SUPERVISE_SPAWN", raising=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "as-test-tool"
    env = {"PATH": str(bindir)}
    backend = select_backend("rlimit")
    with Spawner() as spawner:

        def start():
            cage = backend.create("x", 64 * MiB)
            try:
                child = spawner.spawn(["as-test-tool"], cage, env=env, stdin=subprocess.DEVNULL)
                return os.waitstatus_to_exitcode(child.wait())
            finally:
                cage.release()

        with pytest.raises(SpawnFailed) as info:
            start()
        assert info.value.reason is Reason.NOT_FOUND
        tool.write_text("#!/bin/sh\nexit 7\n")
        tool.chmod(0o755)
        assert start() == 7  # found after the earlier miss
        assert start() == 7  # and again, from the remembered place
        tool.unlink()
        with pytest.raises(SpawnFailed) as info:
            start()
        assert info.value.reason is Reason.NOT_FOUND


def test_agents_get_the_supervisors_original_open_files_limit(path, monkeypatch):
    """The supervisor lifts its own RLIMIT_NOFILE; an agent starts with the one the
    supervisor had before."""
    import resource

    from agent_supervise import linux

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    monkeypatch.setattr(linux, "_original_nofile", (512, hard))
    cage = select_backend("rlimit").create("x", 64 * MiB)
    status, out = run(
        cage, [PY, "-c", "import resource; print(*resource.getrlimit(resource.RLIMIT_NOFILE))"]
    )
    assert os.waitstatus_to_exitcode(status) == 0
    assert out.split() == ["512", str(hard)]


@pytest.mark.parametrize("backend_name", ["cgroup1", "rlimit"])
def test_the_agent_starts_with_no_signal_blocked(path, backend_name):
    """A supervisor thread that blocks signals (Ray's worker blocks SIGINT) must not
    hand its mask to the agent through exec: a forwarded ^C would never arrive."""
    require_backend(backend_name)
    cage = select_backend(backend_name).create("mask", 64 * MiB)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGUSR1})
    try:
        status, out = run(cage, ["grep", "^SigBlk", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(out.split()[1], 16) == 0, out


def test_a_close_on_exec_fd_already_in_its_stdio_slot_reaches_the_agent(path, tmp_path):
    """stdin=0 when fd 0 itself is close-on-exec: the agent must still get it."""
    data = tmp_path / "in.txt"
    data.write_text("from fd 0\n")
    saved = os.dup(0)
    fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.dup2(fd, 0, inheritable=False)
        cage = select_backend("rlimit").create("x", 64 * MiB)
        status, out = run(cage, ["cat"], stdin=0)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0 and out == "from fd 0\n"


def test_an_embedded_nul_byte_is_refused(path):
    cage = select_backend("rlimit").create("x", 64 * MiB)
    try:
        with pytest.raises(ValueError):
            Spawner().spawn(["echo", "a\0b"], cage)
    finally:
        cage.release()
