"""The two calls made of systemd for a delegated scope, through its own tools.

``systemd-run --scope`` does the D-Bus work of StartTransientUnit and waits for the
start job, so its message is the error; it then execs the holder, which is inside
the scope from its first instruction. ``busctl call ... AttachProcessesToUnit``
moves a process into a sub-cgroup of a delegated unit, which the caller could not
do itself from outside the unit's tree (:mod:`agent_supervise.limits.scope`).
Each failure names the command line and what it said.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

from agent_supervise.limits.base import Unavailable


class ScopeFailed(Unavailable):
    """A manager was there, but the scope could not be made: the call that failed."""


class UnknownProperty(Exception):
    """systemd-run refused a property (an older systemd without ``OOMPolicy=``)."""


def run_holder(
    cmd: list[str], env: dict, unit: str, timeout: float, oom_policy: bool
) -> tuple[subprocess.Popen, int, str]:
    """Start ``cmd`` (systemd-run ... -- cat) with a pipe as its stdin; once it sits in
    ``unit``'s cgroup, return it, the pipe's write end and that cgroup (as /proc
    shows it). :class:`UnknownProperty` if ``oom_policy`` was asked and refused."""
    shown = " ".join(cmd[: cmd.index("--")])
    read_fd, write_fd = os.pipe()  # close-on-exec on our side: agents never hold it
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )  # no terminal ^C for it
    except OSError as err:
        os.close(write_fd)
        raise ScopeFailed(f"{shown}: {err.strerror or err}") from err
    finally:
        os.close(read_fd)
    assert proc.stderr is not None  # stderr=PIPE
    err_fd = proc.stderr.fileno()
    os.set_blocking(err_fd, False)
    said = b""
    deadline = time.monotonic() + timeout
    while True:
        cgroup = cgroup_of(proc.pid)
        if cgroup is not None and cgroup.endswith("/" + unit):
            break
        # --quiet: stderr speaks only on trouble; a failed systemd-run exits.
        select.select([err_fd], [], [], 0.01)
        try:
            said += os.read(err_fd, 65536)[:4096]
        except BlockingIOError:
            pass
        if proc.poll() is not None:
            os.close(write_fd)
            text = said.decode(errors="replace").strip()
            if oom_policy and "OOMPolicy" in text:
                raise UnknownProperty(text)
            last = text.splitlines()[-1] if text else "no message"
            raise ScopeFailed(f"{shown}: exit {proc.returncode}: {last}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            os.close(write_fd)
            raise ScopeFailed(f"{shown}: no scope after {timeout:g} s (its cgroup is {cgroup})")
    proc.stderr.close()  # the holder keeps its own copy; it writes nothing
    return proc, write_fd, cgroup


def attach(
    busctl: str, bus_flags: list[list[str]], env: dict, unit: str, sub: str, timeout: float
) -> str:
    """Move this process into ``unit``'s sub-cgroup ``sub``, trying each way to the
    manager's bus in turn; return the busctl flags that did it."""
    tried = []
    for flags in bus_flags:
        cmd = [
            busctl,
            *flags,
            f"--timeout={timeout:g}",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "AttachProcessesToUnit",
            "ssau",
            unit,
            "/" + sub,
            "1",
            str(os.getpid()),
        ]
        try:
            done = subprocess.run(
                cmd,
                env=env,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout + 5,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            tried.append(f"{' '.join(cmd)}: {err}")
            continue
        here = cgroup_of(os.getpid()) or ""
        if done.returncode == 0 and here.endswith(f"/{unit}/{sub}"):
            return " ".join(flags)
        said = done.stderr.decode(errors="replace").strip().splitlines()
        tried.append(
            f"{' '.join(cmd)}: exit {done.returncode}: "
            f"{said[-1] if said else 'no message'} (this process is in {here})"
        )
    raise ScopeFailed("; ".join(tried))


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of ``pid``, as ``/proc/PID/cgroup`` shows it."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None
