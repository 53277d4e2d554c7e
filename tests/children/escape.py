"""Double-forks a setsid grandchild that allocates after its parent has exited.

The grandchild is reparented away from the agent's tree (to the supervisor, a
child subreaper); the agent's root waits meanwhile. Args: MiB to allocate by the
grandchild (0: sleep only), how long the root waits, seconds between MiB.
"""

import os
import sys
import time

mib = float(sys.argv[1]) if len(sys.argv) > 1 else 200
wait = float(sys.argv[2]) if len(sys.argv) > 2 else 30
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.2)  # let the middle process exit: we are an orphan now
        chunks = []
        while len(chunks) < mib:
            block = bytearray(2**20)
            for i in range(0, 2**20, 4096):
                block[i] = 1
            chunks.append(block)
            time.sleep(interval)
        time.sleep(3600)
    os._exit(0)
os.wait()
time.sleep(wait)
