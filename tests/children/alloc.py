"""A memory hog for tests: allocates and touches STEP MiB every INTERVAL seconds.

    alloc.py [--step MiB] [--interval S] [--max MiB] [--ignore-term] [--hold S]

With --max it stops growing at that size and sleeps (--hold seconds, default
forever); --ignore-term makes it ignore SIGTERM, as hostile agents do.
"""

import argparse
import signal
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--step", type=float, default=1.0)
p.add_argument("--interval", type=float, default=0.001)
p.add_argument("--max", type=float, default=0)
p.add_argument("--hold", type=float, default=3600)
p.add_argument("--ignore-term", action="store_true")
args = p.parse_args()
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
chunks = []
size = int(args.step * 2**20)
while not args.max or len(chunks) * args.step < args.max:
    block = bytearray(size)
    for i in range(0, size, 4096):  # touch every page so it is really resident
        block[i] = 1
    chunks.append(block)
    time.sleep(args.interval)
sys.stdout.write(f"holding {len(chunks) * args.step:.0f} MiB\n")
sys.stdout.flush()
time.sleep(args.hold)
