"""The orders channel from the driver to its remote agents (``--engine ray``).

Signals to the driver (interrupt, stop, kill) must reach agents running on other
machines, and the agent's last record (its outcome, its logs) must still come back.
``ray.cancel`` cannot do both: a cancelled task's last record never reaches the
driver. So orders go through a small actor that lives on the driver's node, and
each node task polls it without blocking its agent's loop. The actor dies with the
driver, and a node that can no longer reach it kills its agent.
"""

from __future__ import annotations

import signal

POLL_S = 0.25  # how often a node fetches its orders
#: The detail of an agent its node stopped because the orders actor died (with the
#: driver, or with the driver's node: the head, usually); its ``ended`` record also
#: says ``orders_lost`` so that the driver can look at the head at once.
ORDERS_GONE = "its node lost the driver's orders channel (the driver or its node died)"


class Control:
    """A Ray actor holding orders (interrupt, stop, kill) for running agents; each
    node polls it for its agent. It lives on the driver's node and dies with the
    driver, which the nodes take as the order to kill their agents."""

    def __init__(self) -> None:
        self.orders: dict[str, list] = {}

    def order(self, key: str, order: tuple) -> None:
        self.orders.setdefault(key, []).append(order)

    def poll(self, key: str) -> list:
        return self.orders.pop(key, [])


class Orders:
    """The driver's orders for this task, fetched without blocking the agent's loop."""

    def __init__(self, control, key: str) -> None:
        self.control, self.key = control, key
        self.ref = None
        self.next_at = 0.0
        self.lost = False  # the actor could not be reached: the agent was stopped

    def fetch(self, now: float, wait: float = 0.0) -> list:
        if self.control is None or (now < self.next_at and not wait):
            return []
        import ray

        if self.ref is None:
            self.ref = self.control.poll.remote(self.key)
        ready, _ = ray.wait([self.ref], timeout=wait)
        if not ready:
            return []
        ref, self.ref, self.next_at = self.ref, None, now + POLL_S
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:  # the actor died with the driver
            self.lost = True
            return [("stopped", signal.SIGKILL, None, f"{ORDERS_GONE}: {type(err).__name__}")]
