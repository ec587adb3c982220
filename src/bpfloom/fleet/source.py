"""The collector's side: a JetStream pull consumer the ``Pipeline`` reads like a ring.

``FleetSource`` is an ``EventSource`` (``bpfloom.pipeline``): ``read(timeout)`` returns
one message's records as a ``FleetBatch``, so every executor of the pipeline (inline,
thread, async) hands a handler events from the fleet as from a local object:
``FleetEvent`` is the record as ``--json`` printed it on the agent, plus its ``host``,
a dict whose keys also read as attributes (``ev.pid``, ``ev.host``), as decoded events
do. Arrow messages give the raw records (``bytes`` for ``char`` arrays decoded with
surrogateescape, as local strings are).

**Acknowledged after handling.** The pipeline tells the source when a handler has
finished with a batch or an event (``settle``); when every record of a message is
settled, the message is acknowledged. A collector that dies before that leaves the
message unacknowledged, and JetStream redelivers it after ``ack_wait`` (to this
collector, or another one sharing the durable); a collector that stops cleanly gives
unfinished messages back at once (``nak``). Messages still being handled are kept
alive with "in progress" acknowledgements. Events the pipeline dropped (a full queue
with a dropping policy) leave their message unacknowledged: it comes back.

**Work sharing and duplicates.** Collectors with the same ``durable`` name share one
consumer: each message goes to one of them. A redelivered message whose id this
collector already handled (its acknowledgement was lost) is acknowledged and skipped
(``duplicates``); JetStream itself dropped agents' resends by ``Nats-Msg-Id``.

The process executor is not supported (acknowledgements live in this process).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .._exceptions import BpfloomError, ClosedError
from ..batch import Batch
from ..decode import Decoder
from ..types import Int
from . import wire
from .connection import LoopThread, NatsOptions, describe, is_auth_error, parse_server, refusal
from .defaults import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, DEFAULT_STREAM
from .streams import ensure_stream

log = logging.getLogger("bpfloom.collect")

DEFAULT_SUBJECT = f"{wire.SUBJECT_ROOT}.>"
DEFAULT_ACK_WAIT = 30.0
DEFAULT_PREFETCH = 64  # messages fetched and not yet handled, at most
DEDUP_IDS = 65536  # message ids remembered to skip redeliveries already handled
EPHEMERAL_IDLE = 60.0  # seconds before the server removes a collector's own consumer

# Fleet records have no C type: the pipeline sees a decoder of plain bytes, with no
# fields (so no kernel timestamp: hosts' clocks are not ours).
_DECODER = Decoder(Int("fleet_record", 1, False))


class FleetEvent(dict[str, Any]):
    """One record from the fleet: the dict the agent's ``--json`` printed, plus
    ``host``; its keys read as attributes too (``ev.pid``). ``message`` is the
    ``FleetMessage`` it came in."""

    __slots__ = ("message",)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class FleetMessage:
    """One NATS message of records: who sent it, what it holds, its acknowledgement.

    ``host``, ``tool``, ``kind`` (``events``, ``summary``, ``alerts``), ``content_type``,
    ``type_name`` (the C struct of Arrow records), ``msg_id``, ``sent`` (the agent's
    clock when the batch was sealed), ``delivered`` (1, or more for a redelivery),
    ``events`` (``FleetEvent`` s) and ``table`` (the Arrow table, for Arrow messages).
    """

    __slots__ = (
        "_events",
        "_left",
        "_lock",
        "_msg",
        "_source",
        "content_type",
        "count",
        "delivered",
        "host",
        "kind",
        "msg_id",
        "received",
        "sent",
        "table",
        "tool",
        "type_name",
    )

    def __init__(self, msg: Any, source: FleetSource) -> None:
        headers = msg.headers or {}
        self._msg = msg
        self._source = source
        self._lock = threading.Lock()
        self.host = wire.header(headers, wire.HOST, "unknown")
        self.tool = wire.header(headers, wire.TOOL, "unknown")
        self.kind = wire.header(headers, wire.KIND, "events")
        self.content_type = wire.header(headers, wire.CONTENT_TYPE, wire.JSON_LINES)
        self.type_name = wire.header(headers, wire.TYPE)
        self.msg_id = wire.header(headers, wire.MSG_ID) or msg.reply
        try:
            self.sent = float(wire.header(headers, wire.TIME, "0"))
        except ValueError:
            self.sent = 0.0
        try:
            self.delivered = int(msg.metadata.num_delivered)
        except Exception:
            self.delivered = 1
        self.received = time.monotonic()
        self.table: Any = None
        self._events: list[FleetEvent] | None = None
        if self.content_type == wire.ARROW_STREAM:
            # Arrow stays Arrow until someone iterates: a batch handler (or Parquet)
            # takes the table with no Python step per record.
            self.table = wire.decode_arrow(msg.data)
            self.count = int(self.table.num_rows)
        else:
            self._events = self._wrap(wire.decode_json(msg.data))
            self.count = len(self._events)
        self._left = self.count

    @property
    def events(self) -> list[FleetEvent]:
        """The records as ``FleetEvent`` s (Arrow rows are converted on first use)."""
        if self._events is None:
            rows = self.table.to_pylist()
            self._events = self._wrap([{k: _plain(v) for k, v in r.items()} for r in rows])
        return self._events

    def _wrap(self, records: list[dict[str, Any]]) -> list[FleetEvent]:
        events = []
        for record in records:
            ev = FleetEvent(record)
            ev.setdefault("host", self.host)
            ev.message = self  # type: ignore[attr-defined]  # a slot mypy does not see
            events.append(ev)
        return events

    def settle(self, n: int) -> None:
        """``n`` of its records were handled; acknowledged when none is left."""
        with self._lock:
            if self._left <= 0:
                return
            self._left -= n
            done = self._left <= 0
        if done:
            self._source._acknowledge(self)

    @property
    def settled(self) -> bool:
        return self._left <= 0


def _plain(value: Any) -> Any:
    """Arrow's ``bytes`` (char arrays) as text, losslessly, like local strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class FleetBatch(Batch):
    """The records of one fleet message, as the pipeline moves batches.

    Iterating gives ``FleetEvent`` s; ``message`` is the ``FleetMessage``;
    ``arrow()`` its Arrow table with a ``host`` column (Arrow messages only). There is
    no numpy view: fleet records carry no C layout.
    """

    __slots__ = ("message",)

    def __init__(self, message: FleetMessage | None, source: str) -> None:
        n = message.count if message is not None else 0
        super().__init__(np.empty((n, 0), dtype=np.uint8), _DECODER, source)
        self.message = message

    def __iter__(self) -> Iterator[Any]:
        return iter(self.message.events if self.message is not None else ())

    def events(self) -> list[Any]:
        return list(self.message.events) if self.message is not None else []

    def __getitem__(self, index: int | slice) -> Any:
        """``batch[i]``: one record; ``batch[a:b]``: those records as a list (the
        pipeline hands events to its workers in slices, ``bpfloom._queue``)."""
        return (self.message.events if self.message is not None else [])[index]

    def numpy(self) -> np.ndarray:
        raise BpfloomError("fleet records have no numpy view; iterate, or use arrow()")

    def arrow(self) -> Any:
        """The records as an Arrow table with a ``host`` column (raises
        ``BpfloomError`` for JSON-lines messages: their records have no fixed schema)."""
        m = self.message
        if m is None or m.table is None:
            raise BpfloomError(
                "records sent as JSON lines have no raw layout; Parquet takes the raw "
                "records agents send with --nats-format arrow"
            )
        import pyarrow as pa

        return m.table.append_column("host", pa.array([m.host] * m.table.num_rows, pa.string()))


class FleetSource:
    """Reads records of the fleet from a JetStream consumer (see the module docstring).

    ``subject`` filters (``bpfloom.*.execsnoop``, ``bpfloom.web1.>``); ``durable``
    names a consumer that outlives this collector and is shared by every collector
    that names it (without one, a consumer of this collector's own, removed at
    ``close()``). ``deliver``: ``all`` (what the stream holds, the default with a
    durable) or ``new`` (from now on, the default without one). The stream is created
    when missing, as agents create it. Raises ``BpfloomError`` when the server refuses
    our credentials or the consumer cannot be made; an unreachable server is said
    (``warn``) and tried again until ``close()``.
    """

    owner = None

    def __init__(
        self,
        options: NatsOptions,
        subject: str = DEFAULT_SUBJECT,
        *,
        durable: str | None = None,
        stream: str = DEFAULT_STREAM,
        deliver: str | None = None,
        ack_wait: float = DEFAULT_ACK_WAIT,
        prefetch: int = DEFAULT_PREFETCH,
        max_age: float = DEFAULT_MAX_AGE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        _check_subject(subject)
        if durable is not None:
            try:
                wire.check_token(durable, "durable name")
            except ValueError as exc:
                raise BpfloomError(str(exc)) from None
        if deliver not in (None, "all", "new"):
            raise BpfloomError(f"deliver must be 'all' or 'new', not {deliver!r}")
        self.options = options
        self.subject = subject
        self.stream = stream
        self.durable = durable
        self.consumer = durable or f"collect-{secrets.token_hex(6)}"
        self.deliver = deliver or ("all" if durable else "new")
        self.ack_wait = ack_wait
        self.prefetch = prefetch
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.name = f"nats:{subject}"
        self.decoder = _DECODER
        self._warn = warn or (lambda text: log.warning("%s", text))
        self.messages = 0  # messages taken from the consumer
        self.records = 0
        self.redelivered = 0  # messages delivered more than once
        self.duplicates = 0  # redeliveries of messages already handled here: skipped
        self.bad = 0  # messages that could not be decoded (acknowledged, counted)
        self.acked = 0
        self.hosts: collections.Counter[str] = collections.Counter()
        self._queue: queue.Queue[FleetMessage | None] = queue.Queue()
        self._outstanding: dict[int, FleetMessage] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._closed = False
        self._nc: Any = None
        self._sub: Any = None
        self._last_error: BaseException | None = None
        self._said: set[str] = set()
        self._room = asyncio.Event()
        self._loop = LoopThread("bpfloom-collect")
        self._tasks: list[asyncio.Future[Any]] = []
        try:
            self._loop.run(self._start(), timeout=options.connect_timeout + 10.0)
        except TimeoutError:
            self._loop.stop()
            raise BpfloomError(f"{options.where}: no answer while making the consumer") from None
        except BaseException:
            self._loop.stop()
            raise

    # --- EventSource -------------------------------------------------------------

    def read(self, timeout: float | None = None) -> Batch:
        """The next message's records (an empty batch when none came in ``timeout``)."""
        if self._closed and self._queue.empty():
            raise ClosedError(f"{self.name}: closed")
        try:
            message = self._queue.get(timeout=timeout)
        except queue.Empty:
            return FleetBatch(None, self.name)
        return self._batch(message)

    def poll(self) -> Batch:
        try:
            message = self._queue.get_nowait()
        except queue.Empty:
            return FleetBatch(None, self.name)
        return self._batch(message)

    def wakeup(self) -> None:
        self._queue.put(None)

    def _batch(self, message: FleetMessage | None) -> FleetBatch:
        if message is not None:
            self._loop.call(self._room.set)
        return FleetBatch(message, self.name)

    def settle(self, item: Any) -> None:
        """The pipeline finished handling ``item`` (a ``FleetBatch`` or ``FleetEvent``);
        anything else (events of another source in the same pipeline) is ignored."""
        if isinstance(item, FleetBatch):
            if item.message is not None:
                item.message.settle(len(item))
        elif isinstance(item, FleetEvent):
            item.message.settle(1)

    # --- the event loop ------------------------------------------------------------

    async def _start(self) -> None:
        import nats

        kwargs = self.options.connect_kwargs()
        connecting = asyncio.ensure_future(
            nats.connect(
                **kwargs,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        )
        give_up = time.monotonic() + self.options.connect_timeout
        while not connecting.done() and time.monotonic() < give_up:
            if self._last_error is not None and refusal(self._last_error):
                break
            await asyncio.sleep(0.02)
        last = self._last_error
        if not connecting.done():
            if last is not None and refusal(last):
                connecting.cancel()
                raise BpfloomError(f"{self.options.where}: {refusal(last)}")
            self._say(
                f"{self.options.where}: cannot connect "
                f"({describe(last) if last else 'no answer'}); trying again until it answers"
            )
            self._tasks.append(asyncio.ensure_future(self._later(connecting)))
            return
        exc = connecting.exception()
        if exc is not None:
            if refusal(exc):
                raise BpfloomError(f"{self.options.where}: {refusal(exc)}")
            raise BpfloomError(f"{self.options.where}: {describe(exc)}")
        self._nc = connecting.result()
        await self._subscribe()
        self._tasks.append(asyncio.ensure_future(self._fetcher()))
        self._tasks.append(asyncio.ensure_future(self._keepalive()))

    async def _later(self, connecting: asyncio.Future[Any]) -> None:
        """The server was unreachable at start: subscribe once nats-py got through."""
        try:
            self._nc = await connecting
            await self._subscribe()
        except Exception as exc:
            self._say(f"{self.options.where}: {describe(exc)}")
            return
        self._say(f"{self.options.where}: connected")
        self._tasks.append(asyncio.ensure_future(self._fetcher()))
        self._tasks.append(asyncio.ensure_future(self._keepalive()))

    async def _subscribe(self) -> None:
        from nats.js import api
        from nats.js.errors import NotFoundError

        js = self._nc.jetstream()
        await ensure_stream(js, self.stream, self.options.where, self.max_age, self.max_bytes)
        try:
            info = await js.consumer_info(self.stream, self.consumer)
        except NotFoundError:
            info = None
        if info is not None and info.config.filter_subject not in (None, self.subject):
            raise BpfloomError(
                f"durable {self.consumer!r} exists for subject "
                f"{info.config.filter_subject!r}, not {self.subject!r}: use another --durable"
            )
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            deliver_policy=api.DeliverPolicy.ALL
            if self.deliver == "all"
            else api.DeliverPolicy.NEW,
            max_ack_pending=max(self.prefetch * 4, 256),
            filter_subject=self.subject,
            inactive_threshold=None if self.durable else EPHEMERAL_IDLE,
        )
        try:
            self._sub = await js.pull_subscribe(
                self.subject, durable=self.consumer, stream=self.stream, config=config
            )
        except Exception as exc:
            raise BpfloomError(
                f"{self.options.where}: cannot make consumer {self.consumer!r} ({describe(exc)})"
            ) from None

    async def _fetcher(self) -> None:
        import nats.errors

        idle = True
        while not self._closed:
            room = self.prefetch - len(self._outstanding)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            want = 1 if idle else room
            try:
                msgs = await self._sub.fetch(batch=want, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                idle = True
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closed:
                    self._say(f"{self.options.where}: fetching failed ({describe(exc)})")
                    await asyncio.sleep(0.2)
                continue
            idle = len(msgs) < want
            for msg in msgs:
                self._take(msg)

    def _take(self, msg: Any) -> None:
        try:
            message = FleetMessage(msg, self)
        except Exception as exc:  # a payload that is not ours: counted, never redelivered
            self.bad += 1
            self._say(f"a message on {msg.subject!r} could not be decoded ({exc})")
            self._loop.spawn(_quietly(msg.term()))
            return
        if message.delivered > 1:
            self.redelivered += 1
        if message.msg_id in self._seen:
            self.duplicates += 1
            self._loop.spawn(_quietly(msg.ack()))
            return
        self.messages += 1
        self.records += message.count
        self.hosts[message.host] += message.count
        if not message.count:
            self._acknowledge_now(message)
            return
        self._outstanding[id(message)] = message
        self._queue.put(message)

    def _acknowledge(self, message: FleetMessage) -> None:
        """From any thread: every record of ``message`` was handled."""
        self._loop.call(self._acknowledge_now, message)

    def _acknowledge_now(self, message: FleetMessage) -> None:
        self._outstanding.pop(id(message), None)
        self._seen[message.msg_id] = None
        if len(self._seen) > DEDUP_IDS:
            self._seen.popitem(last=False)
        self.acked += 1
        self._loop.spawn(_quietly(message._msg.ack()))
        self._room.set()

    async def _keepalive(self) -> None:
        """Messages still being handled get "in progress" before ``ack_wait`` ends."""
        while not self._closed:
            await asyncio.sleep(max(self.ack_wait / 3, 0.5))
            now = time.monotonic()
            for message in list(self._outstanding.values()):
                if now - message.received > self.ack_wait / 3:
                    self._loop.spawn(_quietly(message._msg.in_progress()))

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        if is_auth_error(exc) and self._nc is not None:
            self._say(f"{self.options.where}: {describe(exc)}")

    async def _on_disconnected(self) -> None:
        if not self._closed:
            self._say(f"{self.options.where}: disconnected; waiting for it to answer")

    async def _on_reconnected(self) -> None:
        self._said.discard(f"{self.options.where}: disconnected; waiting for it to answer")
        self._say(f"{self.options.where}: connected again")

    def _say(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self._warn(text)

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop fetching; give back what was not handled (``nak``: redelivered now),
        send the acknowledgements, remove this collector's own consumer; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError, Exception):
            self._loop.run(self._finish(), timeout=5.0)
        self._loop.stop()
        self._queue.put(None)

    async def _finish(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._room.set()
        for message in list(self._outstanding.values()):
            await _quietly(message._msg.nak())
        self._outstanding.clear()
        nc = self._nc
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.flush(), 2.0)
            if not self.durable:
                await asyncio.wait_for(
                    nc.jetstream().delete_consumer(self.stream, self.consumer), 2.0
                )
        except Exception:
            pass
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2.0)

    def __enter__(self) -> FleetSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """What the collector took: messages, records, per-host records, redeliveries,
        duplicates skipped, messages that could not be decoded."""
        return {
            "messages": self.messages,
            "records": self.records,
            "hosts": dict(self.hosts),
            "redelivered": self.redelivered,
            "duplicates": self.duplicates,
            "bad_messages": self.bad,
        }


async def _quietly(coro: Any) -> None:
    with contextlib.suppress(Exception):
        await coro


def _check_subject(subject: str) -> None:
    tokens = subject.split(".")
    bad = (
        not subject
        or any(not t for t in tokens)
        or any(c.isspace() for c in subject)
        or any(">" in t and t != ">" for t in tokens)
        or ">" in tokens[:-1]
        or any("*" in t and t != "*" for t in tokens)
    )
    if bad:
        raise BpfloomError(f"{subject!r} is not a NATS subject filter (e.g. bpfloom.*.execsnoop)")


def collect(
    servers: str | Sequence[str],
    subject: str = DEFAULT_SUBJECT,
    *,
    durable: str | None = None,
    stream: str = DEFAULT_STREAM,
    deliver: str | None = None,
    creds: str | None = None,
    token: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    ack_wait: float = DEFAULT_ACK_WAIT,
    prefetch: int = DEFAULT_PREFETCH,
    warn: Callable[[str], None] | None = None,
) -> FleetSource:
    """A ``FleetSource`` on ``servers`` (``nats://HOST:PORT``; a list for a cluster):
    records of the fleet for a ``Pipeline``, acknowledged once handled::

        source = bpfloom.collect("nats://hub:4222", "bpfloom.*.execsnoop", durable="audit")
        with source, bpfloom.Pipeline(source, handle, executor="thread", workers=8) as p:
            ...                      # handle(ev): ev.host, ev.pid, ev["args"]
    """
    urls = [servers] if isinstance(servers, str) else list(servers)
    try:
        parsed = tuple(parse_server(u) for u in urls)
    except ValueError as exc:
        raise BpfloomError(str(exc)) from None
    if not parsed:
        raise BpfloomError("collect needs at least one server URL")
    options = NatsOptions(
        parsed, creds=creds, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
    )
    return FleetSource(
        options,
        subject,
        durable=durable,
        stream=stream,
        deliver=deliver,
        ack_wait=ack_wait,
        prefetch=prefetch,
        warn=warn,
    )
