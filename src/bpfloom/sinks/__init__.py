"""Sinks: the only place records leave the process.

A record is a plain dict (what ``--json`` prints: a tool's record, or a decoded event's
fields). The run loop hands each batch's records to every sink (``write``); sinks that
can use the raw numpy batch instead (Parquet) also get it (``write_batch``). A sink
never raises into the reader: what it could not deliver is counted (``errors``) and
its first failure kept (``error``). A *fatal* sink (stdout, a file the user asked for)
stops the run when it fails, and the command reports the error and exits 1; a network
sink only counts. A slow sink is backpressure like any other slow handler: the reader
waits, the kernel's buffer fills, and the kernel counts what it drops.

    Sink                  base: counting, locking, the fatal flag
    ├── TableSink         a table on stdout (sinks.table)
    ├── JsonLinesSink     JSON lines on stdout or appended to a file (sinks.jsonl)
    ├── ParquetSink       raw records from numpy batches to a Parquet file (sinks.parquet)
    ├── PrometheusSink    the run's counters served to Prometheus (sinks.prometheus)
    ├── NatsSink          batches published to NATS JetStream, spooled while the
    │                     server is away (sinks.nats)
    └── QueuedSink        any sink behind a bounded queue and a thread of its own, for
                          outputs that may block (a network peer): never waits, counts
                          what does not fit (sinks.queued)

The pipeline's invariant is unchanged by sinks, ``produced = handled + dropped_kernel +
dropped_queue``; what sinks lose is counted beside it, as ``sink_errors``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..batch import Batch

Record = dict[str, Any]

__all__ = ["Record", "Sink", "sink_errors"]


class Sink:
    """Base of every sink: subclasses implement ``_write`` (and ``_write_batch`` when
    ``wants_batches``), ``_flush`` and ``_close``. Thread-safe: calls are serialized.

    ``written`` counts records delivered, ``errors`` records lost, ``error`` is the
    first failure; ``on_stop`` runs once when a fatal sink fails or its reader went
    away (``| head``: ``closed_by_reader``, a quiet stop, not an error).
    """

    name = "sink"
    fatal = True
    wants_batches = False

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.written = 0
        self.errors = 0
        self.error: BaseException | None = None
        self.closed_by_reader = False
        self.on_stop = on_stop
        self.lock = threading.RLock()

    @property
    def stopped(self) -> bool:
        """A fatal sink that failed, or whose reader went away, takes nothing more."""
        return self.closed_by_reader or (self.fatal and self.error is not None)

    def write(self, records: Sequence[Record]) -> None:
        """Deliver ``records`` (counted in ``written``, or in ``errors``)."""
        if not records:
            return
        with self.lock:
            if self.stopped:
                if self.error is not None:
                    self.errors += len(records)
                return
            try:
                self._write(records)
            except BrokenPipeError:
                self._reader_gone()
            except Exception as exc:
                self._failed(exc, len(records))
            else:
                self.written += len(records)

    def write_batch(self, batch: Batch, records: Sequence[Record]) -> None:
        """Deliver a batch: its raw records to a sink that wants them, else ``records``."""
        if not self.wants_batches:
            self.write(records)
            return
        if not len(batch):
            return
        with self.lock:
            if self.stopped:
                if self.error is not None:
                    self.errors += len(batch)
                return
            try:
                self._write_batch(batch)
            except Exception as exc:
                self._failed(exc, len(batch))
            else:
                self.written += len(batch)

    def summary(self, text: str, records: Sequence[Record] = ()) -> None:
        """Something beside the records (a per-interval histogram, a summary at exit),
        as ``text`` for a person and as ``records`` for machines: a table prints the
        text, JSON sinks write the records, others ignore both."""

    def flush(self) -> None:
        with self.lock:
            if self.stopped:
                return
            try:
                self._flush()
            except BrokenPipeError:
                self._reader_gone()
            except Exception as exc:
                self._failed(exc, 0)

    def close(self) -> None:
        """Flush and release (idempotent); a failure to do so is counted like others."""
        with self.lock:
            try:
                if not self.stopped:
                    self._flush()
                self._close()
            except BrokenPipeError:
                self._reader_gone()
            except Exception as exc:
                self._failed(exc, 0)

    def counters(self) -> dict[str, int]:
        """The sink's own numbers for ``--stats`` and ``--metrics-addr`` (the NATS sink:
        ``published``, ``spooled``, ``dropped_sink``); none by default."""
        return {}

    def report(self) -> str | None:
        """A line for the end of a run, if the sink has something to say."""
        return None

    def error_message(self) -> str:
        """What to tell the user when ``error`` is set."""
        exc = self.error
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"cannot write to {self.name} ({reason}); {self.errors} records were not written"

    # --- for subclasses --------------------------------------------------------------

    def _write(self, records: Sequence[Record]) -> None:
        raise NotImplementedError

    def _write_batch(self, batch: Batch) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _failed(self, exc: BaseException, lost: int) -> None:
        self.errors += lost
        first = self.error is None
        if first:
            self.error = exc
        if first and self.fatal and self.on_stop is not None:
            self.on_stop()

    def _reader_gone(self) -> None:
        if not self.closed_by_reader:
            self.closed_by_reader = True
            if self.on_stop is not None:
                self.on_stop()


def sink_errors(sinks: Sequence[Sink]) -> int:
    """Records the sinks could not deliver, summed (``sink_errors`` in the stats)."""
    return sum(s.errors for s in sinks)
