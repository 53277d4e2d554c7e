"""`run`'s click-free reader (cli/runargs.py) against click itself.

Every `run` is read without click when its command line is well-formed; anything
else goes to click. So the promise is: what the fast reader accepts, click reads
alike (same parameters, same '--'), and the whole command behaves byte for byte as
through click, on every backend here."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import click
import pytest

from agent_supervise.cli.commands import run as run_command_click
from agent_supervise.cli.runargs import NAMES, OPTIONS, parse


def click_reads(argv: list[str]):
    """(params, dashdash) as click reads ``run ARGS``, or None where click refuses."""
    try:
        ctx = run_command_click.make_context("run", list(argv[1:]))
    except click.exceptions.ClickException:
        return None
    except click.exceptions.Exit:  # --help
        return None
    return ctx.params, ctx.meta["dashdash"]


#: What users type (all must take the fast path), and the corner cases.
TYPICAL = [
    ["run", "--", "true"],
    ["run", "true"],
    ["run", "--memory", "200M", "--", "python3", "agent.py", "--task", "x"],
    ["run", "-m", "1G", "--timeout", "10m", "--", "node", "cli.js"],
    ["run", "-m1G", "npx", "tsc"],
    ["run", "--memory=512MiB", "--backend=rlimit", "--json", "--", "sh", "-c", "exit 3"],
    ["run", "--backend", "cgroup1", "--rlimit", "as", "--grace", "1s", "--", "x"],
    ["run", "--pids-limit", "0", "--poll", "50ms", "--user", "nobody", "--", "id"],
    ["run", "--no-runtime-hints", "-m", "1G", "--", "node", "cli.js"],
    ["run", "--cgroup-root", "/sys/fs/cgroup/x", "--group", "g", "--", "id"],
    ["run", "--json", "--json", "--memory", "1M", "--memory", "2M", "--", "a"],
    ["run", "-", "x"],  # '-' is a command to click too
    ["run", "sleep", "--", "1"],  # '--' after the command belongs to it
    ["run", "--memory=", "--", "true"],  # empty value: passed on, refused later
    ["run", "--memory", "10%", "--", "true"],  # a share of MemTotal
    ["run", "-m12.5%", "--json", "true"],
    ["run", "--memory=150%", "--", "true"],  # passed on, refused later
]
EDGES = [
    ["run"],
    ["run", "--"],
    ["run", "--help"],
    ["run", "-h", "true"],
    ["run", "--memory"],
    ["run", "--memory", "--", "true"],
    ["run", "--memory", "-5", "--", "true"],
    ["run", "--backend", "nope", "--", "true"],
    ["run", "--rlimit", "DATA", "--", "true"],
    ["run", "--json=1", "--", "true"],
    ["run", "-m=50M", "--", "true"],
    ["run", "-x", "true"],
    ["run", "--mem", "1G", "--", "true"],  # no abbreviations in click either
    ["--version"],
    ["doctor"],
    [],
]


@pytest.mark.unit
@pytest.mark.parametrize("argv", TYPICAL, ids=" ".join)
def test_what_users_type_is_read_without_click_and_as_click_reads_it(argv):
    fast = parse(argv)
    assert fast is not None, "a well-formed run took the slow path"
    assert fast == click_reads(argv)


@pytest.mark.unit
@pytest.mark.parametrize("argv", EDGES, ids=lambda a: " ".join(a) or "(none)")
def test_corner_cases_are_left_to_click_or_read_alike(argv):
    fast = parse(argv)
    assert fast is None or fast == click_reads(argv)


@pytest.mark.unit
def test_random_command_lines_are_never_read_otherwise_than_by_click():
    words = [
        *NAMES,
        *(o.short for o in OPTIONS if o.short),
        "--",
        "-",
        "-h",
        "--help",
        "--bogus",
        "-m50M",
        "-m=1",
        "--memory=",
        "--backend=rlimit",
        "--json=x",
        "auto",
        "rlimit",
        "cgroup1",
        "data",
        "as",
        "50M",
        "true",
        "sh",
        "",
    ]
    rng = random.Random(20261203)
    accepted = 0
    for _ in range(5000):
        argv = ["run", *rng.choices(words, k=rng.randint(0, 7))]
        fast = parse(argv)
        if fast is not None:
            accepted += 1
            assert fast == click_reads(argv), argv
    assert accepted > 500  # the corpus does exercise the fast path


@pytest.mark.unit
def test_the_table_is_the_click_commands_options():
    """click's `run` is built from runargs.OPTIONS: names and choices (the defaults:
    `run true` above reads alike)."""
    by_name = {p.opts[0]: p for p in run_command_click.params if p.opts[0].startswith("--")}
    assert list(by_name) == list(NAMES)
    for o in OPTIONS:
        p = by_name[o.flag]
        assert p.name == o.dest
        assert list(getattr(p.type, "choices", []) or []) == list(o.choices or [])


def _normal(out: bytes) -> bytes:
    """Figures that differ from one run to the next (times, sizes, pids)."""
    out = re.sub(rb'"(peak_bytes|duration_s|pid)": [0-9.e-]+', rb'"\1": N', out)
    return re.sub(rb"\d+(\.\d+)? ?(ms|s|MiB|KiB|B)\b", b"N", out)


PROBE_FAST = "import sys; from agent_supervise.cli import main; main(sys.argv[1:])"
# The same main(), with the fast reader declining everything: click reads it all.
PROBE_CLICK = (
    "import sys; import agent_supervise.cli.runargs as r; r.parse = lambda argv: None; "
    + PROBE_FAST.split("; ", 1)[1]
)

SAME_AS_CLICK = [
    ["--", "true"],
    ["--", "false"],
    ["--", "sh", "-c", "echo out; echo err >&2; exit 3"],
    ["--json", "--", "sh", "-c", "echo hi"],
    ["--", "sh", "-c", "kill -TERM $$"],
    ["--timeout", "0.3s", "--", "sleep", "5"],
    ["--", "no-such-command-here"],
    ["--", "/etc/passwd"],
    ["--", ""],
    ["sleep", "--memory", "1G"],
    ["--memory", "0", "--", "true"],
    ["--memory", "150%", "--", "true"],
    ["--memory", "5%", "--", "sh", "-c", "echo hi"],
    ["--pids-limit", "x", "--", "true"],
    ["--memory", "30M", "--", sys.executable, "-c", "x = bytearray(300 << 20)"],
]


@pytest.mark.parametrize("args", SAME_AS_CLICK, ids=" ".join)
def test_run_behaves_as_through_click(backend, args):
    """Exit status, stdout and stderr of the fast path, byte for byte as click's."""
    argv = ["run", "--backend", backend, *args]
    assert parse(argv) is not None
    got = []
    for probe in (PROBE_FAST, PROBE_CLICK):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, timeout=60)
        got.append((proc.returncode, _normal(proc.stdout), _normal(proc.stderr)))
    assert got[0] == got[1]
