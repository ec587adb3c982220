"""The pipeline's bounded queue and its overload policies.

A FIFO of items, each with a *weight* (1 for an event, ``len(batch)`` for a batch), and
a capacity in events, so memory stays bounded whatever the load. When an item does not
fit, the policy decides (and every event that does not get through is counted in
``PipelineStats.dropped_queue``):

- ``block``: the producer (a reader thread) waits for room. The reader then stops
  draining its ring buffer, which fills, and the kernel drops — counted there.
- ``drop_newest``: the incoming item is dropped.
- ``drop_oldest``: the oldest queued items are dropped to make room.
- ``sample``: one in ``sample_every`` incoming items displaces the oldest queued
  items; the others are dropped. Under overload a thin uniform sample of the newest
  traffic still gets through.

An item heavier than the whole capacity is admitted only into an empty queue.
Consumers are threads (``get``) or an asyncio loop (``get_nowait_many`` plus a wake-up
callback). ``close()`` lets consumers drain what is queued and then see ``CLOSED``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sized
from typing import Any

from .stats import PipelineStats

POLICIES = ("block", "drop_newest", "drop_oldest", "sample")
CLOSED = object()  # what get() returns once the queue is closed and empty


class BoundedQueue:
    """Thread-safe weighted FIFO with an overload policy (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        policy: str,
        stats: PipelineStats,
        *,
        sample_every: int = 10,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.policy = policy
        self.sample_every = max(1, sample_every)
        self._stats = stats
        self._items: deque[tuple[Any, int]] = deque()
        self._depth = 0
        self._closed = False
        self._overflows = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._on_ready = on_ready  # called (outside the lock) when items become available

    @property
    def depth(self) -> int:
        return self._depth

    def _fits(self, weight: int) -> bool:
        return self._depth + weight <= self.capacity or self._depth == 0

    def _evict_for(self, weight: int) -> int:
        dropped = 0
        while self._items and not self._fits(weight):
            _, w = self._items.popleft()
            self._depth -= w
            dropped += w
        return dropped

    def put_many(
        self, items: Iterable[Any], weight: int = 1, stop: threading.Event | None = None
    ) -> None:
        """Queue ``items`` (each of ``weight`` events) applying the policy to each.

        With ``block``, waits for room; ``stop`` being set ends the wait and drops
        what is left (counted), so a shutdown never hangs on a full queue.
        """
        dropped = 0
        added = False
        taken = 0
        with self._lock:
            for item in items:
                if self._closed:
                    # Count the rest without iterating it: iterating a Batch decodes
                    # every event, which would hold up a shutdown for nothing.
                    if isinstance(items, Sized):
                        dropped += weight * (len(items) - taken)
                        break
                    dropped += weight
                    continue
                taken += 1
                if not self._fits(weight):
                    if self.policy == "block":
                        while not self._fits(weight) and not self._closed:
                            if stop is not None and stop.is_set():
                                break
                            self._not_empty.notify_all()  # consumers make the room
                            if added and self._on_ready is not None:
                                self._lock.release()
                                try:
                                    self._on_ready()
                                finally:
                                    self._lock.acquire()
                                added = False
                            self._not_full.wait(0.05)
                        if not self._fits(weight) or self._closed:
                            dropped += weight
                            continue
                    elif self.policy == "drop_newest":
                        dropped += weight
                        continue
                    elif self.policy == "drop_oldest":
                        dropped += self._evict_for(weight)
                    else:  # sample
                        self._overflows += 1
                        if self._overflows % self.sample_every:
                            dropped += weight
                            continue
                        dropped += self._evict_for(weight)
                self._items.append((item, weight))
                self._depth += weight
                added = True
            self._stats.set_queue_depth(self._depth)
            if added:
                self._not_empty.notify_all()
        if dropped:
            self._stats.add(dropped_queue=dropped)
        if added and self._on_ready is not None:
            self._on_ready()

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item; ``CLOSED`` once closed and empty; None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._items:
                if self._closed:
                    return CLOSED
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._not_empty.wait(left)
            item, weight = self._items.popleft()
            self._depth -= weight
            self._not_full.notify()
            return item

    def get_nowait_many(self, limit: int) -> list[Any]:
        """Up to ``limit`` items without waiting (possibly none)."""
        out: list[Any] = []
        with self._lock:
            while self._items and len(out) < limit:
                item, weight = self._items.popleft()
                self._depth -= weight
                out.append(item)
            if out:
                self._not_full.notify_all()
        return out

    @property
    def closed_and_empty(self) -> bool:
        with self._lock:
            return self._closed and not self._items

    def close(self) -> None:
        """No more items; consumers drain what is queued, then get ``CLOSED``."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
        if self._on_ready is not None:
            self._on_ready()

    def abandon(self) -> int:
        """Drop everything still queued (a shutdown deadline passed); count it."""
        with self._lock:
            dropped = self._depth
            self._items.clear()
            self._depth = 0
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
        if dropped:
            self._stats.add(dropped_queue=dropped)
        return dropped
