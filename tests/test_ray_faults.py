"""``fleet --engine ray`` under faults, for real: a node is SIGKILLed mid-run (its
raylet and Ray workers, as a crash), a node that alone could hold a task leaves and
another joins, and the head is lost. The cluster is this module's own (a head and
two workers on 127.0.0.1 in a private network namespace, see raylocal.py); the
last test kills its head.

The raylets are told to give up on a lost head after 10 s
(``gcs_rpc_server_reconnect_timeout_s``, 60 by default) so that the nodes' own
cleanup after a head loss fits in the suite's time. Skipped where Ray is not
installed, except under CI=true.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from raylocal import (
    LocalRayCluster,
    assert_nothing_left,
    ray_importable,
    run_events,
    wait_for_event,
)

from conftest import cage_dirs, require_tool

MB = 10**6
GIVE_UP_S = 10  # the raylets' gcs_rpc_server_reconnect_timeout_s here
NOTICE_BOUND_S = 8.0  # SILENT_S 3 + CHECK_S 1 + a sample's period + slack on 2 cores
TIMINGS: dict = {}


@pytest.fixture(scope="module")
def cluster():
    require_tool(ray_importable(), "ray (pip install 'agent-supervise[ray]')")
    try:
        c = LocalRayCluster(gcs_rpc_server_reconnect_timeout_s=str(GIVE_UP_S))
    except OSError as err:
        require_tool(False, f"a network namespace for the Ray cluster ({err})")
    try:
        c.start_head()  # no agent_node: agents never land here
        c.add_worker("w1", 250 * MB, 4, agent_node=10)
        c.add_worker("w2", 250 * MB, 4, agent_node=10)
        yield c
    finally:
        c.stop()
        print(f"\nray fault timings: {TIMINGS}")


@pytest.fixture(autouse=True)
def no_leaks(cluster):
    """Replaces conftest's check for this module (Ray's daemons live for the whole
    module): after each test no agent, guard, cage or scratch folder of it is left.
    After a lost head the raylets take GIVE_UP_S to stop their agents."""
    cages_before = cage_dirs()
    yield
    assert_nothing_left(cluster, cages_before, GIVE_UP_S + 20)


def fleet_file(tmp_path: Path, agents: str, tasks: str, ray: str = "") -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  max_concurrent: 6\n  queue_size: 6\n  log_dir: {tmp_path / 'runs'}\n"
        "  ray: {resources: {agent_node: 1}, memory_overhead: 50M, cpus: 1" + ray + "}\n"
        f"agents:\n{agents}tasks:\n{tasks}"
    )
    return path


def start(cluster, fleet: Path):
    return cluster.popen(cluster.fleet(fleet))


def finish(driver, timeout: float = 120) -> tuple[int, dict, str]:
    try:
        out, err = driver.communicate(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate(timeout=10)
    return driver.returncode, json.loads(out) if out.strip() else {}, err.decode()


def node_id_of(cluster, name: str) -> str:
    nodes = cluster.read_nodes()
    (found,) = [n for n, res in nodes.items() if res.get(name)]
    return found


def test_a_node_killed_mid_run_loses_its_tasks_which_are_requeued_once_and_end_ok(
    cluster, tmp_path
):
    cluster.add_worker("doomed", 250 * MB, 4, agent_node=10, doomed=1)
    doomed = node_id_of(cluster, "doomed")
    tree = tmp_path / "tree.sh"  # with a setsid escapee: the node's guard must get it
    tree.write_text("#!/bin/sh\necho $AGENT_ID\nsetsid sleep 41 &\nsleep 4\n")
    tree.chmod(0o755)
    fleet = fleet_file(
        tmp_path,
        f"  tree:\n    cmd: ['{tree}']\n    memory_limit: 50M\n    retries: 0\n",
        "  - {agent: tree, repeat: 6}\n",
    )
    driver = start(cluster, fleet)
    placed = wait_for_event(
        tmp_path, lambda e: e["event"] == "placed" and e["node"] == doomed, "doomed"
    )
    on_doomed = {e["task"] for e in placed}
    time.sleep(0.5)
    t_kill = time.monotonic()
    cluster.kill_node("doomed")
    wait_for_event(
        tmp_path, lambda e: e["event"] == "retried" and e["reason"] == "lost", "lost task", 60
    )
    TIMINGS["node_death_noticed_s"] = round(time.monotonic() - t_kill, 1)
    code, summary, err = finish(driver)
    assert code == 0, err[-3000:]
    assert summary["counts"] == {"ok": 6}, summary["counts"]
    evs = run_events(tmp_path)
    placed_on_doomed = {e["task"] for e in evs if e["event"] == "placed" and e["node"] == doomed}
    lost = [e for e in evs if e["event"] == "retried" and e["reason"] == "lost"]
    assert {e["task"] for e in lost} == placed_on_doomed >= on_doomed, (lost, placed_on_doomed)
    for e in lost:  # requeued for free: retries: 0 did not end them
        assert "its node died under it; requeued" in e["why"], e
        assert e["attempt"] == 2, e
    # every task accounted for exactly once, and each lost one ended ok elsewhere
    exited = [e["task"] for e in evs if e["event"] == "exited"]
    assert sorted(exited) == sorted({t["task"] for t in summary["tasks"]}) and len(exited) == 6
    assert all(t["attempts"] == 2 for t in summary["tasks"] if t["task"] in placed_on_doomed)
    # noticed within the bound: from the kill to the driver's first retried event
    assert TIMINGS["node_death_noticed_s"] <= NOTICE_BOUND_S, TIMINGS
    # the escapees on the dead node are gone (no_leaks checks every process)
    deadline = time.monotonic() + 10
    while any("sleep 41" in s for s in cluster.strangers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any("sleep 41" in s for s in cluster.strangers()), cluster.strangers()


def test_a_task_that_fit_only_on_a_node_that_left_waits_for_one_and_ends_clearly_if_none(
    cluster, tmp_path
):
    """One big node: it dies under a 300M task. The task waits (node_wait) and runs
    when another big node joins; later the big node dies again and the same task
    waits out node_wait and ends setup_failed, saying why."""
    cluster.add_worker("big1", 600 * MB, 4, agent_node=10, big1=1)
    big1 = node_id_of(cluster, "big1")
    driver = large_task_killed_under(cluster, tmp_path, "big1", big1, "sleep 3", "40s")
    wait_for_event(
        tmp_path,
        lambda e: e["event"] == "waiting" and "a Ray node that can hold it" in e["reason"],
        "waiting for a node",
    )
    cluster.add_worker("big2", 600 * MB, 4, agent_node=10, big2=1)
    code, summary, err = finish(driver)
    assert code == 0 and summary["counts"] == {"ok": 1}, err[-3000:]
    big2 = node_id_of(cluster, "big2")
    evs = run_events(tmp_path)
    assert [e["node"] for e in evs if e["event"] == "placed"] == [big1, big2]

    # big2 dies too, and no node that holds 300M comes back within node_wait
    (tmp_path / "runs").rename(tmp_path / "runs-1")
    driver = large_task_killed_under(cluster, tmp_path, "big2", big2, "sleep 20", "3s")
    code, summary, err = finish(driver)
    assert code == 1, err[-3000:]
    (task,) = summary["tasks"]
    assert task["reason"] == "setup_failed" and task["exit_code"] == 125, task
    assert "fits on no Ray node" in task["detail"], task["detail"]
    # it waited in the driver's queue, or in Ray's if it was handed over before
    # the node was found dead: either way no more than node_wait
    assert "came back within supervisor.ray.node_wait (3s)" in task["detail"], task


def large_task_killed_under(cluster, tmp_path, name: str, node: str, sleep: str, node_wait: str):
    """A fleet of one 300M task (only the big node holds it): once it runs on
    ``node``, that node is SIGKILLed. Returns the running driver."""
    fleet = fleet_file(
        tmp_path,
        f"  large:\n    cmd: [sh, -c, 'echo $AGENT_ID; {sleep}']\n    memory_limit: 300M\n",
        "  - {agent: large}\n",
        ray=f", node_wait: {node_wait}",
    )
    driver = start(cluster, fleet)
    wait_for_event(tmp_path, lambda e: e["event"] == "placed" and e["node"] == node, name)
    cluster.kill_node(name)
    return driver


def test_a_lost_head_stops_the_driver_cleanly_and_the_nodes_stop_their_agents(cluster, tmp_path):
    """The last test of the module: it kills the head."""
    fleet = fleet_file(
        tmp_path,
        "  nap:\n    cmd: [sh, -c, 'echo $AGENT_ID; sleep 60']\n    memory_limit: 20M\n",
        "  - {agent: nap, repeat: 6}\n",
        ray=", head_lost_after: 4s",
    )
    driver = start(cluster, fleet)
    wait_for_event(tmp_path, lambda e: e["event"] == "placed", "placed", 60)
    time.sleep(1)
    placed = [e for e in run_events(tmp_path) if e["event"] == "placed"]
    t_kill = time.monotonic()
    cluster.kill_node("head")
    code, summary, err = finish(driver, timeout=60)
    TIMINGS["head_loss_driver_exit_s"] = round(time.monotonic() - t_kill, 1)
    assert code == 5, err[-3000:]
    assert summary["stopping"] == "cluster_lost", summary
    assert "the Ray head at 127.0.0.1:6379 has been unreachable" in summary["message"]
    # Each task once: stopped by its node (it lost the orders actor, which lived on
    # the head) and reported back, or lost (its end never seen: the message says
    # where it may still run), or cancelled before it reached a node.
    counts = summary["counts"]
    assert sum(counts.values()) == 6 and set(counts) <= {"lost", "cancelled", "stopped"}, counts
    ran = {t["task"]: t for t in summary["tasks"] if t["reason"] != "cancelled"}
    assert set(ran) == {e["task"] for e in placed}, (ran, placed)
    for t in ran.values():
        if t["reason"] == "stopped":
            assert "lost the driver's orders channel" in t["detail"], t
        else:
            assert (
                t["exit_code"] is None and "how the agent itself ended is not known" in t["detail"]
            )
            assert f"{t['task']} on node 127.0.0.1" in summary["message"], summary["message"]
    assert "the cluster is lost" in err, err[-2000:]
    assert TIMINGS["head_loss_driver_exit_s"] < 4 + 15, TIMINGS
    # the nodes give up on the head (GIVE_UP_S) and their agents die with their
    # workers; no_leaks waits for that and checks every process
    t0 = time.monotonic()
    while cluster.strangers() and time.monotonic() < t0 + GIVE_UP_S + 20:
        time.sleep(0.2)
    TIMINGS["head_loss_agents_gone_s"] = round(time.monotonic() - t_kill, 1)
    assert not cluster.strangers(), cluster.strangers()
