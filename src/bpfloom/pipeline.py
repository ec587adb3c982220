"""The concurrent event pipeline: reading decoupled from handling.

Go's ``go handleEvent(event)`` done right (docs/design.md): reader threads drain the
ring/perf buffers in batches and hand events to an executor through a *bounded* queue
(``_queue.BoundedQueue``: capacity in events, an overload policy, every drop counted),
so receiving never waits for handling and memory stays bounded. Executors:

- ``inline``: the handler runs in the reader thread (fastest for trivial handlers);
- ``async``: worker coroutines on an event loop — the closest thing to goroutines —
  started on demand and kept, at most ``max_inflight`` handlers at once; handlers may
  be coroutines;
- ``thread``: a pool of ``workers`` threads, for blocking I/O handlers;
- ``process``: ``workers`` processes for CPU-heavy handlers; records cross as numpy
  batches (one pickle per batch, never per event) and are decoded in the worker.

Events cross the queue in *chunks*, never one queue operation each: a batch goes in
as one entry, and a worker takes its share of what is queued (a slice of the batch,
decoded in the worker) with one lock; counters are updated once per chunk. The queue
still applies its policy to every event exactly as if each were put on its own
(``_queue.BoundedQueue.put_events``).

``batch=True`` gives the handler whole ``Batch`` objects (numpy views) instead of
events. ``key`` (a field name or a function of the event) keeps events with the same
key in arrival order, one at a time; different keys run concurrently (threads and
processes shard by key; on asyncio the events of a key being handled wait in that
key's chain).

Shutdown (``stop()``): drain what is already in the buffers and the queue, let
in-flight handlers finish until ``shutdown_timeout``, then count whatever is left as
dropped, so that
``produced == handled + dropped_kernel + dropped_queue`` holds exactly
(``bpfloom.stats``). The pipeline reads; it never detaches programs: as in cilium/ebpf,
whoever attached them detaches them (close the links, or the object) — first, when
nothing new should arrive during the drain. A handler that raises is counted and logged
(rate-limited); with ``fatal_errors=True`` the first error stops the pipeline and
``wait()``/``stop()`` raise ``PipelineError``.

Faults stop the pipeline, never stall it (``error`` says what ended it; ``wait()``
returns): a handler's ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``, in a
worker process too) stops handling and ``stop()`` re-raises it; a worker process that
dies makes ``stop()`` raise ``PipelineError`` (its in-flight events count as dropped);
a reader closed under the pipeline (``ClosedError``) or failing ends it, logged. The
pipeline's threads are daemon threads: one still stuck in a handler at the deadline is
left behind (named in ``abandoned``) and does not keep the interpreter alive.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import select
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable, Hashable, Iterable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np

from ._exceptions import BpfloomError, ClosedError
from ._queue import CLOSED, POLICIES, BoundedQueue, Chunk
from .batch import Batch
from .decode import Decoder
from .object import BpfObject
from .stats import PipelineStats

# asyncio and multiprocessing are imported by the executors that use them: a command
# that runs the inline executor starts without them (bpfloom.typecache's docstring
# says why start-up time matters).
if TYPE_CHECKING:
    import asyncio
    from multiprocessing.connection import Connection


log = logging.getLogger("bpfloom.pipeline")

EXECUTORS = ("inline", "async", "thread", "process")
TIMESTAMP_FIELDS = ("ts_ns", "ts", "timestamp_ns", "timestamp", "time_ns")


@runtime_checkable
class EventSource(Protocol):
    """What the pipeline needs of a source: ``RingBuffer`` and ``PerfBuffer`` are two;
    a fake one lets pipeline logic be tested without a kernel."""

    name: str
    decoder: Decoder
    owner: Any  # the BpfObject whose programs feed it (its drop counters), or None

    def read(self, timeout: float | None = None) -> Batch: ...
    def poll(self) -> Batch: ...
    def wakeup(self) -> None: ...


Reader = EventSource
_SAMPLE_CAP = 256  # latency samples taken per batch at most
DRAIN_GRACE = 2.0  # seconds readers get past the deadline to count what is left
IN_FLIGHT_GRACE = 1.0  # seconds a handler running at the deadline gets to finish


class PipelineError(BpfloomError):
    """A handler failed and the pipeline was told to treat that as fatal, or a worker
    process died."""


class _ErrorLog:
    """Logs handler errors, at most one line per ``interval`` seconds (plus a count)."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def report(self, exc: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                self._suppressed += 1
                return
            extra = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
            self._last, self._suppressed = now, 0
        log.error("handler raised %s: %s%s", type(exc).__name__, exc, extra)


def _timestamp_field(decoder: Decoder, requested: str | None) -> str | None:
    if requested is not None:
        return requested or None
    for name in TIMESTAMP_FIELDS:
        if name in decoder.fields:
            return name
    return None


class Pipeline:
    """Runs ``handler`` on every event of ``sources``, concurrently and bounded.

    ``sources``: readers (``RingBuffer``/``PerfBuffer``) or loaded ``BpfObject`` s
    (all their event buffers). Use ``start()``/``stop()``, ``with``, or in asyncio
    ``async with`` / ``async for event in pipeline.events()``. ``stats`` is live;
    ``stop()`` returns the final snapshot. Not restartable.
    """

    def __init__(
        self,
        sources: Reader | BpfObject | Sequence[Reader | BpfObject],
        handler: Callable[[Any], Any] | None = None,
        *,
        executor: str = "thread",
        workers: int = 4,
        max_inflight: int = 1024,
        queue_size: int = 65536,
        policy: str = "block",
        key: str | Callable[[Any], Hashable] | None = None,
        batch: bool = False,
        fatal_errors: bool = False,
        sample_every: int = 10,
        shutdown_timeout: float = 5.0,
        read_timeout: float = 0.1,
        timestamp_field: str | None = None,
        merge_batches: int = 0,
        coalesce: float = 0.0,
    ) -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
        if executor == "process" and key is not None and not isinstance(key, str):
            raise ValueError("the process executor takes key= as a field name")
        if executor == "async" and batch and key is not None:
            raise ValueError("key= orders events; the async executor cannot order batches")
        if workers < 1 or max_inflight < 1 or queue_size < 1:
            raise ValueError("workers, max_inflight and queue_size must be at least 1")
        if not 0 <= coalesce < math.inf:
            raise ValueError(f"coalesce must be a number of seconds >= 0, not {coalesce!r}")
        self.readers = _readers(sources)
        if not self.readers:
            raise ValueError("the pipeline has no event buffers to read")
        # A source that acknowledges what was handled (bpfloom.collect's) is told when
        # a handler finished with one of its batches or events (``settle``).
        settles = [getattr(r, "settle", None) for r in self.readers]
        self._settle: Callable[[Any], None] | None = next((f for f in settles if f), None)
        self._settle_after_yield = False  # events(): settled when the loop body is done
        if self._settle is not None and executor == "process":
            raise ValueError("fleet sources acknowledge in this process: not the process executor")
        self.handler = handler
        self.executor = executor
        self.workers = workers
        self.max_inflight = max_inflight
        self.queue_size = queue_size
        self.policy = policy
        self.batch = batch
        #: Thread executor, ``batch=True``: a worker takes the batches queued behind the
        #: one it got and hands consecutive batches of one reader to the handler as one,
        #: up to this many events (0: never). Under load the handler then sees few large
        #: batches instead of many small ones; order and accounting are unchanged.
        self.merge_batches = merge_batches if batch and self._settle is None else 0
        #: Seconds a reader waits after a read that brought at least ``COALESCE_MIN``
        #: events, before reading again (0: never): a busy stream then arrives in fewer,
        #: larger batches — fewer wakeups and per-batch costs — for at most this much
        #: added latency, and only while it is busy (a lone event is read at once).
        self.coalesce = coalesce
        self.fatal_errors = fatal_errors
        self.sample_every = sample_every
        self.shutdown_timeout = shutdown_timeout
        self.read_timeout = read_timeout
        self.key_name = key if isinstance(key, str) else None
        self.key: Callable[[Any], Hashable] | None = (
            operator.attrgetter(key) if isinstance(key, str) else key
        )
        self.stats = PipelineStats()
        #: What ended the pipeline early, if anything: a handler error (``fatal_errors``),
        #: a handler's ``BaseException``, a reader that failed or was closed, a key that
        #: failed, a worker process that died.
        self.error: BaseException | None = None
        #: Names of the pipeline's threads still running (stuck in a handler) when
        #: ``stop()`` returned: daemon threads, left behind; what they held is counted
        #: as dropped.
        self.abandoned: tuple[str, ...] = ()
        self._reraise: BaseException | None = None  # what stop() raises
        self._halted = False  # a handler raised a BaseException: handle nothing more
        # Handle nothing more (``_halted``, or the shutdown deadline passed): workers
        # check it before every event and count what they still hold as dropped.
        self._cut = False
        self._errors = _ErrorLog()
        ts_fields = {_timestamp_field(r.decoder, timestamp_field) for r in self.readers}
        # End-to-end latency needs the same kernel timestamp field in every record type.
        self._e2e_field = ts_fields.pop() if len(ts_fields) == 1 else None
        self._owners: list[BpfObject] = []
        for r in self.readers:
            if isinstance(r.owner, BpfObject) and r.owner not in self._owners:
                self._owners.append(r.owner)
        self._drops_at_start: dict[int, int] = {}
        self._stop_reading = threading.Event()
        self._discard = threading.Event()  # past the deadline: count, do not hand over
        self._stop_draining = threading.Event()
        self._done = threading.Event()
        self._reader_threads: list[threading.Thread] = []
        self._started = False
        self._stopping = threading.Lock()
        self._runner: _Executor | None = None

    # --- handler calls (shared by every executor) ------------------------------------

    def _fail(self, exc: BaseException) -> None:
        self._errors.report(exc)
        if self.fatal_errors and self.error is None:
            self.error = exc
            self._stop_reading.set()

    def _raised(self, exc: BaseException) -> bool:
        """A handler raised ``exc`` (counted by the caller): an ``Exception`` is a
        handler error (``_fail``); anything else halts the pipeline (``_halt``), and
        then True: handle nothing more."""
        if isinstance(exc, Exception):
            self._fail(exc)
            return False
        self._halt(exc)
        return True

    def _halt(self, exc: BaseException) -> None:
        """A handler (or a key function) raised ``exc``, a ``BaseException`` such as
        ``SystemExit`` or ``KeyboardInterrupt``: handle nothing more (what is left counts
        as dropped), stop reading, and have ``stop()`` re-raise it."""
        self._halted = True
        self._cut = True
        log.error(
            "handler raised %s%s: stopping", type(exc).__name__, f": {exc}" if str(exc) else ""
        )
        self._abort(exc)

    def _abort(self, exc: BaseException) -> None:
        """End the pipeline because of ``exc``, which ``stop()`` then raises."""
        if self._reraise is None:
            self._reraise = exc
        if self.error is None:
            self.error = exc
        self._stop_reading.set()

    def call(self, item: Any) -> None:
        """Run the (synchronous) handler on one event or batch, with accounting."""
        n = len(item) if self.batch else 1
        if self._cut:
            self.stats.add(dropped_queue=n)
            return
        self.stats.enter_handler(n)
        errors = 0
        t0 = time.perf_counter_ns()
        try:
            if self.handler is not None:
                self.handler(item)
        except Exception as exc:
            errors = n
            self._fail(exc)
        except BaseException as exc:
            errors = n
            self._halt(exc)
        finally:
            self.stats.handler_latency.add(time.perf_counter_ns() - t0)
            self._record_e2e(item)
            self.stats.leave_handler(n, errors)
            if self._settle is not None and not self._halted:
                self._settle(item)

    def call_each(self, events: Chunk) -> None:
        """Run the (synchronous) handler on every event of ``events`` (a ``Batch``, a
        slice of one, or a list of events), in this thread.

        Accounts once per call, so that a trivial handler costs little more than the
        call itself: ``handled`` advances when the events are done (``stats.begin``:
        one finished before a handler got stuck still counts), one event in
        ``sample_every`` is timed for ``handler_latency`` (and gives an end-to-end
        sample), and ``inflight`` counts the one handler running. Once handling is cut
        off (a handler's ``BaseException`` here or in another worker, or the shutdown
        deadline), the events not yet begun are counted as dropped.
        """
        handler = self.handler
        n = len(events)
        if self._cut:
            self.stats.add(dropped_queue=n)
            return
        every = max(self.sample_every, 1)
        perf = time.perf_counter_ns
        samples: list[int] = []
        tally = self.stats.begin()  # [finished, errors]
        try:
            if handler is None:
                tally[0] = n
                if self._settle is not None:
                    for ev in events:
                        self._settle(ev)
                return
            if self._settle is not None:
                handler = self._settling(handler, self._settle)
            for count, ev in enumerate(events, 1):
                if self._cut:
                    break
                t0 = 0 if count % every else perf()
                try:
                    handler(ev)
                except BaseException as exc:
                    tally[1] += 1
                    if self._raised(exc):
                        tally[0] += 1
                        break
                tally[0] += 1
                if t0:
                    samples.append(perf() - t0)
        finally:
            self.stats.handler_latency.extend(samples)
            self._record_e2e(events, every)
            # What a BaseException, the cut-off (or a failing decode) left is dropped.
            self.stats.flush(tally, n - tally[0], end=True)

    def _settling(
        self, handler: Callable[[Any], Any], settle: Callable[[Any], None]
    ) -> Callable[[Any], Any]:
        """``handler``, then ``settle`` of the event it finished (one that raised an
        ``Exception`` too: it was handled, as an error); not after a ``BaseException``
        or once the pipeline halted: that event is not acknowledged."""

        def run(ev: Any) -> None:
            try:
                handler(ev)
            except Exception:
                if not self._halted:
                    settle(ev)
                raise
            if not self._halted:
                settle(ev)

        return run

    async def acall(self, item: Any) -> None:
        """Run a handler that may be a coroutine function, with accounting."""
        import asyncio
        import inspect

        n = len(item) if self.batch else 1
        if self._cut:
            self.stats.add(dropped_queue=n)
            return
        self.stats.enter_handler(n)
        errors = 0
        t0 = time.perf_counter_ns()
        try:
            if self.handler is not None:
                result = self.handler(item)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            errors = n
            self._fail(exc)
        except asyncio.CancelledError:
            # Cut off at the shutdown deadline: not handled (the final accounting
            # counts it as dropped).
            raise
        except BaseException as exc:  # kept from the loop, which would die of it
            errors = n
            self._halt(exc)
        self.stats.handler_latency.add(time.perf_counter_ns() - t0)
        self._record_e2e(item)
        self.stats.leave_handler(n, errors)
        if self._settle is not None and not self._settle_after_yield and not self._halted:
            self._settle(item)

    def _record_e2e(self, item: Any, stride: int = 1) -> None:
        """End-to-end latency samples of a batch or a list of events (one in
        ``stride``, the first included; the last ``_SAMPLE_CAP`` of those), or of one
        event."""
        field = self._e2e_field
        if field is None:
            return
        now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        if isinstance(item, Batch):
            if len(item) == 0:
                return
            ts = item.numpy()[field][::stride][-_SAMPLE_CAP:].astype(np.int64)
            self.stats.end_to_end_latency.extend((now - ts).tolist())
            return
        events = item[::stride][-_SAMPLE_CAP:] if isinstance(item, list) else (item,)
        samples = []
        for ev in events:
            ts_value = getattr(ev, field, None)
            if isinstance(ts_value, int) and 0 < ts_value <= now:
                samples.append(now - ts_value)
        self.stats.end_to_end_latency.extend(samples)

    # --- reading -----------------------------------------------------------------

    def _read_loop(self, reader: Reader) -> None:
        runner = self._runner
        assert runner is not None
        try:
            coalesce = self.coalesce
            while not self._stop_reading.is_set():
                batch = reader.read(timeout=self.read_timeout)
                self._take(reader, batch, runner)
                if coalesce and len(batch) >= COALESCE_MIN:
                    self._stop_reading.wait(coalesce)
            # Stopping: drain what is already in the buffer (all of it, when the caller
            # detached the programs first), then stop.
            # After a fatal error, or past the deadline, what is drained is counted as
            # dropped (``_take``): it was produced, so it must be accounted for.
            while not self._stop_draining.is_set():
                batch = reader.poll()
                if not batch and not batch.lost:
                    break
                self._take(reader, batch, runner)
        except ClosedError as exc:
            # Closed under us (the object or the reader), not by our stop(): that ends
            # the pipeline too, reported; what the buffer still held is gone with it.
            if not self._stop_reading.is_set():
                log.warning("%s: closed under the running pipeline; stopping", reader.name)
                self._ended(exc)
        except Exception as exc:  # a reader failure ends the pipeline, loudly
            self._failed_outside_handler(f"reader of {reader.name}", exc)
        except BaseException as exc:  # from a key function, say: as from a handler
            self._halt(exc)

    def _failed_outside_handler(self, what: str, exc: BaseException) -> None:
        log.error("%s failed: %s", what, exc)
        self._ended(exc)

    def _ended(self, exc: BaseException) -> None:
        """End the pipeline early because of ``exc`` (``error``), without raising it."""
        if self.error is None:
            self.error = exc
        self._stop_reading.set()

    def _take(self, reader: Reader, batch: Batch, runner: _Executor) -> None:
        if batch.lost:
            self.stats.add(dropped_kernel=batch.lost)
        if batch:
            self.stats.add(received=len(batch))
            if self.error is not None or self._discard.is_set():
                self.stats.add(dropped_queue=len(batch))
            else:
                runner.submit(batch)

    # --- life cycle ----------------------------------------------------------------

    def _begin(self, runner: _Executor) -> None:
        if self._started:
            raise BpfloomError("a pipeline can be started once")
        self._started = True
        for obj in self._owners:
            self._drops_at_start[id(obj)] = obj.dropped_kernel()
        self._runner = runner
        runner.start()
        for reader in self.readers:
            # Daemon threads: one stuck in a handler must not keep the interpreter alive.
            t = threading.Thread(
                target=self._read_loop,
                args=(reader,),
                name=f"bpfloom-read-{reader.name}",
                daemon=True,
            )
            t.start()
            self._reader_threads.append(t)

    def _check_not_started(self) -> None:
        if self._started:
            raise BpfloomError("a pipeline can be started once")

    def start(self) -> Pipeline:
        """Start reading and handling in background threads; returns immediately."""
        self._check_not_started()
        self._begin(_make_executor(self, loop=None))
        return self

    def _finish(self) -> None:
        """Wait for readers, then the executor (bounded by ``shutdown_timeout``)."""
        deadline = time.monotonic() + self.shutdown_timeout
        self._stop_reading.set()
        for reader in self.readers:
            reader.wakeup()  # a reader blocked in read() returns now, not at its timeout
        self._join_readers(deadline)
        # Past the deadline, readers still draining (say, blocked on a full queue)
        # count the rest as dropped instead of handing it over.
        self._discard.set()
        assert self._runner is not None
        self._runner.finish(deadline)  # closes the queues: a blocked reader moves on
        # The readers only count now, and they may not outlive stop(): what they
        # drained after the final snapshot would be missing from it. A handler stuck
        # in an inline reader is the one thing that can hold them: wait a bounded
        # time, then make them stop draining.
        self._join_readers(time.monotonic() + DRAIN_GRACE)
        self._stop_draining.set()
        self._join_readers(time.monotonic() + DRAIN_GRACE)
        kernel = 0
        for obj in self._owners:
            if obj.closed:  # closed under us: its drop counter went with it
                continue
            kernel += obj.dropped_kernel() - self._drops_at_start.get(id(obj), 0)
        self.stats.add(dropped_kernel=kernel)
        late = self.stats.seal()
        if late:
            log.warning("%d events were still being handled at the deadline: dropped", late)
        self.abandoned = tuple(
            t.name for t in [*self._reader_threads, *self._runner.threads()] if t.is_alive()
        )
        if self.abandoned:
            log.warning("left behind, still in a handler: %s", ", ".join(self.abandoned))
        self._done.set()

    def _join_readers(self, deadline: float) -> None:
        for t in self._reader_threads:
            t.join(max(deadline - time.monotonic(), 0.0))

    def stop(self, timeout: float | None = None) -> dict[str, Any]:
        """Detach, drain, finish in-flight work, and return the final stats.

        Idempotent. Raises ``PipelineError`` if a handler failed with
        ``fatal_errors=True`` or a worker process died; re-raises a handler's
        ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``). A reader that failed
        or was closed is not raised: ``error`` holds it.
        """
        if timeout is not None:
            self.shutdown_timeout = timeout
        with self._stopping:
            if self._started and not self._done.is_set():
                self._finish()
        self._raise_fatal()
        return self.stats.snapshot()

    def _raise_fatal(self) -> None:
        exc = self._reraise
        if exc is not None:
            raise exc
        if self.error is not None and self.fatal_errors:
            raise PipelineError(
                f"handler failed: {type(self.error).__name__}: {self.error}"
            ) from self.error

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the pipeline ends (a fatal error, a fault, a closed reader) or a
        ``stop()`` from elsewhere; True if it did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop_reading.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._stop_reading.wait(0.2 if left is None else min(left, 0.2))
        return True

    def run(self, duration: float | None = None) -> dict[str, Any]:
        """Start, run until ``duration`` passes, SIGINT/SIGTERM arrives, or the
        pipeline ends by itself (a fault, see ``wait()``); then stop cleanly and return
        the final stats, or raise what ``stop()`` raises.

        Signals are caught only when called from the main thread; a second signal exits
        the process at once.
        """
        deadline = None if duration is None else time.monotonic() + duration
        in_main = threading.current_thread() is threading.main_thread()
        with StopSignals() if in_main else contextlib.nullcontext() as signals:
            self.start()
            try:
                while self.running:
                    if signals is not None and signals.stop.is_set():
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._stop_reading.wait(0.1 if left is None else min(left, 0.1))
            finally:
                stats = self.stop()
        return stats

    @property
    def running(self) -> bool:
        return self._started and not self._stop_reading.is_set()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- asyncio -------------------------------------------------------------------

    async def astart(self) -> Pipeline:
        """Start with the ``async`` executor on the running event loop."""
        import asyncio

        if self.executor != "async":
            raise BpfloomError("astart() needs executor='async'")
        self._check_not_started()
        self._begin(_make_executor(self, loop=asyncio.get_running_loop()))
        return self

    async def astop(self) -> dict[str, Any]:
        """``stop()`` for asyncio: readers are joined off the loop; handlers keep running
        on it until they finish or ``shutdown_timeout`` passes."""
        import asyncio

        from ._async_runner import AsyncRunner

        runner = self._runner
        await asyncio.get_running_loop().run_in_executor(None, self._stop_readers_only)
        if isinstance(runner, AsyncRunner):
            await runner.adrain(time.monotonic() + self.shutdown_timeout)
        return await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def _stop_readers_only(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        self._stop_reading.set()
        for reader in self.readers:
            reader.wakeup()
        for t in self._reader_threads:
            t.join(max(deadline - time.monotonic(), 0.1))

    async def __aenter__(self) -> Pipeline:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    async def events(self) -> AsyncGenerator[Any, None]:
        """``async for event in pipeline.events()``: events (or batches) as they come.

        The consumer is the handler: at most ``max_inflight`` events wait for it, and
        an event counts as handled when the loop body asks for the next one. Ends when
        the pipeline is stopped; leaving the loop stops it.
        """
        import asyncio

        from ._async_runner import AsyncRunner

        if self.handler is not None:
            raise BpfloomError("events() is for pipelines without a handler")
        inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.max_inflight)
        end = object()

        async def deliver(item: Any) -> None:
            await inbox.put(item)

        self.handler = deliver
        self.executor = "async"
        self._settle_after_yield = True
        await self.astart()
        runner = self._runner
        assert isinstance(runner, AsyncRunner)
        # One worker delivers, so events reach the inbox in arrival order even when it
        # is full (several workers would race for each slot the consumer frees).
        runner.max_workers = 1
        # The inbox may be full when the last handler finishes: wait for room.
        ending: list[asyncio.Task[None]] = []
        runner.on_finished = lambda: ending.append(asyncio.ensure_future(inbox.put(end)))
        try:
            while True:
                item = await inbox.get()
                if item is end:
                    return
                yield item
                if self._settle is not None:
                    self._settle(item)
        finally:
            if not self._done.is_set():
                # Leaving early: whatever the consumer did not take is dropped, counted.
                runner.discard = True
                while not inbox.empty():
                    leftover = inbox.get_nowait()
                    if leftover is not end:
                        # Counted as handled when it went into the inbox; the consumer
                        # never saw it, so it was dropped instead.
                        n = len(leftover) if self.batch else 1
                        self.stats.add(handled=-n, dropped_queue=n)
                await self.astop()


class StopSignals:
    """First SIGINT/SIGTERM sets ``stop`` (ask for a clean stop); a second one exits at
    once with status 128 + the signal's number. Use as a context manager in the main
    thread.

    The Python-level handler runs in the main thread between two bytecodes, maybe while
    that thread holds a lock — ``stop``'s own, inside ``stop.wait()``: setting ``stop``
    there can deadlock. So the handler only counts (and exits on the second signal);
    the C-level handler writes each signal's number to a pipe (``signal.set_wakeup_fd``)
    and a daemon thread turns that into ``stop`` — or into the exit, on the second
    byte, should the main thread be stuck somewhere Python code cannot run (two signals
    delivered before it runs any also reach the handler only once). Bytes of other
    signals are passed on to the wakeup fd that was set before, if any.

    Exiting at once leaves nothing in the kernel either: every object, link and reader
    of ours is held by a file descriptor, which the kernel releases with the process.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._handled = 0  # signals seen by the Python-level handler
        self._old: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._wakeup_set = False
        self._pipe: tuple[int, int] | None = None
        self._waiter: threading.Thread | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No locks here, not even stop's: see the class docstring.
        self._handled += 1
        if self._handled > 1:
            os._exit(128 + signum)

    def _wait(self, read_fd: int) -> None:
        """The waiter thread: signal numbers from the wakeup pipe; 0 ends it."""
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        seen = 0
        while True:
            poller.poll()
            try:
                data = os.read(read_fd, 64)
            except BlockingIOError:
                continue
            for signum in data:
                if signum == 0:
                    return
                if signum not in self.SIGNALS:
                    self._pass_on(signum)
                    continue
                seen += 1
                if seen > 1:
                    os._exit(128 + signum)
                self.stop.set()

    def _pass_on(self, signum: int) -> None:
        if self._old_wakeup_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._old_wakeup_fd, bytes([signum]))

    def __enter__(self) -> StopSignals:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe = (read_fd, write_fd)
        self._waiter = threading.Thread(
            target=self._wait, args=(read_fd,), name="bpfloom-signals", daemon=True
        )
        self._waiter.start()
        try:
            self._old_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
            self._wakeup_set = True
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._on_signal)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # The wakeup fd first: our handler, still in place meanwhile, only counts.
        try:
            if self._wakeup_set:
                self._wakeup_set = False
                signal.set_wakeup_fd(self._old_wakeup_fd)
            while self._old:
                s, handler = self._old.popitem()
                signal.signal(s, handler)
        finally:
            self._end_waiter()

    def _end_waiter(self) -> None:
        if self._pipe is None:
            return
        read_fd, write_fd = self._pipe
        self._pipe = None
        os.write(write_fd, b"\0")
        assert self._waiter is not None
        self._waiter.join()
        os.close(read_fd)
        os.close(write_fd)


def wait_for_stop(
    stop: threading.Event,
    pipeline: Pipeline | None,
    duration: float | None,
    tick: Callable[[], object] | None = None,
    interval: float | None = None,
) -> None:
    """Sleep until ``stop`` is set, ``duration`` passes or the pipeline stops running;
    call ``tick`` every ``interval`` seconds meanwhile (a tick returning True stops)."""
    deadline = None if duration is None else time.monotonic() + duration
    # Without a tick there is nothing to wake up for: waking at a past next_tick would
    # spin the loop at 100% CPU.
    next_tick = None if interval is None or tick is None else time.monotonic() + interval
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if pipeline is not None and not pipeline.running:
            return
        if tick is not None and next_tick is not None and interval is not None and now >= next_tick:
            if tick() is True:
                return
            next_tick = now + interval
        wait = 0.2
        for until in (deadline, next_tick):
            if until is not None:
                wait = min(wait, until - now)
        stop.wait(max(wait, 0.0))


def _readers(sources: Reader | BpfObject | Sequence[Reader | BpfObject]) -> list[Reader]:
    items: Iterable[Reader | BpfObject] = sources if isinstance(sources, Sequence) else [sources]
    readers: list[Reader] = []
    for s in items:
        if isinstance(s, BpfObject):
            readers.extend(s.open_reader(m.name) for m in s.event_buffers())
        else:
            readers.append(s)
    return readers


# --- executors ----------------------------------------------------------------------


class _Executor:
    """Runs the handler for batches handed over by the reader threads."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline

    def start(self) -> None:
        """Start workers (called before the readers start)."""

    def submit(self, batch: Batch) -> None:
        """Take one batch from a reader thread (may block under the ``block`` policy)."""
        raise NotImplementedError

    def finish(self, deadline: float) -> None:
        """Readers are done: handle what is queued, wait for workers until ``deadline``,
        then drop (and count) what is left."""

    def threads(self) -> list[threading.Thread]:
        """The threads this executor started (daemon threads, all of them)."""
        return []


class _Inline(_Executor):
    def submit(self, batch: Batch) -> None:
        if self.p.batch:
            self.p.call(batch)
        else:
            self.p.call_each(batch)


COALESCE_MIN = 8  # events in one read that make it a busy stream (``coalesce``)
_MERGE_ITEMS = 256  # batches a worker takes at once when it merges them


def _merged(batches: list[Batch], most: int) -> list[Batch]:
    """``batches`` in order, each run of consecutive batches of one reader (same
    decoder and source) joined into one batch of at most ``most`` events."""
    import numpy as np  # (imported by .batch already)

    out: list[Batch] = []
    run: list[Batch] = []
    size = 0

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            records = np.concatenate([b.records for b in run])
            out.append(Batch(records, run[0].decoder, run[0].source))
        run.clear()

    for batch in batches:
        if run and (
            batch.decoder is not run[0].decoder
            or batch.source != run[0].source
            or size + len(batch) > most
        ):
            flush()
            size = 0
        run.append(batch)
        size += len(batch)
    flush()
    return out


def _shard(key: Hashable, n: int) -> int:
    return hash(key) % n


CHUNK = 256  # events a thread worker takes from the queue at most at once


class _Threads(_Executor):
    """A pool of threads; with a key, one queue per thread and events sharded by key.

    Events go through the queue in chunks (slices of a batch, or the lists of one key
    shard) and each worker takes its share of what is queued, at most ``CHUNK``
    events, in one queue operation: with many workers and slow handlers, chunks are
    small and every worker gets some; with a fast handler, one lock and one wakeup
    serve hundreds of events (``Pipeline.call_each``).
    """

    def start(self) -> None:
        p = self.p
        n = p.workers
        shards = n if p.key is not None else 1
        self.queues = [
            BoundedQueue(
                max(p.queue_size // shards, 1), p.policy, p.stats, sample_every=p.sample_every
            )
            for _ in range(shards)
        ]
        self.workers: list[threading.Thread] = []
        for i in range(n):
            q = self.queues[i % shards]
            t = threading.Thread(
                target=self._work, args=(q, n // shards), name=f"bpfloom-worker-{i}", daemon=True
            )
            t.start()
            self.workers.append(t)

    def _work(self, q: BoundedQueue, share: int) -> None:
        p = self.p
        merge = p.merge_batches
        while True:
            item = q.get_chunk(CHUNK, share)
            if item is CLOSED:
                return
            if item is None:
                continue
            if p.batch:
                if not merge:
                    p.call(item)
                    continue
                for run in _merged([item, *q.get_nowait_many(_MERGE_ITEMS)], merge):
                    p.call(run)
                continue
            try:
                p.call_each(item)
            except Exception as exc:  # decoding the chunk failed: as a reader failure
                p._failed_outside_handler("decoding events", exc)

    def submit(self, batch: Batch) -> None:
        p = self.p
        stop = p._stop_reading if p.error is not None else None
        if p.batch:
            self.queues[0].put_many([batch], weight=len(batch), stop=stop)
            return
        if p.key is None:
            self.queues[0].put_events(batch, stop=stop)
            return
        n = len(self.queues)
        buckets: list[list[Any]] = [[] for _ in range(n)]
        key = p.key
        for ev in batch:
            buckets[_shard(key(ev), n)].append(ev)
        for q, items in zip(self.queues, buckets, strict=True):
            if items:
                q.put_events(items, stop=stop)

    def finish(self, deadline: float) -> None:
        for q in self.queues:
            q.close()
        for t in self.workers:
            t.join(max(deadline - time.monotonic(), 0.0))
        # Past the deadline: workers finish the event in hand and drop (count) the
        # rest of their chunk; what is queued is counted as dropped.
        self.p._cut = True
        for q in self.queues:
            q.abandon()  # counted as dropped; workers stop at their next get()
        # Handlers already running when the deadline passed get a moment to finish
        # (and count as handled); one still running after that counts as dropped.
        for t in self.workers:
            t.join(max(deadline + IN_FLIGHT_GRACE - time.monotonic(), 0.0))

    def threads(self) -> list[threading.Thread]:
        return list(self.workers)


def _process_worker(
    index: int,
    inbox: Any,
    results: Any,
    decoder: Decoder,
    handler: Callable[[Any], Any],
    batch_mode: bool,
    ts_field: str | None,
) -> None:
    """A worker process: decode batches of raw records and run the handler on them
    (``decoder`` arrives pickled as its type and string policy, and is rebuilt).

    Sends ``(n, done, errors, error_text, latencies, e2e, halt)`` on ``results`` (its
    own pipe) per batch of ``n`` events: ``done`` were handled, ``errors`` of them
    failed. ``halt`` is a ``BaseException`` the handler raised (``SystemExit`` …), for
    the pipeline to raise; after one the worker handles nothing more (``done`` = 0)
    until told to stop.
    """
    # Ctrl-C in a terminal signals the whole process group: the pipeline's process
    # decides what it means (the first one is a clean stop) and ends its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None:
        # The pipeline's process may exit at once (a second signal) or die: then leave
        # too, even from a half-received batch or a handler that is still running.
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    halted = False
    while True:
        records = inbox.get()
        if records is None:
            return
        batch = Batch(records, decoder, "process")
        n = len(batch)
        done = errors = 0
        latencies: list[int] = []
        error_text = ""
        halt: BaseException | None = None
        if halted:
            results.send((n, 0, 0, "", [], [], None))
            continue
        if batch_mode:
            t0 = time.perf_counter_ns()
            done = n
            try:
                handler(batch)
            except Exception as exc:
                errors, error_text = n, f"{type(exc).__name__}: {exc}"
            except BaseException as exc:
                errors, halt = n, exc
            latencies.append(time.perf_counter_ns() - t0)
        else:
            for ev in batch:
                done += 1
                t0 = time.perf_counter_ns()
                try:
                    handler(ev)
                except Exception as exc:
                    errors += 1
                    error_text = f"{type(exc).__name__}: {exc}"
                except BaseException as exc:
                    errors += 1
                    halt = exc
                    break
                if len(latencies) < _SAMPLE_CAP:
                    latencies.append(time.perf_counter_ns() - t0)
        e2e: list[int] = []
        if ts_field is not None and n:
            now = time.monotonic_ns()
            e2e = (now - batch.numpy()[ts_field][-_SAMPLE_CAP:].astype(np.int64)).tolist()
        if halt is not None:
            halted = True
            halt = _portable(halt)
        results.send((n, done, errors, error_text, latencies, e2e, halt))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (it goes to the pipeline's process), else a
    ``PipelineError`` that names it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return PipelineError(f"handler raised {type(exc).__name__}: {exc}")
    return exc


def _exit_with(parent: Any) -> None:
    parent.join()
    os._exit(1)


def _how_it_ended(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class _Processes(_Executor):
    """Worker processes fed with numpy batches; with a key, batches split by key.

    Each worker sends its results on a pipe of its own, so a worker that dies half-way
    through a message (SIGKILL) spoils nothing but its own pipe. The parent holds only
    the read ends: a worker's pipe reaches EOF exactly when that worker is gone, and
    before ``finish()`` that means it died (``os._exit`` in the handler, SIGKILL, the OOM
    killer): the pipeline ends with a ``PipelineError`` and what the worker had in
    flight counts as dropped.
    """

    IN_FLIGHT_BATCHES = 4  # per worker: bounds memory on the worker side

    def start(self) -> None:
        p = self.p
        decoders = {(id(r.decoder.type), r.decoder.strings): r.decoder for r in p.readers}
        if len(decoders) != 1:
            raise BpfloomError("the process executor needs one record type for all readers")
        decoder = next(iter(decoders.values()))
        ts_field = p._e2e_field
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        self.inboxes = [ctx.Queue(self.IN_FLIGHT_BATCHES) for _ in range(p.workers)]
        pipes = [ctx.Pipe(duplex=False) for _ in range(p.workers)]
        self.results = [read_end for read_end, _ in pipes]
        self.procs = [
            ctx.Process(
                target=_process_worker,
                args=(i, box, write_end, decoder, p.handler, p.batch, ts_field),
                daemon=True,
                name=f"bpfloom-process-{i}",
            )
            for i, (box, (_, write_end)) in enumerate(zip(self.inboxes, pipes, strict=True))
        ]
        for proc in self.procs:
            proc.start()
        for _, write_end in pipes:
            write_end.close()  # the worker's copy is the only one left: EOF when it is gone
        self.dead = [False] * len(self.procs)
        self.finishing = False
        self.queue = BoundedQueue(p.queue_size, p.policy, p.stats, sample_every=p.sample_every)
        self._next = 0
        self.abandoned = False
        self.feeder = threading.Thread(target=self._feed, name="bpfloom-feeder", daemon=True)
        self.collector = threading.Thread(
            target=self._collect, name="bpfloom-collector", daemon=True
        )
        self.feeder.start()
        self.collector.start()

    def submit(self, batch: Batch) -> None:
        p = self.p
        stop = p._stop_reading if p.error is not None else None
        records = np.ascontiguousarray(batch.records)
        if p.key_name is None:
            self.queue.put_many([(None, records)], weight=len(batch), stop=stop)
            return
        keys = batch.numpy()[p.key_name]
        shard = np.asarray(keys).astype(np.uint64) % np.uint64(p.workers)
        for i in range(p.workers):
            part = records[shard == i]
            if len(part):
                self.queue.put_many([(i, part)], weight=len(part), stop=stop)

    def _feed(self) -> None:
        p = self.p
        while True:
            item = self.queue.get()
            if item is CLOSED:
                break
            if item is None:
                continue
            target, records = item
            if target is None:
                target = self._next
                self._next = (self._next + 1) % len(self.inboxes)
            n = len(records)
            if p._halted or self.dead[target]:
                p.stats.add(dropped_queue=n)
                continue
            p.stats.enter_handler(n)
            # A worker stuck past the deadline must not hold the feeder forever (the
            # batch stays in flight; the final accounting counts it as dropped), nor
            # one that died.
            while not self._put(self.inboxes[target], records):
                if self.abandoned:
                    return
                if self.dead[target]:
                    p.stats.add(inflight=-n, dropped_queue=n)
                    break
        for i, box in enumerate(self.inboxes):
            while not self.dead[i] and not self._put(box, None):
                if self.abandoned:
                    return

    @staticmethod
    def _put(box: Any, item: Any) -> bool:
        import queue

        try:
            box.put(item, timeout=0.1)
        except queue.Full:
            return False
        return True

    def _collect(self) -> None:
        """Results of every worker until each one's pipe ends (the worker is gone)."""
        from multiprocessing.connection import wait as wait_for_any

        p = self.p
        pipes = {conn: i for i, conn in enumerate(self.results)}
        while pipes:
            for ready in wait_for_any(list(pipes)):
                conn = cast("Connection", ready)
                i = pipes[conn]
                try:
                    msg: tuple[Any, ...] = conn.recv()
                except (EOFError, OSError):
                    del pipes[conn]
                    self._gone(i)
                    continue
                n, done, errors, error_text, latencies, e2e, halt = msg
                p.stats.handler_latency.extend(latencies)
                p.stats.end_to_end_latency.extend(e2e)
                p.stats.leave_handler(done, errors)
                if n > done:  # left after a BaseException, or sent to a halted worker
                    p.stats.add(inflight=done - n, dropped_queue=n - done)
                if halt is not None:
                    halt.add_note(f"raised by the handler in worker process {self.procs[i].name}")
                    p._halt(halt)
                elif errors:
                    p._fail(PipelineError(error_text))

    def _gone(self, i: int) -> None:
        """Worker ``i`` is gone; unless ``finish()`` told it to go, it died."""
        self.dead[i] = True
        if self.finishing:
            return
        proc = self.procs[i]
        proc.join(1.0)  # it is exiting: wait for its status
        exc = PipelineError(
            f"worker process {proc.name} died ({_how_it_ended(proc.exitcode)}); "
            "the events it had in flight are counted as dropped"
        )
        log.error("%s", exc)
        self.p._abort(exc)

    def finish(self, deadline: float) -> None:
        self.finishing = True
        self.queue.close()
        self.feeder.join(max(deadline - time.monotonic(), 0.0))
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.0))
        late = [proc for proc in self.procs if proc.is_alive()]
        for proc in late:
            proc.terminate()
            proc.join(1.0)
        self.abandoned = True
        self.queue.abandon()
        self.feeder.join(1.0)
        self.collector.join(5.0)  # every worker is gone: their pipes end
        self.queue.abandon()
        # Batches sent to a worker that was terminated or died never came back: dropped.
        lost = self.p.stats.inflight
        if lost:
            self.p.stats.add(inflight=-lost, dropped_queue=lost)
        for box in self.inboxes:
            box.cancel_join_thread()  # a dead worker's inbox may never be read again
            box.close()

    def threads(self) -> list[threading.Thread]:
        return [self.feeder, self.collector]


def _make_executor(p: Pipeline, loop: asyncio.AbstractEventLoop | None) -> _Executor:
    if p.executor == "inline":
        return _Inline(p)
    if p.executor == "thread":
        return _Threads(p)
    if p.executor == "async":
        from ._async_runner import AsyncRunner

        return AsyncRunner(p, loop)
    if p.handler is None:
        raise BpfloomError("the process executor needs a handler")
    return _Processes(p)


__all__ = ["EXECUTORS", "POLICIES", "Pipeline", "PipelineError", "StopSignals", "wait_for_stop"]
