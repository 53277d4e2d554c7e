"""``fleet --engine ray`` for real: a head and two worker nodes on 127.0.0.1 (see
raylocal.py), each worker offering a fixed ``memory`` budget and the custom resource
``agent_node``, so agents land only on the prepared workers, never on the head.

The fleet runs as a real driver process (the CLI), agents run caged on the nodes,
and after every test nothing of theirs may be left: no process, no cage, no scratch
folder. Skipped where Ray is not installed, except under CI=true.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from raylocal import LocalRayCluster, assert_nothing_left, ray_importable, run_events

from agent_supervise.limits import probe_all

from conftest import ALLOC, LEAK_PATIENCE_S, PY, cage_dirs, require_tool

MB = 10**6
BUDGET = 250 * MB  # each worker's Ray memory budget (ray start --memory)
OVERHEAD = "50M"  # supervisor.ray.memory_overhead: each agent requests cap + 50M
PER_NODE = 2  # 2 x (50M + 50M) fits in 250 MB; 3 do not
TIMINGS: dict = {}

#: What every summary entry has, local or remote (supervisor/fleet/summary.py).
ENTRY_KEYS = {
    "task",
    "agent",
    "reason",
    "exit_code",
    "peak_bytes",
    "limit_bytes",
    "peak_source",
    "duration_s",
    "backend",
    "pid",
    "status",
    "signal",
    "oom_kills",
    "detail",
    "where",
    "cmd",
    "stdout",
    "stderr",
    "attempts",
    "checkpoint",
}


@pytest.fixture(scope="module")
def cluster():
    require_tool(ray_importable(), "ray (pip install 'agent-supervise[ray]')")
    t0 = time.monotonic()
    try:
        c = LocalRayCluster()
    except OSError as err:
        require_tool(False, f"a network namespace for the Ray cluster ({err})")
    try:
        c.start_head()  # no agent_node: agents must never land here
        c.add_worker("w1", BUDGET, 4, agent_node=10, w1=1)
        c.add_worker("w2", BUDGET, 4, agent_node=10, w2=1)
        c.read_nodes()
        TIMINGS["cluster_up_s"] = round(time.monotonic() - t0, 1)
        yield c
    finally:
        t1 = time.monotonic()
        c.stop()
        TIMINGS["cluster_down_s"] = round(time.monotonic() - t1, 1)
        print(f"\nray cluster timings: {TIMINGS}")


@pytest.fixture(autouse=True)
def no_leaks(cluster):
    """Replaces conftest's check for this module: Ray's daemons and idle workers are
    children of pytest (it adopts daemons as a subreaper) and live for the whole
    module. Everything else in the cluster must be gone after each test: agents,
    their guards, their cages and scratch folders."""
    cages_before = cage_dirs()
    yield
    assert_nothing_left(cluster, cages_before, LEAK_PATIENCE_S)


def fleet_file(tmp_path: Path, agents: str, tasks: str, extra: str = "") -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  max_concurrent: 4\n  queue_size: 2\n  log_dir: {tmp_path / 'runs'}\n"
        f"  ray: {{resources: {{agent_node: 1}}, memory_overhead: {OVERHEAD}, cpus: 1}}\n"
        f"{extra}agents:\n{agents}tasks:\n{tasks}"
    )
    return path


def drive(cluster, fleet: Path, *args: str, timeout: float = 120):
    proc = cluster.run(cluster.fleet(fleet, *args), timeout=timeout)
    return proc, (json.loads(proc.stdout) if proc.stdout.strip() else None)


def wait_placed(tmp_path: Path, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        placed = [e for e in run_events(tmp_path) if e["event"] == "placed"]
        if len(placed) >= count:
            return placed
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} agents reached a node in {timeout}s")


NAP = (
    '  nap:\n    cmd: [sh, -c, \'echo $AGENT_ID; echo "step 1" >> $AGENT_CHECKPOINT_FILE;'
    " sleep 1.5; echo done >&2']\n    memory_limit: 50M\n"
)
HOG = f"  hog:\n    cmd: ['{PY}', '{ALLOC}', --interval, '0.004']\n    memory_limit: 50M\n"


def test_fleet_spreads_over_both_nodes_and_the_hog_dies_on_its_node(cluster, tmp_path):
    fleet = fleet_file(tmp_path, NAP + HOG, "  - {agent: nap, repeat: 6}\n  - {agent: hog}\n")
    t0 = time.monotonic()
    proc, summary = drive(cluster, fleet)
    TIMINGS["fleet_7_tasks_s"] = round(time.monotonic() - t0, 1)
    assert proc.returncode == 1, proc.stderr[-3000:]
    by_task = {t["task"]: t for t in summary["tasks"]}
    hog = by_task.pop("hog-1")
    assert hog["reason"] in ("oom_killed", "memory_exceeded") and hog["exit_code"] == 137
    assert hog["peak_bytes"] >= 45 << 20 and hog["backend"] != "ray"  # the node's cage
    assert {t["reason"] for t in by_task.values()} == {"ok"} and len(by_task) == 6
    for task in summary["tasks"]:
        assert set(task) == ENTRY_KEYS
    for name, task in by_task.items():  # logs came back under the local names
        assert Path(task["stdout"]).read_text() == f"{name}\n"
        assert Path(task["stderr"]).read_text() == "done\n"
        assert task["checkpoint"] == "step 1"
        assert task["backend"] in ("cgroup2", "cgroup1")

    events = run_events(tmp_path)
    kinds = {e["event"] for e in events}
    assert {
        "run_started",
        "queued",
        "started",
        "placed",
        "checkpoint",
        "exited",
        "run_ended",
    } <= kinds
    placed = {e["task"]: e["node"] for e in events if e["event"] == "placed"}
    workers = {n for n, res in cluster.nodes.items() if "agent_node" in res}
    assert len(workers) == 2 and set(placed.values()) == workers, placed  # both got work
    # Replay: agents at once per node never exceed what its memory budget holds.
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    total = top = 0
    for e in events:
        if e["event"] == "placed":
            running[e["node"]] = running.get(e["node"], 0) + 1
            peak[e["node"]] = max(peak.get(e["node"], 0), running[e["node"]])
        elif e["event"] == "exited" and e["task"] in placed:
            running[placed[e["task"]]] -= 1
        if e["event"] == "started":
            total += 1
            top = max(top, total)
        elif e["event"] == "exited":
            total -= 1
    assert max(peak.values()) <= PER_NODE and top <= 4, (peak, top)
    TIMINGS["per_node_peak"] = peak


def test_sigint_to_the_driver_interrupts_the_remote_agents(cluster, tmp_path):
    fleet = fleet_file(
        tmp_path,
        "  nap:\n    cmd: [sleep, '30']\n    memory_limit: 20M\n",
        "  - {agent: nap, repeat: 6}\n",
    )
    driver = cluster.popen(cluster.fleet(fleet))
    try:
        wait_placed(tmp_path, 4)
        t0 = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=30)
        TIMINGS["sigint_to_exit_s"] = round(time.monotonic() - t0, 2)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate(timeout=10)
    assert driver.returncode == 130, err[-2000:]
    summary = json.loads(out)
    assert summary["counts"] == {"interrupted": 4, "cancelled": 2}, summary["counts"]
    assert {t["exit_code"] for t in summary["tasks"] if t["reason"] == "interrupted"} == {130}
    # The agents got the SIGINT itself (Ray blocks it in its workers; it must not stay
    # blocked in agents), so they ended well before the 2 s grace and its SIGKILL.
    events = run_events(tmp_path)
    (stop,) = [e["t"] for e in events if e["event"] == "stopping"]
    ends = [
        e["t"] - stop for e in events if e["event"] == "exited" and e["reason"] == "interrupted"
    ]
    assert len(ends) == 4 and max(ends) < 1.5, ends
    TIMINGS["sigint_to_agents_ended_s"] = round(max(ends), 2)


def test_a_killed_driver_leaves_nothing_on_the_nodes(cluster, tmp_path):
    """SIGKILL the driver: its Ray workers die, each agent's main process with its
    worker (parent-death signal), and each agent's guard kills the rest of its cage
    (here a setsid escapee) and removes the cage and scratch folder."""
    tree = tmp_path / "tree.sh"
    tree.write_text("#!/bin/sh\necho $AGENT_ID\nsetsid sleep 31 &\nsleep 32\n")
    tree.chmod(0o755)
    fleet = fleet_file(
        tmp_path,
        f"  tree:\n    cmd: ['{tree}']\n    memory_limit: 20M\n",
        "  - {agent: tree, repeat: 4}\n",
    )
    driver = cluster.popen(cluster.fleet(fleet, json_out=False))
    try:
        wait_placed(tmp_path, 4)
        deadline = time.monotonic() + 10
        while sum("sleep 31" in s for s in cluster.strangers()) < 4:
            assert time.monotonic() < deadline, cluster.strangers()
            time.sleep(0.05)
    finally:
        driver.kill()
        driver.communicate(timeout=10)
    t0 = time.monotonic()
    while cluster.strangers() and time.monotonic() < t0 + 15:
        time.sleep(0.05)
    TIMINGS["killed_driver_cleanup_s"] = round(time.monotonic() - t0, 2)
    assert not cluster.strangers()  # the no_leaks fixture checks cages and scratch too


def ours(proc) -> list[str]:
    """stderr without Ray's own log lines ("[2026-... W ...] network_util.cc: ...": in a
    namespace without a default route Ray warns that it fell back to 127.0.0.1)."""
    return [
        line for line in proc.stderr.decode().strip().splitlines() if not line.startswith("[20")
    ]


def test_bad_input_is_refused_before_anything_runs(cluster, tmp_path):
    fleet = fleet_file(tmp_path, "  t:\n    cmd: ['true']\n", "  - {agent: t}\n")
    cases = {
        "rya": (["--engine", "rya"], "Invalid value for '--engine'"),
        "address": (["--engine", "ray", "--address", "not an address"], "not a Ray address"),
        "unreachable": (["--engine", "ray", "--address", "127.0.0.1:1"], "cannot reach a Ray head"),
        "no-engine": (["--address", cluster.address], "--address is for --engine ray"),
    }
    for name, (args, message) in cases.items():
        proc = cluster.run(cluster.command("fleet", *args, str(fleet)), timeout=60)
        lines = ours(proc)
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (name, lines)
    huge = fleet_file(
        tmp_path, "  t:\n    cmd: ['true']\n    memory_limit: 10G\n", "  - {agent: t}\n"
    )
    proc, _ = drive(cluster, huge)
    lines = ours(proc)
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert "cap 10.0 GiB plus memory_overhead 50.0 MiB fits on no Ray node" in lines[0]
    rlimit = fleet_file(
        tmp_path, "  t:\n    cmd: ['true']\n", "  - {agent: t}\n", "  backend: rlimit\n"
    )
    proc, _ = drive(cluster, rlimit)
    assert proc.returncode == 2 and b"allow_rlimit: true" in proc.stderr
    assert not (tmp_path / "runs").exists()  # no run folder: nothing was started


def test_a_node_without_the_asked_cage_refuses_and_rlimit_runs_only_when_allowed(cluster, tmp_path):
    """A node that cannot make the cage refuses the task (setup_failed, 125, with the
    node's reason); an rlimit-only cage runs only with allow_rlimit."""
    missing = [p for p in probe_all() if not p.available and p.name != "rlimit"]
    agents = "  t:\n    cmd: [sh, -c, 'echo hi']\n"
    if missing:
        fleet = fleet_file(tmp_path, agents, "  - {agent: t}\n", f"  backend: {missing[0].name}\n")
        proc, summary = drive(cluster, fleet)
        (entry,) = summary["tasks"]
        assert proc.returncode == 1 and entry["reason"] == "setup_failed"
        assert entry["exit_code"] == 125
        assert f"backend {missing[0].name} is not available" in entry["detail"]
        assert entry["detail"].startswith("node 127.0.0.1")
        for run in (tmp_path / "runs").iterdir():
            run.rename(tmp_path / f"done-{run.name}")
    fleet = fleet_file(tmp_path, agents, "  - {agent: t}\n", "  backend: rlimit\n")
    fleet.write_text(fleet.read_text().replace("cpus: 1}", "cpus: 1, allow_rlimit: true}"))
    proc, summary = drive(cluster, fleet)
    (entry,) = summary["tasks"]
    assert proc.returncode == 0 and entry["backend"].startswith("rlimit"), entry
    assert Path(entry["stdout"]).read_text() == "hi\n"
