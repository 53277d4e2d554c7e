"""``agent-supervise export slurm``: the script's content, one task run locally through
it, and the whole array on a real one-node Slurm (Debian's slurm-wlm and munge,
started by the test in a temporary folder; skipped where they are not installed,
except under CI=true)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import ALLOC, PY, reap_orphans, require_tool, run_cli

EXE = str(Path(sys.executable).with_name("agent-supervise"))


def fleet_file(tmp_path: Path, max_concurrent: int = 2) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  max_concurrent: {max_concurrent}\n  grace: 1s\n"
        "agents:\n"
        "  nap:\n"
        '    cmd: [sh, -c, \'date +%s.%N > $AGENT_ID.start; echo "$GREETING {who}"; '
        "sleep 1; date +%s.%N > $AGENT_ID.end']\n"
        "    env: {GREETING: hello}\n    memory_limit: 30M\n    timeout: 1m\n"
        f"  hog:\n    cmd: ['{PY}', '{ALLOC}', --interval, '0.004']\n"
        "    memory_limit: 50M\n    timeout: 2m\n"
        "tasks:\n  - {agent: nap, repeat: 4, vars: {who: world}}\n  - {agent: hog}\n"
    )
    return path


def export(fleet: Path, *args: str) -> str:
    proc = run_cli("export", "slurm", "--agent-supervise", EXE, *args, str(fleet))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def branches(script: str) -> dict[int, list[str]]:
    """Array index -> the exec'd command line of its case branch."""
    found = {}
    for index, body in re.findall(r"^  (\d+)\)(.*?);;$", script, re.MULTILINE | re.DOTALL):
        (exec_line,) = [ln.strip() for ln in body.splitlines() if ln.strip().startswith("exec ")]
        found[int(index)] = shlex.split(exec_line)[1:]
    return found


def test_the_script_is_one_array_with_the_caps_throttle_and_commands(tmp_path):
    fleet = fleet_file(tmp_path, max_concurrent=3)
    script = export(fleet)
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.MULTILINE))
    assert sbatch["array"] == "0-4%3"  # 5 tasks, 3 at once
    assert sbatch["mem"] == f"{50 + 64}M"  # largest cap + headroom
    assert sbatch["time"] == "4"  # 2m + 1s grace, + 1 min
    assert sbatch["job-name"] == "fleet"
    runs = branches(script)
    assert sorted(runs) == [0, 1, 2, 3, 4]
    for i in range(4):
        cmd = runs[i]
        assert cmd[:2] == [EXE, "run"] and "--json" in cmd
        assert cmd[cmd.index("--memory") + 1] == str(30 << 20)
        assert cmd[cmd.index("--timeout") + 1] == "60s"
        assert cmd[cmd.index("--grace") + 1] == "1s"
        assert cmd[cmd.index("--") + 1 :][:2] == ["sh", "-c"]
        assert "hello {who}" not in script and "$GREETING world" in cmd[-1]
    assert runs[4][runs[4].index("--memory") + 1] == str(50 << 20)
    assert "# nap-4 (" in script and "# hog-1 (" in script
    assert "export GREETING=hello AGENT_ID=nap-2 AGENT_ATTEMPT=1" in script
    assert export(fleet, "--max-concurrent", "1", "--headroom", "0").count("%1\n") == 1


def test_one_array_task_runs_locally_through_the_script(tmp_path):
    script = tmp_path / "fleet.sbatch"
    script.write_text(export(fleet_file(tmp_path)))
    env = {**os.environ, "SLURM_SUBMIT_DIR": str(tmp_path)}
    ok = subprocess.run(
        ["bash", str(script)],
        env={**env, "SLURM_ARRAY_TASK_ID": "1"},
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == b"hello world\n"
    assert json.loads(ok.stderr.splitlines()[-1])["reason"] == "ok"
    assert (tmp_path / "nap-2.end").exists()  # AGENT_ID and cwd came through
    hog = subprocess.run(
        ["bash", str(script)],
        env={**env, "SLURM_ARRAY_TASK_ID": "4"},
        capture_output=True,
        timeout=60,
    )
    outcome = json.loads(hog.stderr.splitlines()[-1])
    assert hog.returncode == 137 and outcome["reason"] in ("oom_killed", "memory_exceeded")
    assert outcome["limit_bytes"] == 50 << 20
    missing = subprocess.run(
        ["bash", str(script)],
        env={**env, "SLURM_ARRAY_TASK_ID": "9"},
        capture_output=True,
        timeout=60,
    )
    assert missing.returncode == 2 and b"no task 9" in missing.stderr


def test_a_pooled_agent_is_refused(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text("agents:\n  w:\n    cmd: [cat]\n    pool: {size: 1}\ntasks:\n  - {agent: w}\n")
    proc = run_cli("export", "slurm", str(path))
    assert proc.returncode == 2 and b"warm pools cannot be exported" in proc.stderr


# -- a real Slurm ------------------------------------------------------------------------

SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OneNodeSlurm:
    """munged, slurmctld and slurmd for one node (this machine), all state in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        root.mkdir()
        (root / "state").mkdir()
        (root / "spool").mkdir()
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.socket = root / "munge.socket"
        self.conf = root / "slurm.conf"
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=astest",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CryptoType=crypto/munge",
                    f"AuthInfo=socket={self.socket}",
                    f"StateSaveLocation={root}/state",
                    f"SlurmdSpoolDir={root}/spool",
                    f"SlurmctldPidFile={root}/slurmctld.pid",
                    f"SlurmdPidFile={root}/slurmd.pid",
                    f"SlurmctldLogFile={root}/slurmctld.log",
                    f"SlurmdLogFile={root}/slurmd.log",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "SlurmdParameters=config_overrides",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    # 8 CPUs declared: the array's throttle, not the CPU count, must limit it
                    f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN",
                    "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pidfiles = [root / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]

    def start(self) -> None:
        r = self.root
        self._run(
            [
                "munged",
                "--force",
                f"--key-file={r}/munge.key",
                f"--socket={self.socket}",
                f"--pid-file={r}/munged.pid",
                f"--log-file={r}/munged.log",
                f"--seed-file={r}/munged.seed",
            ]
        )
        self._run(["slurmctld", "-i", "-f", str(self.conf)])
        self._run(["slurmd", "-N", self.host, "-f", str(self.conf)])
        deadline = time.monotonic() + 30
        while "idle" not in self._run(["sinfo", "-h", "-o", "%t"], check=False):
            assert time.monotonic() < deadline, (self.root / "slurmd.log").read_text()[-2000:]
            time.sleep(0.2)

    def _run(self, cmd, check=True) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, timeout=30)
        if check:
            assert done.returncode == 0, (cmd, done.stderr)
        return done.stdout.decode()

    def sbatch(self, script: Path, cwd: Path) -> str:
        out = self._run(["sbatch", "--parsable", f"--chdir={cwd}", str(script)])
        return out.strip().split(";")[0]

    def wait(self, job: str, timeout: float = 60) -> list[dict]:
        """Every array task's record once none is pending or running."""
        deadline = time.monotonic() + timeout
        while self._run(["squeue", "-h", "-j", job], check=False).strip():
            assert time.monotonic() < deadline, self._run(["squeue"], check=False)
            time.sleep(0.2)
        records = []
        for line in self._run(["scontrol", "-o", "show", "job", job]).splitlines():
            records.append(dict(re.findall(r"(\w+)=(\S+)", line)))
        return records

    def stop(self) -> None:
        for pidfile in reversed(self.pidfiles):
            try:
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                reap_orphans(0.05)  # daemons are children of pytest, a subreaper
                time.sleep(0.05)
        reap_orphans(1.0)


def test_the_array_runs_on_a_real_slurm(tmp_path):
    require_tool(
        all(shutil.which(t) for t in SLURM_TOOLS),
        "Slurm and munge (apt-get install slurmctld slurmd slurm-client munge)",
    )
    slurm = OneNodeSlurm(tmp_path / "slurm")
    work = tmp_path / "work"
    work.mkdir()
    script = work / "fleet.sbatch"
    fleet = fleet_file(work)
    script.write_text(export(fleet))
    t0 = time.monotonic()
    try:
        slurm.start()
        records = slurm.wait(slurm.sbatch(script, work))
    finally:
        slurm.stop()
    elapsed = time.monotonic() - t0
    by_index = {int(r["ArrayTaskId"]): r for r in records}
    assert sorted(by_index) == [0, 1, 2, 3, 4], records
    for i in range(4):
        assert (by_index[i]["JobState"], by_index[i]["ExitCode"]) == ("COMPLETED", "0:0")
    assert by_index[4]["ExitCode"] == "137:0"  # agent-supervise's code for a memory kill
    job = by_index[0]["ArrayJobId"]
    hog_err = (work / f"fleet-{job}_4.err").read_text().strip().splitlines()
    assert json.loads(hog_err[-1])["reason"] in ("oom_killed", "memory_exceeded")
    assert (work / f"fleet-{job}_0.out").read_text() == "hello world\n"
    spans = [
        (float((work / f"nap-{n}.start").read_text()), float((work / f"nap-{n}.end").read_text()))
        for n in range(1, 5)
    ]
    overlap = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    assert overlap <= 2, spans  # the %2 throttle held on a node with 8 CPUs
    print(f"\nslurm: 5 array tasks, start to finish {elapsed:.1f}s, at most {overlap} at once")
