"""The supervisor's own faults, with real processes: a run folder whose filesystem
fills up (a real 2 MiB tmpfs), a stderr an agent left non-blocking, a pool worker
that breaks the protocol. Whatever happens, agents stay caged and watched, every
task is accounted for, and the tool's own lines arrive whole.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent_supervise import stdio
from agent_supervise.fleet.pool import MAX_LINE
from agent_supervise.rundir import read_events
from agent_supervise.spool import Budget, FolderHealth, Spool

from conftest import ALLOC, CHILDREN, PY, require_tool

CHATTY = str(CHILDREN / "chatty.py")
WORKER = str(CHILDREN / "pool_worker.py")
MEMORY = {"oom_killed", "memory_exceeded"}
F_SETPIPE_SZ = 1031


# -- a run folder that fills up ------------------------------------------------------


@contextlib.contextmanager
def small_fs(path: Path, size: str = "2m", inodes: int = 1000):
    """A real, small filesystem (tmpfs: ``size`` bytes, ``inodes`` files)."""
    require_tool(os.geteuid() == 0, "root (to mount a 2 MiB tmpfs for a full run folder)")
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill(fs: Path) -> list[Path]:
    """Take every byte and then every inode left on ``fs``; return what to delete."""
    big = fs / "filler"
    fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    made = [big]
    while True:
        try:
            os.close(os.open(fs / f"inode{len(made)}", os.O_WRONLY | os.O_CREAT))
        except OSError as err:
            assert err.errno == errno.ENOSPC
            return made
        made.append(fs / f"inode{len(made)}")


def wait_for(what, timeout: float = 30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        assert proc is None or proc.poll() is None, "the supervisor ended too early"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def events_of(fs: Path) -> list[dict]:
    found = [p / "events.jsonl" for p in fs.iterdir() if (p / "events.jsonl").exists()]
    return read_events(str(found[0])) if found else []


def fleet_file(tmp_path: Path, fs: Path, backend: str, tasks: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {fs}\n  min_free_memory: 256M\n  backend: {backend}\n"
        f"  max_concurrent: 2\n  grace: 500ms\n"
        f"agents:\n  chatty:\n    cmd: [{json.dumps(PY)}, {json.dumps(CHATTY)}, '{{lines}}']\n"
        # 50 MiB/s: the rlimit watchdog stops it before RLIMIT_DATA fails an allocation
        f"  hog:\n    cmd: {json.dumps([PY, ALLOC, '--interval', '0.02'])}\n"
        f"tasks:\n{tasks}"
    )
    return path


def start_fleet(tmp_path: Path, fleet: Path, *extra: str):
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [PY, "-m", "agent_supervise", "fleet", "--json", "--no-dashboard", *extra, str(fleet)],
            stdout=o,
            stderr=e,
        )
    return proc, out, err


@pytest.mark.figure("8. the run folder's filesystem fills up")
def test_a_run_folder_that_fills_up_mid_run(tmp_path, backend):
    """Filled after the first agents start, freed once the hog (started while full) has
    been stopped at its cap: every task ends and is accounted for in summary.json,
    the hog was still caged, the 'full' line came once, exit 4."""
    tasks = (
        "  - {agent: chatty, repeat: 2, vars: {lines: '20'}}\n  - {agent: hog}\n"
        "  - {agent: chatty, repeat: 4, vars: {lines: '10'}}\n"
    )
    with small_fs(tmp_path / "small") as fs:
        proc, out, err = start_fleet(tmp_path, fleet_file(tmp_path, fs, backend, tasks))
        try:
            wait_for(lambda: sum(e["event"] == "started" for e in events_of(fs)) >= 2, proc=proc)
            fillers = fill(fs)
            # The hog starts while the folder is full; it must still be stopped at its
            # cap. Its ending cannot reach events.jsonl now; stderr shows it.
            wait_for(lambda: re.search(r"hog-1 \w+, exit", err.read_text()), proc=proc)
            for path in fillers:
                path.unlink()
            assert proc.wait(timeout=60) == 4, err.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        (run,) = [p for p in fs.iterdir() if p.is_dir()]
        summary = json.loads((run / "summary.json").read_text())
        results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        events = read_events(str(run / "events.jsonl"))
        stderr = err.read_text()
        hog_log = (run / "hog-1.out").exists()
    tasks = {t["task"]: t for t in summary["tasks"]}
    expected = {"hog-1"} | {f"chatty-{n}" for n in range(1, 7)}
    assert set(tasks) == expected and sum(summary["counts"].values()) == 7
    assert summary["exit_code"] == 4 and json.loads(out.read_text())["exit_code"] == 4
    assert tasks["hog-1"]["reason"] in MEMORY, tasks["hog-1"]
    assert all(tasks[t]["reason"] == "ok" for t in expected - {"hog-1"}), summary["counts"]
    # The hog's log files could not be created: it ran with output to /dev/null.
    assert tasks["hog-1"]["stdout"] is None and not hog_log
    assert "its output went to /dev/null" in tasks["hog-1"]["detail"]
    assert Path(tasks["chatty-6"]["stdout"]).name == "chatty-6.out"  # room again
    folder = summary["run_folder"]
    assert folder["error"] == "No space left on device" and folder["writable_again"]
    assert folder["dropped_lines"] == {} and folder["held_bytes"] == 0
    assert folder["logs_to_dev_null"] >= 1
    # What was held while full reached the files, whole and in order.
    assert sorted(r["task"] for r in results) == sorted(expected)
    assert sorted(e["task"] for e in events if e["event"] == "exited") == sorted(expected)
    assert [e["event"] for e in events][-1] == "run_ended"
    states = [e["state"] for e in events if e["event"] == "run_folder"]
    assert states[:2] == ["unwritable", "writable"]
    assert stderr.count("is full (No space left on device") == 1, stderr
    assert "takes writes again" in stderr


@pytest.mark.figure("8. the run folder's filesystem fills up")
def test_held_writes_are_bounded_and_never_torn(tmp_path):
    """A line the disk takes only part of keeps its rest held; past the bound whole
    lines are dropped and counted; once there is room the file is whole lines, in
    order: every line kept, none torn."""
    said = []
    with small_fs(tmp_path / "small") as fs:
        health = FolderHealth(str(fs), say=said.append)
        spool = Spool(str(fs / "events.jsonl"), health, Budget(10_000))
        spool.write(b"first\n")  # the file's last page has room for ~4 KiB more
        fillers = fill(fs)
        lines = [b"%04d " % i + b"x" * 994 + b"\n" for i in range(40)]
        for line in lines:
            spool.write(line)
        assert health.failing and len(said) == 1 and "is full" in said[0]
        assert spool.held_bytes() <= 10_000 + 1000  # the bound, plus a line begun
        dropped = health.dropped["events.jsonl"]
        assert dropped > 0 and not health.retry()
        for path in fillers:
            path.unlink()
        assert health.retry() and not health.failing
        spool.write(b"last\n")
        spool.close()
        data = (fs / "events.jsonl").read_bytes().splitlines(keepends=True)
    kept = lines[: len(lines) - dropped]
    assert data == [b"first\n", *kept, b"last\n"]
    assert len(said) == 1


@pytest.mark.figure("8. the run folder's filesystem fills up")
def test_a_run_folder_still_full_at_the_end(tmp_path, backend):
    """Full from the start and to the end: the summary goes to stderr, whole."""
    tasks = "  - {agent: chatty, repeat: 3, vars: {lines: '2'}}\n  - {agent: hog}\n"
    with small_fs(tmp_path / "small") as fs:
        fillers = fill(fs)
        fillers[-1].unlink()  # room for the run folder itself, and no more
        proc, out, err = start_fleet(tmp_path, fleet_file(tmp_path, fs, backend, tasks))
        assert proc.wait(timeout=60) == 4
        (run,) = [p for p in fs.iterdir() if p.is_dir()]
        left = sorted(p.name for p in run.iterdir())
    stderr = err.read_text()
    assert stderr.count("is full (No space left on device") == 1, stderr
    _head, _, body = stderr.partition("summary.json could not be written, so it follows on stderr")
    assert body, stderr
    summary = json.loads(body[body.index("\n{") :])
    assert summary == json.loads(out.read_text())  # the same as fleet --json printed
    assert {t["task"] for t in summary["tasks"]} == {"chatty-1", "chatty-2", "chatty-3", "hog-1"}
    assert next(t for t in summary["tasks"] if t["task"] == "hog-1")["reason"] in MEMORY
    assert summary["run_folder"]["writable_again"] is False
    assert left == [], left  # not even a half-written summary.json.tmp stays behind


# -- a stderr the agent left non-blocking ------------------------------------------------

FLOOD = (
    "import os, sys\nos.set_blocking(2, False)\ntry:\n    while True:\n"
    "        os.write(2, b'y' * 4096)\nexcept BlockingIOError:\n    pass\nsys.exit(3)\n"
)


def slow_read(stream, delay: float = 1.5) -> bytes:
    """Read nothing for ``delay`` seconds (the pipe stays full), then everything."""
    time.sleep(delay)
    return stream.read()


@pytest.mark.figure("9. an agent leaves the shared stderr non-blocking")
def test_run_outcome_arrives_on_a_stderr_the_agent_made_non_blocking(backend):
    # Plain `run` adds no line to a command's own failure: there, the agent is
    # stopped at its timeout (while the pipe is still full) to make it speak.
    for extra, script, code in (
        (["--json"], FLOOD, 3),
        (["--timeout", "1s"], FLOOD.replace("sys.exit(3)", "import time; time.sleep(60)"), 124),
    ):
        proc = subprocess.Popen(
            [
                PY,
                "-m",
                "agent_supervise",
                "run",
                *extra,
                "--backend",
                backend,
                "--",
                PY,
                "-c",
                script,
            ],
            stderr=subprocess.PIPE,
        )
        err = slow_read(proc.stderr)
        assert proc.wait(timeout=30) == code
        tail = err.lstrip(b"y").decode()  # the agent's flood, then our line, whole
        if code == 3:
            assert tail.endswith("}\n"), tail[-500:]
            outcome = json.loads(tail.splitlines()[-1])
            assert outcome["reason"] == "failed" and outcome["status"] == 3
        else:  # (the command, quoted, has the script's newlines)
            assert tail.startswith("agent-supervise: ") and tail.endswith("\n"), tail[-500:]
            assert " timed out after 1" in tail, tail[-500:]


@pytest.mark.figure("9. an agent leaves the shared stderr non-blocking")
def test_a_reader_that_stopped_costs_one_bounded_wait():
    """write_all waits while nobody reads, but only so long, and only once: later
    writes to that stream do not wait until one gets through; then it waits again."""
    r, w = tiny_nonblocking_pipe()
    try:
        while True:
            try:
                os.write(w, b"z" * 512)
            except BlockingIOError:
                break
        started = time.monotonic()
        assert stdio.write_all(w, b"line\n", stall=0.3) == 0
        waited = time.monotonic() - started
        started = time.monotonic()
        assert stdio.write_all(w, b"line\n", stall=0.3) == 0
        assert 0.3 <= waited < 2 and time.monotonic() - started < 0.1
        os.set_blocking(r, False)
        with contextlib.suppress(BlockingIOError):
            while os.read(r, 65536):  # the reader comes back: the pipe drains
                pass
        os.set_blocking(r, True)
        big = b"y" * 20000  # five times the pipe: partial writes while it is read
        got = bytearray()

        def slow_reader() -> None:
            while len(got) < len(big):
                got.extend(os.read(r, 1000))
                time.sleep(0.01)

        reader = threading.Thread(target=slow_reader)
        reader.start()
        assert stdio.write_all(w, big, stall=2) == len(big)  # waited as it was read
        reader.join(10)
        assert bytes(got) == big
    finally:
        stdio.forget_stalls()
        os.close(r)
        os.close(w)


def tiny_nonblocking_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)  # on the file description the supervisor inherits
    return r, w


def read_into(got: list, i: int, fd: int) -> None:
    with os.fdopen(fd, "rb") as f:
        got[i] = slow_read(f)


@pytest.mark.figure("9. an agent leaves the shared stderr non-blocking")
def test_fleet_output_arrives_on_non_blocking_pipes(tmp_path):
    """stdout and stderr are non-blocking one-page pipes read late: the event lines,
    the --json summary and the dashboard's final table all arrive whole."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n"
        "  max_concurrent: 4\nagents:\n  t: {cmd: ['true'], memory_limit: 20M}\n"
        "tasks:\n  - {agent: t, repeat: 20}\n"
    )
    for mode in (["--json", "--no-dashboard"], ["--dashboard"]):
        pipes = [tiny_nonblocking_pipe(), tiny_nonblocking_pipe()]
        proc = subprocess.Popen(
            [PY, "-m", "agent_supervise", "fleet", *mode, str(fleet)],
            stdout=pipes[0][1],
            stderr=pipes[1][1],
        )
        for _, w in pipes:
            os.close(w)
        got: list[bytes] = [b"", b""]
        readers = [
            threading.Thread(target=read_into, args=(got, i, r)) for i, (r, _) in enumerate(pipes)
        ]
        for t in readers:
            t.start()
        for t in readers:
            t.join(60)
        assert proc.wait(timeout=60) == 0, got[1][-2000:]
        stdout, stderr = got[0].decode(), got[1].decode()
        if "--json" in mode:
            assert json.loads(stdout)["counts"] == {"ok": 20}
            assert stderr.count(" ok, exit 0 after ") == 20, stderr
        else:
            assert "20 tasks: 20 ok" in stdout, stdout[-2000:]


# -- a pool worker that breaks the protocol -----------------------------------------------


@pytest.mark.figure("10. a pool worker answers with an overlong line")
def test_pool_worker_protocol_errors(tmp_path):
    """An overlong answer, and one nested past any parser's depth: each fails its own
    task with the cause named, retires that worker, and the pool serves the rest.
    Neither ends 'stopped'. A task line longer than the pipe still arrives whole."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor:\n  log_dir: {tmp_path / 'runs'}\n  min_free_memory: 256M\n"
        f"agents:\n  w:\n    cmd: ['{PY}', '{WORKER}']\n    memory_limit: 80M\n"
        f"    grace: 500ms\n    pool: {{size: 1}}\n"
        f"tasks:\n  - {{agent: w}}\n  - {{agent: w, vars: {{overlong: '{2 * MAX_LINE}'}}}}\n"
        f"  - {{agent: w}}\n  - {{agent: w, vars: {{nested: '100000'}}}}\n"
        f"  - {{agent: w}}\n  - {{agent: w, vars: {{pad: '{'p' * 100_000}'}}}}\n"
    )
    proc = subprocess.run(
        [PY, "-m", "agent_supervise", "fleet", "--json", str(path)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    tasks = {t["task"]: t for t in summary["tasks"]}
    # w-6's task line is longer than the worker's stdin pipe: it goes in parts.
    assert summary["counts"] == {"ok": 4, "failed": 2}, summary["counts"]
    assert tasks["w-2"]["detail"] == f"pool protocol error: reply line over {MAX_LINE} bytes"
    assert tasks["w-4"]["detail"].startswith("pool protocol error: not a JSON line")
    for bad, after in (("w-2", "w-3"), ("w-4", "w-5")):
        assert tasks[bad]["reason"] == "failed" and tasks[bad]["exit_code"] == 1
        assert tasks[after]["reason"] == "ok" and tasks[after]["pid"] != tasks[bad]["pid"]
    (run,) = (tmp_path / "runs").iterdir()
    events = read_events(str(run / "events.jsonl"))
    why = [e["why"] for e in events if e["event"] == "recycled"]
    assert sum(w.startswith("pool protocol error") for w in why) == 2, why
