"""A well-behaved example agent: works in small steps, holds a little memory, exits 0."""

import sys
import time

topic = sys.argv[1] if len(sys.argv) > 1 else "cgroups"
notes = []
for step in range(1, 6):
    notes.append(bytearray(2 * 2**20))  # 2 MiB of "context" per step
    print(f"researcher: step {step}/5 on {topic!r}", flush=True)
    time.sleep(0.2)
print(f"researcher: done, {len(notes) * 2} MiB of notes on {topic!r}", flush=True)
