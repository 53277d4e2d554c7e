"""The installed import package is agent_supervise alone.

The names supervisor, limits and agents belong to supervisord, the `limits` rate
limiter and the OpenAI Agents SDK, which our users install too: the wheel must not
put a module of those names (or any other) into site-packages.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_has_only_agent_supervise(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("agent_supervise-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"agent_supervise"}, sorted(top)
    for sub in (
        "agent_supervise/limits/cgroup2.py",
        "agent_supervise/agents/__init__.py",
        "agent_supervise/cli/__init__.py",
        "agent_supervise/cli/runargs.py",
        "agent_supervise/_spawn.pyi",
        "agent_supervise/__main__.py",
        "agent_supervise/py.typed",
    ):
        assert sub in names
    (info,) = dist_info
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "agent-supervise = agent_supervise.cli:main" in entry_points


def test_no_stray_top_level_names_are_importable():
    probe = (
        "import importlib.util as u; print([n for n in ('supervisor', 'limits', "
        "'agents') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert out.stdout.strip() == "[]", out


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "agent_supervise", "--version"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert out.returncode == 0 and "agent-supervise, version" in out.stdout
