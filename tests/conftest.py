"""Shared fixtures: real children, the backends this machine has, and leak checks.

The pytest process makes itself a child subreaper, so any process a test lets
escape (a double-forked grandchild its supervisor failed to kill) is reparented
here instead of to init, where the autouse ``no_leaks`` fixture sees it, kills it,
and fails the test. The same fixture fails a test that leaves a zombie or a cage.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import psutil
import pytest

from agent_supervise.limits import BACKEND_NAMES, probe_all
from agent_supervise.limits.base import is_cage_name
from agent_supervise.limits.cgroupfs import cgroup_mounts
from agent_supervise.linux import become_subreaper

# pytest imports this file under a name of its own (--import-mode=importlib); tests
# `import conftest` too: make that the same module, so its state (FIGURES) is shared.
sys.modules.setdefault("conftest", sys.modules[__name__])

CHILDREN = Path(__file__).parent / "children"
ALLOC = str(CHILDREN / "alloc.py")
ESCAPE = str(CHILDREN / "escape.py")
NODE_ALLOC = str(CHILDREN / "node_alloc.js")
PY = sys.executable
MiB = 1 << 20
#: Set in the VM stage's guest (tests/vm/init.sh). UML runs every system call through
#: ptrace: a process start there costs ~0.5 s, node's ~5 s. A bound that says "quickly,
#: not at the timeout" is looser there; one that says "at once" is not.
IN_VM = bool(os.environ.get("AGENT_SUPERVISE_IN_VM"))
#: Seconds a test may wait for its processes to be gone before calling it a leak.
LEAK_PATIENCE_S = 5.0

_PROBES = {p.name: p for p in probe_all()}


def required_backends() -> set[str]:
    """Backends that must run here. Under CI=true a skip of one is a failure."""
    names = os.environ.get("AGENT_SUPERVISE_REQUIRE_BACKENDS")
    if names is None:
        names = "cgroup1,rlimit" if os.environ.get("CI") == "true" else ""
    return {n for n in names.split(",") if n}


def require_backend(name: str) -> None:
    probe = _PROBES[name]
    if probe.available:
        return
    if name in required_backends():
        pytest.fail(f"backend {name} is required here but unavailable: {probe.detail}")
    pytest.skip(f"backend {name} unavailable on this machine: {probe.detail}")


def require_tool(present: bool, what: str) -> None:
    """Skip where a test tool is missing, except under CI=true, where .ci/run installs
    it: there a skip would hide a test that never runs."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI=true (.ci/run should install it)")
    pytest.skip(f"{what} is missing")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request) -> str:
    """Each backend in turn; skipped (with the reason) only where it is absent."""
    require_backend(request.param)
    return request.param


@pytest.fixture(autouse=True, scope="session")
def subreaper() -> None:
    """Escaped descendants of any test land here, where no_leaks finds them."""
    become_subreaper()


# -- leak detection ------------------------------------------------------------------


def cage_dirs() -> set[str]:
    """Every cage directory (ours, by name) in the memory-capable hierarchies, and
    the pids companions of cgroup1 and rlimit cages (limits/pids.py), and cgroup1's
    freezer leaves (limits/freezer.py)."""
    found = set()
    for mount in cgroup_mounts():
        if mount.fstype == "cgroup" and not {"memory", "pids", "freezer"} & set(mount.options):
            continue
        for top, dirs, _ in os.walk(mount.point):
            for d in list(dirs):
                if is_cage_name(d):
                    found.add(os.path.join(top, d))
                    dirs.remove(d)
            if top.count("/") - mount.point.count("/") >= 4:
                dirs[:] = []
    return found


def reap_orphans(timeout: float = 5.0) -> None:
    """Reap what a test's killed supervisor left behind: its agents were reparented to
    pytest (a subreaper for leak checks); init would reap them elsewhere."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process().children()
        if not kids:
            return
        for child in kids:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.NoSuchProcess, ChildProcessError):
                pass
        time.sleep(0.02)


def _reap_zombies() -> list[int]:
    zombies = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    return zombies


def mounts_under(root: str) -> set[str]:
    """Mount points at or below ``root`` (a test's small filesystems)."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    return {p for p in points if p == root or p.startswith(root.rstrip("/") + "/")}


@pytest.fixture(autouse=True)
def no_leaks(tmp_path_factory):
    cages_before = cage_dirs()
    base = str(tmp_path_factory.getbasetemp())
    mounts_before = mounts_under(base)
    yield
    deadline = time.monotonic() + LEAK_PATIENCE_S
    me = psutil.Process()
    while True:
        live = [
            p
            for p in me.children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    zombies = _reap_zombies()
    leaked = []
    for p in live:
        try:
            leaked.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(live, timeout=5)
    _reap_zombies()
    new_cages = cages_since(cages_before)
    for path in new_cages:
        _remove_cage(path)
    new_mounts = mounts_under(base) - mounts_before
    for point in sorted(new_mounts, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    problems = []
    if new_mounts:
        problems.append(f"leaked mounts: {sorted(new_mounts)}")
    if leaked:
        problems.append(f"leaked processes: {leaked}")
    if zombies:
        problems.append(f"unreaped zombies: {zombies}")
    if new_cages:
        problems.append(f"leaked cages: {sorted(new_cages)}")
    if problems:
        pytest.fail("; ".join(problems))


def cages_since(before: set[str]) -> set[str]:
    """Cages made since ``before`` (a :func:`cage_dirs`) by this session. A cage whose
    supervisor still runs belongs to someone else's test session on this machine, not
    to this test, unless that supervisor is this very process; so does one whose
    supervisor started before this session did (it cannot be one this session ran)."""
    return {p for p in cage_dirs() - before if _made_by_this_session(p)}


def _made_by_this_session(path: str) -> bool:
    """This process made it, or a supervisor gone now that started after this session
    did (a live one belongs to someone else's session, and so does an older one)."""
    from agent_supervise.limits.base import cage_owner, owner_alive

    owner = cage_owner(os.path.basename(path))
    if owner is None:
        return False
    pid, started = owner
    if pid == os.getpid():
        return True
    return not owner_alive(pid, str(started)) and started >= _SESSION_START


def _own_start() -> int:
    from agent_supervise.proctree import ProcessTable

    me = ProcessTable().stat(os.getpid())
    return me.starttime if me is not None else 0


#: This session's start time in clock ticks, as cage names carry their owner's.
_SESSION_START = _own_start()


def _remove_cage(path: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


# -- running the CLI -----------------------------------------------------------------


def run_cli(
    *args, timeout: float = 60, input: bytes | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``agent-supervise ARGS`` as a real process (``python -m agent_supervise``)."""
    return subprocess.run(
        [PY, "-m", "agent_supervise", *args],
        capture_output=True,
        timeout=timeout,
        input=input,
        env=env,
    )


def json_outcome(proc: subprocess.CompletedProcess) -> dict:
    """The ``--json`` outcome: the last line of stderr. An agent killed mid-write (a
    fork bomb's "can't start new thread") may leave its last line unfinished on the
    stderr it shares with the supervisor: the outcome then begins on that line."""
    lines = proc.stderr.decode().strip().splitlines()
    assert lines, f"no output on stderr; stdout={proc.stdout[-500:]!r}"
    last = lines[-1]
    return json.loads(last[last.rfind('{"reason"') :] if '{"reason"' in last else last)


def supervise(backend: str, *cmd, memory: str = "50M", extra=(), timeout: float = 60):
    """Run ``cmd`` under the CLI with ``--json``; return (outcome dict, completed)."""
    proc = run_cli(
        "run",
        "--json",
        "--backend",
        backend,
        "--memory",
        memory,
        *extra,
        "--",
        *cmd,
        timeout=timeout,
    )
    out = json_outcome(proc)
    assert proc.returncode == out["exit_code"], (proc.returncode, out)
    return out, proc


# -- running as another user ---------------------------------------------------------

#: The unprivileged user that the privilege tests switch to.
OTHER_USER = "nobody"
#: PATH for processes run as that user: the supervisor's own may start with folders
#: that user cannot enter (a pyenv under /root), and a login would not have them.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def not_here(reason: str) -> NoReturn:
    """This machine cannot run the test: skip, saying why; under CI=true, where every
    test must run, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (a skip is a failure under CI=true)")
    pytest.skip(reason)


class OtherUser:
    """An unprivileged user to run processes as, with what those processes need.

    The checkout may sit where that user cannot read (``mktemp -d`` makes 0700
    folders), and so may the venv and the interpreter it links to (a pyenv under the
    0700 /root). So this user gets its own: :attr:`python`, an interpreter of this
    session's version (the compiled extensions must load) that the user can execute
    itself, and :attr:`pythonpath`, copies of agent_supervise and its dependencies in a
    folder the user can read. :meth:`run` switches user as a login does (setgroups,
    setregid, setreuid, then exec), so the kernel checks the exec'd path as that user;
    ``setpriv`` keeps root's capabilities across its exec, which lets a binary under
    /root start and then load whatever libpython it can read.
    """

    def __init__(self, name: str):
        import pwd

        entry = pwd.getpwnam(name)
        self.name, self.uid, self.gid = entry.pw_name, entry.pw_uid, entry.pw_gid
        self.home = entry.pw_dir
        self._scratch: Path | None = None

    # -- folders -----------------------------------------------------------------

    def _may(self, st: os.stat_result, bit: int) -> bool:
        """Whether the mode bits grant this user ``bit`` (4 read, 1 execute/search); it
        belongs to its own group only (run() clears the supplementary ones)."""
        if st.st_uid == self.uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid == self.gid:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)

    def can_reach(self, path: str | Path) -> bool:
        """Whether this user may enter every folder on the way to ``path`` (both the
        path as written and with its links resolved). Mode bits only: a cheap filter
        before running anything; running is the proof."""
        for p in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:
            for folder in p.parents:
                try:
                    if not self._may(os.stat(folder), 1):
                        return False
                except OSError:
                    return False
        return True

    def folder(self, name: str = "shared") -> Path:
        """A new folder (root's, mode 0755) that this user can enter and read, removed
        at the end of the session."""
        if self._scratch is None:
            bases = [tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]
            base = next(
                (b for b in bases if os.path.isdir(b) and self.can_reach(os.path.join(b, "x"))),
                None,
            )
            if base is None:
                not_here(f"no temporary folder that {self.name} can enter: {bases}")
            self._scratch = Path(tempfile.mkdtemp(prefix=f"agent-supervise-{self.name}.", dir=base))
            self._scratch.chmod(0o755)
        folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=self._scratch))
        folder.chmod(0o755)
        return folder

    def cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # -- running -----------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a login of this user (plus ``extra``)."""
        return {
            "PATH": SYSTEM_PATH,
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            **extra,
        }

    def run(
        self, cmd, *, env: dict | None = None, cwd: str | Path = "/", timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` as this user (no supplementary groups), output captured."""
        return subprocess.run(
            cmd,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self.env() if env is None else env,
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            **kw,
        )

    def run_cli(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        """``agent-supervise ARGS`` as this user, from its own copy of the package."""
        return self.run(
            [self.python, "-s", "-m", "agent_supervise", *args],
            env=self.env(PYTHONPATH=self.pythonpath),
            timeout=timeout,
        )

    @functools.cached_property
    def python(self) -> str:
        """An interpreter of this session's Python version that this user can run."""
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        candidates = [
            sys.executable,
            getattr(sys, "_base_executable", sys.executable),
            os.path.realpath(sys.executable),
        ]
        for folder in SYSTEM_PATH.split(":"):
            candidates += [f"{folder}/python{version}", f"{folder}/python3"]
        tried = []
        for path in dict.fromkeys(candidates):
            if not os.path.exists(path):
                continue
            if not self.can_reach(path):
                tried.append(f"{path}: {self.name} cannot reach it")
                continue
            try:
                proc = self.run(
                    [path, "-s", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                    timeout=60,
                )
            except OSError as err:
                tried.append(f"{path}: {err.strerror}")
                continue
            said = proc.stdout.decode().strip()
            if proc.returncode == 0 and said == version:
                return path
            tried.append(f"{path}: {said or proc.stderr.decode().strip()[-200:]}")
        not_here(f"no Python {version} that {self.name} can run: " + "; ".join(tried))

    @functools.cached_property
    def pythonpath(self) -> str:
        """A folder this user can read, holding copies of agent_supervise (the
        packages this session imports, so the same code) and of the installed
        distributions it depends on, at any depth."""
        dest = self.folder("site")
        for package, source in _our_packages():
            shutil.copytree(source, dest.joinpath(*package.split(".")), dirs_exist_ok=True)
        for dist in _dependencies():
            root = Path(dist.locate_file(""))
            for file in dist.files or ():
                src = Path(dist.locate_file(file))
                rel = os.path.relpath(src, root)
                if rel.startswith("..") or not src.is_file():
                    continue  # a script in bin/, or a RECORD entry that is not there
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        for top, dirs, files in os.walk(dest):
            for d in dirs:
                os.chmod(os.path.join(top, d), 0o755)
            for f in files:
                path = os.path.join(top, f)
                os.chmod(path, os.stat(path).st_mode & 0o777 | 0o444)
        check = self.run(
            [
                self.python,
                "-s",
                "-c",
                "import agent_supervise.cli, "
                "agent_supervise.limits; print(agent_supervise.__file__)",
            ],
            env=self.env(PYTHONPATH=str(dest)),
        )
        assert check.returncode == 0 and check.stdout.decode().startswith(str(dest)), (
            f"{self.name} cannot import its copy of agent_supervise in {dest}: "
            f"{check.stdout.decode()}{check.stderr.decode()}"
        )
        return str(dest)


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return {}
    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _our_packages() -> list[tuple[str, str]]:
    """(import name, folder) of every package of agent_supervise, as this session
    imports them: pyproject.toml's list (an editable install maps each to its own
    folder of the checkout, so walking the first folder would miss the others)."""
    import importlib

    names = _pyproject().get("tool", {}).get("setuptools", {}).get("packages")
    if not names:
        import agent_supervise.cli  # noqa: F401 - what the CLI imports, at least

        names = [
            n
            for n, m in sys.modules.items()
            if n.split(".")[0] == "agent_supervise" and hasattr(m, "__path__")
        ]
    return [(n, importlib.import_module(n).__path__[0]) for n in sorted(names)]


def _dependencies() -> list:
    """The installed distributions agent_supervise needs at run time, recursively
    (extras left out)."""
    import re
    from importlib import metadata

    try:
        roots = metadata.requires("agent-supervise") or []
    except metadata.PackageNotFoundError:
        roots = _pyproject().get("project", {}).get("dependencies", [])
    found: dict[str, object] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        name, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", name.strip()).group().lower()
        key = re.sub(r"[-_.]+", "-", name)
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not for this platform (a marker), or the import would fail anyway
        found[key] = dist
        todo += dist.requires or []
    return list(found.values())


@pytest.fixture(scope="session")
def other_user():
    """The unprivileged user (:data:`OTHER_USER`) as an :class:`OtherUser`. Needs root
    to switch to it: elsewhere the test skips, saying so (fails under CI=true)."""
    if os.geteuid() != 0:
        not_here(f"needs root to run processes as {OTHER_USER}")
    try:
        user = OtherUser(OTHER_USER)
    except KeyError:
        not_here(f"no user {OTHER_USER!r} on this machine")
    yield user
    user.cleanup()


# -- figures for the README's reliability section ------------------------------------

#: group -> backend -> case -> contained (True once the test's assertions passed)
FIGURES: dict = {}
FIGURES_FILE = os.environ.get("AGENT_SUPERVISE_FIGURES", "")


def record_figure(group: str, key: str, case: str, contained: bool) -> None:
    """A reliability figure: a test records the case when it starts, then again as
    contained when every assertion has passed (a failed test stays not contained)."""
    FIGURES.setdefault(group, {}).setdefault(key, {})[case] = contained


#: The README row of a test marked ``@pytest.mark.figure("row")``: every run of it
#: (each backend, each case) counts, contained when it passed.
ROWS = "rows"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    marker = item.get_closest_marker("figure")
    if marker is None or report.skipped or (report.when != "call" and report.passed):
        return
    params = getattr(item, "callspec", None)
    backend = params.params.get("backend", "any") if params else "any"
    record_figure(ROWS, f"{marker.args[0]}\0{backend}", item.name, report.passed)


def merge_figures(figures: dict) -> None:
    """Figures measured elsewhere (the VM guests) join this session's."""
    for group, keys in figures.items():
        for key, cases in keys.items():
            for case, contained in cases.items():
                record_figure(group, key, case, contained)


def pytest_sessionfinish(session, exitstatus):
    """With AGENT_SUPERVISE_FIGURES=FILE, what this session measured goes to FILE
    (`make figures` then writes the README's block: tests/figures.py). The test
    session itself never writes README.md."""
    if FIGURES and FIGURES_FILE:
        import json as _json

        with open(FIGURES_FILE, "w") as f:
            _json.dump(FIGURES, f, indent=1, sort_keys=True)
