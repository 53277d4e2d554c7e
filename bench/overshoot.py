"""Measure 2: overshoot at the kill. A hog allocating fast under caps of 50M and 200M:
how far above the cap its memory got, per backend."""

from __future__ import annotations

import collections
import json
import subprocess

from common import AGENT_SUPERVISE, ALLOC, PY, Section, median, verdict

MiB = 1 << 20


def run(quick: bool) -> Section:
    from agent_supervise.limits import probe_all

    runs = 2 if quick else 7
    rows = []
    for backend in [p.name for p in probe_all() if p.available]:
        for cap in (50, 200):
            over, reasons = [], collections.Counter()
            for _ in range(runs):
                proc = subprocess.run(
                    [
                        AGENT_SUPERVISE,
                        "run",
                        "--json",
                        "--backend",
                        backend,
                        "--memory",
                        f"{cap}M",
                        "--",
                        PY,
                        ALLOC,
                        "--step",
                        "1",
                        "--interval",
                        "0.001",
                    ],
                    capture_output=True,
                    timeout=120,
                )
                out = json.loads(proc.stderr.decode().strip().splitlines()[-1])
                reasons[out["reason"]] += 1
                if out["peak_bytes"] is not None:
                    over.append((out["peak_bytes"] - cap * MiB) / MiB)
            source = "kernel counter" if backend != "rlimit" else "watchdog sample"
            rows.append(
                [
                    backend,
                    f"{cap}M",
                    f"{median(over):+.1f}",
                    f"{max(over):+.1f}",
                    source,
                    ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())),
                ]
            )
    kernel = [float(r[3]) for r in rows if r[0] != "rlimit"]
    watchdog = [float(r[3]) for r in rows if r[0] == "rlimit"]
    notes = []
    if kernel:
        notes.append(
            verdict(
                max(kernel) <= 0, f"kernel backends at most {max(kernel):+.1f} MiB over the cap"
            )
        )
    if watchdog:
        notes.append(
            f"The watchdog's bound (rlimit): at most {max(watchdog):+.1f} MiB over "
            "the cap here: what the hog allocates between two samples (5 ms at "
            "the fastest); an allocation past RLIMIT_DATA fails inside the program "
            "(ending `failed`) before the watchdog sees it."
        )
    return Section(
        "Overshoot at the kill",
        "`alloc.py --step 1 --interval 0.001` (touching 1 MiB a millisecond, about "
        "0.8 GiB/s) under `agent-supervise run --memory CAP`: the peak minus the cap "
        f"in MiB, over {runs} runs. Kernel backends report the kernel's own peak "
        "(`memory.peak`, `memory.max_usage_in_bytes`); under rlimit the peak is the "
        "watchdog's last sample of its estimate of the tree's cgroup charge "
        "(limits/charge.py: anonymous and shared memory, each page once; not the "
        "interpreter's file pages, which summed RSS would count).",
        ["backend", "cap", "overshoot MiB, median", "max", "peak from", "endings"],
        rows,
        target="kernel backends 0; watchdog bounded and stated.",
        notes=notes,
    )
