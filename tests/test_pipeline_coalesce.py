"""``Pipeline(coalesce=S)``: after a read that brought at least ``COALESCE_MIN``
events, a reader waits S seconds before reading again, so a busy ring buffer is read in
fewer, larger batches (``bpfloom detect`` uses it: ``tools/detect.py: COALESCE_S``).
Accounting and order stay exact, a stop is not held up by the wait. No kernel: fake
readers (what a real ring gives in one read is its whole backlog; bench/detect.py
measures that effect)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from bpfloom import Batch, Pipeline
from bpfloom.pipeline import COALESCE_MIN
from conftest import assert_exact, time_limit
from test_pipeline_fake import FakeReader, make_batch


class TimedReader(FakeReader):
    """A FakeReader that notes when each read returned, and how many events."""

    def __init__(self, batches: list[Batch]) -> None:
        super().__init__(batches)
        self.reads: list[tuple[float, int]] = []

    def read(self, timeout: float | None = None) -> Batch:
        batch = super().read(timeout)
        self.reads.append((time.monotonic(), len(batch)))
        return batch


def test_a_busy_read_is_followed_by_the_wait_and_nothing_is_lost() -> None:
    sizes = [COALESCE_MIN, 1, COALESCE_MIN + 5, 2, 3, COALESCE_MIN]
    bounds = np.cumsum([0, *sizes])
    reader = TimedReader([make_batch(range(a, b)) for a, b in itertools.pairwise(bounds)])
    seen: list[int] = []
    lock = threading.Lock()

    def handler(batch: Batch) -> None:
        with lock:
            seen.extend(int(x) for x in batch.numpy()["seq"])

    p = Pipeline(reader, handler, workers=1, batch=True, coalesce=0.05)
    p.start()
    while reader.pending:
        time.sleep(0.01)
    stats = p.stop()
    assert_exact(stats, int(bounds[-1]))
    assert seen == list(range(int(bounds[-1])))
    busy = [(t, n) for t, n in reader.reads if n]
    assert [n for _, n in busy] == sizes
    for (t, n), (t_next, _) in itertools.pairwise(busy):
        if n >= COALESCE_MIN:  # the next read waited at least the coalescing time
            assert t_next - t >= 0.05


def test_stop_does_not_wait_out_a_long_coalescing_wait() -> None:
    reader = FakeReader([make_batch(range(0, COALESCE_MIN))])
    p = Pipeline(reader, lambda batch: None, workers=1, batch=True, coalesce=3600.0)
    p.start()
    while reader.pending:
        time.sleep(0.01)
    reader.feed(make_batch(range(COALESCE_MIN, COALESCE_MIN + 3)))  # read while stopping
    with time_limit(30.0):
        stats = p.stop()
    assert_exact(stats, COALESCE_MIN + 3)


@pytest.mark.parametrize("seconds", [-0.001, float("nan"), float("inf")])
def test_coalesce_must_be_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="coalesce must be a number of seconds"):
        Pipeline(FakeReader(), lambda batch: None, coalesce=seconds)
