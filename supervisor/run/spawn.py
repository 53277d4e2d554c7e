"""Starting an agent inside its cage, with no window in which it runs uncapped.

The child must enter the cage between fork and exec. Two ways, one behaviour:

* **vfork** (``agent_supervise._spawn``, a small C extension): the child shares the
  supervisor's memory until it execs and does its steps as raw system calls: about
  0.2 ms a spawn. The default when the extension was built.
* **fork + preexec_fn** (subprocess): the fallback when it was not (no C compiler
  at install). A full fork of the supervisor costs ~20 us per MiB of it on the
  project's machines, ~2.3 ms a spawn. A forked child keeps any lock another thread
  held, so its Python steps are raw calls too, prepared in the parent.

Either way the child: starts a new session (its whole tree can be signalled as a
group; a terminal's job control cannot stop it); writes ``0`` to an already open
``cgroup.procs`` (which moves the writing process itself) or sets its rlimit; drops
privileges if asked; then sets ``PR_SET_PDEATHSIG`` (a credential change clears it)
so that a SIGKILLed supervisor takes it along. A failing step is reported on a pipe
as which call failed; the parent raises :class:`SpawnFailed` naming it.
``AGENT_SUPERVISE_SPAWN=python`` forces the fallback.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

from agent_supervise.limits import isolation
from agent_supervise.linux import original_open_files_limit, set_parent_death_signal
from agent_supervise.outcome import Reason
from agent_supervise.run.spawnfail import SpawnFailed, exec_failure, step_failure

#: subprocess.DEVNULL, which callers pass; importing subprocess for it would cost
#: every start of the C path a few ms.
_DEVNULL = -3

try:
    from agent_supervise import _spawn
except ImportError:  # built without a C compiler: use the fallback
    _spawn = None  # type: ignore[assignment]


class Child:
    """A started agent process, as much of a Popen as the supervisor uses."""

    def __init__(self, pid: int, cage=None) -> None:
        self.pid = pid
        self.cage = cage
        self.returncode: int | None = None  # set by whoever reaps it

    def wait(self) -> int:
        """Reap it; the agent's own raw wait status (with namespaces, the pid is the
        agent's init, which reports the agent's status through the cage)."""
        _, status = os.waitpid(self.pid, 0)
        report = self.cage.init_report() if self.cage is not None else None
        return report.status if report is not None else status


def fast_path() -> bool:
    return _spawn is not None and os.environ.get("AGENT_SUPERVISE_SPAWN") != "python"


class Spawner:
    """Starts processes inside cages. One instance per supervisor."""

    def __init__(self, death_signal: int = signal.SIGKILL) -> None:
        self.death_signal = death_signal
        self._found: dict[tuple[str, str], str] = {}  # (name, PATH) -> where it was
        self._null_fd: int | None = None

    def spawn(
        self,
        cmd,
        cage,
        *,
        env=None,
        cwd=None,
        stdin=None,
        stdout=None,
        stderr=None,
        creds=None,
        grace: float = 2.0,
        foreground_tty: int | None = None,
    ):
        """Start ``cmd`` in ``cage`` (as ``creds``' user, if given); return an object
        with ``pid`` and ``returncode``; raise :class:`SpawnFailed` if it cannot run.

        Where agents can have namespaces of their own (``limits.isolation``), the pid
        is their init's, which gives the leftovers ``grace`` after the agent exits,
        and the cage's ``init_fd`` is where the agent's own exit status will be.

        ``foreground_tty``: instead of a session of its own, the agent gets a process
        group of its own in this session, made that terminal's foreground group (see
        terminal.py)."""
        setup = cage.child_setup()
        if fast_path():
            plan = isolation.Plan.for_cap(cage.limit) if isolation.enabled() else None
            return self._vfork(
                list(cmd),
                setup,
                creds,
                env,
                cwd,
                (stdin, stdout, stderr),
                plan,
                grace,
                cage,
                foreground_tty,
            )
        return self._fork(list(cmd), setup, creds, env, cwd, stdin, stdout, stderr, foreground_tty)

    # -- vfork, through the C extension -----------------------------------------------
    def _vfork(
        self,
        cmd,
        setup,
        creds,
        env,
        cwd,
        stdio,
        plan=None,
        grace=2.0,
        cage=None,
        foreground_tty=None,
    ) -> Child:
        env = os.environ if env is None else env
        paths = [cmd[0]] if os.sep in cmd[0] else self._lookup(cmd[0], env)
        argv = cmd
        fds = []
        for stream in stdio:
            if stream is None:
                fds.append(-1)  # inherit ours
            elif stream == _DEVNULL:
                fds.append(self._devnull())
            else:
                fds.append(stream if isinstance(stream, int) else stream.fileno())
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        nofile = original_open_files_limit() or (-1, -1)
        init_r = init_w = -1
        ns = None
        if plan is not None:
            init_r, init_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            argv = plan.argv(init_w, report_w, grace, paths, cmd)
            paths = [isolation.INIT]
            ns = (plan.shm_options, plan.sysctls, (report_w, init_w))
        try:
            try:
                pid = _spawn.spawn(
                    [_encode(p) for p in paths],
                    [_encode(a) for a in argv],
                    [_encode(f"{k}={v}") for k, v in env.items()],
                    None if cwd is None else os.fsencode(cwd),
                    fds[0],
                    fds[1],
                    fds[2],
                    [fd for fd, _ in setup.procs],
                    list(setup.rlimits),
                    nofile[0],
                    nofile[1],
                    creds.uid if creds else -1,
                    creds.gid if creds else -1,
                    list(creds.groups) if creds else None,
                    self.death_signal,
                    report_w,
                    ns,
                    -1 if foreground_tty is None else foreground_tty,
                )
            finally:
                os.close(report_w)
                if init_w >= 0:
                    os.close(init_w)
            # Until the agent has exec'd or failed (with namespaces, the init's copy
            # is closed once it has forked the agent).
            report = os.read(report_r, 64).decode()
        except BaseException:
            if init_r >= 0:
                os.close(init_r)
            raise
        finally:
            os.close(report_r)
        if not report:
            if cage is not None and init_r >= 0:
                cage.init_fd = init_r
            return Child(pid, cage)
        if init_r >= 0:
            os.close(init_r)
        os.waitpid(pid, 0)  # it (or, with namespaces, its init) exited after reporting
        step, _, code = report.partition(":")
        raise step_failure(int(step), int(code or 0), cmd, cwd, setup, creds)

    def _devnull(self) -> int:
        """One /dev/null for every agent's stdin, opened once (close-on-exec: the
        child's dup2 onto 0 is what it keeps)."""
        if self._null_fd is None:
            self._null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return self._null_fd

    def close(self) -> None:
        if self._null_fd is not None:
            os.close(self._null_fd)
            self._null_fd = None

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lookup(self, name: str, env) -> list[str]:
        """Where to exec ``name``: looked up here (a stat per PATH entry) rather than
        by an execve per entry in the child, and remembered (a fleet starts the same
        few commands over and over; one access() checks it is still there). The full
        list only when nothing runnable was found, so that the child reports the
        shell's errno for it."""
        dirs = os.get_exec_path(env)
        key = (name, os.pathsep.join(dirs))
        found = self._found.get(key)
        if found is None or not os.access(found, os.X_OK):
            import shutil  # a bare name only: `run -- /bin/true` starts without it

            found = shutil.which(name, path=key[1])
            if found is None:
                self._found.pop(key, None)
                return [os.path.join(d, name) for d in dirs]
            self._found[key] = found
        return [found]

    # -- fork + preexec_fn, through subprocess ----------------------------------------
    def _fork(self, cmd, setup, creds, env, cwd, stdin, stdout, stderr, foreground_tty=None):
        import subprocess  # the fallback only: the C path starts without it (~5 ms)

        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        steps = setup.steps()
        if foreground_tty is not None:
            steps.insert(0, ("tcsetpgrp", _foreground_step(foreground_tty)))
        nofile = original_open_files_limit()
        if nofile is not None:
            steps.append(
                (
                    "setrlimit(RLIMIT_NOFILE)",
                    lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),
                )
            )
        steps += creds.child_steps() if creds is not None else []
        steps.append(("prctl(PR_SET_PDEATHSIG)", self._death_signal_step()))
        # As the C path: no signal blocked in the agent (the mask survives exec).
        steps.append(("sigprocmask", lambda: signal.pthread_sigmask(signal.SIG_SETMASK, set())))
        try:
            return subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                close_fds=True,
                start_new_session=foreground_tty is None,
                process_group=None if foreground_tty is None else 0,
                restore_signals=True,
                preexec_fn=_child_setup(steps, report_w),
            )
        except subprocess.SubprocessError as err:
            os.close(report_w)
            report_w = -1
            failed = os.read(report_r, 4096).decode(errors="replace") or str(err)
            raise SpawnFailed(Reason.SETUP_FAILED, f"entering the cage failed: {failed}") from None
        except OSError as err:
            raise exec_failure(err, cmd, cwd) from None
        finally:
            os.close(report_r)
            if report_w >= 0:
                os.close(report_w)

    def _death_signal_step(self):
        parent, sig = os.getpid(), self.death_signal

        def step() -> None:
            set_parent_death_signal(sig)
            # The parent may have died between fork and prctl: then nobody will
            # ever send the death signal, so act as if it had been sent.
            if os.getppid() != parent:
                os.kill(os.getpid(), sig)

        return step


def _foreground_step(tty: int):
    def step() -> None:
        # SIGTTOU would stop a background group's tcsetpgrp: block it for the call,
        # and give the agent the job-control signals at their default.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(tty, os.getpid())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for sig in (signal.SIGTTOU, signal.SIGTTIN, signal.SIGTSTP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except ValueError:  # spawned from a thread: its dispositions stay
                pass

    return step


_FS_CODEC = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _encode(text: str) -> bytes:
    """os.fsencode for a str, at a third of its cost (it runs ~40 times a spawn)."""
    return text.encode(*_FS_CODEC)


def _child_setup(steps, report_fd: int):
    def setup() -> None:  # runs in the child, between fork and exec
        for name, step in steps:
            try:
                step()
            except OSError as e:
                os.write(report_fd, f"{name}: {os.strerror(e.errno or 0)}".encode())
                raise

    return setup
