"""Reader of a ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` map: one perf ring per CPU.

For each CPU we open a ``PERF_COUNT_SW_BPF_OUTPUT`` perf event, map its ring
(one metadata page, then ``pages`` data pages), and store its fd in the map at the
CPU's index — what libbpf's ``perf_buffer__new`` does. Programs write samples with
``bpf_perf_event_output``; the kernel reports samples it could not store as
``PERF_RECORD_LOST`` records, which we return as data (``Batch.lost``).

A read copies each CPU's unread region ``[data_tail, data_head)`` out of the ring
(in two pieces when it wraps), releases it by advancing ``data_tail``, and walks the
copy: fixed-size samples are found by checking every header of a run at once with
numpy (same stride), other records one by one. Batches hold records of all CPUs,
CPU by CPU; order across CPUs is not the order of the events.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import platform
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _syscalls
from ._exceptions import BpfloomError, MapError, TypeInfoError
from ._poller import DEFAULT_POLL_INTERVAL, BufferReader
from .batch import Batch, concat, empty_batch
from .decode import Decoder, pad_records
from .ringbuf import is_tso
from .types import describe

if TYPE_CHECKING:
    from .maps import Map

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
_HEAD_OFFSET = 1024  # offsetof(struct perf_event_mmap_page, data_head)
_TAIL_OFFSET = 1032  # data_tail
_SAMPLE_DATA = 12  # perf_event_header (8) + u32 raw size
# A sample's perf_event_header.size is a u16 covering the header and the raw size too.
MAX_SAMPLE = 0xFFFF - _SAMPLE_DATA


def online_cpus() -> list[int]:
    """CPU numbers from /sys/devices/system/cpu/online (e.g. ``0-3,6``)."""
    with open("/sys/devices/system/cpu/online") as f:
        text = f.read().strip()
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


class _CpuRing:
    def __init__(self, cpu: int, pages: int, wakeup_events: int) -> None:
        self.cpu = cpu
        self.fd = _syscalls.perf_event_open_bpf_output(cpu, wakeup_events)
        try:
            self.size = pages * mmap.PAGESIZE
            self.mm = mmap.mmap(
                self.fd,
                mmap.PAGESIZE + self.size,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except BaseException:
            os.close(self.fd)
            raise
        self.data = memoryview(self.mm)[mmap.PAGESIZE :]

    def read_region(self) -> bytes:
        """Copy out the unread bytes and release them to the kernel."""
        head = struct.unpack_from("<Q", self.mm, _HEAD_OFFSET)[0]
        tail = struct.unpack_from("<Q", self.mm, _TAIL_OFFSET)[0]
        if head == tail:
            return b""
        start, avail = tail % self.size, head - tail
        if start + avail <= self.size:
            region = bytes(self.data[start : start + avail])
        else:
            first = self.size - start
            region = bytes(self.data[start:]) + bytes(self.data[: avail - first])
        struct.pack_into("<Q", self.mm, _TAIL_OFFSET, head)  # after the copy
        return region

    def close(self) -> None:
        self.data.release()
        self.mm.close()
        os.close(self.fd)


class PerfBuffer(BufferReader):
    """Reads batches of samples from a perf event array, all CPUs at once.

    ``read(timeout)`` returns the next batch holding records or lost-sample counts
    (an empty batch on timeout). ``lost_samples`` totals what the kernel dropped.
    ``close()`` removes our perf events from the map, unmaps and closes them, and
    unblocks a pending ``read`` (idempotent).
    """

    def __init__(
        self,
        perf_map: Map,
        decoder: Decoder,
        *,
        pages: int = 64,
        wakeup_events: int = 1,
        owner: Any = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not is_tso():
            # The ring reader has libbpf's consumer to fall back on there; this one not yet.
            raise BpfloomError(
                f"the pure-Python perf buffer reader needs x86 memory ordering; "
                f"{platform.machine()} is not supported yet (ring buffers are)"
            )
        if pages <= 0 or pages & (pages - 1):
            raise BpfloomError(f"perf buffer pages must be a power of two, not {pages}")
        if decoder.size > MAX_SAMPLE:
            # perf_event_header.size is 16 bits: no sample can be that large, and short
            # ones would be padded to it, each.
            raise TypeInfoError(
                f"perf buffer {perf_map.name!r} holds samples of at most {MAX_SAMPLE} bytes, "
                f"but {describe(decoder.type)} is {decoder.size}: not its record type"
            )
        self.name = perf_map.name
        self.decoder = decoder
        self.received = 0
        self.lost_samples = 0
        self._map = perf_map
        self.owner = owner
        self._rings: list[_CpuRing] = []
        super().__init__(poll_interval)
        try:
            for cpu in online_cpus():
                if cpu >= perf_map.max_entries:
                    continue
                ring = _CpuRing(cpu, pages, wakeup_events)
                self._rings.append(ring)
                perf_map.update(cpu, ring.fd)
                fcntl.ioctl(ring.fd, _syscalls.PERF_EVENT_IOC_ENABLE, 0)
                self._watch(ring.fd)
        except MapError:
            self._release_all()
            raise
        except OSError as exc:
            self._release_all()
            raise BpfloomError(
                f"perf buffer {self.name!r}: {exc.strerror or exc}", errno=exc.errno
            ) from exc

    def __repr__(self) -> str:
        return f"<PerfBuffer {self.name} {len(self._rings)} CPUs>"

    def _parse(self, region: bytes) -> Batch:
        """Records of one CPU's region: fixed-size runs vectorised, the rest one by one."""
        size = self.decoder.size
        buf = np.frombuffer(region, dtype=np.uint8)
        chunks: list[Batch] = []
        lost = 0
        pos, end = 0, len(region)
        while pos + 8 <= end:
            rtype, _misc, rsize = struct.unpack_from("<IHH", region, pos)
            if rsize < 8 or pos + rsize > end:
                break  # malformed; the kernel never writes this
            if rtype == PERF_RECORD_SAMPLE and rsize >= _SAMPLE_DATA:
                raw_len = struct.unpack_from("<I", region, pos + 8)[0]
                n = (end - pos) // rsize
                rows = buf[pos : pos + n * rsize].reshape(n, rsize)
                # Same type and size in the first 8 bytes: one u64 compare per record.
                keys = rows[:, :8].view("<u8")[:, 0]
                good = keys == keys[0]
                k = n if good.all() else int(np.argmin(good))
                payload = rows[:k, _SAMPLE_DATA : _SAMPLE_DATA + min(raw_len, rsize - 12)]
                chunks.append(Batch(pad_records(payload, size), self.decoder, self.name))
                pos += k * rsize
                continue
            if rtype == PERF_RECORD_LOST and rsize >= 24:
                lost += struct.unpack_from("<Q", region, pos + 16)[0]
            pos += rsize
        batch = concat(chunks, self.decoder, self.name) if chunks else None
        if batch is None:
            return empty_batch(self.decoder, self.name, lost)
        batch.lost += lost
        return batch

    def _drain(self, max_records: int | None = None) -> Batch:
        """Every CPU's unread region (``max_records`` is not used: a perf ring is
        released region by region, never in part)."""
        parts = []
        for ring in self._rings:
            region = ring.read_region()
            if region:
                parts.append(self._parse(region))
        if not parts:
            return empty_batch(self.decoder, self.name)
        batch = concat(parts, self.decoder, self.name)
        self.received += len(batch)
        self.lost_samples += batch.lost
        return batch

    kind = "perf buffer"

    def _news(self, batch: Batch) -> bool:
        return bool(batch) or bool(batch.lost)  # lost samples are news too

    def _release(self) -> None:
        for ring in self._rings:
            try:
                fcntl.ioctl(ring.fd, _syscalls.PERF_EVENT_IOC_DISABLE, 0)
                if not self._map._obj.closed:
                    self._map.delete(ring.cpu)
            except (OSError, BpfloomError):
                pass  # the map may already be gone with its object
            ring.close()
        self._rings = []

    def _release_all(self) -> None:
        """Undo a construction that failed half-way."""
        self._release()
        self._epoll.close()
        os.close(self._wake_fd)

    def __enter__(self) -> PerfBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
