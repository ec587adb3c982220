"""BPF maps of a loaded object: lookup, update, delete and iterate with typed keys/values.

Keys and values are encoded and decoded from the map's BTF key/value types
(``bpfloom.decode``); decoders are built once per map. Maps without BTF types take
and give ints (for 1, 2, 4 or 8 byte keys/values) or raw ``bytes``. Per-CPU maps
return one value per possible CPU, as a list.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import _libbpf
from ._exceptions import MapError, TypeInfoError
from .decode import Decoder, encode
from .types import Type

if TYPE_CHECKING:
    from .object import BpfObject

# enum bpf_map_type values used by name here.
MAP_TYPES = {
    1: "hash",
    2: "array",
    3: "prog_array",
    4: "perf_event_array",
    5: "percpu_hash",
    6: "percpu_array",
    7: "stack_trace",
    8: "cgroup_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    11: "lpm_trie",
    12: "array_of_maps",
    13: "hash_of_maps",
    14: "devmap",
    15: "sockmap",
    16: "cpumap",
    17: "xskmap",
    18: "sockhash",
    19: "cgroup_storage",
    20: "reuseport_sockarray",
    21: "percpu_cgroup_storage",
    22: "queue",
    23: "stack",
    24: "sk_storage",
    25: "devmap_hash",
    26: "struct_ops",
    27: "ringbuf",
    28: "inode_storage",
    29: "task_storage",
    30: "bloom_filter",
    31: "user_ringbuf",
    32: "cgrp_storage",
}
PERCPU_TYPES = {"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"}
_NO_KEY_TYPES = {"ringbuf", "user_ringbuf", "queue", "stack", "bloom_filter"}

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2


class _Codec:
    """Encode/decode one side (key or value) of a map: typed if BTF says, else raw."""

    def __init__(self, t: Type | None, size: int, strings: str = "replace") -> None:
        self.type = t
        self.size = size
        self.decoder = Decoder(t, strings=strings) if t is not None else None

    def encode(self, value: Any) -> bytes:
        if self.type is not None:
            return encode(self.type, value, full_strings=True)
        if isinstance(value, (bytes, bytearray)) and len(value) == self.size:
            return bytes(value)
        if isinstance(value, int) and self.size in (1, 2, 4, 8):
            try:
                return value.to_bytes(self.size, "little", signed=value < 0)
            except OverflowError as exc:
                raise TypeInfoError(f"{value} does not fit {self.size} bytes") from exc
        raise TypeInfoError(
            f"this map side has no type information: give {self.size} bytes"
            + (" or an int" if self.size in (1, 2, 4, 8) else "")
        )

    def decode(self, data: bytes) -> Any:
        if self.decoder is not None:
            return self.decoder.decode(data)
        if self.size in (1, 2, 4, 8):
            return int.from_bytes(data[: self.size], "little")
        return bytes(data[: self.size])


class Map:
    """One map of a loaded ``BpfObject``. Not thread-safe for concurrent iteration."""

    def __init__(self, obj: BpfObject, ptr: int, key_type: Type | None, value_type: Type | None):
        self._obj = obj
        self._ptr = ptr
        self.name = _libbpf.cstr(_libbpf.map_name(ptr))
        self.type_id = int(_libbpf.map_type(ptr))
        self.type = MAP_TYPES.get(self.type_id, f"type_{self.type_id}")
        self.key_size = int(_libbpf.map_key_size(ptr))
        self.value_size = int(_libbpf.map_value_size(ptr))
        self.key_type = key_type
        self.value_type = value_type
        self._key: _Codec | None = None
        self._value: _Codec | None = None

    def __repr__(self) -> str:
        return f"<Map {self.name} {self.type}>"

    @property
    def max_entries(self) -> int:
        return int(_libbpf.map_max_entries(self._ptr))

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        """Resize the map before ``load()`` (for a ring buffer: its size in bytes, a
        power-of-two multiple of the page size), as ``bpf_map__set_max_entries``."""
        self._obj._require_open(f"resize map {self.name!r}")
        page = os.sysconf("SC_PAGE_SIZE")
        if self.type == "ringbuf" and (value < page or value & (value - 1)):
            raise MapError(
                f"ring buffer {self.name!r}: size {value} is not a power of two of at least "
                f"one page ({page} bytes)"
            )
        self._call("resize", lambda: _libbpf.map_set_max_entries(self._ptr, value))

    @property
    def fd(self) -> int:
        """The map's file descriptor (valid once the object is loaded)."""
        self._obj._require_loaded(f"map {self.name!r}")
        return int(_libbpf.map_fd(self._ptr))

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    def _codecs(self) -> tuple[_Codec, _Codec]:
        if self._key is None or self._value is None:
            self._key = _Codec(self.key_type, self.key_size, self._obj.strings)
            self._value = _Codec(self.value_type, self.value_size, self._obj.strings)
        return self._key, self._value

    def _value_buffer_size(self) -> int:
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * self._obj.possible_cpus
        return self.value_size

    def _decode_value(self, raw: bytes) -> Any:
        _, value = self._codecs()
        if not self.percpu:
            return value.decode(raw)
        stride = (self.value_size + 7) // 8 * 8
        return [
            value.decode(raw[i * stride : i * stride + self.value_size])
            for i in range(self._obj.possible_cpus)
        ]

    def _call(self, what: str, fn: Callable[..., int], *args: Any) -> int:
        ret = fn(*args)
        if ret < 0:
            raise MapError(f"{what} on map {self.name!r} failed: {os.strerror(-ret)}", errno=-ret)
        return ret

    def lookup(self, key: Any, default: Any = None) -> Any:
        """The decoded value at ``key``, or ``default`` when absent."""
        key_codec, _ = self._codecs()
        kb = key_codec.encode(key)
        vbuf = _libbpf.new_buffer(self._value_buffer_size())
        ret = _libbpf.bpf_map_lookup_elem(self.fd, kb, vbuf)
        if ret == -errno.ENOENT:
            return default
        self._call("lookup", lambda: ret)
        return self._decode_value(vbuf.raw[: self._value_buffer_size()])

    def __getitem__(self, key: Any) -> Any:
        sentinel = object()
        value = self.lookup(key, sentinel)
        if value is sentinel:
            raise KeyError(key)
        return value

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Set ``key`` to ``value`` (for per-CPU maps: a list with one value per CPU)."""
        key_codec, value_codec = self._codecs()
        kb = key_codec.encode(key)
        if self.percpu:
            stride = (self.value_size + 7) // 8 * 8
            values = value if isinstance(value, list) else [value] * self._obj.possible_cpus
            if len(values) != self._obj.possible_cpus:
                raise MapError(
                    f"map {self.name!r} is per-CPU: give {self._obj.possible_cpus} values"
                )
            vb = b"".join(value_codec.encode(v).ljust(stride, b"\0") for v in values)
        else:
            vb = value_codec.encode(value)
        self._call("update", _libbpf.bpf_map_update_elem, self.fd, kb, vb, flags)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.update(key, value)

    def delete(self, key: Any) -> bool:
        """Delete ``key``; return False when it was not there."""
        key_codec, _ = self._codecs()
        ret = _libbpf.bpf_map_delete_elem(self.fd, key_codec.encode(key))
        if ret == -errno.ENOENT:
            return False
        self._call("delete", lambda: ret)
        return True

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def _raw_keys(self) -> Iterator[bytes]:
        if self.type in _NO_KEY_TYPES:
            raise MapError(f"map {self.name!r} ({self.type}) has no keys to iterate")
        prev: bytes | None = None
        nxt = _libbpf.new_buffer(self.key_size)
        for _ in range(max(self.max_entries, 1) * 2 + 16):  # bounded: maps change under us
            ret = _libbpf.bpf_map_get_next_key(self.fd, prev, nxt)
            if ret == -errno.ENOENT:
                return
            self._call("get_next_key", lambda r=ret: r)
            prev = nxt.raw[: self.key_size]
            yield prev

    def keys(self) -> Iterator[Any]:
        key_codec, _ = self._codecs()
        for raw in self._raw_keys():
            yield key_codec.decode(raw)

    __iter__ = keys

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs; keys deleted meanwhile are skipped."""
        key_codec, _ = self._codecs()
        vsize = self._value_buffer_size()
        vbuf = _libbpf.new_buffer(vsize)
        for raw in self._raw_keys():
            ret = _libbpf.bpf_map_lookup_elem(self.fd, raw, vbuf)
            if ret == -errno.ENOENT:
                continue
            self._call("lookup", lambda r=ret: r)
            yield key_codec.decode(raw), self._decode_value(vbuf.raw[:vsize])

    def values(self) -> Iterator[Any]:
        for _, v in self.items():
            yield v

    def clear(self) -> int:
        """Delete every key; return how many were deleted."""
        keys = list(self._raw_keys())
        n = 0
        for raw in keys:
            if _libbpf.bpf_map_delete_elem(self.fd, raw) == 0:
                n += 1
        return n
