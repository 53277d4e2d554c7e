"""The node side of ``--engine ray`` without Ray: the task function run in-process
(on this machine's real backends), the rlimit-only refusal, and the guard that
cleans up when a Ray worker dies under its agent. These need no cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agent_supervise import limits
from agent_supervise.limits.rlimit import RlimitBackend
from agent_supervise.outcome import Reason
from agent_supervise.ray.files import SCRATCH_PREFIX, spawn_guard
from agent_supervise.ray.node import Job, run_on_node
from agent_supervise.run.reaper import CAGE_ENV
from agent_supervise.run.spawn import Spawner

from conftest import ALLOC, PY, reap_orphans


def job(tmp_path, *cmd, **kw) -> Job:
    return Job(
        key="run/t-1/1",
        task_id="t-1",
        cmd=cmd,
        memory=50 << 20,
        timeout=None,
        grace=1.0,
        poll=0.1,
        cwd=str(tmp_path),
        **kw,
    )


def scratch_left() -> list[str]:
    mine = f"{SCRATCH_PREFIX}{os.getpid()}-"
    return [n for n in os.listdir("/tmp") if n.startswith(mine)]


def test_a_node_that_can_only_rlimit_refuses_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.setattr(limits, "select_backend", lambda *a, **k: RlimitBackend("data"))
    monkeypatch.setattr("agent_supervise.ray.node._BACKENDS", {})
    (record,) = run_on_node(job(tmp_path, "sh", "-c", "echo hi"))
    out = record["outcome"]
    assert record["kind"] == "ended" and out.reason is Reason.SETUP_FAILED
    assert out.exit_code == 125 and "refusing an rlimit-only cage" in out.detail
    assert "supervisor.ray.allow_rlimit: true" in out.detail

    records = list(run_on_node(job(tmp_path, "sh", "-c", "echo hi", allow_rlimit=True)))
    assert next(r["kind"] for r in records) == "started" and records[-1]["kind"] == "ended"
    out = records[-1]["outcome"]
    assert out.reason is Reason.OK and out.backend.startswith("rlimit")
    assert records[-1]["stdout"] == (b"hi\n", 3) and not scratch_left()


def test_the_task_reports_start_samples_checkpoints_and_the_cage_kill(tmp_path):
    """On this machine's own backend (auto): the same reasons as a local run."""
    step = [
        "sh",
        "-c",
        "echo 'step 1' >> $AGENT_CHECKPOINT_FILE; echo out; echo err >&2; "
        f"sleep 1.2; exec {PY} {ALLOC} --interval 0.004",
    ]
    seed = b"step 0\n"
    records = list(run_on_node(job(tmp_path, *step, checkpoint_seed=seed, log_tail=2)))
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "started" and kinds[-1] == "ended" and "sample" in kinds
    assert records[0]["backend"] == records[-1]["outcome"].backend
    out = records[-1]["outcome"]
    assert out.reason in (Reason.OOM_KILLED, Reason.MEMORY_EXCEEDED) and out.exit_code == 137
    assert out.pid == records[0]["pid"]
    assert records[-1]["stdout"] == (b"t\n", 4)  # the last log_tail bytes, and the size
    streamed = b"".join(r.get("checkpoint", b"") for r in records)
    assert streamed == b"step 1\n"  # only what this attempt added to the seed
    assert not scratch_left()


def test_the_guard_kills_what_a_dead_worker_left_and_removes_it(backend, tmp_path):
    """A worker that dies under its agent closes the guard's pipe without "done": the
    guard kills the agent's processes (a setsid escapee too) and removes the cage and
    the scratch folder."""
    chosen = limits.select_backend(backend)
    cage = chosen.create("guarded", 50 << 20)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "agent.out").write_text("x")
    fd = spawn_guard(cage, str(scratch))
    proc = Spawner().spawn(
        ["sh", "-c", "setsid sleep 60 & exec sleep 61"],
        cage,
        env={**os.environ, CAGE_ENV: cage.name},
    )
    cage.attach(proc.pid)
    deadline = time.monotonic() + 10
    while len(_marked(cage.name)) < 2:
        assert time.monotonic() < deadline, "the agent's two processes did not start"
        time.sleep(0.02)
    os.close(fd)  # the worker is gone: end of file, no "done"
    _wait_killed(proc.pid)
    deadline = time.monotonic() + 10
    while (
        _marked(cage.name)
        or scratch.exists()
        or (getattr(cage, "path", None) and os.path.exists(cage.path))
    ):
        assert time.monotonic() < deadline, (_marked(cage.name), scratch.exists())
        time.sleep(0.02)
    cage.release()
    reap_orphans()  # the escapee was reparented to pytest, a subreaper


def test_a_dismissed_guard_leaves_everything_alone(tmp_path):
    cage = limits.select_backend("rlimit").create("dismissed", 50 << 20)
    fd = spawn_guard(cage, str(tmp_path))
    os.write(fd, b"done\n")
    os.close(fd)
    time.sleep(0.3)
    assert tmp_path.exists()
    cage.release()  # the test's own cage (a pids companion leaf, where there is one)


def _wait_killed(pid: int) -> None:
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline, "the guard did not kill the agent"
        time.sleep(0.02)


def _marked(name: str) -> list[int]:
    """Live processes carrying this agent's marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                marked = f"{CAGE_ENV}={name}".encode() in f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1][1:2] == b"Z"
        except OSError:
            continue
        if marked and not zombie:
            found.append(int(pid))
    return found


@pytest.mark.parametrize(
    "extra, agent_extra, names",
    [
        ("", "    pool: {size: 2}\n", "agents.w.pool: warm pools do not run on Ray"),
        ("  memory_budget: 1G\n", "", "supervisor.memory_budget with --engine ray"),
        ("  admission: usage\n", "", "supervisor.admission: usage with --engine ray"),
    ],
)
def test_what_ray_does_not_run_is_refused_up_front(tmp_path, extra, agent_extra, names):
    """Warm pools, a fleet budget and admission by use are refused up front under
    --engine ray: exit 2, the key named, nothing started, no cluster contacted (the
    address below has nothing listening)."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n{extra}"
        f"agents:\n  w:\n    cmd: ['true']\n    memory_limit: 20M\n{agent_extra}"
        "tasks:\n  - {agent: w}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agent_supervise", "fleet", "--engine", "ray",
         "--address", "127.0.0.1:9", "--no-dashboard", str(fleet)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert names in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_head_watch_counts_unreachable_time_and_evidence_makes_it_lost_at_once():
    """A real listening port, then closed: lost only after lost_after of failed probes
    (probed at most every CHECK_S), or at once with other evidence."""
    import socket

    from agent_supervise.ray.faults import CHECK_S, HeadWatch

    now = [0.0]
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    watch = HeadWatch(f"127.0.0.1:{port}", lost_after=3.0, clock=lambda: now[0])
    assert watch.lost() is None and watch.unreachable_since is None
    server.close()
    now[0] = CHECK_S
    assert watch.lost() is None and watch.unreachable_since == CHECK_S
    now[0] = CHECK_S + 2.0
    assert watch.lost() is None  # 2 s unreachable < 3
    assert watch.lost(at_once=True) == 2.0  # evidence: lost now
    now[0] = CHECK_S + 3.5
    assert watch.lost() == 3.5


def test_a_node_is_probed_once_per_check_however_many_tasks_ask():
    from agent_supervise.ray.faults import CHECK_S, NodeProbe

    class FakeCluster:
        reads, forgotten = 0, []

        def table(self):
            self.reads += 1
            return {"dead": {"Alive": False}, "up": {"Alive": True}}

        def forget(self, node):
            self.forgotten.append(node)

    now = [0.0]
    cluster = FakeCluster()
    probe = NodeProbe(cluster, clock=lambda: now[0])
    assert all(probe.gone("dead") for _ in range(50)) and probe.gone("up") is None
    assert cluster.reads == 1 and cluster.forgotten == ["dead"]
    now[0] = CHECK_S
    probe.gone("dead")
    assert cluster.reads == 2
