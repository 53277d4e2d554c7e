"""Measure 9: packing. A memory-heterogeneous fleet under a 2G budget, every agent
capped at 1G as users do: admission by caps (the old rule) against admission by use
(empty history, and the history of a previous run), GNU parallel's --memfree on the
same tasks (no caps), and the oracle's lower bound.

Eight kinds of agent, five tasks each: a kind's peak is drawn once from a seeded
log-uniform distribution between 50 and 800 MiB (each task within ±10 % of it), each
task's duration between 1 and 4 s. Each task is tests/children/alloc.py growing to
its peak in steps and holding it (the ramp is part of the duration).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import AGENT_SUPERVISE, ALLOC, PY, MiB, Section, median, verdict

from agent_supervise.memsource import MemorySource

BUDGET = 2 << 30
CAP = "1G"
KINDS, PER_KIND = 8, 5
SEED = 13
TARGET_ORACLE, TARGET_SPEEDUP = 1.3, 1.5
MEMORY = MemorySource()
HEADERS = [
    "admission",
    "makespan s",
    "vs oracle",
    "machine peak MiB",
    "budget peak MiB",
    "tasks lost",
    "thrown away s",
    "stops",
    "freezes",
]


def tasks(kinds: int, per_kind: int) -> list[tuple[str, int, float]]:
    """(agent kind, peak MiB, duration s) of every task, from the fixed seed."""
    rng = random.Random(SEED)
    out = []
    for k in range(kinds):
        peak = math.exp(rng.uniform(math.log(50), math.log(800)))
        for _ in range(per_kind):
            out.append((f"kind{k}", int(peak * rng.uniform(0.9, 1.1)), rng.uniform(1.0, 4.0)))
    rng.shuffle(out)
    return out


def agent_cmd(peak: int, duration: float) -> list[str]:
    ramp = 0.2  # 8 MiB steps, as fast as it can touch them: well under a second
    return [PY, ALLOC, "--step", "8", "--interval", "0", "--max", str(peak), "--hold",
            f"{max(0.1, duration - ramp):.2f}"]  # fmt: skip


def fleet_yaml(work: Path, todo, admission: str) -> Path:
    kinds = sorted({k for k, _, _ in todo})
    lines = [
        "supervisor:",
        f"  log_dir: {work / 'runs'}",
        "  min_free_memory: 256M",
        f"  max_concurrent: {len(todo)}",
        f"  queue_size: {len(todo)}",
        f"  memory_budget: {BUDGET >> 20}M",
        f"  admission: {admission}",
        "agents:",
    ]
    template = json.dumps([*agent_cmd(0, 0)[:-3], "{peak}", "--hold", "{hold}"])
    lines += [f"  {k}: {{cmd: {template}, memory_limit: {CAP}}}" for k in kinds]
    lines.append("tasks:")
    for kind, peak, duration in todo:
        hold = agent_cmd(peak, duration)[-1]
        lines.append(f"  - {{agent: {kind}, vars: {{peak: '{peak}', hold: '{hold}'}}}}")
    path = work / f"fleet-{admission}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _in_use() -> int:
    return MEMORY.total() - MEMORY.available()


def timed(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, peak MiB in use on the machine above its idle level, the process)."""
    baseline, peak, done = _in_use(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _in_use() - baseline)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, timeout=900, **kw)
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    return wall, peak[0] / MiB, proc


def ours(work: Path, todo, admission: str) -> dict:
    """One fleet run: makespan, peaks (machine; the budget cage's, kernel), lost tasks,
    work thrown away by budget stops (agent-seconds), those stops, and the ladder's
    freezes."""
    path = fleet_yaml(work, todo, admission)
    wall, machine_peak, proc = timed(
        [AGENT_SUPERVISE, "fleet", "--no-dashboard", "--json", str(path)]
    )
    summary = json.loads(proc.stdout)
    text = Path(summary["run_dir"], "events.jsonl").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    budget = next(e for e in events if e["event"] == "budget")
    started, wasted, stops = {}, 0.0, 0
    freezes = sum(1 for e in events if e["event"] == "frozen")
    for e in events:
        if e["event"] == "started":
            started[e["task"]] = e["t"]
        elif e["event"] == "retried":
            wasted += e["t"] - started.get(e["task"], e["t"])
            stops += 1
    return {
        "wall": wall,
        "machine_peak": machine_peak,
        "budget_peak": budget["peak"] / MiB,
        "lost": len(todo) - summary["counts"].get("ok", 0),
        "wasted": wasted,
        "stops": stops,
        "freezes": freezes,
    }


def gnu_parallel(work: Path, todo) -> dict:
    """parallel --memfree: start a job while the machine has more than (available now
    - 2G) free, i.e. while the jobs hold less than the budget; its kill of the youngest
    below half of that never comes on a big machine. No caps."""
    lines = work / "jobs.txt"
    lines.write_text("".join(" ".join(agent_cmd(p, d)) + "\n" for _, p, d in todo))
    memfree = max(1, (MEMORY.available() - BUDGET) >> 20)
    cmd = ["parallel", "--will-cite", "-j", str(len(todo)), "--memfree", f"{memfree}M",
           "--retries", "3", "--halt", "never"]  # fmt: skip
    wall, machine_peak, proc = timed([*cmd, "::::", str(lines)])
    return {
        "wall": wall,
        "machine_peak": machine_peak,
        "lost": 0 if proc.returncode == 0 else proc.returncode,
    }


def run(quick: bool) -> Section:
    todo = tasks(*((4, 2) if quick else (KINDS, PER_KIND)))
    if quick:
        todo = [(k, p // 4, d / 4) for k, p, d in todo]
    runs = 1 if quick else 3
    oracle = max(sum(p * MiB * d for _, p, d in todo) / BUDGET, max(d for _, _, d in todo))
    work = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    got: dict[str, list[dict]] = {}
    try:
        for _ in range(runs):
            # Each round starts with an empty history; the third fleet reads the
            # history the second one wrote (a previous run of the same fleet).
            shutil.rmtree(work / "runs", ignore_errors=True)
            got.setdefault("caps", []).append(ours(work, todo, "caps"))
            shutil.rmtree(work / "runs", ignore_errors=True)
            got.setdefault("usage, empty history", []).append(ours(work, todo, "usage"))
            got.setdefault("usage, previous run's history", []).append(ours(work, todo, "usage"))
            if shutil.which("parallel"):
                got.setdefault("GNU parallel --memfree (no caps)", []).append(
                    gnu_parallel(work, todo)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(name, key):
        values = [r[key] for r in got[name] if key in r]
        return median(values) if values else None

    rows = []
    for name in got:
        wall = med(name, "wall")
        budget_peak = med(name, "budget_peak")
        rows.append([
            name,
            f"{wall:.1f}",
            f"{wall / oracle:.2f}×",
            f"{med(name, 'machine_peak'):.0f}",
            "-" if budget_peak is None else f"{budget_peak:.0f}",
            f"{max(r['lost'] for r in got[name])}",
            "-" if med(name, "wasted") is None else f"{med(name, 'wasted'):.1f}",
            "-" if med(name, "stops") is None else f"{med(name, 'stops'):.0f}",
            "-" if med(name, "freezes") is None else f"{med(name, 'freezes'):.0f}",
        ])  # fmt: skip
    rows.append(["oracle lower bound", f"{oracle:.1f}", "1.00×", *["-"] * 6])
    with_history = med("usage, previous run's history", "wall")
    caps = med("caps", "wall")
    peak_ok = all(
        r["budget_peak"] <= BUDGET / MiB for name in got for r in got[name] if "budget_peak" in r
    )
    lost = sum(r["lost"] for name in got if not name.startswith("GNU") for r in got[name])
    vs_oracle, speedup = with_history / oracle, caps / with_history
    notes = [
        verdict(vs_oracle <= TARGET_ORACLE,
                f"usage with history at {vs_oracle:.2f}× the oracle (≤ {TARGET_ORACLE}×)"),
        verdict(speedup >= TARGET_SPEEDUP,
                f"usage with history {speedup:.2f}× faster than caps (≥ {TARGET_SPEEDUP}×)"),
        verdict(peak_ok, "the budget cage's peak ≤ 2048 MiB in every run of ours"),
        verdict(lost == 0, f"{lost} tasks lost in our runs"),
    ]  # fmt: skip
    return Section(
        "Packing: a fleet budget and admission by use",
        f"{len(todo)} tasks of {len({k for k, _, _ in todo})} kinds of agent (peaks "
        f"{min(p for _, p, _ in todo)}–{max(p for _, p, _ in todo)} MiB from a seeded "
        "log-uniform draw, durations 1–4 s; bench/packing.py), every agent capped at "
        f"{CAP}, `memory_budget: 2G`, `max_concurrent` = the number of tasks, on the "
        f"cgroup backend here; median of {runs} runs. *makespan*: the fleet's wall time; "
        "*machine peak*: memory in use on the machine above its idle level, sampled "
        "every 20 ms (every tool alike); *budget peak*: the kernel's peak of the budget's "
        "parent cage; *thrown away*: agent-seconds of attempts the budget stopped "
        "(requeued); *stops*: those attempts; *freezes*: agents the pressure ladder froze "
        "(`frozen` events). The oracle: max(Σ peak × duration / "
        "budget, the longest task). GNU parallel has no caps and no budget: its "
        "`--memfree` is set so that it starts jobs while they hold less than 2G.",
        HEADERS,
        rows,
        target=f"usage with history ≤ {TARGET_ORACLE}× the oracle and ≥ {TARGET_SPEEDUP}× "
        "faster than caps; the budget cage's peak ≤ the budget; 0 tasks lost.",
        notes=notes,
    )
