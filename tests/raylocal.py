"""A real multi-node Ray cluster on this machine, for tests: a head and worker nodes,
each its own raylet, all on 127.0.0.1 inside a private network namespace.

Why a network namespace: Ray resolves 127.0.0.1 to the machine's outward address
unless the host has no other interface, so on a normal host its nodes would talk
over that address. In a namespace that has only ``lo`` they use 127.0.0.1, nothing
can reach them from outside, no other Ray on the machine is disturbed, and "which
processes belong to this cluster" has an exact answer: those in the namespace.
That is also how the cluster is stopped: ``ray stop`` would stop every Ray on the
machine, so instead every process in the namespace gets SIGTERM, then SIGKILL.

pytest is a child subreaper (tests/conftest.py), so Ray's daemonized processes are
its children: :meth:`LocalRayCluster.stop` reaps them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
PORT = 6379

#: Keeps the namespace alive: brings ``lo`` up (SIOCSIFFLAGS: up, loopback, running),
#: then waits for its stdin to close, so it also ends if pytest dies.
KEEPER = """
import fcntl, socket, struct, sys
fcntl.ioctl(socket.socket(), 0x8914, struct.pack("16sh22x", b"lo", 0x1 | 0x8 | 0x40))
print("up", flush=True)
sys.stdin.read()
"""


def ray_importable() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(RAY)


class LocalRayCluster:
    def __init__(self, **config: str) -> None:
        """``config``: Ray system settings for every process of the cluster (as
        RAY_<name> environment variables)."""
        self.temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths: short
        token = secrets.token_hex(16)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_BACKEND_LOG_LEVEL": "error",
            **{f"RAY_{k}": v for k, v in config.items()},
        }
        self.keeper = subprocess.Popen(
            ["unshare", "--net", sys.executable, "-c", KEEPER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = self.keeper.stdout.readline()
        if line.strip() != b"up":
            err = self.keeper.stderr.read().decode(errors="replace")
            self.keeper.kill()
            self.keeper.wait(5)
            raise OSError(f"cannot make a network namespace: {err.strip()[-300:]}")
        self.netns = os.readlink(f"/proc/{self.keeper.pid}/ns/net")
        self.enter = ["nsenter", f"--net=/proc/{self.keeper.pid}/ns/net"]
        self.address = f"127.0.0.1:{PORT}"
        self.nodes: dict[str, dict] = {}  # node id -> its resources
        self.daemons: dict[str, set[int]] = {}  # node name -> its Ray daemons' pids

    # -- starting ---------------------------------------------------------------------
    def ray_start(self, *args: str, name: str) -> None:
        log = os.path.join(self.temp, f"{name}.log")
        with open(log, "wb") as out:
            done = subprocess.run(
                [
                    *self.enter,
                    RAY,
                    "start",
                    "--disable-usage-stats",
                    "--object-store-memory",
                    str(80 * 10**6),
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                timeout=90,
            )
        if done.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{Path(log).read_text()[-2000:]}")

    def start_head(self, **resources) -> None:
        before = set(self.members())
        self._start_head(**resources)
        self.daemons["head"] = set(self.members()) - before

    def _start_head(self, **resources) -> None:
        self.ray_start(
            "--head",
            f"--port={PORT}",
            "--num-cpus=1",
            "--memory=100000000",
            "--include-dashboard=false",
            f"--temp-dir={self.temp}",
            f"--resources={json.dumps(resources)}",
            name="head",
        )

    def add_worker(self, name: str, memory: int, cpus: int, **resources) -> None:
        before = set(self.members())
        self._add_worker(name, memory, cpus, **resources)
        self.daemons[name] = set(self.members()) - before

    def kill_node(self, name: str) -> None:
        """SIGKILL a node as a crash would: its daemons (raylet and company) and the
        Ray workers under them; its agents and their guards are left to what the
        node-side code does when its worker dies."""
        victims = set()
        for pid in self.daemons.pop(name):
            victims.add(pid)
            try:
                victims |= {
                    c.pid
                    for c in psutil.Process(pid).children(recursive=True)
                    if self.is_ray(c.pid)
                }
            except psutil.NoSuchProcess:
                pass
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _add_worker(self, name: str, memory: int, cpus: int, **resources) -> None:
        self.ray_start(
            f"--address={self.address}",
            f"--num-cpus={cpus}",
            f"--memory={memory}",
            f"--resources={json.dumps(resources)}",
            name=name,
        )

    def read_nodes(self) -> dict[str, dict]:
        """Node id -> resources, as the cluster reports them."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, "
            "logging_level='ERROR'); print(json.dumps({n['NodeID']: n['Resources'] "
            "for n in ray.nodes() if n['Alive']}))"
        )
        out = self.run([*self.enter, sys.executable, "-c", code], timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        self.nodes = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return self.nodes

    # -- using it ---------------------------------------------------------------------
    def command(self, *args: str) -> list[str]:
        """``agent-supervise ARGS`` as a driver inside the namespace."""
        return [*self.enter, sys.executable, "-m", "agent_supervise", *args]

    def fleet(self, fleet, *args: str, json_out: bool = True) -> list[str]:
        """``agent-supervise fleet --engine ray`` of ``fleet`` on this cluster."""
        return self.command(
            "fleet",
            "--engine",
            "ray",
            "--address",
            self.address,
            *(["--json"] if json_out else []),
            "--no-dashboard",
            *args,
            str(fleet),
        )

    def run(self, cmd, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, env=self.env, timeout=timeout, **kwargs)

    def popen(self, cmd, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, **kwargs
        )

    def members(self) -> list[int]:
        """Every process in the namespace but the keeper: Ray, agents, guards."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.keeper.pid:
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == self.netns:
                    found.append(int(entry))
            except OSError:
                pass
        return found

    @staticmethod
    def cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return ""

    @classmethod
    def is_ray(cls, pid: int) -> bool:
        """Ray's own processes: daemons (under site-packages/ray) and workers (ray::)."""
        cmd = cls.cmdline(pid)
        return cmd.startswith("ray::") or "/ray/" in cmd

    def strangers(self) -> list[str]:
        """Live processes in the cluster that are not Ray's: agents, guards, drivers."""
        found = []
        for pid in self.members():
            if not self.is_ray(pid) and not _zombie(pid):
                found.append(f"{pid} {self.cmdline(pid)[:100]}")
        return found

    # -- stopping ---------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every process of the cluster (SIGTERM, 5 s, SIGKILL), reap them,
        end the namespace."""
        for sig, patience in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            for pid in self.members():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                reap_zombie_children()
                if not [p for p in self.members() if not _zombie(p)]:
                    break
                time.sleep(0.05)
        self.keeper.stdin.close()
        try:
            self.keeper.wait(5)
        except subprocess.TimeoutExpired:
            self.keeper.kill()
            self.keeper.wait(5)
        for stream in (self.keeper.stdout, self.keeper.stderr):
            stream.close()
        # Processes of the cluster that pytest adopted may finish exiting only now:
        # reap until pytest has no child left, so the next test starts clean.
        deadline = time.monotonic() + 5
        while psutil.Process().children() and time.monotonic() < deadline:
            reap_zombie_children()
            time.sleep(0.05)
        shutil.rmtree(self.temp, ignore_errors=True)


def assert_nothing_left(cluster: LocalRayCluster, cages_before: set, patience: float) -> None:
    """After a test: no agent, guard or driver left in the cluster (killed if found),
    and no cage or scratch folder of a process of the cluster, or of one now dead,
    that appeared since ``cages_before``. Ray's own daemons and workers stay."""
    from conftest import cage_dirs

    deadline = time.monotonic() + patience
    while cluster.strangers() and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = cluster.strangers()
    for entry in leaked:
        try:
            os.kill(int(entry.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap_zombie_children()  # adopted guards and exited Ray workers are ours to reap
    members = set(cluster.members())

    def ours(name: str) -> bool:
        owner = int(os.path.basename(name).split(".")[1].split("-")[0])
        return owner in members or not os.path.exists(f"/proc/{owner}")

    cages = [p for p in cage_dirs() - cages_before if ours(p)]
    scratch = [n for n in os.listdir("/tmp") if n.startswith("agent-supervise-ray.") and ours(n)]
    problems = (
        [f"leaked processes: {leaked}"] * bool(leaked)
        + [f"leaked cages: {cages}"] * bool(cages)
        + [f"leaked scratch: {scratch}"] * bool(scratch)
    )
    assert not problems, "; ".join(problems)


def run_events(tmp_path: Path) -> list[dict]:
    """The events so far of the one run under ``tmp_path/runs`` ([] before it exists)."""
    from agent_supervise.rundir import read_events

    runs = list((tmp_path / "runs").glob("*/events.jsonl"))
    return read_events(str(runs[0])) if runs else []


def wait_for_event(tmp_path: Path, test, what: str, timeout: float = 60) -> list[dict]:
    """The run's events that pass ``test``, once there is one; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in run_events(tmp_path) if test(e)]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s: {run_events(tmp_path)[-10:]}")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :][:1] == b"Z"
    except OSError:
        return True  # gone


def reap_zombie_children() -> list[int]:
    """Reap zombie children of pytest: Ray daemons and guards it adopted."""
    reaped = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] == b"Z" and int(fields[1]) == os.getpid():
            try:
                os.waitpid(int(entry), os.WNOHANG)
                reaped.append(int(entry))
            except ChildProcessError:
                pass
    return reaped
