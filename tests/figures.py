"""The README's reliability figures: measured by the test suite, written by `make figures`.

The test session only measures: tests record each case (``conftest.record_figure``,
``@pytest.mark.figure("row")``), and a session with ``AGENT_SUPERVISE_FIGURES=FILE``
writes what it measured to FILE (the VM guests' figures merged in). ``make figures``
runs the suite that way and then this script, which keeps the figures in
``tests/figures.json`` (committed, with the list of cases they were measured over) and
rewrites the README's block from it. Nothing else writes README.md.

``tests/test_figures.py`` fails when the figures are stale: the README's block is not
what ``tests/figures.json`` renders to, or the suite's figure cases are no longer the
ones the figures were measured over (a case added, removed or renamed).

Usage: ``python tests/figures.py MEASURED.json``
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
README = TESTS.parent / "README.md"
STORED = TESTS / "figures.json"
BEGIN, END = "<!-- BEGIN reliability figures", "<!-- END reliability figures -->"
#: The test modules that record figures (checked by test_figures.py against the tree).
SOURCES = (
    "test_hostile.py",
    "test_hostile2.py",
    "test_soak.py",
    "test_bad_input.py",
    "test_bad_input_bombs.py",
    "test_faults.py",
    "test_isolation.py",
    "test_terminal.py",
)
#: conftest's group of the ``figure`` marker's rows.
ROWS = "rows"


def render(figures: dict) -> str:
    order = ["cgroup2", "cgroup1", "rlimit"]
    backends = [b for b in order if b in figures["hostile"]]
    head = " | ".join(f"{b} (VM)" if b == "cgroup2" else b for b in backends)
    cells = []
    for b in backends:
        cases = figures["hostile"][b]
        cells.append(f"{sum(cases.values())}/{len(cases)}")
    (numbers,) = figures["soak"]["numbers"]
    tasks, lost, growth = (int(x) for x in numbers.split())
    bad = figures["badinput"]["all"]
    return "\n".join(
        [
            f"{BEGIN} (`make figures` writes them from tests/figures.json; do not edit) -->",
            f"| hostile agents (tests/test_hostile.py) | {head} |",
            "|---|" + "---|" * len(backends),
            f"| contained: right reason, neighbour unharmed, nothing left | {' | '.join(cells)} |",
            "",
            f"- Soak (tests/test_soak.py): **{lost} of {tasks} tasks lost** (queue 4, "
            f"concurrency 2, 5% memory hogs, 5% crashing); every task ended exactly once; no "
            f"zombie, cgroup or file descriptor leaked; supervisor RSS "
            f"{growth / (1 << 20):+.1f} MiB from task {tasks // 10} to task {tasks}.",
            f"- Bad input (tests/test_bad_input.py): **{sum(bad.values())}/{len(bad)} "
            "rejected** with exit 2, the file, line, key and a hint, and nothing started.",
            *rows_block(figures.get(ROWS, {}), backends),
            END,
        ]
    )


def rows_block(rows: dict, backends: list[str]) -> list[str]:
    """One row per class of hostile agent or fault (the ``figure`` marker): passed of
    run, per backend ("any": tests that do not depend on one)."""
    if not rows:
        return []
    by_row: dict[str, dict[str, dict]] = {}
    for key, cases in rows.items():
        row, backend = key.split("\0")
        by_row.setdefault(row, {})[backend] = cases
    columns = [*backends, "any"]
    lines = [
        "",
        "| class (round 2) | "
        + " | ".join(f"{b} (VM)" if b == "cgroup2" else b for b in columns)
        + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in sorted(by_row, key=_numbered):
        cells = [
            f"{sum(c.values())}/{len(c)}" if (c := by_row[row].get(b)) else "–" for b in columns
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _numbered(row: str) -> tuple:
    """``"10. x"`` after ``"9. y"``; unnumbered rows last."""
    head = row.split(".", 1)[0]
    return (int(head), row) if head.isdigit() else (10**9, row)


def readme_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def collected_cases() -> list[str]:
    """The node ids of every test in SOURCES, as pytest collects them now (the backend
    parameters are the same on every machine: a missing backend skips at run time)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *(str(TESTS / name) for name in SOURCES),
        ],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pytest --collect-only failed:\n{out.stdout}\n{out.stderr}")
    return sorted(line for line in out.stdout.splitlines() if "::" in line)


def complete(figures: dict) -> list[str]:
    """What a full measurement must hold; empty when it does."""
    missing = [g for g in ("hostile", "soak", "badinput", ROWS) if g not in figures]
    if "hostile" in figures and "cgroup2" not in figures["hostile"]:
        missing.append("hostile cgroup2 (the VM stage)")
    return missing


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    measured = json.loads(Path(argv[0]).read_text())
    missing = complete(measured)
    if missing:
        print(
            f"figures: {argv[0]} is not a full run's (missing: {', '.join(missing)}); "
            "run `make figures` (the whole suite, VM stages included)",
            file=sys.stderr,
        )
        return 1
    stored = {"cases": collected_cases(), "figures": measured}
    STORED.write_text(json.dumps(stored, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    text = README.read_text()
    old = readme_block(text)
    if old is None:
        print(f"figures: no figures block in {README}", file=sys.stderr)
        return 1
    README.write_text(text.replace(old, render(measured)))
    print(f"figures: {STORED.name} and the README's block written ({len(stored['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
