"""The reaction benchmark's trials: start a supervisor with the marker hog under it,
wait for the hog's death on a pidfd, measure the supervisor's CPU, and leave nothing
behind (every process a trial starts carries a token; anything still carrying it at
the end is killed). Also: each supervisor's own way to run the hog (runners)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from string import Template

from common import AGENT_SUPERVISE, PY, ROOT

from agent_supervise.proctree import ProcessTable, read_proc

HERE = Path(__file__).resolve().parent
HOG = str(HERE / "hog_marker.py")
PEERS = HERE / "peers"
NPM_BIN = ROOT / ".bench" / "npm" / "node_modules" / ".bin"
PM2 = NPM_BIN / "pm2"
VENV_BIN = ROOT / ".bench" / "venv" / "bin"
CAP = "200M"
TOKEN_VAR = "BENCH_REACTION_TOKEN"  # one per trial
SESSION = uuid.uuid4().hex[:12]
SESSION_VAR = "BENCH_REACTION_SESSION"  # in every trial of this run
SESSION_ENTRY = f"{SESSION_VAR}={SESSION}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PM2_DEFAULT_INTERVAL = 30.0  # s: pm2's constants.js, WORKER_INTERVAL
MEMMON_TICK = 5.0  # s: TICK_5, the shortest supervisord event period


# -- reading /proc ---------------------------------------------------------------

TABLE = ProcessTable()


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (ProcStat lacks the CPU times)."""
    try:
        data = read_proc(f"/proc/{pid}/stat")
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def cpu_seconds(pid: int, children: bool) -> float | None:
    """CPU time (user+sys) of ``pid``, all its threads; with ``children``, plus what its
    reaped children used. Per-thread ``se.sum_exec_runtime`` (ns precision) where the
    kernel shows it; else utime+stime from /proc/PID/stat (10 ms ticks)."""
    st = _stat(pid)
    if st is None or st[0] == "Z":
        return None
    total = None
    try:
        total = 0.0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":")[1]) / 1000
                        break
    except (OSError, ValueError):
        total = None
    if total is None:
        total = (int(st[11]) + int(st[12])) / CLK_TCK
    if children:
        total += (int(st[13]) + int(st[14])) / CLK_TCK
    return total


def marked(entry: str) -> list[int]:
    """Live processes whose environment carries ``entry`` (``VAR=value``)."""
    needle = entry.encode()
    return [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit()
        and int(p) != os.getpid()
        and TABLE.environ_has(int(p), needle)
        and TABLE.alive(int(p))
    ]


def sweep(entry: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every live process carrying ``entry``; wait until they are gone."""
    killed = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = marked(entry)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return sorted(set(killed))


# -- one trial ---------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # watchdog (stopped by the supervisor), rlimit, lost, timeout
    reaction: float | None = None  # s, death - crossing
    cpu: float = 0.0  # s of CPU of the supervising processes over the window
    wall: float = 0.0  # s, window: hog started -> hog gone
    detail: str = ""
    #: At the crossing: the hog's RSS less its anonymous pages (its interpreter's and
    #: libraries' file pages), which RSS counts and a cgroup's charge does not.
    file_bytes: int = 0


class Trial:
    """Temp dir, marker file, environment token; starts processes and stops them all."""

    def __init__(self, name: str, n: int, hog_args: list[str]) -> None:
        self.hog_args = hog_args
        self.tmp = Path(tempfile.mkdtemp(prefix=f"reaction-{name}-"))
        self.marker = self.tmp / "marker"
        self.token = f"{SESSION}-{name}-{n}"
        self.env = {**os.environ, TOKEN_VAR: self.token, SESSION_VAR: SESSION}
        self.procs: list[subprocess.Popen] = []

    def fill(self, template: str, out: str, **values) -> Path:
        text = Template((PEERS / template).read_text()).substitute(
            tmp=self.tmp,
            python=PY,
            hog=HOG,
            marker=self.marker,
            hog_args=" ".join(self.hog_args),
            **values,
        )
        path = self.tmp / out
        path.write_text(text)
        return path

    def popen(self, cmd, log: str, env=None) -> subprocess.Popen:
        with open(self.tmp / log, "ab") as out:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env or self.env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def call(self, cmd, log: str, env=None, timeout: float = 60) -> int:
        proc = self.popen(cmd, log, env)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc)
            return -1

    def hog_pid(self, timeout: float) -> tuple[int, str] | None:
        """The hog's pid here, and the pid it wrote in the marker (its own view)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self._lines():
                if line[0] == "start" and (pid := self._here(int(line[1]))) is not None:
                    return pid, line[1]
            if any(p.poll() not in (None, 0) for p in self.procs[:1]):
                return None  # the supervisor itself failed
            time.sleep(0.01)
        return None

    def _here(self, own_pid: int) -> int | None:
        """The pid in this namespace of the hog that calls itself ``own_pid``. An
        agent in a PID namespace of its own (the rlimit backend's isolation) sees a
        small pid that is another process here: /proc/PID/status's NSpid line ends
        with the pid in the innermost namespace. (A hog in this one is itself: pm2
        starts it from a daemon that is no descendant of ours.) The marker's path,
        this trial's own, is in the hog's command line."""
        for pid in [own_pid, *TABLE.descendants([p.pid for p in self.procs])]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            nspid = next(
                (ln.split()[-1] for ln in status.splitlines() if ln.startswith("NSpid:")), ""
            )
            if nspid == str(own_pid) and bytes(self.marker) in cmdline.split(b"\0"):
                return pid
        return None

    def _lines(self) -> list[list[str]]:
        try:
            return [ln.split() for ln in self.marker.read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            return []

    def watch(self, roots, timeout: float) -> Result:
        """Wait for the hog; measure its reaction and the roots' (and their other
        descendants') CPU from the hog's start to its death."""
        found = self.hog_pid(timeout=30)
        if found is None:
            return Result("lost", detail=f"the hog never started (see {self.tmp})")
        pid, own_pid = found
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return Result("lost", detail="the hog died before it could be watched")
        try:
            hog_parent = int((_stat(pid) or [0, 0])[1])
            hog = set(TABLE.descendants([pid]))
            watched = [p for p in TABLE.descendants(roots) if p not in hog]
            t0 = time.monotonic()
            c0 = {p: cpu_seconds(p, p != hog_parent) for p in watched}
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            woke = poller.poll(timeout * 1000)
            t1 = time.monotonic()
            c1 = {p: cpu_seconds(p, p != hog_parent) for p in watched}
        finally:
            os.close(pidfd)
        cpu = sum(c1[p] - c0[p] for p in watched if c0[p] is not None and c1[p] is not None)
        if not woke:
            return Result(
                "timeout",
                cpu=cpu,
                wall=t1 - t0,
                detail=f"the hog was not stopped within {timeout:.0f} s",
            )
        mine = [ln for ln in self._lines() if len(ln) > 2 and ln[1] == own_pid]
        crossed = next((ln for ln in mine if ln[0] == "cross"), None)
        cross = float(crossed[2]) if crossed else None
        memerr = next((float(ln[2]) for ln in mine if ln[0] == "memerr"), None)
        if memerr is not None:
            return Result(
                "rlimit",
                None if cross is None else t1 - cross,
                cpu,
                t1 - t0,
                "an allocation failed (RLIMIT_DATA) before the watchdog struck",
            )
        if crossed is None or cross is None:
            return Result(
                "lost", cpu=cpu, wall=t1 - t0, detail="the hog died before noting its crossing"
            )
        rss, anon = int(crossed[3]), int(crossed[4])
        return Result("watchdog", t1 - cross, cpu, t1 - t0, file_bytes=rss - anon)

    def close(self) -> list[int]:
        """SIGTERM (again each second: circusd loses one that lands during a restart),
        SIGKILL after 10 s; then SIGKILL whatever still carries the token."""
        for proc in self.procs:
            for _ in range(10):
                if proc.poll() is not None:
                    break
                _killpg(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                _killpg(proc)
        left = sweep(f"{TOKEN_VAR}={self.token}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left


def _killpg(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    if sig == signal.SIGKILL:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# -- the supervisors ---------------------------------------------------------------


def ours(extra: list[str]):
    def trial(t: Trial, i: int, n: int) -> Result:
        sup = t.popen(
            [
                AGENT_SUPERVISE,
                "run",
                "--backend",
                "rlimit",
                "--memory",
                CAP,
                *extra,
                "--",
                PY,
                HOG,
                t.marker,
                *t.hog_args,
            ],
            "agent-supervise.log",
        )
        result = t.watch([sup.pid], timeout=30)
        try:
            status = sup.wait(timeout=15)
        except subprocess.TimeoutExpired:
            status = None
        if result.kind == "watchdog" and status != 137:
            result.detail = f"agent-supervise exited {status}, not 137 (memory_exceeded)"
        return result

    return trial


def floor(t: Trial, i: int, n: int) -> Result:
    """No supervisor: the hog SIGTERMs itself at the crossing. What is left is the
    kernel tearing the process down, which every supervisor's figure includes."""
    t.popen([PY, HOG, t.marker, *t.hog_args, "--die-at-cap"], "hog.out")
    return t.watch([], timeout=30)


def circus(t: Trial, i: int, n: int) -> Result:
    conf = t.fill("circus.ini", "circus.ini")
    circusd = t.popen([VENV_BIN / "circusd", conf], "circusd.out")
    return t.watch([circusd.pid], timeout=30)  # close(): SIGTERM stops it all


def memmon(t: Trial, i: int, n: int) -> Result:
    conf = t.fill("supervisord.conf", "supervisord.conf", memmon=VENV_BIN / "memmon")
    # supervisord's TICK_5 falls on wall-clock multiples of 5 s: spread the N runs
    # evenly over that period, so that they sample where in it the crossing lands.
    time.sleep(((i + 0.5) / n * MEMMON_TICK - time.time() % MEMMON_TICK) % MEMMON_TICK)
    sd = t.popen([VENV_BIN / "supervisord", "-c", conf], "supervisord.out")
    return t.watch([sd.pid], timeout=MEMMON_TICK + 30)  # close(): SIGTERM stops it all


def pm2(interval_ms: int | None):
    period = (interval_ms or PM2_DEFAULT_INTERVAL * 1000) / 1000

    def trial(t: Trial, i: int, n: int) -> Result:
        env = {**t.env, "PM2_HOME": str(t.tmp / "pm2"), "PM2_DISABLE_VERSION_CHECK": "1"}
        if interval_ms:
            env["PM2_WORKER_INTERVAL"] = str(interval_ms)
        eco = t.fill("pm2.ecosystem.json", "ecosystem.json")
        try:
            if t.call([PM2, "ping"], "pm2.out", env, timeout=60) != 0:
                return Result("lost", detail=f"pm2 ping failed (see {t.tmp})")
            # The daemon checks every `period` from its start: start the hog at
            # evenly spread points of that period across the N runs.
            time.sleep((i + 0.5) / n * period)
            if t.call([PM2, "start", eco], "pm2.out", env, timeout=60) != 0:
                return Result("lost", detail=f"pm2 start failed (see {t.tmp})")
            god = int((t.tmp / "pm2" / "pm2.pid").read_text())
            return t.watch([god], timeout=period + 30)
        finally:
            t.call([PM2, "kill"], "pm2.out", env, timeout=60)

    return trial
