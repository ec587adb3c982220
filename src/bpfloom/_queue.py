"""The pipeline's bounded queue and its overload policies.

A FIFO of entries, each with a *weight* in events, and a capacity in events, so memory
stays bounded whatever the load. An entry is either one *item* (``put_many``: a batch
of ``len(batch)`` events for batch handlers, an event, anything) or a *chunk of events*
(``put_events``: a list of events or a ``Batch``, anything that has a length and
slices), which the queue may split: a chunk is only a cheaper way to move many events,
and every policy treats its events exactly as if each had been put on its own, with
weight 1. When an event or item does not fit, the policy decides (and every event that
does not get through is counted in ``PipelineStats.dropped_queue``):

- ``block``: the producer (a reader thread) waits for room. The reader then stops
  draining its ring buffer, which fills, and the kernel drops — counted there.
- ``drop_newest``: the incoming event (item) is dropped.
- ``drop_oldest``: the oldest queued events are dropped to make room (a queued chunk
  loses only its oldest events; an item goes whole).
- ``sample``: one in ``sample_every`` incoming events (items) that do not fit displaces
  the oldest queued ones; the others are dropped. Under overload a thin uniform sample
  of the newest traffic still gets through.

An item heavier than the whole capacity is admitted only into an empty queue.
Consumers are threads (``get`` for whole entries, ``get_chunk`` for chunks cut to a
size) or an asyncio loop (``get_nowait_many``, ``take_events_nowait``, plus a wake-up
callback). ``close()`` lets consumers drain what is queued and then see ``CLOSED``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, Protocol

from .stats import PipelineStats

POLICIES = ("block", "drop_newest", "drop_oldest", "sample")
CLOSED = object()  # what get() returns once the queue is closed and empty


class Chunk(Protocol):
    """Events the queue may cut: a list of events, a ``Batch``."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


Entry = tuple[Any, int, bool]  # (item or chunk, weight in events, is a chunk of events)


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
        self._items: deque[Entry] = deque()
        self._depth = 0
        # Queued items of more than one event: while there are any, making room for
        # one event can free more than one, and chunks take the event-by-event path.
        self._heavy = 0
        self._closed = False
        self._overflows = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._on_ready = on_ready  # called (outside the lock) when items become available

    @property
    def depth(self) -> int:
        return self._depth

    # --- entries (under the lock) -----------------------------------------------------

    def _append(self, item: Any, weight: int, chunk: bool) -> None:
        self._items.append((item, weight, chunk))
        self._depth += weight
        if weight > 1 and not chunk:
            self._heavy += 1

    def _popleft(self) -> Entry:
        entry = self._items.popleft()
        self._depth -= entry[1]
        if entry[1] > 1 and not entry[2]:
            self._heavy -= 1
        return entry

    def _take(self, limit: int) -> Entry:
        """The oldest entry; a chunk of more than ``limit`` events gives its first
        ``limit`` and keeps the rest at the head."""
        item, weight, chunk = self._items[0]
        if chunk and weight > limit:
            self._items[0] = (item[limit:], weight - limit, True)
            self._depth -= limit
            return item[:limit], limit, True
        return self._popleft()

    def _fits(self, weight: int) -> bool:
        return self._depth + weight <= self.capacity or self._depth == 0

    def _evict_for(self, weight: int) -> int:
        """Drop the oldest events until ``weight`` more fit; returns how many."""
        dropped = 0
        while self._items and not self._fits(weight):
            item, w, chunk = self._items[0]
            excess = self._depth + weight - self.capacity
            if chunk and w > excess:  # the head chunk keeps its newest events
                self._items[0] = (item[excess:], w - excess, True)
                self._depth -= excess
                return dropped + excess
            self._popleft()
            dropped += w
        return dropped

    def _wait_for_room(self, added: bool) -> None:
        """Block policy, full queue: wake consumers, then wait a little for room."""
        self._not_empty.notify_all()  # consumers make the room
        if added and self._on_ready is not None:
            self._lock.release()
            try:
                self._on_ready()
            finally:
                self._lock.acquire()
        self._not_full.wait(0.05)

    # --- producers ----------------------------------------------------------------------

    def put_many(
        self, items: Iterable[Any], weight: int = 1, stop: threading.Event | None = None
    ) -> None:
        """Queue ``items`` (each of ``weight`` events) applying the policy to each.

        With ``block``, waits for room; ``stop`` being set ends the wait and drops
        what is left (counted), so a shutdown never hangs on a full queue.
        """
        with self._lock:
            dropped, added = self._put_each(items, weight, stop)
            self._stats.set_queue_depth(self._depth)
            if added:
                self._not_empty.notify_all()
        self._after_put(dropped, added)

    def _after_put(self, dropped: int, added: bool) -> None:
        if dropped:
            self._stats.add(dropped_queue=dropped)
        if added and self._on_ready is not None:
            self._on_ready()

    def _put_each(
        self, items: Iterable[Any], weight: int, stop: threading.Event | None
    ) -> tuple[int, bool]:
        """``put_many`` under the lock: (events dropped, whether any were queued)."""
        dropped = 0
        added = False
        taken = 0
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
                        self._wait_for_room(added)
                        added = False
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
            self._append(item, weight, False)
            added = True
        return dropped, added

    def put_events(self, events: Chunk, stop: threading.Event | None = None) -> None:
        """Queue a chunk of events, exactly as ``put_many(events)`` would queue them one
        by one (same policy decisions, same counts, same order), but as slices of the
        chunk: one queue operation for many events. ``events`` needs ``len`` and
        slicing (a list, a ``Batch``); what is queued are slices of it."""
        n = len(events)
        if n == 0:
            return
        with self._lock:
            if self._heavy:  # rare (items and chunks in one queue): event by event
                dropped, added = self._put_each(events, 1, stop)
            else:
                dropped, added = self._put_chunk(events, n, stop)
            self._stats.set_queue_depth(self._depth)
            if added:
                self._not_empty.notify_all()
        self._after_put(dropped, added)

    def _put_chunk(self, events: Chunk, n: int, stop: threading.Event | None) -> tuple[int, bool]:
        """``put_events`` under the lock, with no heavy items queued: every queued entry
        is then events of weight 1, so room for one event is one event evicted."""
        dropped = 0
        added = False
        pos = 0
        capacity = self.capacity
        while pos < n:
            if self._closed:
                return dropped + n - pos, added
            room = capacity - self._depth
            if room > 0:
                take = min(room, n - pos)
                self._append(events if take == n else events[pos : pos + take], take, True)
                pos += take
                added = True
                continue
            rest = n - pos  # the queue is full: each of these overflows
            if self.policy == "block":
                if stop is not None and stop.is_set():
                    return dropped + rest, added
                self._wait_for_room(added)
                added = False
                continue
            if self.policy == "drop_newest":
                return dropped + rest, added
            if self.policy == "drop_oldest":
                admitted = events[pos:] if pos else events
            else:  # sample: overflow number k (counted across calls) is let in when
                # k % sample_every == 0; the first one here is number _overflows + 1.
                every = self.sample_every
                first = -(self._overflows + 1) % every
                self._overflows += rest
                if first >= rest:
                    return dropped + rest, added
                admitted = events[pos + first :: every]
                dropped += rest - len(admitted)
            # Each admitted event displaces the oldest queued one (maybe one admitted
            # just before it): the queue ends with the newest ``capacity`` of them all.
            count = len(admitted)
            if count > capacity:
                dropped += count - capacity
                admitted = admitted[count - capacity :]
                count = capacity
            self._append(admitted, count, True)
            return dropped + self._evict_for(0), True
        return dropped, added

    # --- consumers ----------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        """The oldest entry, whole; ``CLOSED`` once closed and empty; None on timeout."""
        return self.get_chunk(0, timeout=timeout)

    def get_chunk(self, limit: int, share: int = 1, timeout: float | None = None) -> Any:
        """Like ``get``, but a chunk of events is cut to at most
        ``max(1, min(limit, ceil(depth / share)))`` events (``limit`` 0: whole): with
        ``share`` consumers on the queue, each takes its part of what is queued."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._items:
                if self._closed:
                    return CLOSED
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._not_empty.wait(left)
            if limit:
                cut = max(1, min(limit, -(-self._depth // share)))
                item = self._take(cut)[0]
            else:
                item = self._popleft()[0]
            self._not_full.notify_all()
            return item

    def get_nowait_many(self, limit: int) -> list[Any]:
        """Up to ``limit`` whole entries without waiting (possibly none)."""
        out: list[Any] = []
        with self._lock:
            while self._items and len(out) < limit:
                out.append(self._popleft()[0])
            if out:
                self._not_full.notify_all()
        return out

    def take_events_nowait(self, limit: int) -> list[Any]:
        """Chunks (cut as needed) of at most ``limit`` events in all, without waiting;
        an item is taken whole, alone if it weighs more than ``limit``."""
        out: list[Any] = []
        with self._lock:
            while self._items and limit > 0:
                if not self._items[0][2] and self._items[0][1] > limit and out:
                    break
                item, weight, _ = self._take(limit)
                out.append(item)
                limit -= weight
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
            self._heavy = 0
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
        if dropped:
            self._stats.add(dropped_queue=dropped)
        return dropped
