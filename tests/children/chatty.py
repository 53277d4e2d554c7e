"""An agent that writes output for a while: LINES lines of SIZE bytes, one every
INTERVAL seconds, to stdout and stderr. A failed write (the log's disk is full) is
the agent's own business: it goes on, and exits 0.

    chatty.py [LINES] [SIZE] [INTERVAL]
"""

import os
import sys
import time

lines = int(sys.argv[1]) if len(sys.argv) > 1 else 10
size = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
for i in range(lines):
    for fd in (1, 2):
        try:
            os.write(fd, (f"{i} " + "x" * size + "\n").encode())
        except OSError:
            pass
    time.sleep(interval)
