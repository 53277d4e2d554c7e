"""A guest "test" that never ends, for tests/test_vm_stage.py: it checks that a hung
guest is killed at the host's timeout and reported with its console. Not collected
by the normal run (the name does not start with ``test_``)."""

import time


def test_hangs():
    print("hang_check: the guest is now hanging", flush=True)
    time.sleep(3600)
