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
this is the ordering libbpf gets from its acquire/release barriers.

On weakly ordered CPUs (arm64) plain loads and stores give no such order, so there the
reader lets libbpf walk the ring (``consumer="libbpf"``): ``ring_buffer__consume`` with
a sample callback that copies each record into the batch, and stops the walk (by
returning a negative value, after which libbpf has already released that record) once
the batch's byte budget or ``max_records`` is reached. Same records, same batches of
fixed-size records, same ``received``; only ``discarded`` stays 0, since libbpf skips
discarded records without telling. ``BPFLOOM_RINGBUF_CONSUMER=libbpf`` (or the
constructor's ``consumer``) forces that path on x86 too, which is how the tests keep it
from rotting.

Thread-safety: ``read`` may be called from several threads (reads are serialised);
``close()`` from any thread unblocks a pending ``read``, which then raises
``ClosedError``.
"""

from __future__ import annotations

import mmap
import os
import platform
from typing import Any, Literal

import numpy as np

from . import _libbpf
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


Consumer = Literal["python", "libbpf"]
CONSUMER_ENV = "BPFLOOM_RINGBUF_CONSUMER"
# CPUs whose memory model is TSO: loads are not reordered with loads, nor stores with
# earlier loads, which is all the pure-Python walk relies on.
_TSO_MACHINES = ("x86_64", "amd64", "i686", "i386")
# libbpf's ring_buffer__consume returns what a sample callback returned when negative;
# ours returns this once a batch is full (any negative value stops the walk).
_BATCH_FULL = -1


def is_tso(machine: str | None = None) -> bool:
    """Whether ``machine`` (default: this one) orders memory as x86 does (TSO)."""
    return (machine or platform.machine()).lower() in _TSO_MACHINES


def choose_consumer(requested: str | None = None, machine: str | None = None) -> Consumer:
    """Which ring walker to use: ``requested`` (``"python"``, ``"libbpf"`` or
    ``"auto"``), else ``$BPFLOOM_RINGBUF_CONSUMER``, else ``auto``: the pure-Python one
    on x86 (TSO), libbpf's on every other CPU. Raises ``BpfloomError`` for an unknown
    name, and for ``"python"`` on a weakly ordered CPU, where it is not safe."""
    choice = requested or os.environ.get(CONSUMER_ENV) or "auto"
    arch = (machine or platform.machine()).lower()
    tso = is_tso(arch)
    if choice == "auto":
        return "python" if tso else "libbpf"
    if choice == "libbpf":
        return "libbpf"
    if choice == "python":
        if not tso:
            raise BpfloomError(
                f"the pure-Python ring reader needs x86 memory ordering, which {arch} does "
                "not give; use the libbpf consumer (the default there)"
            )
        return "python"
    origin = "the caller" if requested else CONSUMER_ENV
    raise BpfloomError(
        f"unknown ring buffer consumer {choice!r} (from {origin}); use python, libbpf or auto"
    )


class RingBuffer(BufferReader):
    """Reads batches of records from one BPF ring buffer map.

    ``read(timeout)`` returns the next non-empty ``Batch`` (an empty one on timeout).
    Producers that submit with ``BPF_RB_NO_WAKEUP`` never wake us; ``poll_interval``
    bounds how long records may wait then. ``consumer`` picks the ring walker
    (``choose_consumer``: the pure-Python one on x86, libbpf's elsewhere); the one in
    use is ``self.consumer``. ``close()`` is idempotent and releases the mappings;
    reads after it raise ``ClosedError``.
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
        consumer: str | None = None,
    ) -> None:
        self.consumer: Consumer = choose_consumer(consumer)
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
        python = self.consumer == "python"
        # libbpf's consumer maps the ring itself; we keep the two position pages only,
        # for pending_bytes().
        self._consumer_map = mmap.mmap(
            map_fd,
            page,
            mmap.MAP_SHARED,
            mmap.PROT_READ | (mmap.PROT_WRITE if python else 0),
            offset=0,
        )
        self._ring = 0
        try:
            self._data_map = mmap.mmap(
                map_fd,
                page + 2 * size if python else page,
                mmap.MAP_SHARED,
                mmap.PROT_READ,
                offset=page,
            )
            if not python:
                self._samples: list[bytes] = []
                self._budget = 0
                self._room = 0
                # Kept referenced for as long as libbpf's ring_buffer lives.
                self._sample_callback = _libbpf.RING_BUFFER_SAMPLE_FN(self._on_sample)
                self._ring = self._new_ring(map_fd)
        except BaseException:
            self._consumer_map.close()
            if hasattr(self, "_data_map"):
                self._data_map.close()
            raise
        self._consumer_pos = np.frombuffer(self._consumer_map, dtype=np.uint64, count=1)
        self._producer_pos = np.frombuffer(self._data_map, dtype=np.uint64, count=1)
        if python:
            self._data = np.frombuffer(self._data_map, dtype=np.uint8, offset=page)
        super().__init__(poll_interval)
        self._watch(map_fd)

    def _new_ring(self, map_fd: int) -> int:
        try:
            return _libbpf.ring_buffer_new(map_fd, self._sample_callback)
        except OSError as exc:
            raise BpfloomError(
                f"ring buffer {self.name!r}: libbpf's consumer: {exc.strerror}", errno=exc.errno
            ) from exc

    def __repr__(self) -> str:
        return f"<RingBuffer {self.name} {self.size} bytes{' closed' if self._closed else ''}>"

    # --- draining ------------------------------------------------------------------

    def pending_bytes(self) -> int:
        """Bytes between consumer and producer positions (committed or not)."""
        if self._closed:
            return 0
        return int(self._producer_pos[0]) - int(self._consumer_pos[0])

    def _drain(self, max_records: int | None) -> Batch:
        if self.consumer == "libbpf":
            return self._drain_libbpf(max_records)
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

    def _drain_libbpf(self, max_records: int | None) -> Batch:
        """``_drain`` through libbpf's ``ring_buffer__consume``: the callback copies
        each record and stops the walk when the batch is full, as the pure-Python walk
        stops (``batch_bytes`` in ring bytes, headers and padding included, or
        ``max_records``)."""
        self._samples = []
        self._budget = self.batch_bytes
        self._room = -1 if max_records is None else max_records
        if self._room == 0:
            return empty_batch(self.decoder, self.name)
        ret = _libbpf.ring_buffer_consume(self._ring)
        samples, self._samples = self._samples, []
        if ret < 0 and ret != _BATCH_FULL:
            raise BpfloomError(
                f"ring buffer {self.name!r}: ring_buffer__consume: {_libbpf.strerror(-ret)}",
                errno=-ret,
            )
        self.received += len(samples)
        if not samples:
            return empty_batch(self.decoder, self.name)
        return Batch(pad_records(samples, self.decoder.size), self.decoder, self.name)

    def _on_sample(self, _ctx: int, data: int, size: int) -> int:
        """libbpf's sample callback: keep the record (cut to the record type's size),
        and say stop once the batch's budget would not hold another one like it."""
        self._samples.append(_libbpf.bytes_at(data, min(size, self.decoder.size)))
        stride = (size + HEADER_SIZE + 7) & ~7
        self._budget -= stride
        self._room -= 1
        if self._room == 0 or self._budget < stride:
            return _BATCH_FULL
        return 0

    kind = "ring buffer"

    def _release(self) -> None:
        if self._ring:
            _libbpf.ring_buffer_free(self._ring)
            self._ring = 0
        else:
            del self._data
        del self._consumer_pos, self._producer_pos
        self._consumer_map.close()
        self._data_map.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
