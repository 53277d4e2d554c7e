"""A tree of processes that share memory, for the cap-meaning tests and bench.

    sharedtree.py MODE [--children N] [--mib M] [--own MiB] [--hold S] [--file PATH]

The parent makes M MiB shared one way (MODE), forks N children that each touch it
(and OWN MiB of their own), all hold for S seconds, then exit 0:
  cow   a private buffer the parent filled before forking (copy-on-write shared);
  file  a MAP_SHARED mapping of PATH (made beforehand, so its page cache is not
        charged to the tree), read by every process;
  shm   a shared anonymous mapping (shmem), written by every process.
"""

import argparse
import mmap
import os
import time

MiB = 1 << 20
p = argparse.ArgumentParser()
p.add_argument("mode", choices=["cow", "file", "shm"])
p.add_argument("--children", type=int, default=10)
p.add_argument("--mib", type=int, default=50)
p.add_argument("--own", type=float, default=1)
p.add_argument("--hold", type=float, default=1.5)
p.add_argument("--file")
args = p.parse_args()
size = args.mib * MiB
if args.mode == "cow":
    shared = mmap.mmap(-1, size, mmap.MAP_PRIVATE)
elif args.mode == "shm":
    shared = mmap.mmap(-1, size, mmap.MAP_SHARED)
else:
    with open(args.file, "rb") as f:
        shared = mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ)


def touch(write: bool) -> None:
    for i in range(0, size, 4096):
        if write:
            shared[i] = 1
        else:
            shared[i]


touch(args.mode != "file")
kids = []
for _ in range(args.children):
    pid = os.fork()
    if pid == 0:
        own = bytearray(int(args.own * MiB))
        for i in range(0, len(own), 4096):
            own[i] = 1
        touch(args.mode == "shm")
        time.sleep(args.hold)
        os._exit(0)
    kids.append(pid)
time.sleep(args.hold)
for pid in kids:
    os.waitpid(pid, 0)
