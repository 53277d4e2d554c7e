"""The resilience policies with real agents under real caps."""

from __future__ import annotations

import json
from pathlib import Path

from agent_supervise.agents.loader import parse_fleet
from agent_supervise.fleet.supervisor import Supervisor
from agent_supervise.memsource import MemorySource
from agent_supervise.rundir import read_events

from conftest import ALLOC, PY, run_cli

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
HOG = f"['{PY}', '{ALLOC}', --interval, '0.004']"


def fleet_file(tmp_path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n" + text
    )
    return path


def events_of(tmp_path) -> list[dict]:
    (run,) = (tmp_path / "runs").iterdir()
    return read_events(str(run / "events.jsonl"))


def test_breaker_opens_on_real_kills_and_closes_after_a_probe(tmp_path):
    path = fleet_file(
        tmp_path,
        "  max_concurrent: 1\n"
        "  breaker: {consecutive_memory_kills: 2, cooldown: 500ms}\n"
        f"agents:\n  hog: {{cmd: {HOG}}}\n  ok: {{cmd: ['true']}}\n"
        "tasks:\n  - {agent: hog, repeat: 2}\n  - {agent: ok, repeat: 2}\n",
    )
    proc = run_cli("fleet", "--json", str(path))
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {
        "ok": 2,
        **{r: n for r, n in summary["counts"].items() if r != "ok"},
    }
    assert sum(n for r, n in summary["counts"].items() if r != "ok") == 2
    events = events_of(tmp_path)
    states = [(e["t"], e["state"]) for e in events if e["event"] == "breaker"]
    assert [s for _, s in states] == ["open", "half_open", "closed"]
    opened, half = states[0][0], states[1][0]
    assert half - opened >= 0.5
    starts = [e for e in events if e["event"] == "started"]
    assert not [e for e in starts if opened < e["t"] < half]  # nothing started while open
    assert b"circuit breaker open: 2 memory kills in a row" in proc.stderr


def test_grow_succeeds_at_a_larger_cap(tmp_path):
    path = fleet_file(
        tmp_path,
        "agents:\n  grower:\n"
        f"    cmd: ['{PY}', '{ALLOC}', --max, '70', --hold, '0']\n"
        "    memory_limit: 50M\n    on_memory_kill: grow\n"
        "    max_memory_limit: 200M\n    backoff: 100ms\n"
        "tasks:\n  - {agent: grower}\n",
    )
    proc = run_cli("fleet", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    (task,) = json.loads(proc.stdout)["tasks"]
    assert (task["reason"], task["attempts"], task["limit_bytes"]) == ("ok", 2, 100 * MiB)
    retried = [e for e in events_of(tmp_path) if e["event"] == "retried"]
    assert retried[0]["reason"] in ("oom_killed", "memory_exceeded")
    assert retried[0]["limit"] == 100 * MiB


def test_resume_from_a_checkpoint_after_a_real_memory_kill(tmp_path):
    example = ROOT / "configs" / "examples" / "resumable.py"
    path = fleet_file(
        tmp_path,
        f"agents:\n  r:\n    cmd: ['{PY}', '{example}']\n"
        "    on_memory_kill: retry\n    memory_retries: 1\n    backoff: 100ms\n"
        "tasks:\n  - {agent: r}\n",
    )
    proc = run_cli("fleet", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    (task,) = json.loads(proc.stdout)["tasks"]
    assert task["attempts"] == 2 and task["checkpoint"] == "step 5"
    second = Path(task["stdout"]).read_text()
    assert second.startswith("resumable: attempt 2, resuming after 'step 2'\n")
    assert "step 1 done" not in second and "step 5 done" in second
    first = Path(task["stdout"].replace(".attempt2", "")).read_text()
    assert first == "resumable: step 1 done\nresumable: step 2 done\n"
    events = events_of(tmp_path)
    assert [e["checkpoint"] for e in events if e["event"] == "checkpoint"][-1] == "step 5"
    assert [e["reason"] for e in events if e["event"] == "retried"] == ["oom_killed"] or [
        e["reason"] for e in events if e["event"] == "retried"
    ] == ["memory_exceeded"]


class ShortOfMemory(MemorySource):
    """The real machine, except that MemAvailable reads low once both agents run, until
    the pressure rule has picked its victim (then memory "recovers")."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.evicted = 0

    def __call__(self, event: dict) -> None:  # an event-log listener
        self.started += event["event"] == "started"
        self.evicted += event["event"] == "evicting"

    def available(self) -> int:
        if self.started >= 2 and not self.evicted:
            return 64 * MiB
        return super().available()


def test_evicted_task_is_requeued_and_finishes_on_retry(tmp_path):
    spec = parse_fleet(
        f"supervisor: {{log_dir: '{tmp_path}', min_free_memory: 256M, "
        "breaker: {min_available: 1M}}\n"
        "agents:\n  s: {cmd: [sleep, '1'], retries: 1, backoff: 100ms}\n"
        "tasks:\n  - {agent: s, repeat: 2}\n"
    )
    memory = ShortOfMemory()
    sup = Supervisor(spec, memory=memory, psi=None)
    sup.events.listeners.append(memory)
    sup.close()
    result = sup.run()
    events = read_events(f"{sup.rundir.path}/events.jsonl")
    evicted = [e["task"] for e in events if e["event"] == "evicting"]
    assert evicted == ["s-2"]
    retried = [e for e in events if e["event"] == "retried"]
    assert [(e["task"], e["reason"]) for e in retried] == [("s-2", "evicted")]
    assert result.counts == {"ok": 2} and result.exit_code == 0
    assert {t["task"]: t["attempts"] for t in result.tasks} == {"s-1": 1, "s-2": 2}
