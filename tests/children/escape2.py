"""Ways out of a cage for an agent running as root. Usage: escape2.py MODE

pids     move itself out of its pids cgroup (v1 companion) into the pids root
thread   v1: a thread writes its own id into the memory parent's ``tasks``
decoy    move into a new cgroup elsewhere that bears its cage's very name
swing    out of the memory cage for 20 ms, allocating, back in for 10 ms, again

Each then allocates 1 MiB every 10 ms and sleeps: it is meant to be stopped (pids
and thread stay small: their memory is still charged to the cage).
Prints what it did on stderr; a refusal is printed too.
"""

import os
import sys
import threading
import time

CG = "/sys/fs/cgroup"


def lines():
    for line in open("/proc/self/cgroup"):
        _, ctrls, path = line.strip().split(":", 2)
        yield ctrls, path


def memory_dir():
    v1 = {c: p for c, p in lines() if c}
    if "memory" in v1:
        return f"{CG}/memory", v1["memory"]
    return CG, dict(lines())[""]


def write(path, value, quiet=False):
    try:
        with open(path, "w") as f:
            f.write(str(value))
        if not quiet:
            print(f"wrote {value} to {path}", file=sys.stderr, flush=True)
    except OSError as err:
        print(f"escape refused: {path}: {err}", file=sys.stderr, flush=True)


def grow(held, n=1):
    for _ in range(n):
        block = bytearray(1 << 20)
        for i in range(0, 1 << 20, 4096):
            block[i] = 1
        held.append(block)


def allocate(mib=300):
    held = []
    while len(held) < mib:
        grow(held)
        time.sleep(0.01)
    time.sleep(3600)


mode = sys.argv[1]
base, path = memory_dir()
if mode == "pids":
    write(f"{CG}/pids/cgroup.procs", 0)
elif mode == "thread":
    done = threading.Event()

    def leave():
        write(f"{base}{os.path.dirname(path)}/tasks", threading.get_native_id())
        done.set()
        allocate(20)

    threading.Thread(target=leave, daemon=True).start()
    done.wait()
    time.sleep(3600)
elif mode == "decoy":
    decoy = f"{base}{os.path.dirname(path)}/decoy"
    os.makedirs(f"{decoy}/{os.path.basename(path)}", exist_ok=True)
    write(f"{decoy}/{os.path.basename(path)}/cgroup.procs", 0)
elif mode == "swing":
    held, outside, cage = [], f"{base}{os.path.dirname(path)}", f"{base}{path}"
    while len(held) < 300:
        write(f"{outside}/cgroup.procs", 0, quiet=bool(held))
        grow(held, 2)
        time.sleep(0.02)
        write(f"{cage}/cgroup.procs", 0, quiet=True)
        time.sleep(0.01)
    time.sleep(3600)
else:
    sys.exit(f"unknown mode {mode}")
allocate(20 if mode == "pids" else 300)
