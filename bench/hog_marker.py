"""The reaction benchmark's hog: grows RATE MiB/s and notes when its RSS crosses CAP.

    hog_marker.py MARKER [--cap MiB] [--rate MiB/s] [--max MiB] [--tick S] [--die-at-cap]

Every TICK it wakes and allocates and touches, in 64 KiB pieces, what RATE says it
should have by then (TICK 0.001: a steady ramp; 0.01: a burst of 1 MiB every 10 ms),
reading its own RSS (/proc/self/statm) after each piece. It appends ``start PID T``,
then ``cross PID T RSS ANON`` the first time RSS > CAP MiB (ANON: its anonymous pages,
what a cgroup charges it and agent-supervise's cap counts on every backend), and
``memerr PID T`` (then exits 3) if an allocation fails (an rlimit refused it). T is
time.monotonic(), CLOCK_MONOTONIC, the same clock in every process of the machine.
At MAX MiB it stops growing and holds.
--die-at-cap: SIGTERM itself right after noting the crossing (the floor: exit alone).
"""

import argparse
import os
import signal
import time

p = argparse.ArgumentParser()
p.add_argument("marker")
p.add_argument("--cap", type=float, default=200)
p.add_argument("--rate", type=float, default=100)
p.add_argument("--max", type=float, default=1024)
p.add_argument("--tick", type=float, default=0.001)
p.add_argument("--die-at-cap", action="store_true")
args = p.parse_args()

PIECE = 64 << 10
out = os.open(args.marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
statm = os.open("/proc/self/statm", os.O_RDONLY)
page, pid, cap = os.sysconf("SC_PAGE_SIZE"), os.getpid(), int(args.cap * 2**20)


def note(what: str, *more) -> None:
    os.write(
        out, " ".join([what, str(pid), f"{time.monotonic():.6f}", *map(str, more)]).encode() + b"\n"
    )


chunks, crossed, size = [], False, 0
rate, most = args.rate * 2**20, args.max * 2**20
note("start")
start = time.monotonic()
try:
    while size < most:
        due = min(most, (time.monotonic() - start) * rate)
        while size < due:
            chunks.append(bytearray(PIECE))  # zero-filled by memset: every page touched
            size += PIECE
            if not crossed:
                fields = os.pread(statm, 64, 0).split()
                rss = int(fields[1]) * page
                if rss > cap:
                    # statm's third field: RssFile + RssShmem (the hog has no shmem)
                    note("cross", rss, rss - int(fields[2]) * page)
                    crossed = True
                    if args.die_at_cap:
                        os.kill(pid, signal.SIGTERM)
        time.sleep(args.tick)
except MemoryError:
    chunks = None
    note("memerr")
    os._exit(3)
note("holding")
while True:
    time.sleep(3600)
