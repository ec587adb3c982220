"""Records to NATS JetStream: batched, acknowledged, deduplicated, spooled.

``--sink nats://HOST:PORT`` on every command adds this sink. The message format
(subjects, headers, JSON lines or Arrow) is ``bpfloom.fleet.wire``'s; the design —
batches, message ids, the spool, the accounting — is in ``docs/fleet.md``.

- **Batches.** Records gather per kind (events, summaries, alerts) and record type
  until ``batch_records`` (100 to 1000) or ``batch_bytes`` are reached, or
  ``flush_interval`` passed since the first: then the batch is *sealed* into one
  message with the next sequence number. JSON lines are the records ``--json``
  prints; ``format="arrow"`` sends the raw records of the numpy batches as an Arrow
  IPC stream, made without a Python step per event (``sinks.parquet.arrow_table``).
- **Publishing** is asynchronous, at most ``max_pending`` messages waiting for their
  acknowledgement at once; an acknowledgement that does not come within
  ``ack_timeout``, an error, or a lost connection puts the message back in the spool
  (``fleet.spool``), in order, to be sent again with the same ``Nats-Msg-Id``:
  JetStream drops the second copy of what it already stored (at-least-once, without
  duplicates within the stream's duplicate window).
- **The spool** holds what waits for the server, bounded in bytes; when it is full
  the oldest messages are dropped and counted. Writing never waits for the network.
- **Accounting**, in records: ``published`` (acknowledged), ``spooled`` (waited for an
  unreachable server at some point), ``dropped_sink`` (lost: a full spool, a record
  that cannot be encoded or is larger than a message may be, or not acknowledged by
  the shutdown deadline), and with a spool directory ``kept`` (left there for the next
  run) and ``adopted`` (taken over from an earlier run). At the end, records written
  + adopted = published + dropped_sink + kept.

The connection is tried once when the sink is made: a server that refuses our
credentials is an error then (``BpfloomError``); one that does not answer is not —
records are spooled and a connection is tried again and again in the background.
Never fatal for the run; ``warn`` receives one line for each thing an operator should
know (unreachable, reconnected, the spool full, an error from the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._exceptions import BpfloomError
from .._terminal import json_line
from ..fleet import wire
from ..fleet.connection import LoopThread, NatsOptions, describe, is_auth_error, refusal
from ..fleet.defaults import (
    DEFAULT_BATCH_RECORDS,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    DEFAULT_SPOOL_BYTES,
    DEFAULT_STREAM,
)
from ..fleet.spool import Outgoing, Spool
from ..fleet.streams import ensure_stream
from . import Record, Sink

if TYPE_CHECKING:
    from ..batch import Batch

log = logging.getLogger("bpfloom.nats")

DEFAULT_BATCH_BYTES = 512 * 1024
DEFAULT_MAX_PENDING = 64
HEADER_ROOM = 1024  # bytes kept free for headers under the server's max_payload


@dataclass
class _Gathering:
    """Records gathered for the next message of one kind and type."""

    kind: str
    type_name: str
    lines: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    bytes: int = 0
    since: float = 0.0


class NatsSink(Sink):
    """Publishes records to JetStream (see the module docstring); never fatal.

    ``host`` and ``tool`` name the subject (``bpfloom.<host>.<tool>``); ``kind`` is
    what ``write`` gets: ``events`` or, for ``detect``, ``alerts``. ``stream`` is
    created when missing, capturing ``bpfloom.>``, with ``max_age`` seconds and
    ``max_bytes`` as its limits. Raises ``BpfloomError`` for bad arguments, refused
    credentials, a stream that cannot be created, or a spool directory in use.
    """

    name = "nats"
    fatal = False
    wants_batches = True

    def __init__(
        self,
        options: NatsOptions,
        *,
        host: str,
        tool: str,
        kind: str = "events",
        format: str = "json",
        stream: str = DEFAULT_STREAM,
        max_age: float = DEFAULT_MAX_AGE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending: int = DEFAULT_MAX_PENDING,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
        spool_dir: str | None = None,
        shutdown_timeout: float = 5.0,
        ack_timeout: float = 5.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._base_errors = 0
        super().__init__()
        if format not in wire.FORMATS:
            raise BpfloomError(f"unknown format {format!r}; choose json or arrow")
        if kind not in wire.KINDS:
            raise BpfloomError(f"unknown kind {kind!r}")
        try:
            wire.check_token(host, "host name")
            wire.check_token(tool, "tool name")
            wire.check_token(stream, "stream name")
        except ValueError as exc:
            raise BpfloomError(str(exc)) from None
        if not 1 <= batch_records <= 100_000 or batch_bytes < 1024 or max_pending < 1:
            raise BpfloomError("batch_records, batch_bytes and max_pending out of range")
        if format == "arrow":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise BpfloomError(
                    "Arrow messages need pyarrow: pip install 'bpfloom[parquet]'"
                ) from exc
        self.options = options
        self.name = f"nats ({options.where})"
        self.host = host
        self.tool = tool
        self.kind = kind
        self.format = format
        self.stream = stream
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.shutdown_timeout = shutdown_timeout
        self.ack_timeout = ack_timeout
        self._warn = warn or (lambda text: log.warning("%s", text))
        self.boot = secrets.token_hex(8)
        self.sequence = 0  # messages sealed
        self.offered = 0  # records given to the sink
        self.published = 0  # records acknowledged
        self.messages = 0  # messages acknowledged
        self.duplicates = 0  # acknowledged as already stored (a resend)
        self.unencodable = 0  # records lost before the spool (encoding, size)
        self.spool = Spool(spool_bytes, spool_dir, self.boot)
        self._gathering: dict[tuple[str, str], _Gathering] = {}
        self._inflight: dict[int, tuple[Outgoing, asyncio.Future[Any]]] = {}
        self._closed = False
        self._up = False
        self._ever_up = False
        self._max_payload = batch_bytes + HEADER_ROOM
        self._nc: Any = None
        self._js: Any = None
        self._warned: set[str] = set()
        self._stream_checked = 0.0
        self._last_error: BaseException | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = LoopThread("bpfloom-nats")
        self._wake = asyncio.Event()
        try:
            first = self._loop.run(self._start(), timeout=self._first_timeout())
        except TimeoutError:
            first = "no answer"
        except BaseException:
            self._loop.stop()
            self.spool.close()
            raise
        if first:
            self._say(
                f"{options.where}: cannot connect ({first}); spooling records until it answers"
            )
        self._started = True

    # --- counters ------------------------------------------------------------------

    @property
    def errors(self) -> int:
        """Records lost (``dropped_sink``): what ``sink_errors`` counts."""
        return self._base_errors + self.unencodable + self.spool.dropped

    @errors.setter
    def errors(self, value: int) -> None:
        self._base_errors = value

    @property
    def dropped_sink(self) -> int:
        return self.errors

    def counters(self) -> dict[str, int]:
        """The sink's numbers for ``--stats`` and ``--metrics-addr``."""
        out = {
            "published": self.published,
            "spooled": self.spool.spooled,
            "dropped_sink": self.dropped_sink,
        }
        if self.spool.directory is not None:
            out["kept"] = self.spool.kept
            out["adopted"] = self.spool.adopted
        return out

    def report(self) -> str:
        """One line for the end of a run."""
        line = (
            f"nats {self.options.where}: {self.published} records published in "
            f"{self.messages} message(s), {self.spool.spooled} spooled, "
            f"{self.dropped_sink} dropped"
        )
        if self.spool.directory is not None:
            line += f", {self.spool.kept} kept in {self.spool.directory} for the next run" + (
                f", {self.spool.adopted} adopted from an earlier run" if self.spool.adopted else ""
            )
        return line

    def error_message(self) -> str:
        return f"{self.name}: {describe(self.error) if self.error else 'failed'}"

    # --- writing (any thread) --------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        self._add_records(self.kind, records)

    def write_batch(self, batch: Batch, records: Sequence[Record]) -> None:
        if self.format == "arrow" and self.kind == "events" and len(batch):
            self._add_arrow(batch)
        else:
            self._add_records(self.kind, records)

    def summary(self, text: str, records: Sequence[Record] = ()) -> None:
        """Interval rows and exit summaries go out as ``summary`` messages."""
        self._add_records("summary", records)

    def flush(self) -> None:
        """Seal what is gathered now (it is published soon after)."""
        with self.lock:
            for key in list(self._gathering):
                self._seal(key)

    def _add_records(self, kind: str, records: Sequence[Record]) -> None:
        if not records:
            return
        with self.lock:
            self.offered += len(records)
            if self._closed:
                self.unencodable += len(records)
                return
            key = (kind, "")
            g = self._gathering.get(key)
            if g is None:
                g = self._gathering[key] = _Gathering(kind, "")
            limit = min(self.batch_bytes, self._max_payload - HEADER_ROOM)
            for record in records:
                try:
                    line = json_line(record)
                except (TypeError, ValueError):
                    self.unencodable += 1
                    continue
                size = len(line.encode("utf-8", "surrogateescape")) + 1
                if size > self._max_payload - HEADER_ROOM:
                    self.unencodable += 1  # larger than any message may be
                    continue
                if g.count and g.bytes + size > limit:
                    self._seal(key)
                    g = self._gathering[key] = _Gathering(kind, "")
                if not g.count:
                    g.since = time.monotonic()
                g.lines.append(line)
                g.count += 1
                g.bytes += size
                if g.count >= self.batch_records:
                    self._seal(key)
                    g = self._gathering[key] = _Gathering(kind, "")

    def _add_arrow(self, batch: Batch) -> None:
        records = batch.numpy()
        n = len(records)
        with self.lock:
            self.offered += n
            if self._closed:
                self.unencodable += n
                return
            key = ("events", batch.decoder.type.name or batch.source)
            g = self._gathering.get(key)
            if g is None:
                g = self._gathering[key] = _Gathering("events", key[1])
            if not g.count:
                g.since = time.monotonic()
            g.arrays.append(records)
            g.count += n
            g.bytes += n * records.dtype.itemsize
            if g.count >= self._arrow_rows(records.dtype.itemsize):
                self._seal(key)

    def _arrow_rows(self, itemsize: int) -> int:
        limit = min(self.batch_bytes, self._max_payload - HEADER_ROOM)
        return max(1, min(self.batch_records, limit // max(itemsize, 1)))

    def _seal(self, key: tuple[str, str]) -> None:
        """Turn what is gathered under ``key`` into messages (the caller holds the lock)."""
        g = self._gathering.pop(key, None)
        if g is None or not g.count:
            return
        if g.arrays:
            from .parquet import arrow_table

            records = np.concatenate(g.arrays) if len(g.arrays) > 1 else g.arrays[0]
            rows = self._arrow_rows(records.dtype.itemsize)
            for start in range(0, len(records), rows):
                part = records[start : start + rows]
                try:
                    payload = wire.arrow_payload(arrow_table(part))
                except Exception:
                    self.unencodable += len(part)
                    continue
                self._enqueue(g.kind, payload, len(part), wire.ARROW_STREAM, g.type_name)
        else:
            self._enqueue(g.kind, wire.json_payload(g.lines), g.count, wire.JSON_LINES, "")

    def _enqueue(self, kind: str, payload: bytes, count: int, content: str, type_name: str) -> None:
        self.sequence += 1
        headers = {
            wire.MSG_ID: wire.message_id(self.host, self.boot, self.sequence),
            wire.CONTENT_TYPE: content,
            wire.HOST: self.host,
            wire.TOOL: self.tool,
            wire.KIND: kind,
            wire.COUNT: str(count),
            wire.TIME: f"{time.time():.6f}",
        }
        if type_name:
            headers[wire.TYPE] = type_name
        out = Outgoing(
            self.sequence,
            wire.subject(self.host, self.tool, kind),
            headers,
            payload,
            count,
            len(payload),
        )
        full_before = self.spool.full_once
        self.spool.put(out, server_down=not self._up)
        if self.spool.full_once and not full_before:
            self._loop.call(
                self._say,
                f"spool full ({self.spool.limit} bytes): dropping the oldest batches, counted",
            )
        self._loop.call(self._wake.set)

    # --- the event loop: connecting ---------------------------------------------------

    def _first_timeout(self) -> float:
        return self.options.connect_timeout * max(len(self.options.servers), 1) + 3.0

    async def _start(self) -> str:
        """Start the publisher and connect; '' when connected within the connect
        timeout, else why not (nats-py goes on trying in the background). Refused
        credentials and a stream that cannot be made raise."""
        self._tasks.append(asyncio.ensure_future(self._publisher()))
        self._tasks.append(asyncio.ensure_future(self._ticker()))
        self._connecting = asyncio.ensure_future(self._connect())
        give_up = time.monotonic() + self.options.connect_timeout
        while not self._connecting.done() and time.monotonic() < give_up:
            if self._last_error is not None and refusal(self._last_error):
                break
            await asyncio.sleep(0.02)
        last = self._last_error
        if not self._connecting.done():
            if last is not None and refusal(last):
                self._connecting.cancel()
                raise BpfloomError(f"{self.options.where}: {refusal(last)}")
            self._connecting.add_done_callback(self._connected_late)
            return describe(last) if last is not None else "no answer"
        exc = self._connecting.exception()
        if exc is None:
            return ""
        if isinstance(exc, BpfloomError):
            raise exc
        if refusal(exc):
            raise BpfloomError(f"{self.options.where}: {refusal(exc)}")
        return describe(exc)

    def _connected_late(self, task: asyncio.Future[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._say(f"{self.options.where}: {describe(exc)}")
        elif not self._closed:
            self._say(
                f"{self.options.where}: connected; sending {len(self.spool)} spooled messages"
            )

    async def _connect(self) -> None:
        import nats

        kwargs = self.options.connect_kwargs()
        self._nc = await nats.connect(
            **kwargs,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        self._js = self._nc.jetstream(publish_async_max_pending=self.max_pending + 64)
        max_payload = int(getattr(self._nc, "max_payload", 0) or 0)
        if max_payload:
            self._max_payload = max_payload
        await self._ensure_stream()
        self._up = self._ever_up = True
        self._wake.set()

    async def _ensure_stream(self) -> None:
        self._stream_checked = time.monotonic()
        await ensure_stream(self._js, self.stream, self.options.where, self.max_age, self.max_bytes)

    async def _close_connection(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._up = False
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 1.0)

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        if is_auth_error(exc) and (self._ever_up or self._started):
            if self.error is None:
                self.error = exc
            self._say(f"{self.options.where}: {describe(exc)}")

    async def _on_disconnected(self) -> None:
        if self._closed and not self._inflight and not len(self.spool):
            return
        if self._up:
            self._up = False
            self._say(f"{self.options.where}: disconnected; spooling records until it answers")
        self._requeue_inflight()
        self.spool.spool_all()

    async def _on_reconnected(self) -> None:
        self._say(
            f"{self.options.where}: connected again; sending {len(self.spool)} spooled messages"
        )
        try:
            await self._ensure_stream()  # a server that lost its store lost the stream
        except BpfloomError as exc:
            self._say(str(exc))
        self._up = True
        self._wake.set()

    async def _on_closed(self) -> None:
        self._up = False

    def _say(self, text: str) -> None:
        """Tell the operator, once per distinct line."""
        if text in self._warned:
            return
        if len(self._warned) < 64:
            self._warned.add(text)
        self._warn(text)

    # --- the event loop: publishing ---------------------------------------------------

    async def _publisher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._up and self._js is not None and len(self._inflight) < self.max_pending:
                out = self.spool.take()
                if out is None:
                    break
                await self._send(out)

    async def _send(self, out: Outgoing) -> None:
        assert out.payload is not None
        out.sent_at = time.monotonic()
        try:
            future = await self._js.publish_async(out.subject, out.payload, headers=out.headers)
        except Exception:
            self.spool.put_back([out], server_down=not self._up)
            return
        self._inflight[out.order] = (out, future)
        future.add_done_callback(lambda f, out=out: self._answered(out, f))

    def _answered(self, out: Outgoing, future: asyncio.Future[Any]) -> None:
        if self._inflight.pop(out.order, None) is None:
            return  # already put back (a lost connection, a timeout)
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or exc is not None:
            self.spool.put_back([out], server_down=not self._up)
            if exc is not None:
                self._publish_failed(exc)
        else:
            ack = future.result()
            self.published += out.count
            self.messages += 1
            if getattr(ack, "duplicate", False):
                self.duplicates += 1
            self.spool.done(out)
        self._wake.set()

    def _publish_failed(self, exc: BaseException) -> None:
        from nats.js.errors import NoStreamResponseError

        if isinstance(exc, NoStreamResponseError):
            if time.monotonic() - self._stream_checked > 1.0 and self._js is not None:
                self._loop.spawn(self._recreate_stream())
            return
        self._say(f"{self.options.where}: publishing failed ({describe(exc)}); retrying")

    async def _recreate_stream(self) -> None:
        try:
            await self._ensure_stream()
        except BpfloomError as exc:
            self._say(str(exc))

    def _requeue_inflight(self) -> None:
        items = [out for out, _ in self._inflight.values()]
        futures = [f for _, f in self._inflight.values()]
        self._inflight.clear()
        for f in futures:
            f.cancel()
        self.spool.put_back(items, server_down=not self._up)
        self._wake.set()

    async def _ticker(self) -> None:
        """Seal batches older than ``flush_interval``; put back messages whose
        acknowledgement is late."""
        step = max(min(self.flush_interval / 2, 0.05), 0.005)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            # Never wait for a writer here: it may be encoding a large batch, and the
            # loop must keep publishing meanwhile (a busy writer seals by itself).
            if self.lock.acquire(blocking=False):
                try:
                    for key, g in list(self._gathering.items()):
                        if g.count and now - g.since >= self.flush_interval:
                            self._seal(key)
                finally:
                    self.lock.release()
            late = [
                out.order
                for out, _ in self._inflight.values()
                if now - out.sent_at > self.ack_timeout
            ]
            if late:
                items = [self._inflight.pop(order) for order in late]
                for _, f in items:
                    f.cancel()
                self.spool.put_back([out for out, _ in items], server_down=not self._up)
                self._wake.set()

    async def _drain(self, deadline: float) -> None:
        while (len(self.spool) or self._inflight) and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Seal what is gathered, wait for acknowledgements until ``shutdown_timeout``,
        then count what is left (kept in the spool directory, or dropped); idempotent."""
        with self.lock:
            if self._closed:
                return
            for key in list(self._gathering):
                self._seal(key)
            self._closed = True
        deadline = time.monotonic() + self.shutdown_timeout
        if len(self.spool) or self._inflight:
            with contextlib.suppress(TimeoutError):
                self._loop.run(self._drain(deadline), timeout=self.shutdown_timeout + 1.0)
        with contextlib.suppress(TimeoutError, Exception):
            self._loop.run(self._finish(), timeout=3.0)
        self._loop.stop()
        left = [out for out, _ in self._inflight.values()]
        self._inflight.clear()
        self.spool.close(left)
        self.written = self.published

    async def _finish(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        await self._close_connection()

    def _write(self, records: Sequence[Record]) -> None:  # never called: write is ours
        raise NotImplementedError
