"""The declared seams (seams.py): every engine and run type has every member of its
Protocol, and no code probes an engine, run, cage or backend with getattr."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

from agent_supervise.agents.spec import PoolSettings, SupervisorSettings, Task
from agent_supervise.fleet.engine import LocalEngine
from agent_supervise.fleet.pool import PooledRun
from agent_supervise.fleet.seams import Engine, RunView
from agent_supervise.outcome import Outcome, Reason
from agent_supervise.ray.cluster import ClusterMemory
from agent_supervise.ray.engine import RayEngine
from agent_supervise.ray.remoterun import RemoteRun
from agent_supervise.rundir import RunDir

from conftest import CHILDREN, PY
from fleetfakes import FakeClock, FakeEngine

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def task(tmp_path, cmd, **extra) -> Task:
    return Task(
        id=f"{extra.pop('agent', 's')}-1",
        agent="s",
        n=1,
        cmd=tuple(cmd),
        memory_limit=40 * MiB,
        timeout=None,
        grace=1.0,
        cwd=str(tmp_path),
        **extra,
    )


def drain(engine: LocalEngine, timeout: float = 20) -> list:
    """Step until every task run and pool worker has ended."""
    ended: list = []
    deadline = time.monotonic() + timeout
    while engine.runs or engine.retire_pools("the test is over") or engine.processes():
        assert time.monotonic() < deadline, "the engine did not finish"
        ended += engine.step(0.05)
    return ended


def test_the_local_engine_and_its_runs_are_what_the_fleet_expects(tmp_path):
    engine = LocalEngine(SupervisorSettings(backend="rlimit"))
    rundir = RunDir(str(tmp_path / "runs"))
    try:
        assert isinstance(engine, Engine)
        run = engine.start(task(tmp_path, ["/bin/true"]), rundir)
        assert isinstance(run, RunView) and not isinstance(run, Outcome)
        assert (run.node, run.lost, run.backend) == (None, False, "rlimit-data")
        assert run.cage_name and run.pid and run.state == "running"
        (ended,) = drain(engine)
        assert ended is run and ended.outcome.reason is Reason.OK
    finally:
        engine.stop_all(Reason.STOPPED)
        drain(engine)
        engine.close()


def test_a_pooled_run_is_a_run_view(tmp_path):
    engine = LocalEngine(SupervisorSettings(backend="rlimit"))
    rundir = RunDir(str(tmp_path / "runs"))
    try:
        run = engine.start(
            task(tmp_path, [PY, str(CHILDREN / "pool_worker.py")], pool=PoolSettings(size=1)),
            rundir,
        )
        assert isinstance(run, PooledRun) and isinstance(run, RunView)
        assert run.state == "on s-w1" and run.node is None and run.pid
        assert run.backend == "rlimit-data" and run.cage_name
        (ended,) = drain(engine)
        assert ended is run and ended.outcome.reason is Reason.OK and not ended.lost
    finally:
        engine.stop_all(Reason.STOPPED)
        drain(engine)
        engine.close()


def test_the_ray_run_is_a_run_view_and_the_ray_engine_has_every_member(tmp_path):
    run = RemoteRun(task(tmp_path, ["true"]), gen=None, key="r/s-1/1", rundir=None, now=1.0)
    assert isinstance(run, RunView)
    assert (run.state, run.pid, run.node, run.backend) == ("pending", None, None, "ray")
    run.placed({"pid": 7, "node": "n1", "where": "node n1", "cage": "c", "backend": "rlimit"})
    run.sampled({"usage": 5, "peak": 9})
    assert (run.state, run.pid, run.node, run.cage_name, run.usage, run.peak) == (
        "running",
        7,
        "n1",
        "c",
        5,
        9,
    )
    # Without a cluster: every method and class attribute the protocol names.
    members = {name for name in vars(Engine) if not name.startswith("_")} | set(
        Engine.__annotations__
    )
    missing = {name for name in members - {"runs"} if not hasattr(RayEngine, name)}
    assert not missing
    assert "self.runs" in Path(ROOT / "supervisor/ray/engine.py").read_text()


def test_cluster_memory_counts_what_the_ray_engine_reserved():
    """The Ray engine is given its ClusterMemory (and its callbacks) when it is made,
    and tells it each request; admission sees the budgets minus those."""
    cluster = SimpleNamespace(
        budgets=lambda: [300 * MiB, 200 * MiB], settings=SimpleNamespace(memory_overhead=MiB)
    )
    memory = ClusterMemory(cluster)
    try:
        assert memory.available() == 499 * MiB and memory.total() == 500 * MiB
        memory.reserve("a-1", 100 * MiB)
        memory.reserve("b-1", 50 * MiB)
        assert memory.available() == 349 * MiB
        memory.release("a-1")
        assert memory.available() == 449 * MiB
    finally:
        memory.close()
    for module in ("cluster", "fleet"):
        text = (ROOT / f"supervisor/ray/{module}.py").read_text()
        assert not re.search(r"engine\.\w+\s*=[^=]", text), module


def test_the_fleet_rules_fakes_keep_to_the_protocols():
    engine = FakeEngine(FakeClock())
    assert isinstance(engine, Engine)
    run = engine.start(
        Task(
            id="s-1",
            agent="s",
            n=1,
            cmd=("true",),
            memory_limit=MiB,
            timeout=None,
            grace=1.0,
            cwd="/",
        ),
        None,
    )
    assert isinstance(run, RunView)


#: getattr uses that are not probes of the project's engines, runs, cages or
#: backends: the stdlib's and yaml's own objects, and a lazy module attribute.
ALLOWED = {
    "supervisor/fleet/engine.py": [
        'getattr(os.environ, "_data"',  # CPython's bytes view
        'getattr(self.credentials(task), "uid"',
    ],  # no user: None
    "supervisor/stdio.py": [
        "getattr(sys, name)",
        'getattr(stream, "buffer"',
        'getattr(stream, "write_through"',
    ],
    "supervisor/errors.py": ["getattr(self, name)"],  # an error's structured fields
    "supervisor/outcome.py": ["getattr(self, f)"],  # its dataclass fields, fast
    "supervisor/__init__.py": ["getattr(importlib.import_module(home), name)"],  # lazy names
    "supervisor/fleet/__init__.py": ["getattr(supervisor, name)"],  # lazy public names
    "agents/yamlbound.py": ['getattr(yaml, "CSafeLoader"'],
    "agents/bounds.py": ["getattr(err, 'strerror'"],  # any OSError
    "agents/kinds.py": ['getattr(self, f"_{self.kind}")'],  # a field kind's parser
}


def test_no_getattr_probes_are_left():
    found = []
    for folder in ("supervisor", "limits", "agents"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\b(getattr|hasattr)\(", line) and not any(
                    allowed in line for allowed in ALLOWED.get(name, [])
                ):
                    found.append(f"{name}:{n}: {line.strip()}")
    # hasattr(os, ...): whether this Python has a system call, not a probe of ours.
    assert [f for f in found if "hasattr(os," not in f] == []
