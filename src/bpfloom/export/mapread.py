"""Whole maps of u64 values read in bulk, into numpy arrays.

A scrape reads every entry of every metric's map. Key by key that is two system calls
per entry (``get_next_key`` + ``lookup``); ``BPF_MAP_LOOKUP_BATCH`` (libbpf's
``bpf_map_lookup_batch``, kernel 5.6+) copies thousands of entries per call, so a map
of 100 000 entries is read in a few dozen calls. Kernels or map types without batch
lookups fall back to the key-by-key walk.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import numpy as np

from .. import _libbpf
from .._exceptions import MapError
from ..maps import Map

BATCH_ENTRIES = 16384  # entries per batch call: large enough, small buffers


@dataclass(frozen=True)
class MapRows:
    """Every entry of a map: ``keys`` is ``(n, key_size)`` uint8; ``values`` is
    ``(n,)`` uint64, or ``(n, cpus)`` for a per-CPU map."""

    keys: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.shape[0])


def read_u64_map(m: Map, possible_cpus: int, *, batch: bool = True) -> MapRows:
    """Every (key, u64 value) of ``m`` now. Raises ``MapError`` when the kernel refuses.

    Entries added or deleted while the map is read may or may not be in the result,
    as with any walk of a live map; ``max_entries`` bounds how many are read.
    """
    cpus = possible_cpus if m.percpu else 1
    stride = (m.value_size + 7) // 8 * 8
    per_entry = stride * cpus
    limit = max(m.max_entries, 1)
    raw: tuple[bytes, bytes, int] | None = None
    if batch:
        try:
            raw = _libbpf.map_lookup_all(
                m.fd, m.key_size, per_entry, min(BATCH_ENTRIES, limit), limit
            )
        except OSError as exc:
            raise MapError(
                f"reading map {m.name!r} failed: {exc.strerror}", errno=exc.errno
            ) from exc
    if raw is None:
        raw = _read_key_by_key(m, per_entry, limit)
    keys_raw, values_raw, n = raw
    keys = np.frombuffer(keys_raw, dtype=np.uint8).reshape(n, m.key_size)
    words = np.frombuffer(values_raw, dtype=np.uint64).reshape(n, cpus, stride // 8)
    values = words[:, :, 0] if m.percpu else words[:, 0, 0]
    return MapRows(keys, values)


def _read_key_by_key(m: Map, per_entry: int, limit: int) -> tuple[bytes, bytes, int]:
    keys: list[bytes] = []
    values: list[bytes] = []
    key_buf = _libbpf.new_buffer(m.key_size)
    value_buf = _libbpf.new_buffer(per_entry)
    prev: bytes | None = None
    fd = m.fd
    for _ in range(limit * 2 + 16):  # bounded: the map may change while we walk it
        ret = _libbpf.bpf_map_get_next_key(fd, prev, key_buf)
        if ret == -errno.ENOENT:
            break
        if ret < 0:
            raise MapError(f"reading map {m.name!r} failed: {os.strerror(-ret)}", errno=-ret)
        prev = key_buf.raw[: m.key_size]
        ret = _libbpf.bpf_map_lookup_elem(fd, prev, value_buf)
        if ret == -errno.ENOENT:
            continue  # deleted meanwhile
        if ret < 0:
            raise MapError(f"reading map {m.name!r} failed: {os.strerror(-ret)}", errno=-ret)
        keys.append(prev)
        values.append(value_buf.raw[:per_entry])
        if len(keys) >= limit:
            break
    return b"".join(keys), b"".join(values), len(keys)
