"""The bounded task queue: producers block (or get :class:`QueueFull`) when it is full.

Backpressure is the point: an orchestrator calling ``submit()`` or a pipe feeding
``--tasks -`` is slowed to the pace at which agents can start, instead of the
supervisor buffering an unbounded backlog in memory.
"""

from __future__ import annotations

import collections
import threading
import time

from agent_supervise.errors import QueueClosed, QueueFull


class TaskQueue:
    def __init__(self, size: int, on_put=None) -> None:
        self.size = size
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_put = on_put  # wakes the loop

    def put(self, makers: list, block: bool = True, timeout: float | None = None) -> None:
        """Enqueue one item per maker, in order; each maker builds its item at the
        moment it enters the queue (so ids are given only to what was queued).
        Without blocking, all fit or none is added."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._closed:
                raise QueueClosed("the supervisor is stopping; the task was not queued")
            if not block and len(self._items) + len(makers) > self.size:
                raise QueueFull(f"the queue is full ({len(self._items)}/{self.size})")
            for make in makers:
                while len(self._items) >= self.size and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise QueueFull(f"the queue stayed full ({self.size}) for {timeout}s")
                    self._cond.wait(left)
                if self._closed:
                    raise QueueClosed("the supervisor is stopping; the task was not queued")
                self._items.append(make())
                if self._on_put:
                    self._on_put()

    def push_front(self, item) -> None:
        """Put a task that already held a place back at the head (a retry). It may
        exceed ``size`` by the few tasks in flight: it was admitted once already."""
        with self._cond:
            if self._closed:
                raise QueueClosed("the supervisor is stopping; the task was not queued")
            self._items.appendleft(item)
        if self._on_put:
            self._on_put()

    def snapshot(self) -> list:
        with self._cond:
            return list(self._items)

    def remove(self, item) -> None:
        with self._cond:
            self._items.remove(item)
            self._cond.notify_all()

    def pop(self):
        with self._cond:
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def free(self) -> int:
        with self._cond:
            return self.size - len(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def drain(self) -> list:
        """Close the queue and return what was still waiting."""
        with self._cond:
            self._closed = True
            items, self._items = list(self._items), collections.deque()
            self._cond.notify_all()
            return items
