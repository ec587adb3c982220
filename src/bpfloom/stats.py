"""Pipeline accounting: counters that add up, and latency percentiles.

Drops are data, not exceptions (docs/design.md, "Drops are data"). After a pipeline stops,
``produced == handled + dropped_kernel + dropped_queue`` holds exactly, where
``produced = received + dropped_kernel``: every event the kernel tried to emit was
either handled (successfully or not: ``handler_errors`` counts the failures among
them), lost in the kernel (ring full, perf lost samples), or dropped by the queue
policy (including events still queued when a shutdown deadline expired).

Counters are updated under one lock by the pipeline's threads; latency samples go
into bounded reservoirs (the most recent ``RESERVOIR`` samples), so memory stays
bounded under any load.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

RESERVOIR = 1 << 16
PERCENTILES = (50, 90, 99, 99.9)


class Latencies:
    """Recent latency samples in nanoseconds (thread-safe appends; bounded)."""

    def __init__(self) -> None:
        self._samples: deque[int] = deque(maxlen=RESERVOIR)
        self.count = 0
        #: Every sample counted by magnitude: ``buckets[i]`` holds [2**(i-1), 2**i) ns
        #: (cumulative since the start, for Prometheus histograms).
        self.buckets = [0] * 65

    def add(self, ns: int) -> None:
        self._samples.append(ns)
        self.count += 1
        self.buckets[min(max(ns, 0).bit_length(), 64)] += 1

    def extend(self, samples: list[int]) -> None:
        self._samples.extend(samples)
        self.count += len(samples)
        buckets = self.buckets
        for ns in samples:
            buckets[min(max(ns, 0).bit_length(), 64)] += 1

    def summary(self) -> dict[str, float] | None:
        """Percentiles in microseconds (``p50_us`` …) and the sample count, or None."""
        if not self._samples:
            return None
        arr = np.fromiter(self._samples, dtype=np.int64, count=len(self._samples))
        values = np.percentile(arr, PERCENTILES)
        out: dict[str, float] = {"samples": self.count}
        for p, v in zip(PERCENTILES, values, strict=True):
            out[f"p{p:g}_us".replace(".", "_")] = round(float(v) / 1000, 3)
        out["max_us"] = round(float(arr.max()) / 1000, 3)
        return out


class PipelineStats:
    """Live counters of one pipeline; ``snapshot()`` gives a consistent dict."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.handled = 0
        self.handler_errors = 0
        self.dropped_queue = 0
        self.dropped_kernel = 0
        self.queue_depth = 0
        self.queue_depth_max = 0
        self.inflight = 0
        self.inflight_max = 0
        self.handler_latency = Latencies()
        self.end_to_end_latency = Latencies()
        self.sealed = False
        self._tallies: list[list[int]] = []  # of handler runs still open (begin/end)

    def add(self, **counts: int) -> None:
        with self._lock:
            if self.sealed:
                return
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth = depth
        if depth > self.queue_depth_max:
            self.queue_depth_max = depth

    def seal(self) -> int:
        """Make the counters final, once the pipeline stopped: events received but
        neither handled nor dropped by now (in handlers that outlived the shutdown
        deadline) count as dropped, and what such handlers report later is ignored,
        so the final snapshot adds up and stays final. Returns that number."""
        with self._lock:
            if self.sealed:
                return 0
            for handled, errors in self._tallies:  # runs still open: what they finished
                self.handled += handled
                self.handler_errors += errors
            self._tallies.clear()
            late = self.received - self.handled - self.dropped_queue
            self.dropped_queue += late
            self.inflight = 0
            self.sealed = True
            return late

    def enter_handler(self, n: int = 1) -> None:
        with self._lock:
            if self.sealed:
                return
            self.inflight += n
            if self.inflight > self.inflight_max:
                self.inflight_max = self.inflight

    def begin(self) -> list[int]:
        """A worker begins a run of events (one handler at a time): one more in
        ``inflight``. Returns the run's tally, ``[handled, handler_errors]`` of the
        events it has finished, which the worker keeps up to date event by event with
        no lock, and hands in with ``flush()`` and finally ``end()``. ``seal()`` counts
        the tallies of runs still open: an event finished before a handler got stuck on
        the next one is counted as handled, not dropped."""
        tally = [0, 0]
        with self._lock:
            if not self.sealed:
                self._tallies.append(tally)
                self.inflight += 1
                if self.inflight > self.inflight_max:
                    self.inflight_max = self.inflight
        return tally

    def flush(self, tally: list[int], dropped: int = 0, *, end: bool = False) -> None:
        """Move ``tally`` into the counters (and ``dropped`` events into
        ``dropped_queue``); with ``end`` the run is over (one less in ``inflight``)."""
        with self._lock:
            if self.sealed:  # seal() counted the tally already
                return
            self.handled += tally[0]
            self.handler_errors += tally[1]
            self.dropped_queue += dropped
            tally[0] = tally[1] = 0
            if end:
                self.inflight -= 1
                self._tallies.remove(tally)

    def leave_handler(self, n: int = 1, errors: int = 0) -> None:
        with self._lock:
            if self.sealed:
                return
            self.inflight -= n
            self.handled += n
            self.handler_errors += errors

    @property
    def produced(self) -> int:
        return self.received + self.dropped_kernel

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "produced": self.received + self.dropped_kernel,
                "received": self.received,
                "handled": self.handled,
                "handler_errors": self.handler_errors,
                "dropped_kernel": self.dropped_kernel,
                "dropped_queue": self.dropped_queue,
                "queue_depth_max": self.queue_depth_max,
                "inflight_max": self.inflight_max,
            }
        out["handler_latency"] = self.handler_latency.summary()
        out["end_to_end_latency"] = self.end_to_end_latency.summary()
        return out
