"""An agent running as root that changes its own cage, then allocates.

Usage: tamper.py MODE. It finds its cgroups in /proc/self/cgroup (v2: the ``0::``
line; v1: the memory and pids lines), writes, says what on stderr, then grows by
1 MiB every 5 ms up to 400 MiB and sleeps (it is meant to be stopped first).

limit        raise the memory limit to 1G (v1: memsw first, as the kernel demands)
memsw        v1: raise memory.memsw.limit_in_bytes / v2: memory.swap.max to max
oom          v1: oom_kill_disable 1 / v2: memory.oom.group 0
pids         raise pids.max to max (v2: the cage; v1: the pids companion)
raise-restore  raise the limit, use 150 MiB, free it, put the limit back, sleep
subcgroup    make a sub-cgroup inside its cage, move into it, give it a 1G limit
"""

import os
import sys
import time

CG = "/sys/fs/cgroup"


def own():
    dirs = {}
    for line in open("/proc/self/cgroup"):
        _, ctrls, path = line.strip().split(":", 2)
        if ctrls == "":
            dirs.setdefault("v2", CG + path)
        for c in ctrls.split(","):
            if c in ("memory", "pids"):
                dirs[c] = f"{CG}/{c}{path}"
    if "memory" in dirs or "pids" in dirs:
        dirs.pop("v2", None)  # a hybrid host: the v1 hierarchies hold the controllers
    return dirs


def write(path, value):
    with open(path, "w") as f:
        f.write(value)
    print(f"wrote {value} to {path}", file=sys.stderr, flush=True)


def grow(limit_mib=400):
    held = []
    while len(held) < limit_mib:
        block = bytearray(1 << 20)
        for i in range(0, 1 << 20, 4096):
            block[i] = 1
        held.append(block)
        time.sleep(0.005)
    time.sleep(3600)


def touch(mib):
    held = [bytearray(1 << 20) for _ in range(mib)]
    for block in held:
        for i in range(0, 1 << 20, 4096):
            block[i] = 1
    return held


mode, dirs = sys.argv[1], own()
mem = dirs.get("memory") or dirs.get("v2")
v1 = "memory" in dirs
limit_file = "memory.limit_in_bytes" if v1 else "memory.max"
if mode == "limit":
    if v1 and os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):
        write(f"{mem}/memory.memsw.limit_in_bytes", "1G")
    write(f"{mem}/{limit_file}", "1G")
elif mode == "memsw":
    if v1:
        write(f"{mem}/memory.memsw.limit_in_bytes", "1G")
    else:
        write(f"{mem}/memory.swap.max", "max")
elif mode == "oom":
    if v1:
        write(f"{mem}/memory.oom_control", "1")
    else:
        write(f"{mem}/memory.oom.group", "0")
elif mode == "pids":
    write(f"{dirs.get('pids') or mem}/pids.max", "max")
elif mode == "raise-restore":
    before = open(f"{mem}/{limit_file}").read().strip()
    if v1 and os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):
        write(f"{mem}/memory.memsw.limit_in_bytes", "1G")
    write(f"{mem}/{limit_file}", "1G")
    held = touch(150)
    del held
    write(f"{mem}/{limit_file}", before)
    if v1 and os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):
        write(f"{mem}/memory.memsw.limit_in_bytes", before)
    time.sleep(3600)
elif mode == "subcgroup":
    sub = f"{mem}/sub"
    os.mkdir(sub)
    if not v1:  # v2: move in first, then ask for memory files in the sub-cgroup (the
        write(f"{sub}/cgroup.procs", "0")  # cage's other processes may make it EBUSY)
        try:
            write(f"{mem}/cgroup.subtree_control", "+memory")
        except OSError as err:
            print(f"+memory refused: {err}", file=sys.stderr, flush=True)
    if os.path.exists(f"{sub}/{limit_file}"):
        write(f"{sub}/{limit_file}", "1G")
    if v1:
        write(f"{sub}/cgroup.procs", "0")
else:
    sys.exit(f"unknown mode {mode}")
grow()
