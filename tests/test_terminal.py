"""`run` in a terminal behaves as the command does under a shell (supervisor/run/terminal.py):
tested for real in tmux (send-keys to type, capture-pane to read the screen), on every
backend this machine has. The terminal part does not depend on the memory backend; the
cap cases do, and so each case runs on each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import PY, reap_orphans, require_tool

pytestmark = pytest.mark.figure("run in a terminal (tmux): /dev/tty, keys, ^C, ^Z, resize, modes")


class Tmux:
    """A private tmux server (its own socket) running an interactive bash."""

    def __init__(self, tmp_path) -> None:
        self.socket = f"as-test-{uuid.uuid4().hex[:12]}"
        self.tmp = tmp_path
        self._tmux(
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "110",
            "-y",
            "40",
            "env",
            "-i",
            f"PATH={os.environ['PATH']}",
            "TERM=xterm",
            "HOME=/tmp",
            "PS1=$ ",
            "bash",
            "--norc",
            "--noprofile",
            "-i",
        )
        self.wait_for("$ ")

    def _tmux(self, *args) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", line)
        self.keys("Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "t")

    def wait_for(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while text not in (screen := self.screen()):
            assert time.monotonic() < deadline, f"never saw {text!r} on:\n{screen}"
            time.sleep(0.05)
        return screen

    def run(self, command: str, timeout: float = 20) -> tuple[int, str]:
        """Type ``command`` at the prompt; its exit status and the screen after it."""
        marker = uuid.uuid4().hex[:8]
        self.type(f"{command}; echo rc-$?-{marker}")  # typed: "$?"; printed: a number
        pattern = re.compile(rf"rc-(\d+)-{marker}")
        deadline = time.monotonic() + timeout
        while not (found := pattern.search(screen := self.screen())):
            assert time.monotonic() < deadline, f"{command!r} did not end:\n{screen}"
            time.sleep(0.05)
        return int(found.group(1)), screen

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
        # The server daemonized: pytest, a subreaper, adopted it; reap it here.
        reap_orphans()


@pytest.fixture
def tmux(tmp_path):
    require_tool(shutil.which("tmux") is not None, "tmux")
    t = Tmux(tmp_path)
    yield t
    t.close()


def run_cmd(backend: str, *args: str) -> str:
    return " ".join([PY, "-m", "agent_supervise", "run", "--backend", backend, *args])


def test_dev_tty_opens(tmux, backend):
    status, screen = tmux.run(
        run_cmd(backend, "--", "sh", "-c", "'echo via-dev-tty > /dev/tty; tty'")
    )
    assert status == 0, screen
    assert "via-dev-tty" in screen and "/dev/pts/" in screen, screen
    assert "agent-supervise:" not in screen


def test_python_repl_gets_keys_and_its_own_ctrl_c(tmux, backend):
    """^C belongs to the agent: the REPL handles it and goes on (it is not stopped
    2 s later), and exits 0 with nothing added by agent-supervise."""
    tmux.type(run_cmd(backend, "--", PY, "-q"))
    tmux.wait_for(">>> ")
    tmux.type("6*7")
    tmux.wait_for("42")
    tmux.keys("C-c")
    tmux.wait_for("KeyboardInterrupt")
    time.sleep(2.5)  # longer than the grace: a supervisor that took the ^C would act
    tmux.type("'still' + 'here'")
    tmux.wait_for("'stillhere'")
    tmux.type("exit()")
    status, screen = tmux.run("(exit $?)")  # typed at the shell once the REPL is gone
    assert status == 0, screen
    assert "agent-supervise:" not in screen


def test_window_resize_reaches_the_agent(tmux, backend, tmp_path):
    script = tmp_path / "winch.py"
    script.write_text(
        "import os, signal, time\n"
        "signal.signal(signal.SIGWINCH, lambda *a: print('WINCH', "
        "*os.get_terminal_size(), flush=True))\n"
        "print('ready', flush=True)\ntime.sleep(30)\n"
    )
    tmux.type(run_cmd(backend, "--", PY, str(script)))
    tmux.wait_for("ready")
    tmux._tmux("resize-window", "-t", "t", "-x", "90", "-y", "30")
    tmux.wait_for("WINCH 90 30")
    tmux.keys("C-c")
    tmux.wait_for("KeyboardInterrupt")


def test_ctrl_z_stops_the_job_and_fg_continues_it(tmux, backend, tmp_path):
    """^Z stops the agent and gives the terminal back to the shell (its job shows as
    stopped); fg hands it back to the agent, which goes on where it was."""
    script = tmp_path / "count.py"
    script.write_text(
        "import time\nfor i in range(1000):\n"
        "    print('tick', i, flush=True)\n    time.sleep(0.2)\n"
    )
    tmux.type(run_cmd(backend, "--", PY, str(script)))
    tmux.wait_for("tick 2")
    tmux.keys("C-z")
    tmux.wait_for("Stopped")
    status, screen = tmux.run("echo shell-has-the-terminal")
    assert status == 0 and "shell-has-the-terminal" in screen
    last = max(int(line.split()[1]) for line in screen.splitlines() if line.startswith("tick "))
    time.sleep(1)  # stopped: no tick while it is
    assert f"tick {last + 1}" not in tmux.screen()
    tmux.type("fg")
    tmux.wait_for(f"tick {last + 2}")
    tmux.keys("C-c")
    status, screen = tmux.run("true")
    assert "agent-supervise:" not in screen.split("fg")[-1], screen


def test_a_pager_works(tmux, backend, tmp_path):
    text = tmp_path / "text"
    text.write_text("".join(f"line {i} of the pager test\n" for i in range(200)))
    tmux.type(run_cmd(backend, "--", "less", str(text)))
    tmux.wait_for("line 5 of the pager test")
    tmux.keys("G")  # to the end: less read the key from /dev/tty
    tmux.wait_for("line 199 of the pager test")
    tmux.keys("q")
    status, _screen = tmux.run("true")
    assert status == 0


def test_killed_at_its_cap_in_raw_mode_restores_the_terminal(tmux, backend, tmp_path):
    """An agent that put the terminal in raw mode and is killed at its cap: the modes
    are back as they were, and the one-line message starts on a clean line."""
    script = tmp_path / "rawhog.py"
    script.write_text(
        "import sys, time, tty\ntty.setraw(0)\n"
        "sys.stdout.write('raw mode, a partial line'); sys.stdout.flush()\n"
        "x = []\nfor i in range(400):\n"
        "    x.append(bytearray(1 << 20)); time.sleep(0.005)\n"
    )
    before, after = tmp_path / "before", tmp_path / "after"
    status, screen = tmux.run(
        f"stty -g > {before}; "
        + run_cmd(backend, "--memory", "30M", "--", PY, str(script))
        + f"; s=$?; stty -g > {after}; (exit $s)"
    )
    assert status == 137, screen
    assert before.read_text() == after.read_text(), "terminal modes not restored"
    lines = screen.splitlines()
    assert any(
        line.startswith("agent-supervise: ") and "memory limit 30.0 MiB" in line for line in lines
    ), screen


def test_an_ordinary_failure_adds_no_line(tmux, backend):
    status, screen = tmux.run(run_cmd(backend, "--", "sh", "-c", "'exit 3'"))
    assert status == 3
    assert "agent-supervise:" not in screen
