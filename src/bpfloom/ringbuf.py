"""Reader of a ``BPF_MAP_TYPE_RINGBUF`` map, in pure Python over the ring's mmap.

Layout, as the kernel's ``kernel/bpf/ringbuf.c`` maps it: page 0 holds
``consumer_pos`` (read-write for us); from page 1 on (read-only) ``producer_pos``,
then the data area, mapped twice in a row so that a record that wraps around the end
is still contiguous. Each record has an 8-byte header — ``len`` with the BUSY
(bit 31) and DISCARD (bit 30) flags, then ``pg_off`` — and is padded to 8 bytes.

Draining walks the headers as libbpf's ``ringbuf_process_ring`` does, but by
*batches*: from the first header it assumes the stride of fixed-size records, checks
every header of the run at once with numpy, copies the whole committed run with one
memcpy, and only then advances ``consumer_pos``. The headers are read before the
data they cover, and x86-64 (TSO) keeps loads in order and stores after loads, so
this is the ordering libbpf gets from its acquire/release barriers. On weakly ordered
CPUs a pure-Python reader is not safe; bpfloom refuses to build one there.

Thread-safety: ``read`` may be called from several threads (reads are serialised);
``close()`` from any thread unblocks a pending ``read``, which then raises
``ClosedError``.
"""

from __future__ import annotations

import mmap
import platform
from typing import Any

import numpy as np

from ._exceptions import BpfloomError, TypeInfoError
from ._poller import DEFAULT_POLL_INTERVAL, BufferReader
from .batch import Batch, concat, empty_batch
from .decode import Decoder, pad_records
from .types import describe

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
# Bytes copied out per batch at most. Copies that stay cache-sized and reuse freed
# memory run several times faster than huge ones that fault in fresh pages
# (bench/drain.py: 64 K records of 40 bytes drain at ~390 M/s, 1 M at ~15 M/s).
DEFAULT_BATCH_BYTES = 2 << 20


def _require_tso() -> None:
    if platform.machine() not in ("x86_64", "AMD64", "i686", "i386"):
        raise BpfloomError(
            f"the pure-Python ring reader needs x86 memory ordering; {platform.machine()} "
            "is not supported yet"
        )


class RingBuffer(BufferReader):
    """Reads batches of records from one BPF ring buffer map.

    ``read(timeout)`` returns the next non-empty ``Batch`` (an empty one on timeout).
    Producers that submit with ``BPF_RB_NO_WAKEUP`` never wake us; ``poll_interval``
    bounds how long records may wait then. ``close()`` is idempotent and releases the
    mappings; reads after it raise ``ClosedError``.
    """

    def __init__(
        self,
        map_fd: int,
        size: int,
        decoder: Decoder,
        *,
        name: str = "ringbuf",
        owner: Any = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> None:
        _require_tso()
        if size <= 0 or size & (size - 1):
            raise BpfloomError(f"ring buffer {name!r}: size {size} is not a power of two")
        if decoder.size > size - HEADER_SIZE:
            # No record can be that large; short records would be padded to it, each.
            raise TypeInfoError(
                f"ring buffer {name!r} holds records of at most {size - HEADER_SIZE} bytes, "
                f"but {describe(decoder.type)} is {decoder.size}: not its record type"
            )
        self.name = name
        self.decoder = decoder
        self.size = size
        self.batch_bytes = batch_bytes
        self.received = 0
        self.discarded = 0
        self.owner = owner
        self._mask = size - 1
        page = mmap.PAGESIZE
        self._consumer_map = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        try:
            self._data_map = mmap.mmap(
                map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._consumer_map.close()
            raise
        self._consumer_pos = np.frombuffer(self._consumer_map, dtype=np.uint64, count=1)
        self._producer_pos = np.frombuffer(self._data_map, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._data_map, dtype=np.uint8, offset=page)
        super().__init__(poll_interval)
        self._watch(map_fd)

    def __repr__(self) -> str:
        return f"<RingBuffer {self.name} {self.size} bytes{' closed' if self._closed else ''}>"

    # --- draining ------------------------------------------------------------------

    def pending_bytes(self) -> int:
        """Bytes between consumer and producer positions (committed or not)."""
        if self._closed:
            return 0
        return int(self._producer_pos[0]) - int(self._consumer_pos[0])

    def _drain(self, max_records: int | None) -> Batch:
        data = self._data
        size = self.decoder.size
        start = cons = int(self._consumer_pos[0])
        prod = int(self._producer_pos[0])
        chunks: list[Batch] = []
        taken = 0
        budget = self.batch_bytes
        while cons < prod and budget > 0 and (max_records is None or taken < max_records):
            off = cons & self._mask
            header = int(data[off : off + 4].view("<u4")[0])
            if header & BUSY_BIT:
                break  # not committed yet: stop, as libbpf does
            length = header & ~(BUSY_BIT | DISCARD_BIT)
            stride = (length + HEADER_SIZE + 7) & ~7
            if header & DISCARD_BIT:
                self.discarded += 1
                cons += stride
                continue
            n = min(prod - cons, budget) // stride
            if n == 0:
                if chunks:
                    break  # the budget is spent; the next read takes the rest
                n = 1  # a single record larger than the budget
            if max_records is not None:
                n = min(n, max_records - taken)
            # Check every header of the run in one go, before touching the data.
            rows = data[off : off + n * stride].reshape(n, stride)
            headers = rows[:, :4].view("<u4")[:, 0]
            good = headers == length
            # The first header is ``length`` by construction, so k >= 1; the run stops
            # at the first busy, discarded or differently sized record.
            k = n if good.all() else int(np.argmin(good))
            # One memcpy of the k records (headers included), as a flat copy: numpy
            # copies a 2-D view row by row, which is several times slower.
            run = data[off : off + k * stride].copy().reshape(k, stride)
            chunks.append(
                Batch(
                    pad_records(run[:, HEADER_SIZE : HEADER_SIZE + length], size),
                    self.decoder,
                    self.name,
                )
            )
            taken += k
            cons += k * stride
            budget -= k * stride
        if cons != start:
            self._consumer_pos[0] = cons  # release the space only after copying
        self.received += taken
        if not chunks:
            return empty_batch(self.decoder, self.name)
        return concat(chunks, self.decoder, self.name)

    kind = "ring buffer"

    def _release(self) -> None:
        del self._consumer_pos, self._producer_pos, self._data
        self._consumer_map.close()
        self._data_map.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
