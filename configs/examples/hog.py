"""A runaway example agent: keeps appending to its context until something stops it."""

import time

context = []
while True:
    block = bytearray(2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: really resident
    context.append(block)
    if len(context) % 10 == 0:
        print(f"hog: holding {len(context)} MiB", flush=True)
    time.sleep(0.01)
