"""The cgroup v2 backend over a fake cgroupfs folder (the host binds memory to v1).

The VM stage runs the real-kernel tests of test_run_backends.py for cgroup2; these
pin down the backend's own decisions: where the leaf goes, what it writes, how it
reads counters, and how it tears down.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from agent_supervise.errors import CageError
from agent_supervise.limits.base import Unavailable, cage_name
from agent_supervise.limits.cgroup2 import Cgroup2Backend

from fakes import FakeCgroup2FS

MiB = 1 << 20


pytestmark = pytest.mark.unit  # fakes only: `make unit`


def make(tmp_path, own="/", **fs_args):
    """A fake hierarchy mounted at tmp/cg, with this process in cgroup ``own``."""
    root = str(tmp_path / "cg")
    fs = FakeCgroup2FS(root, **fs_args)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "31 25 0:27 / /proc rw - proc proc rw\n"
    )
    cgfile = tmp_path / "cgroup"
    cgfile.write_text(f"0::{own}\n")
    path = root
    for part in [p for p in own.split("/") if p]:
        path = os.path.join(path, part)
        fs.write(os.path.join(os.path.dirname(path), "cgroup.subtree_control"), "+memory")
        fs.mkdir(path)
    backend = Cgroup2Backend(fs, mountinfo=str(mountinfo), cgroup_file=str(cgfile))
    return fs, root, backend


def read(path):
    with open(path) as f:
        return f.read().strip()


def test_leaf_under_root_cgroup_enables_memory(tmp_path):
    _fs, root, backend = make(tmp_path)
    assert backend.probe() == root
    assert "memory" in read(f"{root}/cgroup.subtree_control")
    assert [e for e in os.listdir(root) if e.startswith("agent-supervise")] == []  # probe gone


def test_writes_limits_and_reads_them_back(tmp_path):
    _fs, root, backend = make(tmp_path)
    cage = backend.create("researcher", 50 * MiB + 123)
    try:
        assert os.path.dirname(cage.path) == root
        assert cage.name.startswith("agent-supervise.") and cage.name.endswith(".researcher")
        assert read(f"{cage.path}/memory.max") == str(50 * MiB)  # rounded to a page
        assert read(f"{cage.path}/memory.swap.max") == "0"
        assert read(f"{cage.path}/memory.oom.group") == "1"
        assert cage.notes == []
    finally:
        cage.release()
    assert not os.path.exists(cage.path)


def test_readback_mismatch_fails_loudly(tmp_path):
    fs, root, backend = make(tmp_path, ignore_writes=("memory.oom.group",))
    with pytest.raises(
        Unavailable, match="memory.oom.group: wrote '1' but the kernel reads back '0'"
    ):
        backend.probe()
    fs.ignore_writes = ()
    backend.probe()
    fs.ignore_writes = ("memory.max",)
    with pytest.raises(CageError, match="memory.max: wrote"):
        backend.create("x", 50 * MiB)
    assert [e for e in os.listdir(root) if e.startswith("agent-supervise")] == []


def test_own_cgroup_with_processes_goes_to_nearest_ancestor(tmp_path):
    fs, root, backend = make(tmp_path, own="/user.slice/term.scope")
    fs.add_process(f"{root}/user.slice/term.scope", os.getpid())
    parent = backend.probe()
    assert parent == f"{root}/user.slice"


def test_no_usable_parent_explains_each(tmp_path):
    fs, root, backend = make(tmp_path, own="/a")
    fs.add_process(f"{root}/a", os.getpid())
    # As root everything is writable: let the fake say the top is not.
    fs.writable = lambda path: path.startswith(f"{root}/a")
    with pytest.raises(Unavailable) as info:
        backend.probe()
    text = str(info.value)
    assert f"{root}/a: it holds processes" in text
    assert f"{root}: not writable" in text


def test_hybrid_layout_is_explained(tmp_path):
    _fs, root, backend = make(tmp_path)
    with open(f"{root}/cgroup.controllers", "w") as f:
        f.write("hugetlb\n")
    with pytest.raises(Unavailable, match="offers controllers 'hugetlb' but not memory"):
        backend.probe()


def test_no_cgroup2_mount(tmp_path):
    mountinfo = tmp_path / "mi"
    mountinfo.write_text("31 25 0:27 / /proc rw - proc proc rw\n")
    backend = Cgroup2Backend(mountinfo=str(mountinfo))
    with pytest.raises(Unavailable, match="no cgroup2 filesystem is mounted"):
        backend.probe()


def test_oom_group_kill_counts_the_agent_once(tmp_path):
    """With oom.group the victim is counted twice in oom_kill (seen on a real kernel)."""
    _fs, _root, backend = make(tmp_path)
    cage = backend.create("hog", 50 * MiB)
    events = f"{cage.path}/memory.events"
    try:
        assert cage.oom_kills() == 0 and cage.on_notify() is False
        with open(events, "w") as f:
            f.write("low 0\nhigh 0\nmax 35\noom 1\noom_kill 2\noom_group_kill 1\n")
        assert cage.oom_kills() == 1
        assert cage.on_notify() is True
        assert cage.on_notify() is False  # the same kill is reported once
        with open(events, "w") as f:
            f.write("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")  # kernel without the key
        assert cage.oom_kills() == 1
    finally:
        cage.release()


def test_usage_peak_and_refaults(tmp_path):
    fs, _root, backend = make(tmp_path)
    cage = backend.create("x", 50 * MiB)
    try:
        fs._put(f"{cage.path}/memory.current", f"{10 * MiB}\n")
        fs._put(f"{cage.path}/memory.peak", f"{20 * MiB}\n")
        fs._put(
            f"{cage.path}/memory.stat",
            "anon 1\nworkingset_refault_anon 3\nworkingset_refault_file 7\n",
        )
        assert cage.usage() == 10 * MiB  # through the kept-open fd
        assert cage.peak() == 20 * MiB
        assert cage.refaults() == 10 * 4096
        os.unlink(f"{cage.path}/memory.peak")
        assert cage.peak() is None  # before Linux 5.19
    finally:
        cage.release()


def test_kill_uses_cgroup_kill_and_release_waits_for_populated_0(tmp_path):
    """A real kernel still lists a killed process, and rmdir is EBUSY, until its exit
    has finished (seen in User-Mode Linux): release() kills once, waits for
    populated 0 and only then tries rmdir, once."""
    fs, _root, backend = make(tmp_path)
    fs.KILL_LATENCY_S = 0.05
    cage = backend.create("x", 50 * MiB)
    fs.add_process(cage.path, 999999)
    assert cage.members() == [999999] and not cage.is_empty()
    assert cage.kill() == 1
    assert fs.writes[-1] == (f"{cage.path}/cgroup.kill", "1")
    assert cage.members() == [999999] and not cage.is_empty()  # still dying
    assert cage.wait_empty(2.0) and cage.members() == []

    other = backend.create("y", 50 * MiB)
    fs.add_process(other.path, 999998)
    other.release()
    assert not os.path.exists(other.path)
    assert [r for r in fs.rmdirs if r[0] == other.path] == [(other.path, False)]
    assert [w for w in fs.writes if w[0].startswith(other.path)][-1:] == [
        (f"{other.path}/cgroup.kill", "1")
    ]
    assert sum(1 for path, _ in fs.writes if path == f"{other.path}/cgroup.kill") == 1
    cage.release()


def test_release_of_a_cage_that_stays_busy_names_the_pids(tmp_path, monkeypatch):
    import agent_supervise.limits.cgroupcage as cc

    monkeypatch.setattr(cc, "RMDIR_PATIENCE_S", 0.1)
    fs, _root, backend = make(tmp_path)
    cage = backend.create("x", 50 * MiB)
    fs.add_process(cage.path, 999999)
    cage.kill = lambda: 0  # a process that will not die
    with pytest.raises(
        CageError,
        match=r"rmdir\(.*\) failed: Device or resource busy; "
        r"processes still inside: \[999999\]",
    ):
        cage.release()
    fs.write(f"{cage.path}/cgroup.kill", "1")
    time.sleep(2 * fs.KILL_LATENCY_S)
    fs.rmdir(cage.path)


def test_stale_cage_processes_are_counted_once_while_they_die(tmp_path):
    fs, root, backend = make(tmp_path)
    fs.KILL_LATENCY_S = 0.05
    backend.probe()
    dead = os.path.join(root, cage_name("4194999-1", 3, "old"))
    fs.mkdir(dead)
    fs.add_process(dead, 999998)
    fs.add_process(dead, 999999)
    [stale] = backend.clean_stale()
    assert (stale.killed, stale.removed) == (2, True)
    assert not os.path.exists(dead)


def test_sub_cgroups_an_agent_made_are_members_and_removed(tmp_path):
    """An agent running as root can mkdir in its cage and move into the new cgroup:
    cgroup.procs of the cage no longer lists it, rmdir of the cage is EBUSY."""
    fs, _root, backend = make(tmp_path)
    cage = backend.create("x", 50 * MiB)
    fs.mkdir(f"{cage.path}/inner")
    fs.mkdir(f"{cage.path}/inner/deeper")
    fs.add_process(f"{cage.path}/inner/deeper", 999999)
    assert read(f"{cage.path}/cgroup.procs") == ""
    assert cage.members() == [999999] and not cage.is_empty()
    cage.release()
    assert not os.path.exists(cage.path)


def test_the_fake_speaks_like_the_kernel(tmp_path):
    """What a 6.1 kernel showed (tests/vm): the formats the backend parses."""
    fs, root, _backend = make(tmp_path)
    assert read(f"{root}/cgroup.subtree_control") == ""
    assert not os.path.exists(f"{root}/cgroup.kill")  # no kill, events, memory.max at
    assert not os.path.exists(f"{root}/cgroup.events")  # the root
    assert not os.path.exists(f"{root}/memory.max")
    fs.write(f"{root}/cgroup.subtree_control", "+pids")
    fs.write(f"{root}/cgroup.subtree_control", "+memory")
    fs.write(f"{root}/cgroup.subtree_control", "+cpu")
    assert read(f"{root}/cgroup.subtree_control") == "cpu memory pids"  # kernel order
    fs.mkdir(f"{root}/a")
    assert read(f"{root}/a/cgroup.controllers") == "cpu memory pids"
    fs.write(f"{root}/a/memory.swap.max", "12345")
    assert read(f"{root}/a/memory.swap.max") == "12288"
    for text, code in (("+nosuch", errno.EINVAL), ("+io", errno.ENOENT)):
        with pytest.raises(CageError) as info:
            fs.write(f"{root}/a/cgroup.subtree_control", text)
        assert info.value.__cause__.errno == code
    fs.add_process(f"{root}/a", 999999)
    with pytest.raises(CageError) as info:
        fs.write(f"{root}/a/cgroup.subtree_control", "+memory")
    assert info.value.__cause__.errno == errno.EBUSY
    fs.add_process(root, 1)  # the root is exempt from the no-internal-processes rule
    fs.write(f"{root}/cgroup.subtree_control", "-cpu")
    assert read(f"{root}/cgroup.subtree_control") == "memory pids"


def test_missing_optional_files_become_notes(tmp_path):
    _fs, _root, backend = make(tmp_path, missing=("memory.swap.max", "memory.oom.group"))
    cage = backend.create("x", 50 * MiB)
    try:
        assert any("memory.swap.max is missing" in n for n in cage.notes)
        assert any("memory.oom.group is missing" in n for n in cage.notes)
    finally:
        cage.release()


def test_stale_cages_of_dead_supervisors_are_removed(tmp_path):
    fs, root, backend = make(tmp_path)
    backend.probe()
    dead = os.path.join(root, cage_name("4194999-1", 3, "old"))  # no such pid
    fs.mkdir(dead)
    fs.add_process(dead, 999999)
    mine = backend.create("live", 50 * MiB)
    try:
        stale = backend.clean_stale()
        assert [(s.path, s.owner_pid, s.removed) for s in stale] == [(dead, 4194999, True)]
        assert stale[0].killed == 1
        assert os.path.exists(mine.path)
    finally:
        mine.release()


def test_explicit_root_must_be_a_cgroup2_dir(tmp_path):
    fs, root, _ = make(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    backend = Cgroup2Backend(fs, str(plain), mountinfo=str(tmp_path / "mountinfo"))
    with pytest.raises(Unavailable, match="not a cgroup2 directory"):
        backend.probe()
    fs.mkdir(f"{root}/delegated")
    fs.write(f"{root}/cgroup.subtree_control", "+memory")
    backend = Cgroup2Backend(fs, f"{root}/delegated", mountinfo=str(tmp_path / "mountinfo"))
    with pytest.raises(Unavailable, match="does not delegate the memory controller"):
        backend.probe()
