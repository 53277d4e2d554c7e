"""An example agent that checkpoints its progress and resumes after being killed.

It works through five steps, recording each in $AGENT_CHECKPOINT_FILE. At step 3 it
loads a large document whole, which its 50M cap does not allow: the kernel kills
it. Retried (on_memory_kill: retry), it finds its last checkpoint in
$AGENT_RESUME_FROM, skips the finished steps and streams the document instead.
"""

import os
import time

try:
    from agent_supervise import checkpoint  # the helper, when the package is installed
except ImportError:

    def checkpoint(text):  # the protocol is one appended line
        with open(os.environ["AGENT_CHECKPOINT_FILE"], "a") as f:
            f.write(text + "\n")


resume = os.environ.get("AGENT_RESUME_FROM")
done = int(resume.split()[1]) if resume else 0
if resume:
    print(
        f"resumable: attempt {os.environ.get('AGENT_ATTEMPT')}, resuming after {resume!r}",
        flush=True,
    )
for step in range(done + 1, 6):
    if step == 3 and not resume:
        document = bytearray(80 * 2**20)  # whole: over the cap
        document[::4096] = b"x" * len(document[::4096])
    elif step == 3:
        for _ in range(80):  # streamed: 1 MiB at a time
            chunk = bytearray(2**20)
    time.sleep(0.1)
    checkpoint(f"step {step}")
    print(f"resumable: step {step} done", flush=True)
