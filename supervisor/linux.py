"""The few Linux calls Python's standard library lacks (prctl; setns before Python
3.12), behind one small module.

Each is the C extension's (``_spawn``), or, where it was not built, reached through
ctypes (whose import costs a few ms of every start). ``prctl`` is found once, at
import, so that the child side of a fork (see
:mod:`agent_supervise.run.spawn`) only performs the foreign call itself and takes no
Python-level locks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _find_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        from agent_supervise._spawn import prctl as c_prctl
    except ImportError:
        pass
    else:
        return c_prctl
    import ctypes

    # dlopen(NULL): the symbols already loaded into this process, the C library's
    # among them (Python links it). find_library("c") would import ctypes.util and
    # run ldconfig: ~10 ms, for the same answer.
    libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
    libc_prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    libc_prctl.restype = ctypes.c_int

    def via_ctypes(option: int, arg: int) -> int:
        result = libc_prctl(option, arg, 0, 0, 0)
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result

    return via_ctypes


_prctl = _find_prctl()


def prctl(option: int, arg: int = 0) -> int:
    """Call prctl(2); raise OSError naming the call on failure."""
    if _prctl is None:
        raise OSError(38, "prctl is only available on Linux")
    try:
        return _prctl(option, arg)
    except OSError as err:
        raise OSError(err.errno, f"prctl({option}): {os.strerror(err.errno or 0)}") from None


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace ``fd`` refers to (setns(2))."""
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    try:
        from agent_supervise._spawn import setns as c_setns
    except ImportError:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({nstype:#x}): {os.strerror(err)}") from None
        return
    try:
        c_setns(fd, nstype)
    except OSError as err:
        raise OSError(err.errno, f"setns({nstype:#x}): {err.strerror}") from None


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent *thread* dies.

    Kernel detail: the signal fires when the thread that forked us exits, not the
    whole parent process, so agents must be spawned from a long-lived thread.
    """
    prctl(PR_SET_PDEATHSIG, signum)


def become_subreaper() -> None:
    """Make orphaned descendants reparent to this process instead of init.

    Needed to see and reap double-forked agent descendants (Linux >= 3.4).
    """
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def pidfd_supported() -> bool:
    """Whether pidfd_open(2) works here (Linux >= 5.3 and Python >= 3.9)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    os.close(fd)
    return True


#: RLIMIT_NOFILE as it was before raise_open_files_limit(): what agents get back.
_original_nofile: tuple[int, int] | None = None


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: each running agent holds a few
    fds (its cage's files, a pidfd), and 1024, the usual soft default, caps a
    supervisor at ~200 agents. Agents get the original limit back (see
    :func:`original_open_files_limit`). Returns the new soft limit."""
    import resource

    global _original_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            _original_nofile = _original_nofile or (soft, hard)
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def original_open_files_limit() -> tuple[int, int] | None:
    """The (soft, hard) RLIMIT_NOFILE to restore in an agent, or None if this process
    never raised its own: a program that loops up to its limit closing fds, or uses
    select(), should not start with a million."""
    return _original_nofile
