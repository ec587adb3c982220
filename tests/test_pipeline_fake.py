"""The pipeline's pure logic, without a kernel: the bounded queue's four overload
policies (exact semantics and weights), close/abandon, and the pipeline over a fake
event source (``FakeReader``, in the spirit of httpx's ``MockTransport``) for every
executor: exact accounting, key ordering, handler errors, shutdown deadlines and the
asyncio API. The same behaviour against real ring buffers is in test_pipeline.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline_handlers as handlers
from bpfloom import Batch, BpfloomError, ClosedError, Decoder, Pipeline, PipelineError
from bpfloom._queue import CLOSED, POLICIES, BoundedQueue
from bpfloom.batch import empty_batch
from bpfloom.pipeline import EXECUTORS, EventSource, StopSignals
from bpfloom.stats import PipelineStats
from bpfloom.types import Int, Member, Struct
from conftest import assert_exact, pipeline_threads

U64 = Int("unsigned long long", 8, signed=False)
U32 = Int("unsigned int", 4, signed=False)
# struct fake_event { u64 ts_ns; u64 seq; u32 key; u32 pad; } — as tests/bpf/pipeline.bpf.c
FAKE_EVENT = Struct(
    "fake_event",
    24,
    [
        Member("ts_ns", U64, 0),
        Member("seq", U64, 64),
        Member("key", U32, 128),
        Member("pad", U32, 160),
    ],
)
DECODER = Decoder(FAKE_EVENT)
RECORD = struct.Struct("<QQII")
WAIT = 10.0  # seconds any wait in these tests may take, far above what it needs


def make_batch(
    seqs: range | list[int], keys: int = 0, lost: int = 0, ts: int | None = None
) -> Batch:
    """A batch of fake_event records with the given seqs (key = seq % keys)."""
    now = time.monotonic_ns() if ts is None else ts
    raw = b"".join(RECORD.pack(now, s, s % keys if keys else 0, 0) for s in seqs)
    records = np.frombuffer(raw, dtype=np.uint8).reshape(len(seqs), RECORD.size).copy()
    return Batch(records, DECODER, "fake", lost)


class FakeReader:
    """A stand-in for RingBuffer/PerfBuffer (``bpfloom.pipeline.EventSource``): hands
    out the batches it was fed.

    ``read`` waits up to ``timeout`` for a batch (an empty one on timeout, or at once
    after ``wakeup()``), ``poll`` does not wait; both raise ``ClosedError`` after
    ``close()``. ``poll_delay`` makes
    every ``poll`` slow (as draining a big ring is), to widen shutdown races.
    """

    def __init__(self, batches: list[Batch] | None = None, *, poll_delay: float = 0.0) -> None:
        self.name = "fake"
        self.decoder = DECODER
        self.owner = None
        self.received = 0
        self.poll_delay = poll_delay
        self._pending: deque[Batch] = deque(batches or [])
        self._cond = threading.Condition()
        self._closed = False
        self._woken = False

    def feed(self, *batches: Batch) -> None:
        with self._cond:
            self._pending.extend(batches)
            self._cond.notify_all()

    def _next(self) -> Batch:
        if self._closed:
            raise ClosedError("fake reader is closed")
        if self._pending:
            batch = self._pending.popleft()
            self.received += len(batch)
            return batch
        return empty_batch(DECODER, self.name)

    def read(self, timeout: float | None = None) -> Batch:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed or self._woken, timeout)
            self._woken = False
            return self._next()

    def poll(self) -> Batch:
        if self.poll_delay:
            time.sleep(self.poll_delay)
        with self._cond:
            return self._next()

    def wakeup(self) -> None:
        """Make a pending ``read`` return now (the pipeline calls it on stop)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return sum(len(b) for b in self._pending)


def test_fake_reader_is_an_event_source() -> None:
    assert isinstance(FakeReader(), EventSource)


def wait_for(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the pipeline")
        time.sleep(0.005)


@pytest.fixture
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory the pipeline_handlers record into (in any process or thread)."""
    out = tmp_path / "handled"
    out.mkdir()
    monkeypatch.setenv(handlers.OUT, str(out))
    monkeypatch.delenv(handlers.SLOW_EVERY, raising=False)
    yield out
    handlers.close_files()


# --- the bounded queue: policies ------------------------------------------------------


def drain_queue(q: BoundedQueue) -> list[Any]:
    out = []
    while (item := q.get(timeout=0)) not in (None, CLOSED):
        out.append(item)
    return out


def test_drop_newest_keeps_the_oldest() -> None:
    stats = PipelineStats()
    q = BoundedQueue(3, "drop_newest", stats)
    q.put_many(range(10))
    assert drain_queue(q) == [0, 1, 2]
    assert stats.dropped_queue == 7


def test_drop_oldest_keeps_the_newest() -> None:
    stats = PipelineStats()
    q = BoundedQueue(3, "drop_oldest", stats)
    q.put_many(range(10))
    assert drain_queue(q) == [7, 8, 9]
    assert stats.dropped_queue == 7


def test_sample_lets_one_in_sample_every_through() -> None:
    stats = PipelineStats()
    q = BoundedQueue(3, "sample", stats, sample_every=3)
    q.put_many(range(12))
    # 0..2 fit; 3..11 overflow (9 items): the 3rd, 6th and 9th overflowing items
    # (5, 8, 11) are let in, each displacing the oldest queued item.
    assert drain_queue(q) == [5, 8, 11]
    assert stats.dropped_queue == 9


def test_sample_counts_overflows_across_calls() -> None:
    stats = PipelineStats()
    q = BoundedQueue(2, "sample", stats, sample_every=4)
    q.put_many([0, 1])
    let_in = []
    for i in range(2, 42):  # 40 overflowing items, one call each
        q.put_many([i])
        let_in.append(i)
    assert drain_queue(q) == [37, 41]  # 1 in 4 admitted: 5, 9, ... 41; two fit
    assert stats.dropped_queue == 40 + 2 - 2


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_admits_while_there_is_room(policy: str) -> None:
    stats = PipelineStats()
    q = BoundedQueue(5, policy, stats)
    q.put_many(range(5))
    assert q.depth == 5
    assert drain_queue(q) == [0, 1, 2, 3, 4]
    assert stats.dropped_queue == 0
    assert stats.queue_depth_max == 5


def test_block_waits_for_room_and_loses_nothing() -> None:
    stats = PipelineStats()
    q = BoundedQueue(4, "block", stats)
    got: list[int] = []

    def consume() -> None:
        while (item := q.get()) is not CLOSED:
            got.append(item)
            time.sleep(0.001)

    consumer = threading.Thread(target=consume)
    consumer.start()
    q.put_many(range(200))  # blocks again and again until the consumer makes room
    q.close()
    consumer.join(WAIT)
    assert got == list(range(200))
    assert stats.dropped_queue == 0
    assert stats.queue_depth_max <= 4


def test_block_gives_up_when_stop_is_set_and_counts_the_rest() -> None:
    stats = PipelineStats()
    q = BoundedQueue(2, "block", stats)
    stop = threading.Event()
    done = threading.Event()

    def produce() -> None:
        q.put_many(range(10), stop=stop)
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    assert not done.wait(0.2)  # blocked on a full queue
    stop.set()
    t.join(WAIT)
    assert done.is_set()
    assert drain_queue(q) == [0, 1]
    assert stats.dropped_queue == 8


def test_close_unblocks_a_blocked_producer_and_counts_the_rest() -> None:
    stats = PipelineStats()
    q = BoundedQueue(2, "block", stats)
    t = threading.Thread(target=q.put_many, args=(range(10),))
    t.start()
    time.sleep(0.1)
    q.close()
    t.join(WAIT)
    assert not t.is_alive()
    assert drain_queue(q) == [0, 1]  # what was queued before close still drains
    assert q.get() is CLOSED
    assert stats.dropped_queue == 8


# --- weights --------------------------------------------------------------------------


def test_weights_count_events_not_items() -> None:
    stats = PipelineStats()
    q = BoundedQueue(10, "drop_newest", stats)
    q.put_many(["a", "b"], weight=4)
    assert q.depth == 8
    q.put_many(["c"], weight=4)  # 12 > 10: dropped, and 4 events are counted
    assert stats.dropped_queue == 4
    q.put_many(["d"], weight=2)  # exactly fits
    assert q.depth == 10
    assert drain_queue(q) == ["a", "b", "d"]
    assert q.depth == 0


def test_drop_oldest_evicts_by_weight() -> None:
    stats = PipelineStats()
    q = BoundedQueue(10, "drop_oldest", stats)
    q.put_many(["a"], weight=3)
    q.put_many(["b"], weight=3)
    q.put_many(["c"], weight=3)
    q.put_many(["d"], weight=5)  # needs 5 free: a and b (6 events) must go
    assert drain_queue(q) == ["c", "d"]
    assert stats.dropped_queue == 6


def test_sample_evicts_by_weight() -> None:
    stats = PipelineStats()
    q = BoundedQueue(4, "sample", stats, sample_every=2)
    q.put_many(["a", "b"], weight=2)
    q.put_many(["c"], weight=2)  # overflow 1: dropped
    q.put_many(["d"], weight=3)  # overflow 2: admitted, evicting a and b
    assert drain_queue(q) == ["d"]
    assert stats.dropped_queue == 2 + 4


@pytest.mark.parametrize("policy", POLICIES)
def test_an_item_heavier_than_the_capacity_enters_only_an_empty_queue(policy: str) -> None:
    stats = PipelineStats()
    q = BoundedQueue(4, policy, stats, sample_every=1)
    q.put_many(["huge"], weight=100)
    assert q.depth == 100
    assert stats.queue_depth_max == 100  # documented: bounded by max(capacity, one item)
    if policy == "block":
        stop = threading.Event()
        stop.set()
        q.put_many(["small"], weight=1, stop=stop)  # full: gives up at once, counted
        assert drain_queue(q) == ["huge"]
        assert stats.dropped_queue == 1
    elif policy == "drop_newest":
        q.put_many(["small"], weight=1)
        assert drain_queue(q) == ["huge"]
        assert stats.dropped_queue == 1
    else:  # drop_oldest, sample (1 in 1): the huge one is displaced
        q.put_many(["small"], weight=1)
        assert drain_queue(q) == ["small"]
        assert stats.dropped_queue == 100


# --- close and abandon ------------------------------------------------------------------


def test_close_lets_consumers_drain_then_reports_closed() -> None:
    stats = PipelineStats()
    q = BoundedQueue(10, "block", stats)
    q.put_many([1, 2, 3])
    q.close()
    assert q.closed_and_empty is False
    assert [q.get(), q.get(), q.get()] == [1, 2, 3]
    assert q.get() is CLOSED
    assert q.get(timeout=0) is CLOSED
    assert q.closed_and_empty is True


@pytest.mark.parametrize("policy", POLICIES)
def test_put_after_close_is_counted_as_dropped(policy: str) -> None:
    stats = PipelineStats()
    q = BoundedQueue(10, policy, stats)
    q.close()
    q.put_many(range(3), weight=5)
    assert stats.dropped_queue == 15
    assert q.get() is CLOSED


def test_abandon_drops_and_counts_what_is_queued() -> None:
    stats = PipelineStats()
    q = BoundedQueue(100, "block", stats)
    q.put_many(["a", "b"], weight=7)
    assert q.abandon() == 14
    assert stats.dropped_queue == 14
    assert q.depth == 0
    assert q.get() is CLOSED
    assert q.abandon() == 0  # idempotent, nothing counted twice
    assert stats.dropped_queue == 14


def test_abandon_wakes_a_waiting_consumer() -> None:
    q = BoundedQueue(10, "block", PipelineStats())
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    time.sleep(0.05)
    q.abandon()
    t.join(WAIT)
    assert got == [CLOSED]


def test_get_times_out_with_none() -> None:
    q = BoundedQueue(1, "block", PipelineStats())
    t0 = time.monotonic()
    assert q.get(timeout=0.05) is None
    assert time.monotonic() - t0 >= 0.04


def test_get_nowait_many_and_on_ready() -> None:
    calls = []
    q = BoundedQueue(10, "block", PipelineStats(), on_ready=lambda: calls.append(1))
    assert q.get_nowait_many(5) == []
    q.put_many(range(7))
    assert calls  # consumers were told items are ready
    assert q.get_nowait_many(5) == [0, 1, 2, 3, 4]
    assert q.get_nowait_many(5) == [5, 6]
    assert q.depth == 0


@pytest.mark.parametrize(("capacity", "policy"), [(0, "block"), (10, "lifo")])
def test_queue_rejects_bad_arguments(capacity: int, policy: str) -> None:
    with pytest.raises(ValueError):
        BoundedQueue(capacity, policy, PipelineStats())


# --- the pipeline over a fake reader ------------------------------------------------------


def handler_for(executor: str, batch: bool) -> Callable[[Any], Any]:
    if executor == "async":
        return handlers.record_batch_async if batch else handlers.record_event_async
    return handlers.record_batch if batch else handlers.record_event


def fake_batches(n: int, size: int, keys: int = 0) -> list[Batch]:
    return [make_batch(range(i, min(i + size, n)), keys) for i in range(0, n, size)]


@pytest.mark.parametrize("batch", [False, True], ids=["events", "batches"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_fake_accounting_is_exact(
    executor: str, policy: str, batch: bool, out_dir: Path, make_pipeline: Callable[..., Pipeline]
) -> None:
    n, lost_per_batch = 3000, 7
    batches = fake_batches(n, 100)
    for b in batches:
        b.lost = lost_per_batch  # as a perf buffer reports lost samples
    reader = FakeReader()
    pipeline = make_pipeline(
        [reader],
        handler_for(executor, batch),
        executor=executor,
        policy=policy,
        batch=batch,
        queue_size=100 if policy == "block" else 50,
        workers=2,
        shutdown_timeout=WAIT,
    )
    pipeline.start()
    reader.feed(*batches)
    wait_for(lambda: pipeline.stats.received == n)
    stats = pipeline.stop()
    handlers.close_files()
    kernel = lost_per_batch * len(batches)
    assert_exact(stats, n + kernel)
    assert stats["dropped_kernel"] == kernel
    assert stats["received"] == n
    seqs = handlers.read_seqs(out_dir)
    assert len(seqs) == stats["handled"] > 0
    assert len(np.unique(seqs)) == len(seqs)  # nothing handled twice
    if policy == "block" or executor == "inline":
        assert stats["dropped_queue"] == 0
        assert np.array_equal(np.sort(seqs), np.arange(n))
    assert pipeline_threads() == []


@pytest.mark.parametrize("executor", ["thread", "async", "process"])
def test_fake_key_ordering(executor: str, out_dir: Path) -> None:
    n, keys = 600, 6
    handler: Callable[[Any], Any] | None = (
        handlers.record_key_seq if executor == "process" else None
    )
    order: dict[int, list[int]] = {k: [] for k in range(keys)}
    active: dict[int, int] = dict.fromkeys(range(keys), 0)
    lock = threading.Lock()
    overlap: list[int] = []
    concurrent = [0, 0]  # now, max

    def enter(ev: Any) -> None:
        with lock:
            active[ev.key] += 1
            concurrent[0] += 1
            concurrent[1] = max(concurrent[1], concurrent[0])
            if active[ev.key] > 1:
                overlap.append(ev.seq)

    def leave(ev: Any) -> None:
        with lock:
            active[ev.key] -= 1
            concurrent[0] -= 1
            order[ev.key].append(ev.seq)

    def on_thread(ev: Any) -> None:
        enter(ev)
        time.sleep(np.random.uniform(0, 0.0005))
        leave(ev)

    async def on_loop(ev: Any) -> None:
        enter(ev)
        await asyncio.sleep(np.random.uniform(0, 0.0005))
        leave(ev)

    if handler is None:
        handler = on_loop if executor == "async" else on_thread
    reader = FakeReader(fake_batches(n, 50, keys))
    with Pipeline(
        [reader],  # type: ignore[list-item]
        handler,
        executor=executor,
        key="key",
        workers=3,
        shutdown_timeout=WAIT,
    ) as pipeline:
        wait_for(lambda: pipeline.stats.handled == n)
    handlers.close_files()
    if executor == "process":
        files = handlers.read_seq_files(out_dir)
        for k in range(keys):
            holders = [f for f in files if np.any(f % keys == k)]
            assert len(holders) == 1, f"key {k} was handled by {len(holders)} workers"
            mine = holders[0][holders[0] % keys == k]
            assert mine.tolist() == list(range(k, n, keys))
        return
    assert overlap == []
    for k in range(keys):
        assert order[k] == list(range(k, n, keys))
    assert concurrent[1] > 1  # different keys did run at the same time


@pytest.mark.parametrize("executor", ["inline", "thread", "async"])
def test_fake_key_function(executor: str) -> None:
    n = 300
    order: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def handler(ev: Any) -> None:
        order[ev.seq % 3].append(ev.seq)

    reader = FakeReader(fake_batches(n, 40))
    with Pipeline(
        [reader],  # type: ignore[list-item]
        handler,
        executor=executor,
        key=lambda ev: ev.seq % 3,
    ) as pipeline:
        wait_for(lambda: pipeline.stats.handled == n)
    for k, seqs in order.items():
        assert seqs == list(range(k, n, 3))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fake_handler_errors_are_counted_and_logged_rate_limited(
    executor: str, caplog: pytest.LogCaptureFixture
) -> None:
    n = 2000
    reader = FakeReader(fake_batches(n, 100))
    caplog.set_level(logging.ERROR, logger="bpfloom.pipeline")
    with Pipeline(
        [reader],  # type: ignore[list-item]
        handlers.raise_every_10th,
        executor=executor,
        workers=2,
    ) as pipeline:
        wait_for(lambda: pipeline.stats.handled == n)
    stats = pipeline.stats.snapshot()
    assert stats["handler_errors"] == n // 10
    assert stats["handled"] == n
    assert_exact(stats, n)
    records = [r for r in caplog.records if r.name == "bpfloom.pipeline"]
    assert 1 <= len(records) <= 3, [r.getMessage() for r in records]
    assert "multiple of 10" in records[0].getMessage()


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fake_fatal_error_stops_the_pipeline(
    executor: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    reader = FakeReader(fake_batches(1000, 100))
    pipeline = make_pipeline(
        [reader],
        handlers.raise_every_10th,
        executor=executor,
        fatal_errors=True,
        queue_size=100,
        workers=1,
    )
    pipeline.start()
    assert pipeline.wait(WAIT)  # the first error ends the run
    reader.feed(*fake_batches(10_000, 100))  # arrives after the error: never handled
    with pytest.raises(PipelineError, match="multiple of 10"):
        pipeline.stop()
    stats = pipeline.stats.snapshot()
    assert stats["handler_errors"] >= 1
    assert stats["handled"] < 11_000
    assert stats["handled"] + stats["dropped_queue"] == stats["received"]
    with pytest.raises(PipelineError):  # stop() stays idempotent, and keeps saying so
        pipeline.stop()
    assert pipeline_threads() == []


def test_fake_fatal_error_accounts_for_what_was_left_unread(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    """After a fatal error the readers stop, but what they already had must still be
    counted (as dropped), or produced != handled + dropped."""
    n = 5000
    reader = FakeReader(fake_batches(n, 100))
    pipeline = make_pipeline(
        [reader],
        handlers.raise_every_10th,
        executor="thread",
        fatal_errors=True,
        queue_size=100,
        workers=1,
    )
    pipeline.start()
    assert pipeline.wait(WAIT)
    with pytest.raises(PipelineError):
        pipeline.stop()
    stats = pipeline.stats.snapshot()
    assert stats["handled"] < n
    assert_exact(stats, n)
    assert reader.pending == 0


def test_fake_reader_failure_ends_the_pipeline(make_pipeline: Callable[..., Pipeline]) -> None:
    class Broken(FakeReader):
        def read(self, timeout: float | None = None) -> Batch:
            raise OSError(5, "Input/output error")

    pipeline = make_pipeline([Broken()], handlers.noop)
    pipeline.start()
    assert pipeline.wait(WAIT)
    assert not pipeline.running
    pipeline.stop()
    assert isinstance(pipeline.error, OSError)
    assert pipeline_threads() == []


@pytest.mark.parametrize("executor", ["thread", "async", "process"])
def test_fake_a_failing_key_ends_the_pipeline_loudly(
    executor: str, make_pipeline: Callable[..., Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    """A key that cannot be computed is not a handler error: like a reader failure, it
    ends the pipeline, logged, with ``pipeline.error`` set (never a silent stall)."""
    caplog.set_level(logging.ERROR, logger="bpfloom.pipeline")
    key: Any = "no_such_field" if executor == "process" else (lambda ev: ev.no_such_field)
    reader = FakeReader(fake_batches(200, 50))
    pipeline = make_pipeline(
        [reader],
        handlers.noop,
        executor=executor,
        key=key,
    )
    pipeline.start()
    assert pipeline.wait(WAIT), "the pipeline kept running without handling anything"
    pipeline.stop()
    assert pipeline.error is not None
    assert any(r.name == "bpfloom.pipeline" for r in caplog.records)


def test_fake_async_batches_with_a_key_are_refused(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    """A key orders events; whole batches have no key to order by on asyncio: the
    constructor refuses the combination up front, with a reason."""
    with pytest.raises(ValueError, match="key"):
        make_pipeline(
            [FakeReader(fake_batches(300, 50, 3))],
            handlers.noop,
            executor="async",
            batch=True,
            key="key",
        )


# --- shutdown -----------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["thread", "async"])
def test_fake_stop_counts_handlers_still_running_at_the_deadline(
    executor: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    """A handler that outlives ``shutdown_timeout``: stop() returns in time, and the
    stats it returns already add up (the late handler is not counted afterwards)."""
    release = threading.Event()
    n = 50

    def stuck(ev: Any) -> None:
        release.wait(WAIT)

    async def stuck_async(ev: Any) -> None:
        while not release.is_set():
            await asyncio.sleep(0.01)

    reader = FakeReader([make_batch(range(n))])
    pipeline = make_pipeline(
        [reader],
        stuck_async if executor == "async" else stuck,
        executor=executor,
        workers=1,
        max_inflight=1,
        shutdown_timeout=0.3,
    )
    pipeline.start()
    wait_for(lambda: pipeline.stats.inflight == 1)
    t0 = time.monotonic()
    stats = pipeline.stop()
    took = time.monotonic() - t0
    release.set()
    time.sleep(0.2)  # the stuck handler returns now
    assert took < 0.3 + 2.0
    assert_exact(stats, n)
    assert pipeline.stats.snapshot()["handled"] == stats["handled"]  # final is final
    assert_exact(pipeline.stats.snapshot(), n)


def test_fake_stop_accounts_for_everything_the_reader_still_drains(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    """The ``block`` policy with a stuck handler: the reader waits on a full queue
    when stop() comes, and drains slowly afterwards. stop() must return stats that
    include everything the reader drained (it may not outlive stop())."""
    release = threading.Event()
    n = 2000

    def stuck(ev: Any) -> None:
        release.wait(WAIT)

    reader = FakeReader(fake_batches(n, 100), poll_delay=0.02)
    pipeline = make_pipeline(
        [reader],
        stuck,
        executor="thread",
        workers=1,
        queue_size=10,
        shutdown_timeout=0.3,
    )
    pipeline.start()
    try:
        # The reader is blocked on the full queue (10 queued, 1 in the handler).
        wait_for(lambda: pipeline.stats.inflight == 1 and pipeline.stats.received >= 100)
        time.sleep(0.1)
        stats = pipeline.stop()
        readers_left = [t.name for t in pipeline_threads() if t.name.startswith("bpfloom-read")]
    finally:
        release.set()
        wait_for(lambda: pipeline_threads() == [])  # leave nothing to the next test
    assert readers_left == []
    assert_exact(stats, n)


def test_fake_stop_gives_up_on_a_stuck_worker_process(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    n = 400
    reader = FakeReader(fake_batches(n, 20))
    pipeline = make_pipeline(
        [reader],
        handlers.stuck,
        executor="process",
        workers=1,
        shutdown_timeout=0.5,
    )
    pipeline.start()
    try:
        wait_for(lambda: pipeline.stats.received == n and pipeline.stats.inflight > 0)
        t0 = time.monotonic()
        stats = pipeline.stop()
        assert time.monotonic() - t0 < 0.5 + 5.0
        assert_exact(stats, n)
        assert stats["handled"] == 0
        wait_for(lambda: pipeline_threads() == [], timeout=3.0)
    finally:
        _unblock_feeder(pipeline)


def _unblock_feeder(pipeline: Pipeline) -> None:
    """Safety net for the failure this test looks for: a feeder thread blocked for
    good on the full inbox of a terminated worker keeps the whole test session from
    exiting (it is not a daemon). Make room so that it ends (it may then fail on
    the closed inbox, which pytest reports: this test fails anyway then)."""
    feeder = getattr(pipeline._runner, "feeder", None)
    if feeder is None or not feeder.is_alive():
        return
    for _ in range(50):
        for box in pipeline._runner.inboxes:  # type: ignore[union-attr]
            with contextlib.suppress(ValueError):
                box._sem.release()
        feeder.join(0.1)
        if not feeder.is_alive():
            return


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fake_stop_is_idempotent_and_not_restartable(
    executor: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    pipeline = make_pipeline([FakeReader()], handlers.noop, executor=executor)
    pipeline.start()
    first = pipeline.stop()
    assert pipeline.stop() == first
    with pytest.raises(BpfloomError):
        pipeline.start()
    assert pipeline_threads() == []
    gc.collect()  # a refused start() must not leave anything to finalize (event loops)


def test_fake_run_for_a_duration(make_pipeline: Callable[..., Pipeline]) -> None:
    reader = FakeReader(fake_batches(500, 50))
    pipeline = make_pipeline([reader], handlers.noop, executor="thread")
    t0 = time.monotonic()
    stats = pipeline.run(duration=0.5)
    assert 0.45 <= time.monotonic() - t0 < 5
    assert_exact(stats, 500)
    assert stats["handled"] == 500


def test_stop_signals_first_sets_stop_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.stop.wait(WAIT)
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executor": "fork"}, "executor"),
        ({"policy": "drop_random"}, "policy"),
        ({"executor": "process", "key": lambda ev: ev.key}, "field name"),
        ({"workers": 0}, "at least 1"),
        ({"queue_size": 0}, "at least 1"),
        ({"max_inflight": 0}, "at least 1"),
    ],
)
def test_pipeline_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pipeline([FakeReader()], handlers.noop, **kwargs)  # type: ignore[list-item]


def test_pipeline_needs_a_reader() -> None:
    with pytest.raises(ValueError):
        Pipeline([], handlers.noop)


# --- stats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fake_latencies(executor: str) -> None:
    n = 1000
    ts = time.monotonic_ns() - 5_000_000  # the events were "produced" 5 ms ago
    reader = FakeReader([make_batch(range(i, i + 100), ts=ts) for i in range(0, n, 100)])
    with Pipeline([reader], handlers.noop, executor=executor) as pipeline:  # type: ignore[list-item]
        wait_for(lambda: pipeline.stats.handled == n)
    stats = pipeline.stats.snapshot()
    for name in ("handler_latency", "end_to_end_latency"):
        summary = stats[name]
        assert summary is not None, name
        assert set(summary) == {"samples", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"}
        assert summary["samples"] > 0
        assert 0 <= summary["p50_us"] <= summary["p90_us"] <= summary["p99_us"]
        assert summary["p99_us"] <= summary["p99_9_us"] <= summary["max_us"]
    assert stats["end_to_end_latency"]["p50_us"] >= 5000


def test_no_end_to_end_latency_without_a_timestamp_field() -> None:
    reader = FakeReader(fake_batches(100, 50))
    with Pipeline(
        [reader],  # type: ignore[list-item]
        handlers.noop,
        timestamp_field="",  # "" turns it off
    ) as pipeline:
        wait_for(lambda: pipeline.stats.handled == 100)
    assert pipeline.stats.snapshot()["end_to_end_latency"] is None


# --- asyncio --------------------------------------------------------------------------------


def test_fake_async_with_and_async_handler() -> None:
    n = 400
    seen: list[int] = []

    async def handler(ev: Any) -> None:
        await asyncio.sleep(0.001)
        seen.append(ev.seq)

    async def main() -> dict[str, Any]:
        reader = FakeReader(fake_batches(n, 50))
        ticks = 0
        async with Pipeline(
            [reader],  # type: ignore[list-item]
            handler,
            executor="async",
            max_inflight=16,
        ) as pipeline:
            while pipeline.stats.handled < n:
                ticks += 1  # the loop stays free for other work
                await asyncio.sleep(0.005)
        assert ticks > 0
        assert not pipeline.running
        return pipeline.stats.snapshot()

    stats = asyncio.run(main())
    assert sorted(seen) == list(range(n))
    assert_exact(stats, n)
    assert 1 < stats["inflight_max"] <= 16
    assert pipeline_threads() == []


def test_fake_async_for_events() -> None:
    n = 500

    async def main() -> tuple[list[int], Pipeline]:
        reader = FakeReader(fake_batches(n + 300, 100))
        pipeline = Pipeline([reader], executor="async")  # type: ignore[list-item]
        got: list[int] = []
        async with contextlib.aclosing(pipeline.events()) as events:  # type: ignore[type-var]
            async for ev in events:
                got.append(ev.seq)
                if len(got) == n:
                    break
        assert not pipeline.running
        return got, pipeline

    got, pipeline = asyncio.run(main())
    assert got == list(range(n))
    stats = pipeline.stats.snapshot()
    assert stats["received"] >= n
    assert_exact(stats, stats["received"])
    assert pipeline_threads() == []


def test_fake_events_refuses_a_handler() -> None:
    async def main() -> None:
        pipeline = Pipeline([FakeReader()], handlers.noop, executor="async")  # type: ignore[list-item]
        with pytest.raises(BpfloomError):
            async for _ in pipeline.events():
                pass

    asyncio.run(main())


def test_astart_needs_the_async_executor() -> None:
    async def main() -> None:
        pipeline = Pipeline([FakeReader()], handlers.noop, executor="thread")  # type: ignore[list-item]
        with pytest.raises(BpfloomError):
            await pipeline.astart()

    asyncio.run(main())


def test_fake_events_ends_when_stopped_from_elsewhere() -> None:
    """A slow consumer with a full inbox, and another task stops the pipeline: the
    ``async for`` still ends (the end marker waits for room), and it all adds up."""
    n = 200

    async def main() -> tuple[int, dict[str, Any]]:
        reader = FakeReader(fake_batches(n, 20))
        pipeline = Pipeline([reader], executor="async", max_inflight=2)  # type: ignore[list-item]

        async def stop_soon() -> None:
            while pipeline.stats.received < n:
                await asyncio.sleep(0.005)
            await pipeline.astop()

        stopper = asyncio.ensure_future(stop_soon())
        got = 0
        async with contextlib.aclosing(pipeline.events()) as events:  # type: ignore[type-var]
            async for _ in events:
                got += 1
                await asyncio.sleep(0.002)
        await stopper
        return got, pipeline.stats.snapshot()

    got, stats = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert_exact(stats, n)
    assert got <= stats["handled"]
