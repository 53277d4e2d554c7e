"""Shared fixtures: real children, the backends this machine has, and leak checks.

The pytest process makes itself a child subreaper, so any process a test lets
escape (a double-forked grandchild its supervisor failed to kill) is reparented
here instead of to init, where the autouse ``no_leaks`` fixture sees it, kills it,
and fails the test. The same fixture fails a test that leaves a zombie or a cage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent_supervise.limits import BACKEND_NAMES, probe_all
from agent_supervise.limits.base import is_cage_name
from agent_supervise.limits.cgroupfs import cgroup_mounts
from agent_supervise.linux import become_subreaper

# pytest imports this file under a name of its own (--import-mode=importlib); tests
# `import conftest` too: make that the same module, so its state (FIGURES) is shared.
sys.modules.setdefault("conftest", sys.modules[__name__])

CHILDREN = Path(__file__).parent / "children"
ALLOC = str(CHILDREN / "alloc.py")
ESCAPE = str(CHILDREN / "escape.py")
NODE_ALLOC = str(CHILDREN / "node_alloc.js")
PY = sys.executable
MiB = 1 << 20
#: Seconds a test may wait for its processes to be gone before calling it a leak.
LEAK_PATIENCE_S = 5.0

_PROBES = {p.name: p for p in probe_all()}


def required_backends() -> set[str]:
    """Backends that must run here. Under CI=true a skip of one is a failure."""
    names = os.environ.get("AGENT_SUPERVISE_REQUIRE_BACKENDS")
    if names is None:
        names = "cgroup1,rlimit" if os.environ.get("CI") == "true" else ""
    return {n for n in names.split(",") if n}


def require_backend(name: str) -> None:
    probe = _PROBES[name]
    if probe.available:
        return
    if name in required_backends():
        pytest.fail(f"backend {name} is required here but unavailable: {probe.detail}")
    pytest.skip(f"backend {name} unavailable on this machine: {probe.detail}")


def require_tool(present: bool, what: str) -> None:
    """Skip where a test tool is missing, except under CI=true, where .ci/run installs
    it: there a skip would hide a test that never runs."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI=true (.ci/run should install it)")
    pytest.skip(f"{what} is missing")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request) -> str:
    """Each backend in turn; skipped (with the reason) only where it is absent."""
    require_backend(request.param)
    return request.param


@pytest.fixture(autouse=True, scope="session")
def subreaper() -> None:
    """Escaped descendants of any test land here, where no_leaks finds them."""
    become_subreaper()


# -- leak detection ------------------------------------------------------------------

def cage_dirs() -> set[str]:
    """Every cage directory (ours, by name) in the memory-capable hierarchies."""
    found = set()
    for mount in cgroup_mounts():
        if mount.fstype == "cgroup" and "memory" not in mount.options:
            continue
        for top, dirs, _ in os.walk(mount.point):
            for d in list(dirs):
                if is_cage_name(d):
                    found.add(os.path.join(top, d))
                    dirs.remove(d)
            if top.count("/") - mount.point.count("/") >= 4:
                dirs[:] = []
    return found


def reap_orphans(timeout: float = 5.0) -> None:
    """Reap what a test's killed supervisor left behind: its agents were reparented to
    pytest (a subreaper for leak checks); init would reap them elsewhere."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process().children()
        if not kids:
            return
        for child in kids:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.NoSuchProcess, ChildProcessError):
                pass
        time.sleep(0.02)


def _reap_zombies() -> list[int]:
    zombies = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    return zombies


@pytest.fixture(autouse=True)
def no_leaks():
    cages_before = cage_dirs()
    yield
    deadline = time.monotonic() + LEAK_PATIENCE_S
    me = psutil.Process()
    while True:
        live = [p for p in me.children(recursive=True)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    zombies = _reap_zombies()
    leaked = []
    for p in live:
        try:
            leaked.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(live, timeout=5)
    _reap_zombies()
    # A cage whose supervisor still runs belongs to someone else's test session on
    # this machine, not to this test, unless that supervisor is this very process.
    new_cages = {p for p in cage_dirs() - cages_before
                 if _cage_owner(p) in (None, os.getpid())}
    for path in new_cages:
        _remove_cage(path)
    problems = []
    if leaked:
        problems.append(f"leaked processes: {leaked}")
    if zombies:
        problems.append(f"unreaped zombies: {zombies}")
    if new_cages:
        problems.append(f"leaked cages: {sorted(new_cages)}")
    if problems:
        pytest.fail("; ".join(problems))


def _cage_owner(path: str) -> int | None:
    """The pid of the live supervisor that owns a cage, or None if it is gone."""
    from agent_supervise.limits.base import stale_owner
    name = os.path.basename(path)
    if stale_owner(name) is not None:
        return None
    return int(name.split(".")[1].split("-")[0])


def _remove_cage(path: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


# -- running the CLI -----------------------------------------------------------------

def run_cli(*args, timeout: float = 60, input: bytes | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``agent-supervise ARGS`` as a real process (``python -m agent_supervise``)."""
    return subprocess.run([PY, "-m", "agent_supervise", *args], capture_output=True,
                          timeout=timeout, input=input, env=env)


def json_outcome(proc: subprocess.CompletedProcess) -> dict:
    """The ``--json`` outcome: the last line of stderr."""
    lines = proc.stderr.decode().strip().splitlines()
    assert lines, f"no output on stderr; stdout={proc.stdout[-500:]!r}"
    return json.loads(lines[-1])


def supervise(backend: str, *cmd, memory: str = "50M", extra=(), timeout: float = 60):
    """Run ``cmd`` under the CLI with ``--json``; return (outcome dict, completed)."""
    proc = run_cli("run", "--json", "--backend", backend, "--memory", memory, *extra,
                   "--", *cmd, timeout=timeout)
    out = json_outcome(proc)
    assert proc.returncode == out["exit_code"], (proc.returncode, out)
    return out, proc


# -- figures for the README's reliability section ------------------------------------

#: group -> backend -> case -> contained (True once the test's assertions passed)
FIGURES: dict = {}
FIGURES_FILE = os.environ.get("AGENT_SUPERVISE_FIGURES", "")


def record_figure(group: str, key: str, case: str, contained: bool) -> None:
    """A reliability figure: a test records the case when it starts, then again as
    contained when every assertion has passed (a failed test stays not contained)."""
    FIGURES.setdefault(group, {}).setdefault(key, {})[case] = contained


def merge_figures(figures: dict) -> None:
    """Figures measured elsewhere (the VM guests) join this session's."""
    for group, keys in figures.items():
        for key, cases in keys.items():
            for case, contained in cases.items():
                record_figure(group, key, case, contained)


README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- BEGIN reliability figures", "<!-- END reliability figures -->"


def figures_block(figures: dict) -> str:
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
    return "\n".join([
        f"{BEGIN} (written by the test suite, tests/conftest.py; do not edit) -->",
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
        END])


def pytest_sessionfinish(session, exitstatus):
    if FIGURES and FIGURES_FILE:
        import json as _json
        with open(FIGURES_FILE, "w") as f:
            _json.dump(FIGURES, f, indent=1, sort_keys=True)
    if os.environ.get("AGENT_SUPERVISE_IN_VM") or not {"hostile", "soak",
                                                        "badinput"} <= FIGURES.keys():
        return  # only a full run of the reliability tests rewrites the README's figures
    text = README.read_text()
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        README.write_text(text[:start] + figures_block(FIGURES) + text[end:])
