"""A sink that never stalls the reader: another sink fed from a thread of its own.

Network outputs can block for as long as a server takes to answer. Wrapped in a
``QueuedSink``, such a sink gets its records through a bounded queue (at most
``capacity`` records taken and not yet delivered, the batch being written included)
drained by one thread: ``write`` only appends, so the reader never waits on
the network; records that do not fit are dropped and counted (``errors``), like any
other loss. ``close()`` waits up to ``timeout`` seconds for the queue to drain, then
counts what is left as lost and leaves the stuck thread behind (a daemon thread).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

from . import Record, Sink


class QueuedSink(Sink):
    """``inner`` behind a bounded queue (see the module docstring); never fatal."""

    fatal = False

    def __init__(self, inner: Sink, *, capacity: int = 65536, timeout: float = 5.0) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.capacity = capacity
        self.timeout = timeout
        self._queue: collections.deque[Sequence[Record]] = collections.deque()
        self._queued = 0  # records in the queue
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="bpfloom-sink", daemon=True)
        self._thread.start()

    def _write(self, records: Sequence[Record]) -> None:
        with self._cond:
            if self._closing or self._queued + len(records) > self.capacity:
                self.errors += len(records)  # full (or closing): dropped, counted
                self.written -= len(records)  # the base counts them as written otherwise
                return
            self._queue.append(records)
            self._queued += len(records)
            self._cond.notify()

    def summary(self, text: str, records: Sequence[Record] = ()) -> None:
        self.inner.summary(text, records)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                records = self._queue.popleft()
            self.inner.write(records)  # never raises: the inner sink counts its losses
            with self._cond:
                self._queued -= len(records)
                self._cond.notify_all()

    def _close(self) -> None:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._queued and time.monotonic() < deadline:
                self._cond.wait(max(deadline - time.monotonic(), 0.0))
            left = self._queued
        self.errors += left  # still queued at the deadline: lost, counted
        self.written -= left
        if not left:
            self._thread.join(max(deadline - time.monotonic(), 0.0))
            self.inner.close()

    @property
    def delivered(self) -> int:
        """Records the inner sink took."""
        return self.inner.written
