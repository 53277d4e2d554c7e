"""The folders show the parts, and their imports go one way (README: Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
#: folder -> the parts of agent_supervise it must never import at run time
FORBIDDEN = {
    "supervisor/run": ("fleet", "observe", "ray"),
    "limits": ("fleet", "observe", "ray", "run.single"),
    "agents": ("fleet", "observe", "ray", "run"),
    "supervisor/observe": ("ray",),
}


def _runtime_imports(path: Path):
    """Modules imported outside ``if TYPE_CHECKING:`` blocks, with their lines."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            yield node.lineno, node.module or ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_go_one_way(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in _runtime_imports(path):
            for part in FORBIDDEN[folder]:
                if module == f"agent_supervise.{part}" or module.startswith(
                    f"agent_supervise.{part}."
                ):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_module_is_left_flat_that_belongs_to_a_part():
    flat = {p.stem for p in (ROOT / "supervisor").glob("*.py")}
    for part in ("run", "fleet", "observe", "ray"):
        inside = {p.stem for p in (ROOT / "supervisor" / part).glob("*.py")} - {"__init__"}
        assert not flat & inside, flat & inside
    # the one shim: the README of 0.1 documented agent_supervise.raycluster
    assert {n for n in flat if n.startswith("ray")} == {"raycluster"}


def test_the_launch_sequence_exists_once():
    """Only run/launch.py spawns an agent (and creates its cage for it): the sequence
    that keeps an agent from ever running uncapped is written once."""
    spawning, caging = [], []
    for path in sorted((ROOT / "supervisor").rglob("*.py")):
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        if "spawner.spawn(" in text:
            spawning.append(rel)
        if "backend.create(" in text:
            caging.append(rel)
    assert spawning == ["supervisor/run/launch.py"], spawning
    assert caging == ["supervisor/run/launch.py"], caging
