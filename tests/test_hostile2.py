"""Hostile agents, round 2: benign agents never taken for escapees, cage tampering,
fork bombs and the process cap; on every backend here (cgroup2 in the VM stage).

* A busy agent (many short-lived children) must never end ``escaped``: 50 runs a
  backend, and a direct stress of the escape check while children exit, which
  also counts the exiting tasks the kernel shows outside (the race is exercised).
* Real escapes are still caught: out of the pids companion, a single thread out
  (v1), into a decoy cgroup bearing the cage's name, out and back again.
* An agent that changes its cage's limits is stopped as ``escaped`` within a tick,
  with the file and both values in the detail.
* A fork bomb under ``--pids-limit 64`` and a 50M cap ends ``pids_exceeded`` within
  seconds with nothing left; ``pids_limit`` works from fleet files; 0 turns it off.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
import types
from pathlib import Path

import pytest

from conftest import CHILDREN, IN_VM, PY, json_outcome, reap_orphans, run_cli, supervise

KERNEL = ("cgroup1", "cgroup2")
TAMPER = str(CHILDREN / "tamper.py")
ESCAPE2 = str(CHILDREN / "escape2.py")
#: In the guest (IN_VM) the same checks run with fewer children a run (the 50 runs
#: stay 50; the Python kind, 50 interpreters, is left to the host: TWINS in
#: tests/vm/run_guest.py).
BUSY = {
    "sh-subshells": [
        "sh",
        "-c",
        f"for i in $(seq {10 if IN_VM else 600}); do (true &) ; /bin/true; done",
    ],
    "python-subprocesses": [
        PY,
        "-c",
        "import subprocess\nfor i in range(150): subprocess.run(['true'])",
    ],
}


def fleet_file(tmp_path: Path, backend: str, agents: str, tasks: str, concurrent: int = 4) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n"
        f"  backend: {backend}\n  grace: 1s\n  max_concurrent: {concurrent}\n"
        f"agents:\n{agents}tasks:\n{tasks}"
    )
    return path


def run_fleet(path: Path, timeout: float = 300) -> list[dict]:
    proc = run_cli("fleet", "--json", "--no-dashboard", str(path), timeout=timeout)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert proc.stdout, proc.stderr[-2000:]
    return json.loads(proc.stdout)["tasks"]


# -- class 1: benign agents are never escapees --------------------------------------


@pytest.mark.figure("1. benign agents called escaped (exiting children)")
@pytest.mark.parametrize("kind", BUSY)
def test_fifty_busy_agents_all_end_ok(backend, kind, tmp_path):
    """50 runs of an agent that keeps many short-lived children: zero escapes."""
    path = fleet_file(
        tmp_path,
        backend,
        f"  busy:\n    cmd: {json.dumps(BUSY[kind])}\n",
        "  - {agent: busy, repeat: 50}\n",
    )
    tasks = run_fleet(path, timeout=600)
    assert len(tasks) == 50
    bad = [(t["reason"], t["detail"]) for t in tasks if t["reason"] != "ok"]
    assert not bad, bad


@pytest.mark.figure("1. benign agents called escaped (exiting children)")
def test_exiting_children_seen_outside_are_not_escapes(backend, tmp_path):
    """The escape check run back to back while an agent's children exit: the kernel
    shows exiting tasks outside the cage (v1: ``/``), the check never confirms one."""
    from agent_supervise.limits import select_backend
    from agent_supervise.run.escape import EscapeState, EscapeWatch
    from agent_supervise.run.spawn import Spawner

    cage = select_backend(backend).create("busy", 64 << 20)
    loops = 30 if IN_VM else 3000
    cmd = ["sh", "-c", f"for i in $(seq {loops}); do (true &) ; /bin/true; done"]
    with Spawner() as spawner:
        child = spawner.spawn(cmd, cage, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cage.attach(child.pid)
    run = types.SimpleNamespace(pid=child.pid, orphans=set(), cage=cage)
    watch, state = EscapeWatch(), EscapeState()
    looks = raw = confirmed = 0
    try:
        while os.waitpid(child.pid, os.WNOHANG) == (0, 0):
            confirmed += len(watch.first_look(run, state))
            if state.suspects:
                time.sleep(0.05)
                confirmed += len(watch.second_look(run, state))
            raw += _naive_outside(run, watch)
            looks += 1
    finally:
        cage.kill()
        cage.release()
        reap_orphans()
    assert looks > (5 if IN_VM else 200)
    assert confirmed == 0
    if backend == "cgroup1":
        assert raw > 0, "no exiting task was ever seen outside: the race was not exercised"


def _naive_outside(run, watch) -> int:
    """What the first escape check counted: tree processes that are not in the cage's
    cgroup.procs and whose /proc/PID/cgroup does not name the cage (one read)."""
    places = run.cage.placements()
    if not places:
        return 0
    inside = set(run.cage.members())
    count = 0
    for pid in watch.tree(run):
        if pid in inside:
            continue
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if run.cage.name not in text:
            count += 1
    return count


# -- class 1: real escapes are still caught -----------------------------------------

ESCAPES = {"pids": ("cgroup1", "rlimit"), "thread": ("cgroup1",), "decoy": KERNEL, "swing": KERNEL}


@pytest.mark.figure("1. benign agents called escaped (exiting children)")
@pytest.mark.parametrize("mode", ESCAPES)
def test_real_escapes_are_caught(backend, mode, tmp_path):
    if backend not in ESCAPES[mode]:
        pytest.skip(f"{mode}: nothing to leave on {backend}")
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out, proc = supervise(backend, PY, ESCAPE2, mode, extra=("--timeout", "30s"))
    try:
        assert out["reason"] == "escaped", (out, proc.stderr[-1500:])
        assert "left the cage" in out["detail"]
        assert out["duration_s"] < 10
        if backend in KERNEL:
            assert out["peak_bytes"] <= out["limit_bytes"] + (8 << 20)
    finally:
        if mode == "decoy":
            _remove_decoys()


def _remove_decoys() -> None:
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(top) == "decoy":
            for d in dirs:
                os.rmdir(os.path.join(top, d))
            os.rmdir(top)
            break
        if top.count("/") > 8:
            dirs[:] = []


# -- class 2: cage tampering ----------------------------------------------------------

#: mode -> backends, and what the detail says (one of)
TAMPERING = {
    "limit": (KERNEL, ("changed from 52428800 to 1073741824 by the agent",)),
    "memsw": (
        KERNEL,
        (
            "memory.memsw.limit_in_bytes changed from 52428800 to 1073741824",
            "memory.swap.max changed from 0 to max",
        ),
    ),
    "oom": (
        KERNEL,
        (
            "memory.oom_control oom_kill_disable changed from 0 to 1",
            "memory.oom.group changed from 1 to 0",
        ),
    ),
    "pids": ((*KERNEL, "rlimit"), ("pids.max changed from 4096 to max by the agent",)),
    "raise-restore": (
        KERNEL,
        (
            "changed from 52428800 to 1073741824",
            "above the 50.0 MiB cap: the agent raised its limit",
        ),
    ),
}


@pytest.mark.figure("2. cage tampering (limits changed, sub-cgroups)")
@pytest.mark.parametrize("mode", TAMPERING)
def test_changed_cage_limits_stop_the_agent(backend, mode):
    backends, details = TAMPERING[mode]
    if backend not in backends:
        pytest.skip(f"{mode}: {backend} has no such file")
    if os.geteuid() != 0:
        pytest.skip("needs root")
    extra = ("--timeout", "30s") + (("--poll", "1s") if mode == "raise-restore" else ())
    out, proc = supervise(backend, PY, TAMPER, mode, extra=extra)
    err = proc.stderr.decode()
    assert out["reason"] == "escaped", (out, err[-1500:])
    assert any(d in out["detail"] for d in details), out["detail"]
    if mode == "limit":  # noticed within a tick: it grows 200 MiB/s, ticks are 100 ms
        assert out["peak_bytes"] < out["limit_bytes"] + (40 << 20), out


@pytest.mark.figure("2. cage tampering (limits changed, sub-cgroups)")
def test_a_sub_cgroup_with_a_higher_limit_stays_under_the_cap(backend):
    """Sub-cgroups are charged to their parent: the cage's cap still holds."""
    if backend not in KERNEL:
        pytest.skip("no cgroup to make a sub-cgroup in")
    out, proc = supervise(backend, PY, TAMPER, "subcgroup", extra=("--timeout", "30s"))
    assert out["reason"] in ("oom_killed", "memory_exceeded"), (out, proc.stderr[-800:])
    assert out["peak_bytes"] <= out["limit_bytes"]


# -- class 7: fork bombs and the process cap ------------------------------------------

BOMBS = {
    "python-fork-loop": [
        PY,
        "-c",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    ],
    # Its "Cannot fork" messages go to /dev/null: dash writes "sh: 1: " and the rest
    # in two calls, so a shell killed between them leaves half a line before the
    # --json outcome on the shared stderr.
    "shell-function-bomb": ["sh", "-c", "exec 2>/dev/null; f(){ f|f & }; f; sleep 60"],
}


@pytest.mark.figure("7. fork bombs (--pids-limit)")
@pytest.mark.parametrize("bomb", BOMBS)
def test_fork_bomb_ends_pids_exceeded(backend, bomb):
    started = time.monotonic()
    out, _ = supervise(backend, *BOMBS[bomb], extra=("--pids-limit", "64", "--timeout", "60s"))
    allowed = {"pids_exceeded"}
    if backend == "rlimit" and bomb.startswith("python"):
        # Summed RSS counts each forked interpreter's shared pages again: 64 of them
        # are far over 50M, and the watchdog may see that before the cap is hit.
        allowed.add("memory_exceeded")
    assert out["reason"] in allowed, out
    assert out["exit_code"] == 137
    if out["reason"] == "pids_exceeded":
        assert "process limit 64 reached" in out["detail"]
    assert time.monotonic() - started < (30 if IN_VM else 10)


@pytest.mark.figure("7. fork bombs (--pids-limit)")
def test_threads_count_toward_the_cap(backend):
    # Small stacks: under RLIMIT_DATA each thread's 8 MiB stack would count first.
    cmd = [
        PY,
        "-c",
        "import threading, time\nthreading.stack_size(256 << 10)\n"
        "ts = [threading.Thread(target=time.sleep, args=(5,)) for _ in range(80)]\n"
        "[t.start() for t in ts]\n[t.join() for t in ts]",
    ]
    out, _ = supervise(backend, *cmd, memory="200M", extra=("--pids-limit", "40"))
    assert out["reason"] == "pids_exceeded", out


def test_pids_limit_zero_turns_the_cap_off(backend):
    n = 30 if IN_VM else 100
    cmd = ["sh", "-c", f"for i in $(seq {n}); do sleep 1 & done; wait"]
    off, _ = supervise(backend, *cmd, memory="200M", extra=("--pids-limit", "0"))
    assert off["reason"] == "ok", off
    capped, _ = supervise(backend, *cmd, memory="200M", extra=("--pids-limit", str(n // 2)))
    assert capped["reason"] == "pids_exceeded", capped


def test_pids_limit_from_fleet_defaults_and_agents(backend, tmp_path):
    sleeps = json.dumps(["sh", "-c", "for i in $(seq 25); do sleep 1 & done; wait"])
    agents = (
        f"  inherits:\n    cmd: {sleeps}\n"
        f"  unlimited:\n    cmd: {sleeps}\n    pids_limit: 0\n"
        f"  roomy:\n    cmd: {sleeps}\n    pids_limit: 100\n"
    )
    path = fleet_file(
        tmp_path,
        backend,
        agents,
        "  - {agent: inherits}\n  - {agent: unlimited}\n  - {agent: roomy}\n",
        concurrent=3,
    )
    text = path.read_text().replace(
        "agents:\n", "defaults:\n  pids_limit: 16\n  memory_limit: 200M\nagents:\n"
    )
    path.write_text(text)
    tasks = {t["agent"]: t for t in run_fleet(path)}
    assert tasks["inherits"]["reason"] == "pids_exceeded", tasks["inherits"]
    assert tasks["unlimited"]["reason"] == "ok", tasks["unlimited"]
    assert tasks["roomy"]["reason"] == "ok", tasks["roomy"]


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "99999999"])
def test_bad_pids_limit_on_run_is_refused(value):
    proc = run_cli("run", "--pids-limit", value, "--", "true")
    assert proc.returncode == 2
    assert b"--pids-limit" in proc.stderr and b"0 turns the process cap off" in proc.stderr


@pytest.mark.parametrize("value", ["-1", "'many'", "2.5"])
def test_bad_pids_limit_in_a_fleet_is_refused(value, tmp_path):
    path = fleet_file(
        tmp_path, "rlimit", f"  a:\n    cmd: [true]\n    pids_limit: {value}\n", "  - {agent: a}\n"
    )
    proc = run_cli("fleet", str(path))
    assert proc.returncode == 2, proc.stderr
    assert b"agents.a.pids_limit" in proc.stderr


def test_rlimit_nproc_only_for_a_dropped_user_without_a_pids_cgroup(tmp_path):
    """RLIMIT_NPROC counts every task of the uid on the machine: it is the fallback
    for agents running as another user where no pids cgroup can be made."""
    from agent_supervise.limits.cgroupfs import CgroupFS
    from agent_supervise.limits.pids import PidsHierarchy
    from agent_supervise.limits.rlimit import RlimitBackend

    nowhere = tmp_path / "mountinfo"
    nowhere.write_text("")
    backend = RlimitBackend(pids=PidsHierarchy(CgroupFS(), mountinfo=str(nowhere)))
    nproc = (resource.RLIMIT_NPROC, 64)
    dropped = backend.create("a", 50 << 20, pids=64, uid=65534)
    assert nproc in dropped.child_setup().rlimits
    assert any("counts the agent's tree" in n for n in dropped.notes)
    assert nproc not in backend.create("b", 50 << 20, pids=64, uid=None).child_setup().rlimits
    assert nproc not in backend.create("c", 50 << 20, pids=64, uid=0).child_setup().rlimits
    assert not backend.create("d", 50 << 20, pids=0, uid=65534).child_setup().rlimits[1:]


def test_pids_exceeded_is_in_the_json_outcome(backend):
    out, proc = supervise(
        backend,
        "sh",
        "-c",
        "for i in $(seq 30); do sleep 2 & done; wait",
        extra=("--pids-limit", "10"),
    )
    assert json_outcome(proc)["reason"] == "pids_exceeded"
    assert out["exit_code"] == 137 and proc.returncode == 137
