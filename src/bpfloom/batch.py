"""A batch of records read in one go from a ring buffer or perf buffer.

The hot path moves batches, never single events (docs/design.md, "Performance
model"): a reader copies the records it drained into one numpy array (``records``,
shape ``(n, record_size)``, possibly a strided view over the copied ring region), and
the batch offers two views
of it — ``numpy()``, a zero-copy structured array for fixed-layout records, and
iteration over decoded events (namedtuples, decoded once per batch, by column).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, overload

import numpy as np

from .decode import Decoder


class Batch:
    """Records of one read. ``lost`` counts samples the kernel reported lost (perf
    buffers) since the previous batch; ``source`` names the buffer map."""

    __slots__ = ("_events", "decoder", "lost", "records", "source")

    def __init__(self, records: np.ndarray, decoder: Decoder, source: str, lost: int = 0):
        self.records = records
        self.decoder = decoder
        self.source = source
        self.lost = lost
        self._events: list[Any] | None = None

    def __len__(self) -> int:
        return int(self.records.shape[0])

    def __bool__(self) -> bool:
        return bool(self.records.shape[0] > 0)

    def __repr__(self) -> str:
        return f"<Batch {self.source}: {len(self)} records, {self.lost} lost>"

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Batch: ...
    def __getitem__(self, index: int | slice) -> Any:
        """``batch[i]``: one decoded event; ``batch[a:b]`` (or ``[a::step]``): those
        records as a batch of their own, a view without copying (``lost`` stays with
        this batch). The pipeline hands events to its workers as such slices."""
        if isinstance(index, slice):
            if self._events is not None:
                part = Batch(self.records[index], self.decoder, self.source)
                part._events = self._events[index]
                return part
            return Batch(self.records[index], self.decoder, self.source)
        if self._events is not None:
            return self._events[index]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError("batch index out of range")
        return self.decoder.decode_batch(self.records[i : i + 1])[0]

    def numpy(self) -> np.ndarray:
        """The records as a structured array (``decoder.dtype``), without copying.

        Bitfield members are not in the dtype (numpy has no bitfields); iterate the
        batch to get them.
        """
        if len(self) == 0:
            return np.zeros(0, dtype=self.decoder.dtype)
        # A (n, size) uint8 array whose rows are contiguous views as (n, 1) records.
        return self.records.view(self.decoder.dtype)[:, 0]

    def events(self) -> list[Any]:
        """The decoded events, in the order they were read (decoded once, cached)."""
        if self._events is None:
            self._events = self.decoder.decode_batch(self.records)
        return self._events

    def __iter__(self) -> Iterator[Any]:
        """Decoded events, made one at a time (or from the cached list, if built)."""
        if self._events is not None:
            return iter(self._events)
        return self.decoder.iter_batch(self.records)


def empty_batch(decoder: Decoder, source: str, lost: int = 0) -> Batch:
    return Batch(np.zeros((0, decoder.size), dtype=np.uint8), decoder, source, lost)


def concat(batches: list[Batch], decoder: Decoder, source: str) -> Batch:
    """One batch of several (same decoder); the records are copied once."""
    if len(batches) == 1:
        return batches[0]
    lost = sum(b.lost for b in batches)
    nonempty = [b.records for b in batches if len(b)]
    if not nonempty:
        return empty_batch(decoder, source, lost)
    return Batch(np.concatenate(nonempty), decoder, source, lost)
