"""The concurrent event pipeline against real ring buffers: events produced inside
the kernel in known numbers (``BPF_PROG_TEST_RUN`` of a ``SEC("syscall")`` producer),
so the accounting ``produced == handled + dropped_kernel + dropped_queue`` is checked
exactly for every executor x policy, per event and in batches; every seq handled
once; per-key ordering under concurrency; handler errors; the asyncio API; stats;
shutdown under load by signal (in a subprocess); and ``bpfloom run --stats``.

Producers: bench/bpf/drain.bpf.o (256 MiB ring ``rb``; ``struct drain_event`` with
``ts``, ``seq`` = 0..count-1) and tests/bpf/pipeline.bpf.o (64 KiB ring, so it
overflows and the kernel drops, counted; ``ts_ns``, ``seq``, ``key``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bpfloom
import pipeline_handlers as handlers
from bpfloom import BpfObject, Pipeline, PipelineError, RingBuffer
from bpfloom.pipeline import EXECUTORS, POLICIES
from conftest import (
    ROOT,
    assert_exact,
    bpf_object,
    kernel_link_ids,
    kernel_map_ids,
    kernel_prog_ids,
    pipeline_threads,
)

pytestmark = pytest.mark.kernel

DRAIN = ROOT / "bench" / "bpf" / "drain.bpf.o"
SMALL = bpf_object("pipeline")  # tests/bpf/pipeline.bpf.c: 64 KiB ring
DRAIN_RECORD = 32 + 8  # struct drain_event and its ring header
BPF_RB_NO_WAKEUP = 1
WAIT = 30.0  # seconds any wait may take, far above what it needs
LATENCY_KEYS = {"samples", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"}
STATS_KEYS = {
    "produced",
    "received",
    "handled",
    "handler_errors",
    "dropped_kernel",
    "dropped_queue",
    "queue_depth_max",
    "inflight_max",
    "handler_latency",
    "end_to_end_latency",
}

# Skipped on a developer machine without the object; in CI (BPFLOOM_REQUIRE_KERNEL) it runs
# and fails loudly instead.
needs_small = pytest.mark.skipif(
    not SMALL.exists() and not os.environ.get("BPFLOOM_REQUIRE_KERNEL"),
    reason="tests/bpf/pipeline.bpf.o is not built (make bpf)",
)


# --- helpers ------------------------------------------------------------------------------


def produce(obj: BpfObject, count: int, flags: int = BPF_RB_NO_WAKEUP) -> None:
    """drain.bpf.o: ``count`` records, seq 0..count-1, into its ring ``rb``."""
    assert obj.program("produce").test_run(struct.pack("<QQ", count, flags)) == 0


def produce_small(
    obj: BpfObject, count: int, *, keys: int = 0, first_seq: int = 0, flags: int = 0
) -> None:
    """pipeline.bpf.o: ``count`` records, seq first_seq.., key = seq % keys."""
    args = struct.pack("<QQQQ", count, flags, keys, first_seq)
    assert obj.program("produce").test_run(args) == 0


def wait_for(cond: Callable[[], bool], timeout: float = WAIT, what: str = "the pipeline") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def handler_for(executor: str, batch: bool) -> Callable[[Any], Any]:
    if executor == "async":
        return handlers.record_batch_async if batch else handlers.record_event_async
    return handlers.record_batch if batch else handlers.record_event


def bpf_ids_of(pid: int | str = "self") -> dict[str, set[int]]:
    """Ids of the BPF programs, maps and links a process holds file descriptors of."""
    ids: dict[str, set[int]] = {"prog_id": set(), "map_id": set(), "link_id": set()}
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue  # closed meanwhile
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in ids:
                ids[name].add(int(value))
    return ids


def assert_released(ids: dict[str, set[int]], timeout: float = 10.0) -> None:
    """None of ``ids`` is left in the kernel (link and map teardown may lag a little)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {
            "prog_id": ids["prog_id"] & kernel_prog_ids(),
            "map_id": ids["map_id"] & kernel_map_ids(),
            "link_id": ids["link_id"] & kernel_link_ids(),
        }
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left in the kernel: {left}")
        time.sleep(0.1)


@pytest.fixture
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory pipeline_handlers record handled seqs into, from any thread or
    worker process (workers inherit the environment)."""
    out = tmp_path / "handled"
    out.mkdir()
    monkeypatch.setenv(handlers.OUT, str(out))
    monkeypatch.setenv(handlers.SLOW_EVERY, "0")
    yield out
    handlers.close_files()


def drain_reader(obj: BpfObject, records_per_batch: int = 256) -> RingBuffer:
    """drain.bpf.o's reader, with small batches: many batches reach the queue."""
    rb = obj.ring_buffer("rb")
    rb.batch_bytes = DRAIN_RECORD * records_per_batch
    return rb


# --- the accounting invariant: every executor x policy, events and batches --------------


@pytest.mark.parametrize("batch", [False, True], ids=["events", "batches"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_accounting_is_exact(
    executor: str,
    policy: str,
    batch: bool,
    out_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_pipeline: Callable[..., Pipeline],
) -> None:
    """20 000 events from the kernel; a slowish handler (1 ms every 50 events, or per
    batch) behind a small queue. The drop policies drop in user space, ``block`` does
    not (the 256 MiB ring holds the backlog); whatever happens, it adds up exactly,
    and no event is handled twice."""
    n = 20_000
    monkeypatch.setenv(handlers.SLOW_EVERY, "1" if batch else "50")
    monkeypatch.setenv(handlers.SLOW_SECONDS, "0.001")
    with bpfloom.load(DRAIN) as obj:
        pipeline = make_pipeline(
            drain_reader(obj),
            handler_for(executor, batch),
            executor=executor,
            policy=policy,
            batch=batch,
            queue_size=1024 if policy == "block" else 64,
            workers=2,
            shutdown_timeout=WAIT,
        )
        pipeline.start()
        produce(obj, n)
        wait_for(lambda: pipeline.stats.received == n)
        stats = pipeline.stop()
    handlers.close_files()
    assert pipeline_threads() == []  # the pipeline owns its workers: none outlive it
    assert_exact(stats, n)
    assert stats["dropped_kernel"] == 0  # 256 MiB hold them all
    assert stats["handled"] > 0
    assert stats["handler_errors"] == 0
    seqs = handlers.read_seqs(out_dir)
    assert len(seqs) == stats["handled"]
    assert len(np.unique(seqs)) == len(seqs), "an event was handled twice"
    if executor == "inline":
        # No queue: the handler runs in the reader thread, so the backpressure goes
        # straight to the ring whatever the policy (nothing to drop in user space).
        assert stats["dropped_queue"] == 0
    elif policy == "block":
        assert stats["dropped_queue"] == 0
    else:
        assert stats["dropped_queue"] > 0
    if stats["dropped_queue"] == 0:
        # Nothing dropped anywhere: every seq was handled, exactly once.
        assert np.array_equal(np.sort(seqs), np.arange(n, dtype=np.uint64))


@needs_small
@pytest.mark.parametrize("batch", [False, True], ids=["events", "batches"])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_block_lets_the_small_ring_overflow_and_counts_it(
    executor: str,
    batch: bool,
    out_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_pipeline: Callable[..., Pipeline],
) -> None:
    """``block`` with a slow handler and a small queue: the reader waits, the 64 KiB
    ring fills, and the kernel drops — counted in bpfloom_drops, still exact."""
    runs, per_run = 40, 1000
    n = runs * per_run
    monkeypatch.setenv(handlers.SLOW_EVERY, "1" if batch else "10")
    monkeypatch.setenv(handlers.SLOW_SECONDS, "0.001")
    with bpfloom.load(SMALL) as obj:
        rb = obj.ring_buffer("rb")
        pipeline = make_pipeline(
            rb,
            handler_for(executor, batch),
            executor=executor,
            policy="block",
            batch=batch,
            queue_size=64,
            workers=2,
            shutdown_timeout=WAIT,
        )
        pipeline.start()
        for i in range(runs):
            produce_small(obj, per_run, first_seq=i * per_run, flags=BPF_RB_NO_WAKEUP)
        wait_for(lambda: pipeline.stats.received + obj.dropped_kernel() == n)
        stats = pipeline.stop()
    handlers.close_files()
    assert_exact(stats, n)
    assert stats["dropped_kernel"] > 0
    assert stats["dropped_queue"] == 0
    assert stats["handled"] == stats["received"] > 0
    seqs = handlers.read_seqs(out_dir)
    assert len(seqs) == stats["handled"]
    assert len(np.unique(seqs)) == len(seqs)
    assert seqs.max() < n


@needs_small
@pytest.mark.parametrize("batch", [False, True], ids=["events", "batches"])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_every_seq_handled_once_across_ring_wraparound(
    executor: str, batch: bool, out_dir: Path, make_pipeline: Callable[..., Pipeline]
) -> None:
    """30 runs of 1500 records through the 64 KiB ring (it wraps ~20 times), each run
    produced once the previous one was received: nothing is lost, and every seq is
    handled exactly once, by whichever thread or process."""
    runs, per_run = 30, 1500
    n = runs * per_run
    with bpfloom.load(SMALL) as obj:
        pipeline = make_pipeline(
            obj.ring_buffer("rb"),
            handler_for(executor, batch),
            executor=executor,
            batch=batch,
            workers=2,
            shutdown_timeout=WAIT,
        )
        pipeline.start()
        for i in range(runs):
            produce_small(obj, per_run, first_seq=i * per_run)
            want = (i + 1) * per_run
            wait_for(lambda: pipeline.stats.received == want)  # noqa: B023
        stats = pipeline.stop()
        assert obj.dropped_kernel() == 0
    handlers.close_files()
    assert_exact(stats, n)
    assert stats["handled"] == n
    seqs = handlers.read_seqs(out_dir)
    assert np.array_equal(np.sort(seqs), np.arange(n, dtype=np.uint64))


# --- ordering by key ----------------------------------------------------------------------


class KeyTracker:
    """Records, per key, the order of handled seqs and whether two handlers of one
    key ever overlapped; and the highest number of handlers running at once."""

    def __init__(self, keys: int) -> None:
        self.lock = threading.Lock()
        self.active = dict.fromkeys(range(keys), 0)
        self.order: dict[int, list[int]] = {k: [] for k in range(keys)}
        self.overlaps: list[tuple[int, int]] = []
        self.running = 0
        self.running_max = 0

    def enter(self, ev: Any) -> None:
        with self.lock:
            self.active[ev.key] += 1
            if self.active[ev.key] > 1:
                self.overlaps.append((ev.key, ev.seq))
            self.running += 1
            self.running_max = max(self.running_max, self.running)

    def leave(self, ev: Any) -> None:
        with self.lock:
            self.order[ev.key].append(ev.seq)
            self.active[ev.key] -= 1
            self.running -= 1


@needs_small
@pytest.mark.parametrize("executor", ["thread", "async"])
def test_key_ordering_under_concurrency(executor: str) -> None:
    n, keys = 2000, 8
    tracker = KeyTracker(keys)

    def on_thread(ev: Any) -> None:
        tracker.enter(ev)
        time.sleep(random.uniform(0, 0.001))
        tracker.leave(ev)

    async def on_loop(ev: Any) -> None:
        tracker.enter(ev)
        await asyncio.sleep(random.uniform(0, 0.001))
        tracker.leave(ev)

    with bpfloom.load(SMALL) as obj:
        with Pipeline(
            obj.ring_buffer("rb"),
            on_loop if executor == "async" else on_thread,
            executor=executor,
            key="key",
            workers=4,
            shutdown_timeout=WAIT,
        ) as pipeline:
            produce_small(obj, n, keys=keys)  # 2000 records fit the 64 KiB ring
            wait_for(lambda: pipeline.stats.handled == n)
        stats = pipeline.stats.snapshot()
    assert_exact(stats, n)
    assert tracker.overlaps == [], "two handlers of one key ran at the same time"
    for k in range(keys):
        assert tracker.order[k] == list(range(k, n, keys)), f"key {k} out of order"
    assert tracker.running_max > 1, "different keys never ran concurrently"


@needs_small
def test_key_ordering_across_worker_processes(out_dir: Path) -> None:
    """The process executor shards by key: each key goes to one worker, which
    handles its events in arrival order (each worker records into its own file)."""
    n, keys = 2000, 8
    with bpfloom.load(SMALL) as obj:
        with Pipeline(
            obj.ring_buffer("rb"),
            handlers.record_key_seq,
            executor="process",
            key="key",
            workers=2,
            shutdown_timeout=WAIT,
        ) as pipeline:
            produce_small(obj, n, keys=keys)
            wait_for(lambda: pipeline.stats.handled == n)
        stats = pipeline.stats.snapshot()
    handlers.close_files()
    assert_exact(stats, n)
    files = handlers.read_seq_files(out_dir)
    assert len(files) == 2  # both workers took part
    for k in range(keys):
        holders = [f for f in files if np.any(f % keys == k)]
        assert len(holders) == 1, f"key {k} was handled by {len(holders)} workers"
        mine = holders[0][holders[0] % keys == k]
        assert mine.tolist() == list(range(k, n, keys)), f"key {k} out of order"


# --- handler errors -------------------------------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
def test_handler_errors_are_counted_and_logged_rate_limited(
    executor: str, caplog: pytest.LogCaptureFixture
) -> None:
    n = 10_000
    caplog.set_level(logging.ERROR, logger="bpfloom.pipeline")
    with bpfloom.load(DRAIN) as obj:
        with Pipeline(
            drain_reader(obj, 1000),
            handlers.raise_every_10th,
            executor=executor,
            workers=2,
            shutdown_timeout=WAIT,
        ) as pipeline:
            produce(obj, n)
            wait_for(lambda: pipeline.stats.handled == n)
            assert pipeline.running  # errors do not stop it
        stats = pipeline.stats.snapshot()
    assert stats["handler_errors"] == n // 10
    assert stats["handled"] == n
    assert_exact(stats, n)
    logged = [r for r in caplog.records if r.name == "bpfloom.pipeline"]
    assert 1 <= len(logged) <= 3, [r.getMessage() for r in logged]  # 1000 errors
    assert "multiple of 10" in logged[0].getMessage()


def test_batch_handler_errors_count_every_event_of_the_batch() -> None:
    n = 5000
    with bpfloom.load(DRAIN) as obj:
        with Pipeline(
            drain_reader(obj, 500),
            handlers.raise_every_10th_batch,  # fails on every batch
            executor="thread",
            batch=True,
        ) as pipeline:
            produce(obj, n)
            wait_for(lambda: pipeline.stats.handled == n)
        stats = pipeline.stats.snapshot()
    assert stats["handler_errors"] == n
    assert_exact(stats, n)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fatal_errors_stop_early_and_raise(
    executor: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    n = 200_000
    with bpfloom.load(DRAIN) as obj:
        pipeline = make_pipeline(
            drain_reader(obj, 1000),
            handlers.raise_every_10th,  # seq 0 fails: the very first event
            executor=executor,
            fatal_errors=True,
            queue_size=1000,
            workers=2,
            shutdown_timeout=WAIT,
        )
        pipeline.start()
        produce(obj, n)
        assert pipeline.wait(WAIT), "a fatal error did not stop the pipeline"
        assert not pipeline.running
        with pytest.raises(PipelineError, match="multiple of 10") as info:
            pipeline.stop()
        assert info.value.__cause__ is not None or executor == "process"
        stats = pipeline.stats.snapshot()
    assert stats["handler_errors"] >= 1
    assert stats["handled"] < n  # stopped early
    # What it did not handle is still accounted for: nothing vanishes.
    assert_exact(stats, n)
    assert pipeline_threads() == []


# --- the asyncio API -------------------------------------------------------------------------


def test_async_with_and_an_async_handler() -> None:
    n = 5000
    seen: list[int] = []

    async def handler(ev: Any) -> None:
        await asyncio.sleep(0.001)
        seen.append(ev.seq)

    async def main() -> tuple[dict[str, Any], int]:
        ticks = 0
        with bpfloom.load(DRAIN) as obj:
            async with Pipeline(
                obj.ring_buffer("rb"), handler, executor="async", max_inflight=64
            ) as pipeline:
                assert pipeline.running
                produce(obj, n)
                deadline = time.monotonic() + WAIT
                while pipeline.stats.handled < n and time.monotonic() < deadline:
                    ticks += 1  # the program's own loop keeps running meanwhile
                    await asyncio.sleep(0.005)
            assert not pipeline.running
            return pipeline.stats.snapshot(), ticks

    stats, ticks = asyncio.run(main())
    assert ticks > 0
    assert sorted(seen) == list(range(n))
    assert_exact(stats, n)
    assert stats["handled"] == n
    assert 1 < stats["inflight_max"] <= 64  # handlers did overlap, within the bound
    assert pipeline_threads() == []


@pytest.mark.parametrize("extra", [0, 20_000], ids=["exactly_n", "more_than_n"])
@pytest.mark.parametrize("closing", ["aclosing", "plain_break"])
def test_async_for_events_then_break(closing: str, extra: int) -> None:
    """``async for ev in pipeline.events()``: N events, then break. Leaving the loop
    stops the pipeline (at once with ``aclosing``; with a plain break, when asyncio
    finalizes the generator); what the loop did not take is dropped, counted; the
    object then closes with nothing left behind."""
    n = 5000

    async def main() -> tuple[list[int], Pipeline, dict[str, set[int]]]:
        with bpfloom.load(DRAIN) as obj:
            ids = bpf_ids_of()
            pipeline = Pipeline(obj.ring_buffer("rb"), executor="async")
            got: list[int] = []
            produce(obj, n + extra)
            if closing == "aclosing":
                async with contextlib.aclosing(pipeline.events()) as events:  # type: ignore[type-var]
                    async for ev in events:
                        got.append(ev.seq)
                        if len(got) == n:
                            break
                assert not pipeline.running
            else:
                async for ev in pipeline.events():
                    got.append(ev.seq)
                    if len(got) == n:
                        break
                deadline = time.monotonic() + WAIT
                while pipeline.running and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert not pipeline.running
        return got, pipeline, ids

    got, pipeline, ids = asyncio.run(main())
    assert got == list(range(n))
    stats = pipeline.stats.snapshot()
    assert_exact(stats, n + extra)
    if extra == 0:
        assert stats["handled"] == n
    else:
        assert n <= stats["handled"] < n + extra
    assert pipeline_threads() == []
    assert_released(ids)


# --- stats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
def test_stats_report_latencies(executor: str) -> None:
    n = 5000
    with bpfloom.load(DRAIN) as obj:
        with Pipeline(
            drain_reader(obj, 500), handlers.noop, executor=executor, workers=2
        ) as pipeline:
            produce(obj, n)
            wait_for(lambda: pipeline.stats.handled == n)
        stats = pipeline.stats.snapshot()
    assert set(stats) >= STATS_KEYS
    assert_exact(stats, n)
    for name in ("handler_latency", "end_to_end_latency"):  # `ts` is found by itself
        summary = stats[name]
        assert summary is not None, name
        assert set(summary) == LATENCY_KEYS
        assert summary["samples"] > 0
        assert summary["p50_us"] <= summary["p90_us"] <= summary["p99_us"]
        assert summary["p99_us"] <= summary["p99_9_us"] <= summary["max_us"]
    assert stats["end_to_end_latency"]["p50_us"] > 0
    # bpf_ktime_get_ns and time.monotonic_ns are one clock: the latency is sane.
    assert stats["end_to_end_latency"]["max_us"] < WAIT * 1e6


@pytest.mark.parametrize("executor", ["thread", "async", "process"])
def test_queue_depth_stays_within_queue_size(executor: str) -> None:
    n, queue_size = 20_000, 500
    with bpfloom.load(DRAIN) as obj:
        with Pipeline(
            drain_reader(obj, 100),
            handlers.noop,
            executor=executor,
            policy="drop_oldest",
            queue_size=queue_size,
            workers=2,
        ) as pipeline:
            produce(obj, n)
            wait_for(lambda: pipeline.stats.received == n)
        stats = pipeline.stats.snapshot()
    assert_exact(stats, n)
    assert 0 < stats["queue_depth_max"] <= queue_size


def test_async_inflight_stays_within_max_inflight() -> None:
    n, max_inflight = 3000, 8

    async def handler(ev: Any) -> None:
        await asyncio.sleep(0.0005)

    with bpfloom.load(DRAIN) as obj:
        with Pipeline(
            obj.ring_buffer("rb"), handler, executor="async", max_inflight=max_inflight
        ) as pipeline:
            produce(obj, n)
            wait_for(lambda: pipeline.stats.handled == n)
        stats = pipeline.stats.snapshot()
    assert_exact(stats, n)
    assert 1 < stats["inflight_max"] <= max_inflight


# --- shutdown under load (a subprocess, signalled) ------------------------------------------

SHUTDOWN_SCRIPT = r'''
"""Runs a thread pipeline with a slowish handler under Pipeline.run() (SIGTERM:
first = clean stop, second = exit at once) while 1 000 000 events are in flight;
prints "ready", and at exit one JSON line: the stats and a count of handled seqs."""
import json
import struct
import sys
import threading
import time

import bpfloom
from bpfloom import Pipeline

N = 1_000_000
handled = []  # list.append is atomic: safe from the worker threads


def handler(ev):
    handled.append(ev.seq)
    if ev.seq % 8 == 0:
        time.sleep(0.0002)


def main():
    obj = bpfloom.load(sys.argv[1])
    executor = sys.argv[2]
    pipeline = Pipeline(obj.ring_buffer("rb"), handler, executor=executor, workers=4,
                        queue_size=4096, shutdown_timeout=5.0)

    def produce():
        while not pipeline.running:
            time.sleep(0.001)
        assert obj.program("produce").test_run(struct.pack("<QQ", N, 1)) == 0
        while pipeline.stats.handled < 10_000:
            time.sleep(0.001)
        print("ready", flush=True)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    stats = pipeline.run()
    producer.join()
    obj.close()
    seqs = list(handled)
    print(json.dumps({"stats": stats, "handled_seqs": len(seqs),
                      "distinct_seqs": len(set(seqs)), "max_seq": max(seqs)}), flush=True)


if __name__ == "__main__":
    main()
'''


def _start_loaded_script(
    tmp_path: Path, executor: str = "thread"
) -> tuple[subprocess.Popen[str], dict[str, set[int]]]:
    script = tmp_path / "shutdown_under_load.py"
    script.write_text(SHUTDOWN_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(DRAIN), executor],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the script did not get ready: {line!r}{out}\n{err}")
    ids = bpf_ids_of(proc.pid)
    assert ids["prog_id"] and ids["map_id"]
    return proc, ids


def test_sigterm_under_load_stops_cleanly(tmp_path: Path) -> None:
    proc, ids = _start_loaded_script(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert took < 30, f"a clean stop took {took:.1f} s"
    report = json.loads(out.strip().splitlines()[-1])
    stats = report["stats"]
    assert_exact(stats, 1_000_000)  # the million events all accounted for
    assert 10_000 <= stats["handled"] < 1_000_000  # stopped mid-way, not after all
    assert report["distinct_seqs"] == report["handled_seqs"], "an event was handled twice"
    # A handler still running past the deadline (at most one per worker thread) did
    # run, but the final stats, taken at the deadline, count its event as dropped.
    assert stats["handled"] <= report["handled_seqs"] <= stats["handled"] + 4
    assert_released(ids)


def children_of(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (the process executor's workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.add(pid)
    return left


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_second_sigterm_exits_at_once(tmp_path: Path, executor: str) -> None:
    """The second signal exits at once (no drain). Nothing stays in the kernel, and
    no worker process stays behind either."""
    proc, ids = _start_loaded_script(tmp_path, executor)
    workers = children_of(proc.pid)
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the clean stop is under way (it takes seconds under this load)
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # wait(), not communicate(): workers that outlive the script would keep its
        # stdout open.
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 3.0
        assert proc.returncode != 0
        assert_released(ids)  # the kernel let go of everything with the process
        deadline = time.monotonic() + 10
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(workers) == set(), "worker processes outlived the pipeline's process"
    finally:
        proc.kill()
        for pid in alive(workers):  # ours: never leave them to the machine
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()


# --- bpfloom run --stats ------------------------------------------------------------------------


@needs_small
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_cli_run_stats(tmp_path: Path, as_json: bool) -> None:
    """``bpfloom run pipeline.bpf.o --stats``: its tracepoint program writes ``burst``
    records per getppid() of this process; 20 calls overflow the 64 KiB ring. At
    exit (SIGINT), {"stats": {...}} adds up to exactly what the kernel produced."""
    calls, burst = 20, 1000
    n = calls * burst
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    args = [
        sys.executable,
        "-m",
        "bpfloom",
        "run",
        str(SMALL),
        "--stats",
        "--target_pid",
        str(os.getpid()),
        "--burst",
        str(burst),
        "--no-maps",  # the global `next_seq` would be printed at exit, among the events
    ]
    if as_json:
        args.append("--json")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        # Attached once it notes that `produce` (SEC("syscall")) was not attached.
        wait_for(
            lambda: "was not attached" in err_path.read_text() or proc.poll() is not None,
            what="bpfloom run to attach",
        )
        assert proc.poll() is None, err_path.read_text()
        # The pipeline starts a moment after the note: one burst (it fits the ring, so
        # nothing drops before then) and its printed events say it is running.
        os.getppid()
        wait_for(lambda: out_path.stat().st_size > 0, what="the first events")
        for _ in range(calls - 1):
            os.getppid()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=WAIT)
    finally:
        proc.kill()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, stderr
    stream = stdout if as_json else stderr
    lines = [line for line in stream.splitlines() if line.startswith('{"stats"')]
    assert len(lines) == 1, stream[-2000:]
    if as_json:
        assert stdout.splitlines()[-1] == lines[0]  # the last line of stdout
    else:
        assert '{"stats"' not in stdout
    stats = json.loads(lines[0])["stats"]
    assert set(stats) >= STATS_KEYS
    assert_exact(stats, n)
    assert stats["dropped_kernel"] > 0  # 20 000 records cannot all fit 64 KiB at once
    assert stats["dropped_queue"] == 0
    assert stats["handled"] == stats["received"] > 0
    assert set(stats["handler_latency"]) == LATENCY_KEYS
    assert stats["end_to_end_latency"]["p50_us"] > 0  # from `ts_ns`
    if as_json:
        events = [json.loads(line) for line in stdout.splitlines()[:-1]]
        assert len(events) == stats["handled"]
        assert len({ev["seq"] for ev in events}) == len(events)
