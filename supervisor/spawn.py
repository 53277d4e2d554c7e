"""Starting an agent inside its cage, with no window in which it runs uncapped.

The child enters the cage between fork and exec (``preexec_fn``). That code runs in
a forked copy of the supervisor, where any lock another thread held at fork time
stays locked forever; so the child does only raw system calls, prepared in the
parent: ``prctl`` through a pre-resolved ctypes function, ``os.write`` of ``0`` to an
already-open ``cgroup.procs`` (which moves the writing process itself), and
``setrlimit``. The child is a new session (so its whole tree can be signalled as a
group and a terminal's job control cannot stop it) and gets ``PR_SET_PDEATHSIG``
so that a SIGKILLed supervisor takes it along.

If a child step fails, the child writes which call failed to a pipe before
aborting the exec; the parent turns that into :class:`SetupFailed`.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from dataclasses import dataclass

from .linux import set_parent_death_signal
from .outcome import Reason


@dataclass
class SpawnFailed(Exception):
    """The agent never ran: the exec failed or the cage could not be entered."""

    reason: Reason
    message: str
    errno: int | None = None

    @property
    def why(self) -> str:
        """The system's own words for the failure ("Permission denied")."""
        return os.strerror(self.errno) if self.errno else self.message

    def __str__(self) -> str:
        return self.message


class Spawner:
    """Starts processes inside cages. One instance per supervisor."""

    def __init__(self, death_signal: int = signal.SIGKILL) -> None:
        self.death_signal = death_signal

    def spawn(self, cmd, cage, *, env=None, cwd=None, stdin=None, stdout=None,
              stderr=None, creds=None) -> subprocess.Popen:
        """Start ``cmd`` in ``cage`` (as ``creds``' user, if given); raise
        :class:`SpawnFailed` if it cannot run.

        Order in the child: enter the cage (as root, if we are), drop privileges,
        then set the parent-death signal, because changing credentials clears it."""
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        steps = list(cage.child_steps())
        steps += creds.child_steps() if creds is not None else []
        steps.append(("prctl(PR_SET_PDEATHSIG)", self._death_signal_step()))
        try:
            return subprocess.Popen(
                list(cmd), env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                close_fds=True, start_new_session=True, restore_signals=True,
                preexec_fn=_child_setup(steps, report_w))
        except subprocess.SubprocessError as err:
            os.close(report_w)
            report_w = -1
            failed = os.read(report_r, 4096).decode(errors="replace") or str(err)
            raise SpawnFailed(Reason.SETUP_FAILED, f"entering the cage failed: {failed}") \
                from None
        except OSError as err:
            raise _exec_failure(err, cmd, cwd) from None
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


def _child_setup(steps, report_fd: int):
    def setup() -> None:  # runs in the child, between fork and exec
        for name, step in steps:
            try:
                step()
            except OSError as e:
                os.write(report_fd, f"{name}: {os.strerror(e.errno or 0)}".encode())
                raise
    return setup


def _exec_failure(err: OSError, cmd, cwd) -> SpawnFailed:
    """Map an exec error to the shell's conventions: 127 not found, 126 not executable."""
    if cwd is not None and err.filename == cwd:
        return SpawnFailed(Reason.SETUP_FAILED, f"cannot enter directory {cwd}: "
                           f"{err.strerror}", err.errno)
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return SpawnFailed(Reason.NOT_FOUND, f"{cmd[0]}: command not found", err.errno)
    if err.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM, errno.EISDIR):
        return SpawnFailed(Reason.NOT_EXECUTABLE, f"{cmd[0]}: {err.strerror}", err.errno)
    return SpawnFailed(Reason.SETUP_FAILED, f"exec {cmd[0]}: {err.strerror}", err.errno)
