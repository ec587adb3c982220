"""The pipeline's ``async`` executor: worker coroutines on an event loop.

Imported by ``bpfloom.pipeline`` when a pipeline uses it, so that the other executors
start without asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from ._queue import BoundedQueue
from .batch import Batch
from .pipeline import _Executor

if TYPE_CHECKING:
    from .pipeline import Pipeline

_NO_KEY = object()  # what AsyncRunner._key returns for an event whose key failed
LOCAL_CHUNK = 1024  # events the workers take from the queue at most at once
FLUSH = 256  # events a worker handles between two updates of the counters


def _ignore(event: Any) -> None:
    """The handler of a pipeline given none: events are only counted."""


class AsyncRunner(_Executor):
    """Worker coroutines on an event loop, at most ``max_inflight`` handlers at a time.

    Events reach the loop in chunks: a worker that finds the loop's deque of taken
    events (``local``) empty refills it from the bounded queue, up to ``LOCAL_CHUNK``
    events in one lock. Workers are started on demand, up to ``max_inflight``, and
    kept: parked on a future of their own when there is nothing to do, woken one at a
    time. A worker about to await a handler's coroutine first wakes (or starts)
    another one for the next event, so handlers that wait overlap as much as
    ``max_inflight`` allows, while a synchronous handler runs event after event on one
    worker, with no task switch at all. Counters are updated once per chunk (and
    every ``FLUSH`` events); the tally of ``stats.begin`` keeps them exact meanwhile.

    With a key, an event whose key is being handled waits in that key's chain, and the
    worker that handles the key takes the chain's events in order before anything
    else: one at a time per key, in arrival order; different keys concurrently. Events
    taken and not begun (in ``local`` and in chains) are at most ``max_inflight``.

    The loop is the caller's (``astart``) or a private one in a thread (``start``).
    """

    def __init__(self, pipeline: Pipeline, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(pipeline)
        self.own_loop = loop is None
        self.loop = loop or asyncio.new_event_loop()
        self.on_finished: Callable[[], None] | None = None
        #: Workers at most (``events()`` delivers through one, to keep the order).
        self.max_workers = pipeline.max_inflight
        self.queue = BoundedQueue(
            pipeline.queue_size,
            pipeline.policy,
            pipeline.stats,
            sample_every=pipeline.sample_every,
            on_ready=self._ready,
        )
        self._thread: threading.Thread | None = None
        self._dispatcher: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.local: deque[Any] = deque()  # taken from the queue: events, or batches
        self.chains: dict[Hashable, deque[Any]] = {}
        self.chained = 0  # events waiting in chains
        self.workers = 0  # started and not ended
        self.waking = 0  # woken or started, not yet running
        self.idle: deque[asyncio.Future[None]] = deque()
        self._wake_pending = False
        self._ended: asyncio.Future[None] | None = None

    @property
    def discard(self) -> bool:
        """True once what is left is to be dropped (counted), not handled."""
        return self.p._cut

    @discard.setter
    def discard(self, value: bool) -> None:
        if value:
            self.p._cut = True

    # --- wakeups ---------------------------------------------------------------------

    def _ready(self) -> None:
        """From a reader thread: items were queued (or the queue closed)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # a closed loop has nothing to wake
            self.loop.call_soon_threadsafe(self._on_ready)

    def _on_ready(self) -> None:
        self._wake_pending = False  # before looking: a later put schedules another call
        if self.queue.closed_and_empty:
            self._wake_all()
        else:
            self._wake_one()

    def _room(self) -> int:
        return self.p.max_inflight - len(self.local) - self.chained

    def _wake_one(self) -> None:
        """Wake (or start) one more worker, if there is work it could take and no
        other worker is already on its way to it."""
        if self.waking or not (self.local or (self.queue.depth and self._room() > 0)):
            return
        while self.idle:
            parked = self.idle.popleft()
            if not parked.done():
                parked.set_result(None)
                self.waking += 1
                return
        if self.workers < self.max_workers:
            self._start_worker()

    def _wake_all(self) -> None:
        while self.idle:
            parked = self.idle.popleft()
            if not parked.done():
                parked.set_result(None)
                self.waking += 1

    async def _park(self) -> None:
        parked = self.loop.create_future()
        self.idle.append(parked)
        await parked
        self.waking -= 1

    def _start_worker(self) -> None:
        self.workers += 1
        self.waking += 1
        task = self.loop.create_task(self._work())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        if self.own_loop:
            started = threading.Event()

            def run_loop() -> None:
                asyncio.set_event_loop(self.loop)
                self._dispatcher = self.loop.create_task(self._dispatch())
                self.loop.call_soon(started.set)
                try:
                    with contextlib.suppress(asyncio.CancelledError):
                        self.loop.run_until_complete(self._dispatcher)
                    # Cancelled at the deadline: let the handlers' tasks see it too.
                    rest = asyncio.all_tasks(self.loop)
                    if rest:
                        self.loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
                finally:
                    self.loop.close()

            self._thread = threading.Thread(target=run_loop, name="bpfloom-async", daemon=True)
            self._thread.start()
            started.wait()
        else:
            self._dispatcher = self.loop.create_task(self._dispatch())

    async def _dispatch(self) -> None:
        """Start the first worker; end when the last one has."""
        self._ended = self.loop.create_future()
        self._start_worker()
        await self._ended
        if self.on_finished is not None:
            self.on_finished()

    def _refill(self) -> bool:
        """Take what the queue holds, within ``max_inflight``; False if nothing."""
        room = self._room()
        if room <= 0:
            return False
        if self.p.batch:
            items = self.queue.get_nowait_many(room)
            self.local.extend(items)
            return bool(items)
        taken = False
        for chunk in self.queue.take_events_nowait(min(room, LOCAL_CHUNK)):
            try:
                self.local.extend(chunk)  # decodes a batch's events
            except Exception as exc:  # as a reader failure: the pipeline ends, loudly
                self.p.stats.add(dropped_queue=len(chunk))
                self.p._failed_outside_handler("decoding events", exc)
                continue
            taken = True
        return taken

    async def _work(self) -> None:
        self.waking -= 1
        try:
            if self.p.batch:
                await self._work_batches()
            else:
                await self._work_events()
        finally:
            self.workers -= 1
            # The queue is closed and drained: the parked workers end too.
            self._wake_all()
            if self.workers == 0 and self._ended is not None and not self._ended.done():
                self._ended.set_result(None)

    async def _idle(self) -> bool:
        """Nothing to take: park until woken; False once the queue is closed and
        drained (the worker ends)."""
        if self.queue.closed_and_empty:
            return False
        await self._park()
        return True

    def _drop_local(self) -> None:
        """Handling is cut off: what ``local`` holds is dropped, counted."""
        p = self.p
        n = sum(len(item) for item in self.local) if p.batch else len(self.local)
        self.local.clear()
        if n:
            p.stats.add(dropped_queue=n)

    async def _work_batches(self) -> None:
        p = self.p
        local = self.local
        while True:
            if not local and not self._refill():
                if not await self._idle():
                    return
                continue
            if p._cut:
                self._drop_local()
                continue
            item = local.popleft()
            self._wake_one()
            await p.acall(item)

    async def _work_events(self) -> None:
        """Events, one after the other while handlers do not wait; with a key, an event
        whose key is being handled waits in the key's chain, which the worker handling
        that key runs next."""
        p = self.p
        stats = p.stats
        handler = p.handler or _ignore
        key = p.key
        local = self.local
        chains = self.chains
        isawaitable = inspect.isawaitable
        # A fleet source is told of each event finished (``Pipeline._settling``);
        # events() tells it when the loop body is done instead.
        settle = None if p._settle_after_yield else p._settle
        every = max(p.sample_every, 1)
        perf = time.perf_counter_ns
        count = 0
        samples: list[int] = []
        timed: list[Any] = []  # the events timed: their end-to-end latency too
        tally: list[int] | None = None  # [finished, errors] while active (``stats.begin``)
        try:
            while True:
                if not local:
                    if tally is not None and (tally[0] or tally[1]):
                        self._flush(tally, samples, timed, end=False)
                        samples, timed = [], []
                    if not self._refill():
                        if tally is not None:
                            self._flush(tally, samples, timed, end=True)
                            tally, samples, timed = None, [], []
                        if not await self._idle():
                            return
                        continue
                if tally is None:
                    tally = stats.begin()
                while local:
                    if p._cut:
                        self._drop_local()
                        break
                    ev = local.popleft()
                    chain: deque[Any] | None = None
                    if key is not None:
                        k = self._key(key, ev)
                        if k is _NO_KEY:
                            continue
                        chain = chains.get(k)
                        if chain is not None:  # its key is being handled: wait for it
                            chain.append(ev)
                            self.chained += 1
                            continue
                        chains[k] = chain = deque()
                    while True:
                        count += 1
                        t0 = 0 if count % every else perf()
                        try:
                            result = handler(ev)
                            if result is not None and isawaitable(result):
                                self._wake_one()  # the next event need not wait for this
                                await result
                                if tally[0] >= FLUSH:
                                    self._flush(tally, samples, timed, end=False)
                                    samples, timed = [], []
                        except asyncio.CancelledError:
                            # Cut off at the shutdown deadline: not handled (the final
                            # accounting counts it as dropped).
                            raise
                        except BaseException as exc:  # kept from the loop, which would die
                            tally[1] += 1
                            p._raised(exc)
                        tally[0] += 1
                        if settle is not None and not p._halted:
                            settle(ev)
                        if t0:
                            samples.append(perf() - t0)
                            timed.append(ev)
                        if chain is None:
                            break
                        if chain and p._cut:
                            stats.add(dropped_queue=len(chain))
                            self.chained -= len(chain)
                            chain.clear()
                        if not chain:
                            del chains[k]
                            break
                        ev = chain.popleft()
                        self.chained -= 1
        finally:
            if tally is not None:
                self._flush(tally, samples, timed, end=True)

    def _key(self, key: Callable[[Any], Hashable], ev: Any) -> Hashable:
        """``key(ev)``; ``_NO_KEY`` when it fails, which ends the pipeline (as a reader
        failure; a ``BaseException`` as from a handler) and drops the event."""
        p = self.p
        try:
            return key(ev)
        except Exception as exc:
            p._failed_outside_handler("the key function", exc)
            p._cut = True
        except BaseException as exc:
            p._halt(exc)
        p.stats.add(dropped_queue=1)
        return _NO_KEY

    def _flush(self, tally: list[int], samples: list[int], timed: list[Any], *, end: bool) -> None:
        """A worker's counts since its last flush go into the stats."""
        if samples:
            self.p.stats.handler_latency.extend(samples)
            self.p._record_e2e(timed)
        self.p.stats.flush(tally, end=end)

    def _drop_held(self) -> None:
        """On the loop, past the deadline: what was taken and not begun is dropped."""
        self._drop_local()
        n = 0
        for chain in self.chains.values():
            n += len(chain)
            chain.clear()
        self.chained = 0
        if n:
            self.p.stats.add(dropped_queue=n)

    def submit(self, batch: Batch) -> None:
        p = self.p
        stop = p._stop_reading if p.error is not None else None
        if p.batch:
            self.queue.put_many([batch], weight=len(batch), stop=stop)
        else:
            self.queue.put_events(batch, stop=stop)

    async def adrain(self, deadline: float) -> None:
        """On the loop: close the queue and wait for the workers until ``deadline``."""
        self.queue.close()
        if self._dispatcher is None:
            return
        try:
            await asyncio.wait_for(
                asyncio.shield(self._dispatcher), max(deadline - time.monotonic(), 0.0)
            )
        except TimeoutError:
            # Past the deadline: nothing may keep running (and counting) after stop().
            self.discard = True
            self.queue.abandon()
            self._drop_held()
            self._dispatcher.cancel()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(self._dispatcher, *self.tasks, return_exceptions=True)

    def finish(self, deadline: float) -> None:
        self.queue.close()
        if self.own_loop:
            assert self._thread is not None
            self._thread.join(max(deadline - time.monotonic(), 0.0))
            if self._thread.is_alive():
                self.discard = True
                self.queue.abandon()
                with contextlib.suppress(RuntimeError):  # the loop just closed
                    self.loop.call_soon_threadsafe(self._cancel_all)
                self._thread.join(1.0)
            # The loop's thread closes the loop itself when it ends.
        self.queue.abandon()

    def _cancel_all(self) -> None:
        self._drop_held()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    def threads(self) -> list[threading.Thread]:
        return [self._thread] if self._thread is not None else []
