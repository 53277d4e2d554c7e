"""The /proc reader against real processes."""

from __future__ import annotations

import os
import subprocess
import time

from agent_supervise.proctree import ProcessTable


def test_tree_rss_and_stat():
    table = ProcessTable()
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while len(table.children(proc.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        tree = table.descendants([proc.pid])
        assert tree[0] == proc.pid and len(tree) == 3
        assert all(table.rss(p) > 0 for p in tree)
        st = table.stat(tree[1])
        assert st.session == proc.pid and st.pgrp == proc.pid and st.ppid == proc.pid
        assert proc.pid in table.own_children()
        assert table.environ_has(proc.pid, f"PATH={os.environ['PATH']}".encode())
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)
    # The sleepers were reparented to pytest (a subreaper for leak checks): reap them.
    for pid in tree[1:]:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    assert not any(table.alive(p) for p in tree)
    assert table.rss(proc.pid) == 0 and table.stat(proc.pid) is None


def test_stat_parses_names_with_spaces_and_parens():
    proc = subprocess.Popen(
        [
            "python3",
            "-c",
            "import ctypes, sys, time; ctypes.CDLL(None)"
            ".prctl(15, b'a) b (c', 0, 0, 0); print(1, flush=True); "
            "time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline() == b"1\n"
        with open(f"/proc/{proc.pid}/stat") as f:
            assert "(a) b (c)" in f.read()
        st = ProcessTable().stat(proc.pid)
        assert st.pid == proc.pid and st.ppid == os.getpid() and st.state in "RS"
    finally:
        proc.kill()
        proc.wait(timeout=10)
