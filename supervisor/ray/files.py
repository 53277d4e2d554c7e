"""What a node task leaves on its node, and what removes it when the task cannot.

An agent's logs and checkpoint live in a scratch folder until they have gone back to
the driver. Normally the task removes the folder and the cage itself. When the Ray
worker dies under its agent (the driver died, ``ray.cancel(force=True)``, Ray's
memory monitor), the agent's main process dies with it (parent-death signal), and a
**guard** process kills whatever else is left in the cage and removes the cage and
the folder. Folders of dead workers are also removed by the next task on the node.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from agent_supervise.checkpoint import TAIL_BYTES
from agent_supervise.limits.base import owner_alive, owner_tag
from agent_supervise.linux import PR_SET_CHILD_SUBREAPER, prctl
from agent_supervise.tailfile import from_line_start, read_tail

SCRATCH_PREFIX = "agent-supervise-ray."
CHECKPOINT_CHUNK = 64 * 1024
_SCRATCH_RE = re.compile(rf"{re.escape(SCRATCH_PREFIX)}(\d+)-(\d+)\.\d+")
_SEQ = [0]


class Scratch:
    """The agent's files on this node: logs, checkpoint; removed when the task ends."""

    def __init__(self, job) -> None:  # a raynode.Job
        _SEQ[0] += 1
        self.path = os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}{owner_tag()}.{_SEQ[0]}")
        os.mkdir(self.path, 0o711)  # others may pass through to their own checkpoint file
        self.out, self.err = (os.path.join(self.path, n) for n in ("agent.out", "agent.err"))
        self.checkpoint = os.path.join(self.path, "agent.checkpoint")
        with open(self.checkpoint, "wb") as f:
            f.write(job.checkpoint_seed)
        self._sent = len(job.checkpoint_seed)

    def open_logs(self) -> tuple[int, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        return os.open(self.out, flags, 0o644), os.open(self.err, flags, 0o644)

    def new_checkpoints(self, final: bool = False) -> bytes:
        """Checkpoint lines written since the last call (complete lines, at most the
        last 64 KiB of them: only the last line is ever used to resume)."""
        try:
            size = os.stat(self.checkpoint).st_size
        except FileNotFoundError:
            return b""
        if size <= self._sent:
            return b""
        with open(self.checkpoint, "rb") as f:
            f.seek(max(self._sent, size - CHECKPOINT_CHUNK))
            data = f.read(size)
        cut = len(data) if final else data.rfind(b"\n") + 1
        if cut == 0:
            return b""
        if self._sent < size - CHECKPOINT_CHUNK:  # skipped bytes: start at a line
            data = data[data.find(b"\n") + 1 :]
            cut = len(data) if final else data.rfind(b"\n") + 1
        self._sent = size if final else size - (len(data) - cut)
        return data[:cut]

    tail = staticmethod(read_tail)  # the last ``limit`` bytes of a log, and its size

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


#: The guard: waits on a pipe from this worker. "done" means the task ended normally;
#: end-of-file means the worker died under its agent (driver gone, ray.cancel(force),
#: Ray's memory monitor): then it kills what the agent left (its cage's processes, or
#: processes carrying its marker) and removes the cage and the scratch folder.
GUARD = r"""
read -r word
[ "$word" = done ] && exit 0
i=0
while [ $i -lt 50 ]; do
  pids=$( { [ -n "$1" ] && cat $(find "$1" -name cgroup.procs); \
            [ -n "$4" ] && cat $(find "$4" -name cgroup.procs); \
            grep -lz "^AGENT_SUPERVISE_CAGE=$3\$" /proc/[0-9]*/environ | cut -d/ -f3; \
          } 2>/dev/null | sort -u)
  [ -z "$pids" ] && break
  kill -9 $pids 2>/dev/null
  sleep 0.1
  i=$((i + 1))
done
[ -n "$1" ] && find "$1" -depth -type d -exec rmdir {} + 2>/dev/null
[ -n "$4" ] && find "$4" -depth -type d -exec rmdir {} + 2>/dev/null
rm -rf "$2"
"""


def spawn_guard(cage, scratch: str) -> int:
    """Start the guard; return the pipe's write end (write "done" to dismiss it).

    The guard must outlive this worker, so it must not stay its child: Ray kills a
    dead worker's children, and this worker is a subreaper that would adopt it. So
    the subreaper flag is dropped while an intermediate shell starts the guard in the
    background and exits: the guard is adopted further up (init), then the flag is
    restored. Nothing else is orphaned meanwhile: the agent does not exist yet."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    prctl(PR_SET_CHILD_SUBREAPER, 0)
    try:
        starter = subprocess.Popen(
            # A background job's stdin is /dev/null unless redirected: pass the pipe as 3.
            [
                "sh",
                "-c",
                'exec 3<&0; sh -c "$0" guard "$@" <&3 3<&- &',
                GUARD,
                cage.path,
                scratch,
                cage.name,
                # the v1 pids companion leaf, where the cage has one (limits/pids.py)
                cage.companion.path if cage.companion else "",
            ],
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        starter.wait(timeout=10)
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        os.close(read_fd)
    return write_fd


def dismiss_guard(fd: int) -> None:
    try:
        os.write(fd, b"done\n")
    finally:
        os.close(fd)


def clean_scratch(tmp: str | None = None) -> int:
    """Remove scratch folders whose worker process is gone (killed mid-task)."""
    tmp = tmp or tempfile.gettempdir()
    removed = 0
    for name in os.listdir(tmp):
        match = _SCRATCH_RE.fullmatch(name)
        if not match:
            continue
        if not owner_alive(int(match.group(1)), match.group(2)):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            removed += 1
    return removed


def checkpoint_tail(path: str) -> bytes:
    """The task's checkpoint file so far (its last 64 KiB, from a line start)."""
    try:
        data, size = read_tail(path, TAIL_BYTES)
    except FileNotFoundError:
        return b""
    return from_line_start(data, size, TAIL_BYTES)


def append_bytes(path: str, data: bytes) -> None:
    if data:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
