"""Runtime hints: the smallest cap at which Node programs finish, with and without
the hints (supervisor/run/hints.py), on the backends here.

Each program runs under ``agent-supervise run`` at caps found by bisection (on a
log scale, to within TOLERANCE): the smallest cap at which it ends ``ok``. A run
that hangs at its cap (Node under RLIMIT_DATA can) ends at its --timeout, a few
times the program's own time at a generous cap, and counts as not fitting. No
network at bench time: tsc comes from .bench/npm (bench/install.sh), and npm
installs a package packed here from a local tarball, offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import AGENT_SUPERVISE, ROOT, Section, verdict

from agent_supervise.limits import probe_all

NPM_BIN = ROOT / ".bench" / "npm" / "node_modules"
BACKENDS = ("cgroup1", "cgroup2", "rlimit")
#: Bisection stops when the bracket is this narrow (a ratio): ~5%, 25% when quick.
TOLERANCE, QUICK_TOLERANCE = 0.05, 0.25
LOW_MIB = 24  # below any Node program's start (node -e '' alone takes ~40M)
HIGH_MIB, QUICK_HIGH_MIB = 1024, 384
#: .bench/npm's TypeScripts (bench/install.sh): 5 is JavaScript on Node; 7 is a Go
#: binary that a Node shim runs as its child (so GOMEMLIMIT is what tells it the cap).
TYPESCRIPTS = {"typescript5": "TypeScript 5 (JavaScript)", "typescript": "TypeScript 7 (Go)"}
HINTED = ("NODE_OPTIONS", "GOMEMLIMIT", "JAVA_TOOL_OPTIONS")

#: A moderate Node program: a live set of small objects (2000 per round, ~15 MiB
#: after 60 rounds), built amid ~25x as much garbage (as a parser or a bundler makes).
NODE_SCRIPT = (
    "const live = [];"
    "for (let r = 0; r < ROUNDS; r++) {"
    "  const g = [];"
    "  for (let i = 0; i < 50000; i++) g.push({i, s: 'y'.repeat(64) + i});"
    "  live.push(g.slice(0, 2000));"
    "}"
    "console.log(live.length);"
)


def trial(cmd: list[str], backend: str, mib: int, hints: bool, cwd: Path, timeout: float) -> bool:
    """Whether ``cmd`` ends ok under a ``mib`` MiB cap."""
    args = [AGENT_SUPERVISE, "run", "--json", "--backend", backend, "--memory", f"{mib}M"]
    args += ["--timeout", f"{timeout:.0f}s"] + ([] if hints else ["--no-runtime-hints"])
    proc = subprocess.run(
        [*args, "--", *cmd], cwd=cwd, capture_output=True, timeout=timeout + 30, env=_env(cwd)
    )
    last = proc.stderr.decode(errors="replace").strip().splitlines()[-1]
    return json.loads(last[last.rfind('{"reason"') :])["reason"] == "ok"


def _env(cwd: Path) -> dict[str, str]:
    """The benchmark's own environment: npm's cache in the scratch folder, and none of
    the hints' variables of the caller's."""
    env = {k: v for k, v in os.environ.items() if k not in HINTED}
    return env | {"npm_config_cache": str(cwd / ".npm-cache"), "npm_config_update_notifier": "0"}


def smallest_cap(fits: Callable[[int], bool], lo: int, hi: int, tolerance: float) -> int | None:
    """The smallest cap in MiB in (lo, hi] at which ``fits``, to within ``tolerance``
    (bisection on a log scale; ``lo`` is taken not to fit); None if ``hi`` does not."""
    if not fits(hi):
        return None
    while hi / lo > 1 + tolerance:
        mid = round((lo * hi) ** 0.5)
        if mid in (lo, hi):
            break
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def ts_project(proj: Path, package: str) -> Path:
    """A small strict TypeScript project whose ``npx tsc`` is ``package``'s (from
    .bench/npm, linked: npx finds it without the network)."""
    (proj / "src").mkdir(parents=True)
    (proj / "node_modules" / ".bin").mkdir(parents=True)
    os.symlink(NPM_BIN / package, proj / "node_modules" / "typescript")
    os.symlink("../typescript/bin/tsc", proj / "node_modules" / ".bin" / "tsc")
    options = '"strict": true, "target": "es2020", "rootDir": "src", "outDir": "out"'
    (proj / "tsconfig.json").write_text(f'{{"compilerOptions": {{{options}}}}}')
    for n in range(30):
        (proj / "src" / f"m{n}.ts").write_text(
            f"export interface R{n} {{ id: number; tags: string[] }}\n"
            f"export class C{n}<T extends R{n}> {{\n"
            "  private items: T[] = [];\n"
            "  add(x: T): this { this.items.push(x); return this; }\n"
            "  byTag(t: string): T[] { return this.items.filter(i => i.tags.includes(t)); }\n"
            "}\n"
        )
    return proj


def programs(work: Path, quick: bool) -> dict[str, tuple[list[str], Path]]:
    """name -> (command, folder it runs in)."""
    rounds = 15 if quick else 60
    script = NODE_SCRIPT.replace("ROUNDS", str(rounds))
    found = {f"node -e ({rounds} rounds of garbage)": (["node", "-e", script], work)}
    if quick:
        return found
    for package, what in TYPESCRIPTS.items():
        if (NPM_BIN / package / "bin" / "tsc").exists():
            found[f"npx tsc: {what}, 30 small modules"] = (
                ["npx", "tsc", "-p", "."],
                ts_project(work / package, package),
            )
    if shutil.which("npm"):
        pkg, proj = work / "tiny", work / "app"
        pkg.mkdir()
        proj.mkdir()
        (pkg / "package.json").write_text('{"name": "tiny", "version": "1.0.0"}')
        (pkg / "index.js").write_text("module.exports = 1;\n")
        subprocess.run(["npm", "pack", "--silent"], cwd=pkg, check=True, capture_output=True)
        (proj / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
        tarball = str(pkg / "tiny-1.0.0.tgz")
        cmd = ["npm", "install", "--offline", "--no-audit", "--no-fund", tarball]
        found["npm install (a local tarball, offline)"] = (cmd, proj)
    return found


def measure(cmd: list[str], cwd: Path, backend: str, high: int, tolerance: float) -> list[str]:
    """One table row: the smallest caps without and with the hints, their ratio."""
    t0 = time.monotonic()
    if not trial(cmd, backend, high, True, cwd, 120):
        return [backend, "-", "-", "-", f"did not finish at {high}M"]
    timeout = max(3.0, 3 * (time.monotonic() - t0))
    without, with_ = (
        smallest_cap(
            lambda m, h=hints: trial(cmd, backend, m, h, cwd, timeout), LOW_MIB, high, tolerance
        )
        for hints in (False, True)
    )
    ratio = f"{with_ / without:.2f}×" if without and with_ else "-"
    return [backend, f"{without or '-'}", f"{with_ or '-'}", ratio, f"{timeout:.0f}"]


def run(quick: bool) -> Section:
    here = [p.name for p in probe_all() if p.available and p.name in BACKENDS]
    here = [b for b in here if b != "cgroup2"] if quick else here
    tolerance = QUICK_TOLERANCE if quick else TOLERANCE
    high = QUICK_HIGH_MIB if quick else HIGH_MIB
    work = Path(tempfile.mkdtemp(prefix="bench-hints-"))
    try:
        rows = [
            [name, *measure(cmd, cwd, backend, high, tolerance)]
            for name, (cmd, cwd) in programs(work, quick).items()
            for backend in here
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gains = [float(r[4][:-1]) for r in rows if r[4].endswith("×")]
    worse = [g for g in gains if g > 1 + tolerance]
    return Section(
        "Runtime hints: the smallest cap at which Node programs finish",
        "Each program under `agent-supervise run`, the smallest cap (MiB) at which it "
        f"ends ok, found by bisection on a log scale to within {tolerance:.0%} between "
        f"{LOW_MIB}M and {high}M, without (`--no-runtime-hints`) and with the "
        "runtime hints (`--max-old-space-size` = 75% of the cap and "
        "`--max-semi-space-size` = V8's own for that memory, appended to "
        "NODE_OPTIONS); one run per cap. A run that hangs at its cap ends at its "
        "--timeout (s: 3× its time at the top cap, at least 3) and counts as not fitting. "
        "No network: tsc from .bench/npm, npm installs a local tarball offline "
        "(bench/hints.py).",
        ["program", "backend", "without hints", "with hints", "with / without", "timeout"],
        rows,
        target="with the hints, no program needs a larger cap than without "
        f"(within the {tolerance:.0%} of the bisection).",
        notes=[verdict(not worse and bool(gains), f"{len(worse)} of {len(gains)} rows worse")],
    )
