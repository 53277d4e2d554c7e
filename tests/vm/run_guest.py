"""Run a pytest selection inside a User-Mode Linux guest: a real cgroup v2 kernel.

This project's machines bind the memory controller to cgroup v1, so the cgroup2
backend cannot run on the host. ``linux.uml`` (Debian ``user-mode-linux``, kernel
6.1) boots in about 1.5 s as an ordinary process, with the host's root mounted
read-only through hostfs, so the guest runs this very checkout and its venv.
``init.sh`` is the guest's PID 1; the results come back through a host folder the
guest mounts writable (hostfs): ``status`` (pytest's exit status), ``junit.xml``;
the guest console (pytest's output) is captured here as ``console.log``.

``linux.uml`` exits 0 whatever the guest did, so the verdict is the ``status``
file, never the exit status. A guest that hangs is killed at the timeout with every
host process it made (UML runs each guest address space as a host process).

Usage: ``python tests/vm/run_guest.py [--timeout S] [--out DIR] [-- PYTEST ARGS...]``
(without pytest arguments it runs :data:`SELECTION`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INIT = Path(__file__).resolve().with_name("init.sh")
LINUX_UML = os.environ.get("AGENT_SUPERVISE_LINUX_UML", "/usr/bin/linux.uml")
#: Left out of the guest: run_backends cases whose twin in the hostile suite runs
#: there too (the same program on cgroup2, in a fleet), and what does not depend on
#: the kernel. UML makes every process start cost ~0.5 s: the stage must fit 60 s.
TWINS = {
    "test_a_frozen_agent_is_evicted": "the same cgroup.freeze as the two other "
    "freeze cases, which run there; eviction itself is the host's",
    "test_python_allocator": "hostile python-allocation-loop",
    "test_tail_dev_zero": "hostile tail-dev-zero",
    "test_hog_ignoring_sigterm": "hostile ignores-sigterm",
    "test_double_forked_setsid_escapee": "hostile double-forked-setsid-escapee",
    "test_node_allocator": "hostile node-buffer-growth",
    "test_node_thrashing": "reads memory.stat like every cgroup2 watchdog sample; "
    "node at 50M takes 5 s in the guest",
    "fifty_busy_agents_all_end_ok[cgroup2-python": "50 Python interpreters take ~35 s "
    "in the guest; the same race runs there in the sh kind's 50 runs and in "
    "test_exiting_children_seen_outside_are_not_escapes",
    "(test_real_escapes_are_caught and (pids or thread))": "escapes through a v1 pids "
    "cgroup or a thread's v1 placement: nothing to leave on cgroup2 (the test skips "
    "there, and a skip in the guest is a failure)",
    "1GB": "1 GB of output would fill the guest's RAM-backed /tmp; output handling "
    "does not depend on the backend (it runs on the host's)",
    "(test_every_cap_a_user_may_give_runs and not (512M or 1T))": "the bound that "
    "broke (512M) and the largest cap run there; the others are the host's",
    "test_node_under_rlimit_as_does_not_hang": "RLIMIT_AS is rlimit's own",
    "test_npm_at_a_tight_cap_does_not_hang": "npm starts in ~20 s in the guest; node "
    "at a cgroup2 cap runs there in test_node_stuck_at_its_rlimit",
    "test_idle_agents_are_not_killed": "the stuck rule reads a refusing rlimit, which "
    "cgroup2 has not",
    "test_the_memory_note_is_in_the_one_line_message": "the note's wording; the peak it "
    "rests on is tested there by test_node_heap_abort_near_the_cap_gets_the_note",
    "test_a_failure_far_below_the_cap_gets_no_note": "the same rule on a peak far from "
    "the cap; the peak near it runs there",
    "(test_runtime_hints and not (young_generation or own_heap_limit))": "the hints "
    "are environment variables, the same on every backend; what the kernel's limit "
    "changes (Node sizing V8 by memory.max, and its heap abort under it) runs there",
    "test_a_fork_storm_of_sharers": "five trees of 11; the cgroup charges them by "
    "itself, and test_forked_tree_over_the_cap_is_still_stopped runs there",
    "test_caps_admission_under_a_budget": "the same parent cage as "
    "test_agents_together_never_get_more_than_the_budget, which runs there (four "
    "agents one after another take ~12 s in the guest)",
}
#: The backend-parametrized tests of the core suite (their cgroup2 cases), the
#: real-kernel-only tests, and doctor's view. rlimit is tested on the host.
SELECTION = (
    "tests/test_run_backends.py",
    "tests/test_api.py",
    "tests/test_cgroup2_kernel.py",
    "tests/test_cli_input.py",
    "tests/test_hostile.py",
    "tests/test_isolation.py",
    "tests/test_faults.py",
    "tests/test_hostile2.py",
    "tests/test_budget.py",
    "tests/test_memory_high.py",
    "tests/test_freeze.py",
    "tests/test_memory_deaths.py",
    "tests/test_runtime_hints.py",
    "tests/test_cap_meaning.py",
    "-k",
    f"(cgroup2 and not ({' or '.join(TWINS)})) or doctor_",
)
#: UML runs every guest system call through ptrace (a process start costs ~0.5 s
#: in there), so the selection takes ~57 s in one guest. Guests are single-CPU:
#: two of them, booted side by side, use both of CI's cores and halve the stage.
SHARDS = 2
#: Slow in the guest (seconds, measured); used to balance the shards.
SLOW = {
    # measured in the guest on 2026-12-04 (junit times of the two shards)
    "soft_limit_reaches_the_kernel": 29.0,
    "fifty_busy": 21.0,
    "agents_together_never_get_more_than_the_budget": 15.0,
    "fills_up": 11.0,
    "own_heap_limit": 10.0,
    "young_generation": 8.0,
    "node-buffer-growth": 8.0,
    "frozen_then_thawed": 8.0,
    "still_full": 7.5,
    "node_heap_abort": 6.5,
    "pids_limit_from_fleet": 5.7,
    "frozen_agent_stops": 5.0,
    "sysv-detached": 5.0,
    "node": 4.0,
    "spawns-500-sleepers": 4.8,
    "kernel_notice_not_a_sample": 4.6,
    "cannot_signal_its_neighbours": 4.0,
    "one_big_allocation": 4.1,
    "pids_limit_zero": 3.8,
    "signal_is_forwarded": 3.0,
    "hostile": 3.0,
    "exiting_children": 4.0,
    "escapee": 2.5,
    "real_escapes": 2.5,
}
GUEST_MEM = "768M"
#: Host-side limit on the whole boot; the guest's own pytest gets less, so that a
#: hung test still lets the guest report (see init.sh).
TIMEOUT_S = 170.0  # the stage's guests took 118 s each, balanced (measured 2026-12-04)
GUEST_MARGIN_S = 8.0
MARKER = "AGENT-SUPERVISE-VM-STATUS="
#: Set in the guest (init.sh): a guest never boots another guest.
IN_VM = "AGENT_SUPERVISE_IN_VM"


class CannotBoot(Exception):
    """The VM stage cannot run here (no linux.uml, already inside a guest, ...)."""


@dataclass
class GuestRun:
    status: int | None  # pytest's exit status in the guest; None: it never said
    console: str
    wall_s: float
    timed_out: bool
    counts: dict[str, int]  # from junit.xml: tests, failures, errors, skipped
    session: int  # the host session id of linux.uml and all its processes
    timeout: float

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.rstrip().splitlines()[-lines:])

    def verdict(self) -> str:
        c = self.counts
        passed = c.get("tests", 0) - c.get("failures", 0) - c.get("errors", 0) - c.get("skipped", 0)
        what = (
            f"guest pytest status {self.status}"
            if self.status is not None
            else "the guest never reported a status"
        )
        if self.timed_out:
            what = f"guest killed at the {self.timeout:g} s timeout; {what}"
        return (
            f"{what}: {passed} passed, {c.get('failures', 0)} failed, "
            f"{c.get('errors', 0)} errors, {c.get('skipped', 0)} skipped "
            f"in {self.wall_s:.1f} s wall"
        )

    def report(self) -> str:
        return f"{self.verdict()}\n--- tail of the guest console ---\n{self.tail()}"


def check_bootable() -> None:
    if os.environ.get(IN_VM):
        raise CannotBoot("already inside the VM guest: a guest does not boot another")
    if not os.access(LINUX_UML, os.X_OK):
        raise CannotBoot(
            f"linux.uml not installed: VM stage skipped (no {LINUX_UML}; "
            "apt-get install user-mode-linux busybox-static)"
        )
    if not shutil.which("busybox"):
        raise CannotBoot(
            "busybox not installed: VM stage skipped (the guest powers "
            "off with `busybox poweroff -f`; apt-get install busybox-static)"
        )
    for path in (str(REPO), sys.executable):
        # Kernel command-line values cannot hold whitespace. (A checkout under /tmp
        # or /run is held across the guest's tmpfs mounts by init.sh; an interpreter
        # outside the checkout under them would not be.)
        if any(c.isspace() for c in path):
            raise CannotBoot(f"{path}: the guest cannot be told this path (whitespace)")
    if sys.executable.startswith(("/tmp/", "/run/")) and not sys.executable.startswith(
        str(REPO) + "/"
    ):
        raise CannotBoot(
            f"{sys.executable}: under /tmp or /run, outside the checkout: "
            "the guest's tmpfs mounts would hide it"
        )


@dataclass
class Booting:
    proc: subprocess.Popen
    out: Path
    started: float
    timeout: float


def start(
    args,
    *,
    out_dir: str,
    timeout: float = TIMEOUT_S,
    mem: str = GUEST_MEM,
    guest_timeout: float | None = None,
) -> Booting:
    """Start a guest that runs ``pytest ARGS``; :func:`finish` waits for it.

    ``guest_timeout`` (default: ``timeout`` less a margin) limits pytest inside."""
    check_bootable()
    out = Path(out_dir).resolve()
    if any(c.isspace() for c in str(out)):
        raise CannotBoot(f"{out}: kernel command-line values cannot hold whitespace")
    out.mkdir(parents=True, exist_ok=True)
    (out / "pytest-args").write_text("".join(f"{a}\n" for a in args))
    (out / "uml").mkdir(exist_ok=True)
    cmdline = [
        LINUX_UML,
        f"mem={mem}",
        "rootfstype=hostfs",
        "rootflags=/",
        "ro",
        f"init={INIT}",
        "con0=fd:0,fd:1",
        "con=null",
        "quiet",
        f"uml_dir={out / 'uml'}",  # its pid file and mconsole socket
        f"AS_OUT={out}",
        f"AS_REPO={REPO}",
        f"AS_PYTHON={sys.executable}",
        f"AS_TIMEOUT={int(guest_timeout or max(5, timeout - GUEST_MARGIN_S))}",
    ]
    with open(out / "console.log", "wb") as console:
        # Its own session: every host process of the guest is found by session id.
        proc = subprocess.Popen(
            cmdline,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=out,
            start_new_session=True,
        )
    return Booting(proc, out, time.monotonic(), timeout)


def finish(booting: Booting) -> GuestRun:
    """Wait for the guest (killing it at its timeout) and read what it reported."""
    timed_out = False
    try:
        booting.proc.wait(timeout=max(0.0, booting.started + booting.timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        end_session(booting.proc)
    wall = time.monotonic() - booting.started
    out = booting.out
    text = (out / "console.log").read_bytes().decode(errors="replace")
    return GuestRun(
        _status(out, text),
        text,
        wall,
        timed_out,
        _junit_counts(out),
        booting.proc.pid,
        booting.timeout,
    )


def boot(
    args=SELECTION,
    *,
    out_dir: str,
    timeout: float = TIMEOUT_S,
    mem: str = GUEST_MEM,
    guest_timeout: float | None = None,
) -> GuestRun:
    """Boot one guest, run ``pytest ARGS`` in it, and return what it reported."""
    return finish(
        start(args, out_dir=out_dir, timeout=timeout, mem=mem, guest_timeout=guest_timeout)
    )


def collect(args=SELECTION) -> list[str]:
    """The test ids a selection names (collected on the host, run in the guests)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    if not ids:
        raise RuntimeError(f"collecting {args} found nothing:\n{out.stdout}{out.stderr}")
    return ids


def shard(ids: list[str], n: int) -> list[list[str]]:
    """Split test ids into ``n`` lists of about equal guest time (slowest first,
    each to the least loaded shard)."""

    def cost(test_id: str) -> float:
        return max([v for k, v in SLOW.items() if k in test_id] or [1.5])

    shards: list[list[str]] = [[] for _ in range(n)]
    load = [0.0] * n
    for test_id in sorted(ids, key=cost, reverse=True):
        i = load.index(min(load))
        shards[i].append(test_id)
        load[i] += cost(test_id)
    return [sorted(s) for s in shards if s]


def boot_sharded(
    args=SELECTION, *, out_dir: str, shards: int = SHARDS, timeout: float = TIMEOUT_S
) -> list[GuestRun]:
    """Run ``args``'s tests in ``shards`` guests side by side."""
    check_bootable()
    parts = shard(collect(args), shards)
    # -v: a test's name is on the console as it starts, so a guest killed at its
    # timeout shows which test it was in (with -q, only a row of dots).
    booting = [
        start([*part, "-v", "-rA"], out_dir=os.path.join(out_dir, f"guest{i}"), timeout=timeout)
        for i, part in enumerate(parts)
    ]
    return [finish(b) for b in booting]


def end_session(proc: subprocess.Popen, patience: float = 10.0) -> None:
    """SIGKILL every process of the guest's session and reap those that are ours.

    After a normal poweroff this finds nothing. A killed guest leaves UML's helper
    processes, which are reparented to the nearest subreaper (pytest is one, see
    tests/conftest.py): waitpid them here by pid, or they stay zombies.
    """
    import psutil

    sid = proc.pid
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=patience)
    deadline = time.monotonic() + patience
    while True:
        left = []
        for p in psutil.process_iter(["ppid", "status"]):
            try:
                if os.getsid(p.pid) != sid:
                    continue
            except ProcessLookupError:
                continue
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                if p.info["ppid"] == os.getpid():
                    try:
                        os.waitpid(p.pid, 0)
                    except ChildProcessError:
                        pass
                continue  # dead; a zombie of another parent is that parent's to reap
            left.append(p.pid)
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not left:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"guest processes {left} of session {sid} would not die")
        time.sleep(0.02)


def _status(out: Path, console: str) -> int | None:
    try:
        return int((out / "status").read_text())
    except (OSError, ValueError):
        pass
    for line in reversed(console.splitlines()):
        if line.startswith(MARKER):
            try:
                return int(line[len(MARKER) :].split()[0])
            except (ValueError, IndexError):
                return None
    return None


def _junit_counts(out: Path) -> dict[str, int]:
    try:
        root = ET.parse(out / "junit.xml").getroot()
    except (OSError, ET.ParseError):
        return {}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S)
    parser.add_argument("--out", help="keep the results in this folder")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    args = opts.pytest_args[1:] if opts.pytest_args[:1] == ["--"] else opts.pytest_args
    with tempfile.TemporaryDirectory(prefix="agent-supervise-vm.") as tmp:
        out = opts.out or tmp
        os.makedirs(out, exist_ok=True)
        try:
            runs = (
                [boot(args, out_dir=out, timeout=opts.timeout)]
                if args
                else boot_sharded(out_dir=out, timeout=opts.timeout)
            )
        except CannotBoot as err:
            print(f"run_guest: {err}", file=sys.stderr)
            return 2
        for i, run in enumerate(runs):
            print(f"=== guest {i} ===\n{run.console.rstrip()}")
            print(f"run_guest: guest {i}: {run.verdict()}", file=sys.stderr)
        return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
