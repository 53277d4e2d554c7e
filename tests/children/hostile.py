"""Hostile agents for the containment suite. Usage: hostile.py MODE [ARGS]

mmap        anonymous mmap chunks of 4 MiB, touched page by page, without end
fork10      a parent that forks 10 children, each holding 20 MiB
bomb N      spawns N sleeping processes, then sleeps (default 500)
escape      writes its own pid into its parent cgroup's cgroup.procs, then allocates
            (refused, as another user: fills its cap, see fill())
closed      closes its stdout and keeps running
"""

import mmap
import os
import sys
import time

PAGE = 4096


def touch(size):
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(0, size, PAGE):
        block[i] = 1
    return block


def grow(step=4 << 20, pause=0.01):
    held = []
    while True:
        held.append(touch(step))
        time.sleep(pause)


def fork10():
    kids = []
    for _ in range(10):
        pid = os.fork()
        if pid == 0:
            held = touch(20 << 20)  # noqa: F841 - held until killed
            time.sleep(3600)
            os._exit(0)
        kids.append(pid)
        time.sleep(0.05)
    for pid in kids:
        os.waitpid(pid, 0)


def bomb(n):
    for _ in range(n):
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)
    print(f"spawned {n}", flush=True)
    time.sleep(3600)


def escape():
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if controllers in ("memory", ""):
            base = "/sys/fs/cgroup/memory" if controllers == "memory" else "/sys/fs/cgroup"
            target = os.path.join(base + os.path.dirname(path), "cgroup.procs")
            if not os.path.exists(os.path.join(base + path, "cgroup.procs")):
                continue
            try:
                with open(target, "w") as f:
                    f.write("0")
                print(f"escaped into {target}", file=sys.stderr, flush=True)
            except OSError as err:
                print(f"escape refused: {err}", file=sys.stderr, flush=True)
                fill()
            break
    grow(pause=0.01)


def fill(step=4 << 20, pause=0.01):
    """Still caged: allocate to the cap with C touching the pages (b"\\x01" * step is
    one memset), so that the kernel's OOM killer ends it. grow()'s Python loop runs
    bytecode between page faults, so at the cap the kernel can evict the interpreter's
    own pages and read them back instead: in the VM guest, under Debian's
    /usr/bin/python3.11 (the one another user can run; the venv's may be out of its
    reach) the cage thrashed with no OOM kill in 9 of 9 runs, and ended only when the
    watchdog had seen refaults of the cap's size per second for 2 s running: 4 to 30 s
    and more, which broke the guest's time limit. With fill(): OOM-killed, 5 of 5, in
    under 2 s."""
    held = []
    while True:
        held.append(b"\x01" * step)
        time.sleep(pause)


def closed():
    os.close(1)
    time.sleep(3600)


mode = sys.argv[1]
if mode == "mmap":
    grow()
elif mode == "fork10":
    fork10()
elif mode == "bomb":
    bomb(int(sys.argv[2]) if len(sys.argv) > 2 else 500)
elif mode == "escape":
    escape()
elif mode == "closed":
    closed()
else:
    sys.exit(f"unknown mode {mode}")
