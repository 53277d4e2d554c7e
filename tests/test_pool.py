"""Warm pools with real workers: reuse, recycling, lost tasks, the protocol."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from agent_supervise.rundir import read_events

from conftest import CHILDREN, PY, run_cli

WORKER = str(CHILDREN / "pool_worker.py")
MiB = 1 << 20


def pooled(tmp_path, tasks: str, pool: str = "{size: 2}", extra: str = "") -> dict:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n"
        f"agents:\n  w:\n    cmd: ['{PY}', '{WORKER}']\n    memory_limit: 80M\n"
        f"    pool: {pool}\n{extra}tasks:\n{tasks}"
    )
    proc = run_cli("fleet", "--json", str(path))
    summary = json.loads(proc.stdout)
    (run,) = (tmp_path / "runs").iterdir()
    summary["events"] = read_events(str(run / "events.jsonl"))
    summary["returncode"] = proc.returncode
    return summary


def test_workers_are_reused(tmp_path):
    s = pooled(tmp_path, "  - {agent: w, repeat: 8, vars: {sleep: '0.05'}}\n")
    assert s["returncode"] == 0 and s["counts"] == {"ok": 8}
    pids = collections.Counter(t["pid"] for t in s["tasks"])
    assert len(pids) <= 2 and max(pids.values()) >= 3  # the same pid served several tasks
    starts = [e for e in s["events"] if e["event"] == "worker_started"]
    assert len(starts) == len(pids)
    result = json.loads(Path(s["tasks"][0]["stdout"]).read_text())
    assert result["ok"] is True and result["task"] == s["tasks"][0]["task"]
    exits = [e for e in s["events"] if e["event"] == "worker_exited"]
    assert len(exits) == len(starts) and all(e["retiring"] for e in exits)


def test_a_worker_that_grows_is_recycled(tmp_path):
    s = pooled(
        tmp_path,
        "  - {agent: w, repeat: 6, vars: {grow: '20'}}\n",
        pool="{size: 1, recycle_above: 45M}",
    )
    assert s["counts"] == {"ok": 6}
    recycled = [e for e in s["events"] if e["event"] == "recycled"]
    assert recycled and "above recycle_above 45 MiB" in recycled[0]["why"]
    assert len({t["pid"] for t in s["tasks"]}) >= 2  # a fresh worker took over


def test_max_tasks_recycles(tmp_path):
    s = pooled(tmp_path, "  - {agent: w, repeat: 5}\n", pool="{size: 1, max_tasks: 2}")
    assert s["counts"] == {"ok": 5}
    assert len({t["pid"] for t in s["tasks"]}) == 3
    assert sum(e["event"] == "recycled" for e in s["events"]) == 3  # two full, one at the end


def test_a_worker_killed_mid_task_requeues_it(tmp_path):
    s = pooled(
        tmp_path,
        "  - {agent: w, vars: {hog_on_first: '1'}}\n  - {agent: w, repeat: 2}\n",
        pool="{size: 1}",
    )
    assert s["counts"] == {"ok": 3}, s["tasks"]
    hog = next(t for t in s["tasks"] if t["task"] == "w-1")
    assert hog["attempts"] == 2
    retried = [e for e in s["events"] if e["event"] == "retried"]
    assert retried[0]["reason"] in ("oom_killed", "memory_exceeded")
    assert "pool worker died under it" in retried[0]["why"]


def test_failed_answers_and_protocol_errors(tmp_path):
    s = pooled(
        tmp_path,
        "  - {agent: w, vars: {fail: '1'}}\n  - {agent: w, vars: {garbage: '1'}}\n  - {agent: w}\n",
        pool="{size: 1}",
    )
    by_task = {t["task"]: t for t in s["tasks"]}
    assert by_task["w-1"]["reason"] == "failed" and by_task["w-1"]["detail"] == "asked to fail"
    assert by_task["w-2"]["reason"] == "failed"
    assert by_task["w-2"]["detail"].startswith("pool protocol error: not a JSON line")
    assert by_task["w-3"]["reason"] == "ok"
    assert by_task["w-3"]["pid"] != by_task["w-2"]["pid"]  # the garbled worker was recycled
    assert s["returncode"] == 1


def test_pooled_task_timeout(tmp_path):
    s = pooled(
        tmp_path,
        "  - {agent: w, vars: {sleep: '30'}, timeout: 500ms}\n  - {agent: w}\n",
        pool="{size: 1}",
        extra="    grace: 500ms\n",
    )
    by_task = {t["task"]: t for t in s["tasks"]}
    assert by_task["w-1"]["reason"] == "timeout" and by_task["w-1"]["exit_code"] == 124
    assert by_task["w-2"]["reason"] == "ok"
