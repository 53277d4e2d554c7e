"""Hostile input, round 2: input built to cost the supervisor time or memory, or to pass
``validate`` and fail only once agents run. Each case runs the real CLI and checks exit
2 (or, for a ``--tasks`` line, the line rejected with its number and the fleet going
on), a message naming the file, line and key with a hint, the supervisor's peak RSS
(from wait4, so it is this process's and nobody else's), and that nothing ran: every
agent in these fleets would create a marker file.

The fleet-file cases of the same classes are in tests/data/bad/ (bomb_*, nul_*,
repeat_*, cap_*...), which tests/test_bad_input.py runs through fleet and validate;
here they are timed and measured.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_supervise.agents import bounds as B
from agent_supervise.agents.loader import FleetFileError, load_fleet

from conftest import PY, cage_dirs

BAD = Path(__file__).parent / "data" / "bad"
MiB = 1 << 20
#: The supervisor's peak RSS on any bad input (an interpreter with our modules is ~25).
RSS_BOUND = 100 * MiB
#: Wall-clock guards, not benchmarks: the parse itself is held to a second in-process;
#: the CLI adds an interpreter start on a machine that may be busy.
PARSE_S, CLI_S = 1.0, 5.0


@dataclass
class Ran:
    code: int
    out: str
    err: str
    elapsed: float
    peak_rss: int
    pid: int


def measured(*args, feed=None, stdin=None, env=None, preexec=None, timeout=120) -> Ran:
    """``agent-supervise ARGS``; ``feed``: an iterable of byte chunks written to its
    stdin pipe by a thread (as a producer would); peak RSS from wait4's rusage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        read_end = None
        if feed is not None:
            read_end, write_end = os.pipe()
            stdin = read_end
        started = time.monotonic()
        proc = subprocess.Popen(
            [PY, "-m", "agent_supervise", *args],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            preexec_fn=preexec,
        )
        writer = None
        if feed is not None:
            os.close(read_end)
            writer = threading.Thread(target=_write_all, args=(write_end, feed), daemon=True)
            writer.start()
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                pytest.fail(f"agent-supervise {' '.join(args)[:80]} ran past {timeout}s")
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if writer:
            writer.join(10)
        out.seek(0)
        err.seek(0)
        return Ran(
            proc.returncode,
            out.read().decode(),
            err.read().decode(),
            elapsed,
            usage.ru_maxrss * 1024,
            proc.pid,
        )


def _write_all(fd: int, chunks) -> None:
    try:
        with os.fdopen(fd, "wb") as pipe:
            for chunk in chunks:
                pipe.write(chunk)
    except BrokenPipeError:
        pass  # the supervisor stopped reading: what it read is what the test checks


def own_cages(pid: int) -> set[str]:
    return {c for c in cage_dirs() if os.path.basename(c).split(".")[1].split("-")[0] == str(pid)}


def refused(ran: Ran, *needles: str) -> str:
    """Exit 2, the needles in stderr, a hint, bounded RSS and time, no cage."""
    assert ran.code == 2, (ran.code, ran.err[-2000:])
    for needle in needles:
        assert needle in ran.err, ran.err[-2000:]
    first = ran.err.splitlines()[0]
    assert first.rstrip().endswith(")"), first  # (a hint)
    assert ran.peak_rss <= RSS_BOUND, f"peak RSS {ran.peak_rss / MiB:.0f} MiB"
    assert ran.elapsed < CLI_S, ran.elapsed
    assert not own_cages(ran.pid)
    return first


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "ran"


def fleet_file(tmp_path: Path, marker: Path, extra: str = "", tasks: str = "") -> Path:
    """A fleet whose agent ``a`` touches ``marker`` (plus a suffix from {v})."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor: {{log_dir: '{tmp_path / 'runs'}', min_free_memory: 0}}\n"
        f"agents:\n  a: {{cmd: [touch, '{marker}{{v}}'], memory_limit: 20M}}\n"
        f"{extra}tasks:\n{tasks or '  - {agent: a, vars: {v: -file}}'}\n"
    )
    return path


# -- 11. parser bombs --------------------------------------------------------------

BOMBS = sorted(p.name for p in BAD.glob("bomb_*.yaml"))


@pytest.mark.figure("11. parser bombs")
@pytest.mark.parametrize("name", BOMBS)
def test_parser_bombs_are_refused_fast_and_small(name, tmp_path):
    path = BAD / name
    started = time.monotonic()
    with pytest.raises(FleetFileError) as info:
        load_fleet(str(path))
    assert time.monotonic() - started < PARSE_S
    assert str(info.value).startswith(f"{path}:")
    for command in ("validate", "fleet"):
        extra = ("--log-dir", str(tmp_path / "runs")) if command == "fleet" else ()
        first = refused(measured(command, *extra, str(path)), f"{path}:")
        assert first.split(":")[1].isdigit(), first
    assert not (tmp_path / "runs").exists()


def test_libyaml_is_used_and_its_depth_limit_reads_as_ours():
    """The C parser is ~10x faster; a file deeper than libyaml's own 1,000 levels
    still gets our message (bomb_deep_flow.yaml has 5,000)."""
    import yaml

    from agent_supervise.agents import yamlbound

    assert yaml.__with_libyaml__ and yamlbound.Loader is yaml.CSafeLoader
    with pytest.raises(FleetFileError, match="nested more than 64 levels deep"):
        load_fleet(str(BAD / "bomb_deep_flow.yaml"))


def test_a_legitimate_file_near_the_limits_still_loads(tmp_path):
    """The limits leave room: 10,000 tasks, anchors and merges, 60 levels deep."""
    body = [
        "defaults: &d {memory_limit: 20M, env: &e {A: '1'}}",
        "agents:",
        "  a: {<<: *d, cmd: [echo, '{v}'], env: *e}",
        "tasks:",
    ]
    body += [f"  - {{agent: a, vars: {{v: t{i}}}}}" for i in range(10_000)]
    deep = "[" * 30 + "]" * 30
    body.insert(0, f"# {deep}")  # (a comment: depth only counts in values)
    path = tmp_path / "big.yaml"
    path.write_text("\n".join(body) + "\n")
    assert path.stat().st_size < B.MAX_FILE_BYTES
    spec = load_fleet(str(path))
    assert len(spec.tasks) == 10_000


# -- 12. sizes that explode later ----------------------------------------------------


@pytest.mark.figure("12. sizes that explode later")
def test_fleet_file_repeat_is_bounded(tmp_path, marker):
    path = fleet_file(tmp_path, marker, tasks="  - {agent: a, vars: {v: x}, repeat: 100000000}")
    ran = measured("fleet", str(path))
    first = refused(ran, f"{path}:5:", "tasks[0].repeat: 100000000 is above the maximum of 10,000")
    assert "split it" in first
    assert not marker.exists() and not (tmp_path / "runs").exists()


@pytest.mark.figure("12. sizes that explode later")
def test_stdin_lines_too_long_too_many_and_too_repeated(tmp_path, marker):
    """A 60 MB line, a line with repeat 10**8 and 25,000 rejected lines: each rejected
    with its number, the supervisor stays small, and the good line after them runs."""
    path = fleet_file(tmp_path, marker, tasks="  []")
    many = 25_000
    bad_line = (json.dumps({"agent": "x" * 2000}) + "\n").encode()

    def feed():
        yield b'{"agent": "a", "vars": {"v": "'
        for _ in range(60):
            yield b"y" * MiB
        yield b'"}}\n'
        yield b'{"agent": "a", "vars": {"v": "-rep"}, "repeat": 100000000}\n'
        for _ in range(many // 1000):
            yield bad_line * 1000
        yield b'{"agent": "a", "vars": {"v": "-good"}}\n'

    ran = measured("fleet", "--json", str(path), "--tasks", "-", feed=feed())
    assert ran.code == 1, ran.err[-2000:]  # rejected lines: not everything ran
    assert ran.peak_rss <= RSS_BOUND, f"peak RSS {ran.peak_rss / MiB:.0f} MiB"
    summary = json.loads(ran.out)
    assert summary["counts"] == {"ok": 1}
    assert Path(f"{marker}-good").exists() and not Path(f"{marker}-rep").exists()
    rejected = summary["rejected"]
    assert rejected[0]["where"] == "stdin:1" and "longer than 1 MiB" in rejected[0]["error"]
    assert rejected[1]["where"] == "stdin:2"
    assert "repeat: 100000000 is above the maximum of 10,000" in rejected[1]["error"]
    assert len(rejected) == B.KEPT_REJECTS + 1  # the first 20 and one counting the rest
    total = many + 2
    assert rejected[-1]["more"] == total - B.KEPT_REJECTS
    assert rejected[-1]["where"] == f"stdin:{B.KEPT_REJECTS + 1} to stdin:{total}"
    events = (Path(summary["run_dir"]) / "events.jsonl").read_text().splitlines()
    assert sum('"event": "rejected"' in e for e in events) == total  # each is logged
    assert max(map(len, events)) < 2000  # ...with its message cut short


@pytest.mark.figure("12. sizes that explode later")
def test_api_submit_refuses_a_huge_repeat(tmp_path, marker):
    from agent_supervise.agents.spec import TaskSpec
    from agent_supervise.errors import BadInput
    from agent_supervise.fleet.supervisor import Supervisor

    spec = load_fleet(str(fleet_file(tmp_path, marker, tasks="  []")))
    sup = Supervisor(spec)
    with pytest.raises(BadInput, match="repeat: 100000000 is not a whole number from 1 to 10,000"):
        sup.submit(TaskSpec("a", vars={"v": "x"}, repeat=10**8), block=False)
    assert len(sup.queue) == 0
    sup.engine.close()
    sup.memory.close()
    sup.events.close()


# -- 13. bytes the kernel refuses -----------------------------------------------------


@pytest.mark.figure("13. bytes the kernel refuses")
def test_stdin_lines_the_kernel_would_refuse_are_rejected_and_the_fleet_goes_on(tmp_path, marker):
    path = fleet_file(tmp_path, marker, tasks="  []")
    lines = [
        {"agent": "a", "vars": {"v": "x\u0000y"}},  # a NUL
        {"agent": "a", "vars": {"v": "\ud800"}},  # not encodable
        {"agent": "a", "vars": {"v": "z" * 131_072}},  # > MAX_ARG_STRLEN
        {"agent": "a", "vars": {"v": "-good"}},
    ]
    feed = "".join(json.dumps(line) + "\n" for line in lines).encode()
    ran = measured("fleet", "--json", str(path), "--tasks", "-", feed=[feed])
    assert ran.code == 1, ran.err[-2000:]
    summary = json.loads(ran.out)
    assert summary["counts"] == {"ok": 1} and Path(f"{marker}-good").exists()
    errors = {r["where"]: r["error"] for r in summary["rejected"]}
    assert "vars.v: 'x\\x00y' contains a NUL byte" in errors["stdin:1"]
    assert "vars.v: '\\ud800' is not encodable text" in errors["stdin:2"]
    assert (
        f"agents.a.cmd[1], filled in with this task's vars, is "
        f"{len(str(marker)) + 131_072:,} bytes; the kernel takes at most 131,071"
        in errors["stdin:3"]
    )
    assert "MAX_ARG_STRLEN" in errors["stdin:3"] and len(errors) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ran")] == ["ran-good"]


@pytest.mark.figure("13. bytes the kernel refuses")
def test_argument_at_the_kernel_limit_runs_and_one_byte_more_is_bad_input(tmp_path, marker):
    """The check is the kernel's own bound (131,071 bytes and the NUL), not a guess."""
    path = tmp_path / "fleet.yaml"
    for size, code in ((B.MAX_ARG_STRLEN - 1, 0), (B.MAX_ARG_STRLEN, 2)):
        path.write_text(
            f"supervisor: {{log_dir: '{tmp_path / 'runs'}'}}\n"
            f"agents:\n  a: {{cmd: [sh, -c, 'touch \"$1\"', sh, '{marker}{size}',"
            f" '{{v}}']}}\ntasks:\n  - {{agent: a, vars: {{v: {'w' * size}}}}}\n"
        )
        ran = measured("fleet", "--json", str(path))
        assert ran.code == code, ran.err[-1000:]
        if code == 2:
            refused(
                ran,
                f"{path}:5:5: tasks[0]: agents.a.cmd[5], filled in with this "
                "task's vars, is 131,072 bytes",
            )
    assert Path(f"{marker}131071").exists() and not Path(f"{marker}131072").exists()


@pytest.mark.figure("13. bytes the kernel refuses")
def test_argv_and_environment_past_arg_max_are_bad_input(tmp_path, marker):
    """ARG_MAX is a quarter of the stack limit: under `ulimit -s 1024` it is 256 KiB,
    so three 100 KB arguments (built by aliases) are refused before anything runs."""
    word = "q" * 100_000
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"supervisor: {{log_dir: '{tmp_path / 'runs'}'}}\n"
        f"w: &w {word}\nagents:\n  a: {{cmd: [touch, '{marker}', *w, *w, *w]}}\n"
        "tasks:\n  - {agent: a}\n"
    )

    def small_stack():
        resource.setrlimit(
            resource.RLIMIT_STACK, (MiB, resource.getrlimit(resource.RLIMIT_STACK)[1])
        )

    ran = measured("fleet", str(path), preexec=small_stack)
    refused(
        ran,
        f"{path}:6:5: tasks[0]: agents.a: filled in with this task's vars, the "
        "command and its environment take",
        "ARG_MAX",
        "ulimit -s",
    )
    assert not marker.exists() and not (tmp_path / "runs").exists()


@pytest.mark.figure("15. small: --memory 1, run -- ''")
def test_run_refuses_an_empty_command(marker):
    ran = measured("run", "--", "")
    assert refused(ran) == (
        "agent-supervise: the command is empty text (name a program "
        "after '--': agent-supervise run -- python3 agent.py)"
    )


# -- 14. files that are not files ----------------------------------------------------


@pytest.mark.figure("14. files that are not files")
@pytest.mark.parametrize("what", ["dev-zero", "fifo", "too-big", "not-utf8", "missing"])
def test_fleet_files_that_are_not_files(what, tmp_path, marker):
    path = {"dev-zero": Path("/dev/zero"), "fifo": tmp_path / "fleet.fifo"}.get(
        what, tmp_path / "fleet.yaml"
    )
    if what == "fifo":
        os.mkfifo(path)  # nobody writes: a plain open() would wait forever
    elif what == "too-big":
        fleet_file(tmp_path, marker)
        with open(path, "a") as f:
            f.write("# padding\n" * 110_000)
    elif what == "not-utf8":
        fleet_file(tmp_path, marker)
        with open(path, "ab") as f:
            f.write(b"# caf\xe9\n")
    expect = {
        "dev-zero": "not a regular file (a character device)",
        "fifo": "not a regular file (a FIFO or pipe)",
        "too-big": "larger than 1 MiB, the limit for a fleet file",
        "not-utf8": f"{path}:6: not UTF-8 text",
        "missing": "No such file",
    }[what]
    for command in ("validate", "fleet", "export"):
        args = ("export", "slurm") if command == "export" else (command,)
        first = refused(measured(*args, str(path)), expect)
        assert str(path) in first
    assert not marker.exists() and not (tmp_path / "runs").exists()


@pytest.mark.figure("14. files that are not files")
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_tasks_from_an_endless_device_is_bad_input(device, tmp_path, marker):
    path = fleet_file(tmp_path, marker)
    refused(
        measured("fleet", str(path), "--tasks", device),
        f"--tasks {device}: is a character device, not a file or a pipe of JSON lines",
    )
    with open(device, "rb") as stdin:  # the same device as stdin
        refused(
            measured("fleet", str(path), "--tasks", "-", stdin=stdin),
            "--tasks -: is a character device",
        )
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_tasks_from_dev_null_is_an_empty_feed(tmp_path, marker):
    ran = measured("fleet", "--json", str(fleet_file(tmp_path, marker)), "--tasks", "/dev/null")
    assert ran.code == 0, ran.err[-1000:]
    assert Path(f"{marker}-file").exists()


# -- 15. the smallest cap -------------------------------------------------------------


@pytest.mark.figure("15. small: --memory 1, run -- ''")
@pytest.mark.parametrize(
    "memory, hint",
    [("1", "did you mean 1M?"), ("4096", "did you mean 4096M?"), ("512K", "try 1M or more")],
)
def test_run_memory_below_the_smallest_cap(memory, hint, marker):
    ran = measured("run", "--memory", memory, "--", "touch", str(marker))
    first = refused(ran, f"--memory: '{memory}' is below the smallest cap, 1M", hint)
    assert first.startswith("agent-supervise: --memory")
    assert not marker.exists()


def test_the_smallest_cap_runs(marker):
    ran = measured("run", "--memory", "1M", "--", "touch", str(marker))
    assert ran.code == 0, ran.err
    assert marker.exists()
