"""Events move through the pipeline in chunks (slices of a batch, lists of one key
shard), not one queue operation each; what chunking could break, checked without a
kernel: the queue's policies decide per event exactly as if each event were put on its
own (an equivalence test over random streams against ``put_many``, the event-by-event
path), a chunk half-handled when the shutdown deadline passes, a key's order across
chunks and batches, a handler error in the middle of a chunk counted once, policy drops
counted per event in a running pipeline, and a source's ``settle`` told of each
event handled, whatever chunk carried it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfloom import Pipeline
from bpfloom._queue import CLOSED, POLICIES, BoundedQueue
from bpfloom.stats import PipelineStats
from conftest import assert_exact, pipeline_threads
from test_pipeline_fake import WAIT, FakeReader, fake_batches, make_batch, wait_for

# --- the queue: chunks against events one by one ---------------------------------------

# One step of a random stream: ("put", n) n new events in one chunk; ("get", k) a
# consumer takes k events; ("item", w) an item of weight w (a batch for a batch
# handler) put whole; ("close",).
STEP = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 40)),
    st.tuples(st.just("get"), st.integers(1, 30)),
    st.tuples(st.just("item"), st.integers(1, 12)),
    st.tuples(st.just("close")),
)


def _drain(q: BoundedQueue, limit: int) -> list[Any]:
    """Up to ``limit`` events from ``q``: chunks are flattened, items kept whole."""
    out: list[Any] = []
    while len(out) < limit:
        item = q.get_chunk(limit - len(out), timeout=0)
        if item is None or item is CLOSED:
            break
        out.extend(item if isinstance(item, list) else [item])
    return out


def _take(q: BoundedQueue, limit: int) -> list[Any]:
    """The same from the reference queue, whose events are entries of their own."""
    out: list[Any] = []
    while len(out) < limit:
        item = q.get(timeout=0)
        if item is None or item is CLOSED:
            break
        out.append(item)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(POLICIES),
    capacity=st.integers(1, 25),
    sample_every=st.integers(1, 5),
    steps=st.lists(STEP, max_size=40),
)
def test_chunks_meet_every_policy_exactly_as_events_one_by_one(
    policy: str, capacity: int, sample_every: int, steps: list[tuple[Any, ...]]
) -> None:
    """``put_events`` keeps, drops and orders every event as ``put_many`` does event by
    event, for every policy (``block`` with its stop already set: it gives up instead
    of waiting), with items of several events in the same queue, with consumers that
    take events in between, and after ``close``."""
    stats_chunks, stats_events = PipelineStats(), PipelineStats()
    chunks = BoundedQueue(capacity, policy, stats_chunks, sample_every=sample_every)
    events = BoundedQueue(capacity, policy, stats_events, sample_every=sample_every)
    stop = threading.Event()
    stop.set()
    seq = 0
    for step in steps:
        if step[0] == "put":
            new = list(range(seq, seq + step[1]))
            seq += step[1]
            chunks.put_events(new, stop=stop)
            events.put_many(new, stop=stop)
        elif step[0] == "item":
            name = f"item{seq}"
            seq += 1
            chunks.put_many([name], weight=step[1], stop=stop)
            events.put_many([name], weight=step[1], stop=stop)
        elif step[0] == "get":
            assert _drain(chunks, step[1]) == _take(events, step[1])
        else:
            chunks.close()
            events.close()
        assert chunks.depth == events.depth
        assert stats_chunks.dropped_queue == stats_events.dropped_queue
        assert stats_chunks.queue_depth_max == stats_events.queue_depth_max
    rest = 10 * (seq + 1)
    assert _drain(chunks, rest) == _take(events, rest)


def test_get_chunk_takes_a_share_of_what_is_queued() -> None:
    q = BoundedQueue(1000, "block", PipelineStats())
    q.put_events(list(range(100)))
    assert q.get_chunk(256, share=4) == list(range(25))  # a quarter of 100
    assert q.get_chunk(10, share=1) == list(range(25, 35))  # the limit
    assert q.get_chunk(256, share=100) == [35]  # at least one
    assert q.depth == 64
    assert q.get() == list(range(36, 100))  # get() takes an entry whole


def test_put_events_takes_a_batch_and_queues_slices_of_it() -> None:
    """A Batch is a chunk: the queue cuts it without decoding or copying it."""
    q = BoundedQueue(30, "drop_oldest", PipelineStats())
    batch = make_batch(range(50))
    q.put_events(batch)
    first, rest = q.get_chunk(10), q.get()
    assert [ev.seq for ev in first] == list(range(20, 30))
    assert [ev.seq for ev in rest] == list(range(30, 50))
    assert np.shares_memory(first.records, batch.records)
    assert np.shares_memory(rest.records, batch.records)


# --- the pipeline: what chunking could break -------------------------------------------


@pytest.mark.parametrize("executor", ["thread", "async"])
def test_a_chunk_half_handled_at_the_deadline(
    executor: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    """A worker holds a chunk when its handler gets stuck on the chunk's 4th event
    (on asyncio a synchronous handler, which holds up the whole loop): at the deadline
    stop() returns stats that add up, the rest of the chunk is never handled (not even
    once the stuck handler returns), and the final stats stay final."""
    n = 200
    release = threading.Event()
    calls: list[int] = []

    def stuck_on_3(ev: Any) -> None:
        calls.append(ev.seq)
        if ev.seq == 3:
            release.wait(WAIT)

    reader = FakeReader([make_batch(range(n))])
    pipeline = make_pipeline(
        [reader],
        stuck_on_3,
        executor=executor,
        workers=1,
        shutdown_timeout=0.3,
    )
    pipeline.start()
    wait_for(lambda: 3 in calls)
    stats = pipeline.stop()
    release.set()
    wait_for(lambda: pipeline_threads() == [])  # the stuck handler returns now
    assert calls == [0, 1, 2, 3]
    assert stats["handled"] == 3
    assert_exact(stats, n)
    assert pipeline.stats.snapshot()["handled"] == 3
    assert_exact(pipeline.stats.snapshot(), n)


@pytest.mark.parametrize("executor", ["thread", "async"])
@pytest.mark.parametrize("max_inflight", [3, 1024])
def test_a_keys_order_holds_across_chunks_and_batches(executor: str, max_inflight: int) -> None:
    """Many small batches, few keys, handlers of uneven length: each key's events are
    handled one at a time in arrival order, though they reach the workers in chunks
    cut from many batches (and, on asyncio, wait in their key's chain)."""
    n, keys = 6000, 5
    order: dict[int, list[int]] = {k: [] for k in range(keys)}
    busy: set[int] = set()
    overlap: list[int] = []
    lock = threading.Lock()

    def enter(ev: Any) -> None:
        with lock:
            if ev.key in busy:
                overlap.append(ev.seq)
            busy.add(ev.key)

    def leave(ev: Any) -> None:
        with lock:
            busy.discard(ev.key)
            order[ev.key].append(ev.seq)

    def on_thread(ev: Any) -> None:
        enter(ev)
        if ev.seq % 97 == 0:
            time.sleep(0.001)
        leave(ev)

    async def on_loop(ev: Any) -> None:
        enter(ev)
        if ev.seq % 7 == 0:
            await asyncio.sleep(0)
        leave(ev)

    reader = FakeReader(fake_batches(n, 37, keys))
    with Pipeline(
        [reader],  # type: ignore[list-item]
        on_loop if executor == "async" else on_thread,
        executor=executor,
        key="key",
        workers=3,
        max_inflight=max_inflight,
        queue_size=500,
        shutdown_timeout=WAIT,
    ) as pipeline:
        wait_for(lambda: pipeline.stats.handled == n)
    assert overlap == []
    for k in range(keys):
        assert order[k] == list(range(k, n, keys))
    assert_exact(pipeline.stats.snapshot(), n)


@pytest.mark.parametrize("executor", ["inline", "thread", "async"])
def test_an_error_in_the_middle_of_a_chunk_is_counted_once(executor: str) -> None:
    """The handler raises on one event in the middle of a 1000-event batch: one error,
    every event handled once (the ones after it too), nothing dropped."""
    n = 1000
    seen: list[int] = []

    def fails_on_500(ev: Any) -> None:
        seen.append(ev.seq)
        if ev.seq == 500:
            raise ValueError("event 500")

    reader = FakeReader([make_batch(range(n))])
    with Pipeline(
        [reader],  # type: ignore[list-item]
        fails_on_500,
        executor=executor,
        workers=2,
    ) as pipeline:
        wait_for(lambda: pipeline.stats.handled == n)
    stats = pipeline.stats.snapshot()
    assert stats["handler_errors"] == 1
    assert stats["handled"] == n
    assert stats["dropped_queue"] == 0
    assert sorted(seen) == list(range(n))


def _queued(pipeline: Pipeline) -> int:
    runner: Any = pipeline._runner
    queues = runner.queues if hasattr(runner, "queues") else [runner.queue]
    return sum(q.depth for q in queues)


def _reference_kept(policy: str, capacity: int, sample_every: int, incoming: int) -> list[int]:
    """The seqs a queue of ``capacity`` keeps of ``incoming`` events put one by one."""
    q = BoundedQueue(capacity, policy, PipelineStats(), sample_every=sample_every)
    q.put_many(range(incoming))
    return _take(q, incoming)


@pytest.mark.parametrize("executor", ["thread", "async"])
@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "sample"])
def test_policy_drops_are_counted_per_event(
    executor: str, policy: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    """With the only worker stuck on a first batch, a second batch of 95 events meets a
    queue of 10: exactly the events the policy keeps one by one are handled (the same
    seqs), and every other one is counted as dropped, one by one."""
    queue_size, first, second, sample_every = 10, 5, 95, 4
    release = threading.Event()
    seen: list[int] = []

    def gate(ev: Any) -> None:
        if ev.seq == 0:
            release.wait(WAIT)
        seen.append(ev.seq)

    async def gate_async(ev: Any) -> None:
        while ev.seq == 0 and not release.is_set():
            await asyncio.sleep(0.005)
        seen.append(ev.seq)

    reader = FakeReader([make_batch(range(first))])
    pipeline = make_pipeline(
        [reader],
        gate_async if executor == "async" else gate,
        executor=executor,
        policy=policy,
        queue_size=queue_size,
        sample_every=sample_every,
        workers=1,
        shutdown_timeout=WAIT,
    )
    pipeline.start()
    # The worker took the whole first batch and is stuck on its first event: the
    # second batch meets an empty queue, which it overflows in one put.
    wait_for(lambda: pipeline.stats.inflight >= 1 and pipeline.stats.received == first)
    wait_for(lambda: _queued(pipeline) == 0)
    kept = [first + s for s in _reference_kept(policy, queue_size, sample_every, second)]
    reader.feed(make_batch(range(first, first + second)))
    wait_for(lambda: pipeline.stats.dropped_queue == second - len(kept))  # put and counted
    release.set()
    stats = pipeline.stop()
    assert sorted(seen) == list(range(first)) + kept
    assert stats["dropped_queue"] == second - len(kept)
    assert stats["handled"] == first + len(kept)
    assert_exact(stats, first + second)
    assert pipeline_threads() == []


def test_async_workers_are_started_on_demand_and_kept() -> None:
    """A synchronous handler runs on one worker coroutine; a handler that awaits gets
    as many as ``max_inflight`` allows, and they are reused, not one task per event."""
    n = 3000

    async def main(wait: bool, max_inflight: int) -> tuple[int, int]:
        reader = FakeReader(fake_batches(n, 100))
        seen = [0]  # the most workers seen by a handler
        pipeline = Pipeline(
            [reader],  # type: ignore[list-item]
            executor="async",
            max_inflight=max_inflight,
        )

        def sync(ev: Any) -> None:
            seen[0] = max(seen[0], pipeline._runner.workers)  # type: ignore[union-attr]

        async def waits(ev: Any) -> None:
            sync(ev)
            await asyncio.sleep(0.002)

        pipeline.handler = waits if wait else sync
        async with pipeline:
            while pipeline.stats.handled < n:
                await asyncio.sleep(0.005)
        return seen[0], pipeline.stats.snapshot()["inflight_max"]

    workers, inflight = asyncio.run(main(False, 64))
    assert workers == 1 and inflight == 1
    workers, inflight = asyncio.run(main(True, 16))
    assert 1 < workers <= 16 and 1 < inflight <= 16


# --- settle: a source told of each event handled, whatever chunk carried it -------------


class SettlingReader(FakeReader):
    """A ``FakeReader`` that, like ``bpfloom.collect``'s source, is told (``settle``) of
    each batch or event a handler finished; it records the events' sequence numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.settled: list[int] = []
        self._settled_lock = threading.Lock()

    def settle(self, item: Any) -> None:
        seqs = [ev.seq for ev in item] if hasattr(item, "records") else [item.seq]
        with self._settled_lock:
            self.settled.extend(seqs)


@pytest.mark.parametrize("key", [None, "key"], ids=["no-key", "key"])
@pytest.mark.parametrize(
    ("executor", "coroutine"),
    [("inline", False), ("thread", False), ("async", False), ("async", True)],
    ids=["inline", "thread", "async", "async-coroutine"],
)
def test_every_event_handled_is_settled_once_in_chunks(
    executor: str, key: str | None, coroutine: bool, make_pipeline: Callable[..., Pipeline]
) -> None:
    """Batches of 500 cut into chunks of many sizes (a small queue, two workers): each
    event is settled exactly once, after its handler finished — one that raised an
    ``Exception`` included, as ``call`` does."""
    n = 4000
    reader = SettlingReader()
    handled: list[int] = []
    lock = threading.Lock()

    def handle(ev: Any) -> None:
        with lock:
            handled.append(ev.seq)
        if ev.seq % 7 == 0:
            raise ValueError("every seventh")

    async def ahandle(ev: Any) -> None:
        await asyncio.sleep(0)
        handle(ev)

    pipeline = make_pipeline(
        [reader],
        ahandle if coroutine else handle,
        executor=executor,
        workers=2,
        queue_size=300,
        max_inflight=64,
        key=key,
    )
    pipeline.start()
    reader.feed(*fake_batches(n, 500, keys=5 if key else 0))
    wait_for(lambda: pipeline.stats.handled == n, WAIT)
    stats = pipeline.stop()
    assert_exact(stats, n)
    assert stats["handler_errors"] == len(range(0, n, 7))
    assert sorted(handled) == list(range(n))
    assert sorted(reader.settled) == list(range(n))


def test_batches_are_settled_whole(make_pipeline: Callable[..., Pipeline]) -> None:
    """``batch=True``: each batch is settled once, whole, after its handler."""
    reader = SettlingReader()
    pipeline = make_pipeline([reader], lambda b: None, executor="thread", workers=2, batch=True)
    pipeline.start()
    reader.feed(*fake_batches(1000, 100))
    wait_for(lambda: pipeline.stats.handled == 1000, WAIT)
    pipeline.stop()
    assert sorted(reader.settled) == list(range(1000))


def test_nothing_is_settled_after_a_halt(make_pipeline: Callable[..., Pipeline]) -> None:
    """A handler's ``BaseException`` halts the pipeline: that event and the ones after
    it are not settled (a fleet source leaves them to be delivered again)."""
    reader = SettlingReader()

    def handle(ev: Any) -> None:
        if ev.seq == 250:
            raise KeyboardInterrupt

    pipeline = make_pipeline([reader], handle, executor="thread", workers=1)
    pipeline.start()
    reader.feed(*fake_batches(1000, 500))
    assert pipeline.wait(WAIT)
    with pytest.raises(KeyboardInterrupt):
        pipeline.stop()
    assert sorted(reader.settled) == list(range(250))
