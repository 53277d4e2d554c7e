"""Run the GitHub Actions workflow's jobs inside the systemd guest, as a runner would.

The guest stands in for GitHub's ``ubuntu-latest``: the job's steps run as user
``runner`` (uid 1002 here) with passwordless sudo, from root's service cgroup
(``system.slice``), without a login session or a user manager, in a workspace of its
own, each ``run:`` step as ``bash --noprofile --norc -eo pipefail`` (GitHub's default
shell on Linux) with ``CI=true``. Each matrix entry is one job, in the workflow's
order, in the same guest (as on one runner, one after another).

What cannot run here is replaced, and each replacement is recorded in the results:

* ``actions/checkout``: the checkout is copied into the job's workspace (without
  ``.git``, ``.venv`` and build output);
* ``actions/setup-python``: the interpreter of this test run (the repository's venv,
  where agent-supervise is installed in editable mode) comes first on ``PATH``;
* the ``pip install .`` step: the guest has no network; the venv above already has
  the package installed from this checkout;
* ``actions/upload-artifact``: nothing to upload to.

Only ``${{ matrix.* }}`` expressions, and ``if:`` of ``always()`` or ``matrix.*``, are
understood; anything else makes the job fail here, saying so, rather than run a step
unlike GitHub would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "agent-smoke.yml"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
RUNNER, RUNNER_UID = "runner", 1002
#: What GitHub's runner images put on PATH after setup-python (the tool cache first).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STAND_INS = {
    "actions/checkout": "the checkout copied into the workspace",
    "actions/setup-python": "this test run's venv first on PATH",
    "actions/upload-artifact": "not uploaded (no GitHub here)",
}
PIP_INSTALL = "python -m pip install ."


class Unsupported(Exception):
    """The workflow uses something this stand-in does not emulate."""


def expand(text: str, matrix: dict) -> str:
    def one(m: re.Match) -> str:
        expr = m.group(1)
        if expr.startswith("matrix.") and expr[7:] in matrix:
            return str(matrix[expr[7:]])
        raise Unsupported(f"expression ${{{{ {expr} }}}}")

    return EXPR.sub(one, text)


def condition(expr, matrix: dict) -> bool:
    if expr is None:
        return True
    m = EXPR.fullmatch(str(expr).strip())
    expr = m.group(1) if m else str(expr).strip()
    if expr == "always()":
        return True
    if expr.startswith("matrix.") and expr[7:] in matrix:
        return bool(matrix[expr[7:]])
    raise Unsupported(f"if: {expr}")


def ignored() -> list[str]:
    """The repository's .gitignore as basename patterns, and .git itself."""
    patterns = [".git"]
    for line in (REPO / ".gitignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            patterns.append(line.rstrip("/").rsplit("/", 1)[-1])
    return patterns


def jobs() -> list[tuple[str, dict, list[dict]]]:
    """(job name, matrix entry, steps) for each job the workflow's matrix makes."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    found = []
    for job in doc["jobs"].values():
        entries = job.get("strategy", {}).get("matrix", {}).get("include") or [{}]
        for matrix in entries:
            found.append((expand(job.get("name", "job"), matrix), matrix, job["steps"]))
    return found


def checkout(workspace: Path) -> None:
    """What actions/checkout would give the job: the tree without what git ignores
    (a developer's .bench/ holds ~1 GiB of node_modules and venvs, which filled the
    guest's disk)."""
    shutil.copytree(REPO, workspace, symlinks=True, ignore=shutil.ignore_patterns(*ignored()))
    for top, dirs, files in os.walk(workspace):
        for name in dirs + files:
            os.lchown(os.path.join(top, name), RUNNER_UID, RUNNER_UID)
    os.chown(workspace, RUNNER_UID, RUNNER_UID)


def run_job(index: int, name: str, matrix: dict, steps: list[dict], deadline: float) -> dict:
    workspace = Path(f"/home/{RUNNER}/work/job{index}")
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    os.chown(workspace.parent, RUNNER_UID, RUNNER_UID)
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:{SYSTEM_PATH}",
        "HOME": f"/home/{RUNNER}",
        "USER": RUNNER,
        "LOGNAME": RUNNER,
        "LANG": "C.UTF-8",
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "RUNNER_OS": "Linux",
        "GITHUB_WORKSPACE": str(workspace),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    found = {"name": name, "matrix": matrix, "steps": [], "ok": True}
    failed = False
    for i, step in enumerate(steps):
        label = step.get("name") or step.get("uses") or f"step {i}"
        record = {"name": label, "rc": None, "out": "", "err": "", "t": 0.0}
        found["steps"].append(record)
        try:
            record["name"] = label = expand(label, matrix)
            wanted = condition(step.get("if"), matrix)
            if failed and "always()" not in str(step.get("if")):
                record["skipped"] = "an earlier step failed"
                continue
            if not wanted:
                record["skipped"] = f"if: {step.get('if')} is false"
                continue
            if "uses" in step:
                action = step["uses"].split("@")[0]
                if action not in STAND_INS:
                    raise Unsupported(f"uses: {step['uses']}")
                record["stand_in"] = STAND_INS[action]
                if action == "actions/checkout":
                    checkout(workspace)
                record["rc"] = 0
                continue
            script = expand(step["run"], matrix)
        except Unsupported as err:
            record.update(rc=None, err=f"not emulated: {err}")
            failed, found["ok"] = True, False
            continue
        if script.strip() == PIP_INSTALL:
            record.update(rc=0, stand_in="no network: the venv has it installed already")
            continue
        record["cmd"] = script
        path = workspace / f".step{i}.sh"
        path.write_text(script)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [
                    "runuser",
                    "-u",
                    RUNNER,
                    "--",
                    "env",
                    "-i",
                    *(f"{k}={v}" for k, v in env.items()),
                    "bash",
                    "--noprofile",
                    "--norc",
                    "-eo",
                    "pipefail",
                    str(path),
                ],
                cwd=workspace,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(5.0, min(60.0, deadline - time.monotonic())),
            )
            record.update(
                rc=proc.returncode,
                out=proc.stdout.decode(errors="replace"),
                err=proc.stderr.decode(errors="replace"),
            )
        except subprocess.TimeoutExpired as err:
            record.update(
                rc=None,
                out=(err.stdout or b"").decode(errors="replace"),
                err=f"timed out after {err.timeout:.0f} s",
            )
        record["t"] = round(time.monotonic() - started, 2)
        if record["rc"] != 0:
            failed, found["ok"] = True, False
    return found


def fresh_runner() -> str:
    """Each GitHub job gets a fresh machine: undo what a job's sudo left that changes
    what the next one gets (runner's linger, hence its user manager)."""
    subprocess.run(["loginctl", "disable-linger", RUNNER], capture_output=True)
    unit = f"user@{RUNNER_UID}.service"
    subprocess.run(
        ["systemctl", "stop", unit, f"user-runtime-dir@{RUNNER_UID}.service"],
        capture_output=True,
        timeout=30,
    )
    return subprocess.run(
        ["systemctl", "is-active", unit], capture_output=True, text=True
    ).stdout.strip()


def run_all(deadline: float) -> list[dict]:
    found = []
    for i, (name, matrix, steps) in enumerate(jobs()):
        found.append(run_job(i, name, matrix, steps, deadline))
        found[-1]["user_manager_after_reset"] = fresh_runner()
    return found
