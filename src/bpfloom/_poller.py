"""What the ring buffer and perf buffer readers share: waiting, waking, closing.

A reader waits on an epoll set holding its buffer's descriptors (the ring's map fd, or
one perf event fd per CPU) and an eventfd of its own. ``wakeup()`` writes the eventfd,
so a pending ``read`` returns at once with what is there; ``close()`` does the same
and then frees everything, so a pending read wakes, sees the reader closed and raises
``ClosedError`` (as cilium/ebpf's ``internal/epoll.Poller``: "the wait can be
interrupted by calling Close"). Subclasses say how to drain (``_drain``), whether a
batch is news (``_news``), and what to release (``_release``).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

from ._exceptions import ClosedError
from .batch import Batch
from .decode import Decoder

DEFAULT_POLL_INTERVAL = 0.1


class BufferReader:
    """Base of ``RingBuffer`` and ``PerfBuffer``: read/poll/batches/iteration, wakeup
    and close. ``read`` may be called from several threads (reads are serialised);
    ``close()`` from any thread unblocks a pending ``read``, which then raises
    ``ClosedError``. Producers that never wake the reader (``BPF_RB_NO_WAKEUP``) are
    found by polling every ``poll_interval`` seconds."""

    kind = "buffer"
    name: str
    decoder: Decoder
    owner: Any

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._wake_lock = threading.Lock()  # orders wakeup() before close() frees the fd
        self._closed = False
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)

    def _watch(self, fd: int) -> None:
        """Wake a waiting ``read`` when ``fd`` is readable."""
        self._epoll.register(fd, select.EPOLLIN)

    # --- for subclasses ------------------------------------------------------------

    def _drain(self, max_records: int | None) -> Batch:
        """What is in the buffer now (possibly an empty batch); called under the lock."""
        raise NotImplementedError

    def _news(self, batch: Batch) -> bool:
        """Whether ``read`` may return ``batch`` rather than wait on."""
        return bool(batch)

    def _release(self) -> None:
        """Free the buffer's own resources (mappings, perf events); under the lock."""

    # --- reading -------------------------------------------------------------------

    def read(self, timeout: float | None = None, max_records: int | None = None) -> Batch:
        """The next batch with news, waiting up to ``timeout`` seconds (None: forever).

        Returns an empty batch on timeout or after ``wakeup()``. Raises ``ClosedError``
        once closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    raise ClosedError(f"{self.kind} {self.name!r} is closed")
                batch = self._drain(max_records)
                if self._news(batch):
                    return batch
                wait = self.poll_interval
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return batch
                    wait = min(wait, left)
                events = self._epoll.poll(wait)
                if not self._closed and any(fd == self._wake_fd for fd, _ in events):
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake_fd)  # woken by wakeup(): return now
                    return self._drain(max_records)

    def poll(self, max_records: int | None = None) -> Batch:
        """Drain what is there now without waiting (possibly an empty batch)."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self.kind} {self.name!r} is closed")
            return self._drain(max_records)

    def batches(self, timeout: float | None = None) -> Iterator[Batch]:
        """Batches with news until closed (or until ``timeout`` passes with none)."""
        while True:
            try:
                batch = self.read(timeout)
            except ClosedError:
                return
            if not self._news(batch):
                return
            yield batch

    def __iter__(self) -> Iterator[Any]:
        """Decoded events, one at a time, until the reader is closed."""
        for batch in self.batches():
            yield from batch

    # --- life cycle ----------------------------------------------------------------

    def wakeup(self) -> None:
        """Make a pending ``read`` return now, with what is there (maybe nothing).

        Thread-safe; does nothing once closed. The pipeline calls it on ``stop()`` so
        that its readers do not sit out the rest of their read timeout.
        """
        with self._wake_lock:
            if not self._closed:
                os.eventfd_write(self._wake_fd, 1)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release everything and unblock a pending ``read`` (idempotent)."""
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            os.eventfd_write(self._wake_fd, 1)
        with self._lock:  # a pending read wakes up, sees closed, and returns
            self._release()
            self._epoll.close()
            os.close(self._wake_fd)
        if self.owner is not None:
            self.owner._forget(self)
