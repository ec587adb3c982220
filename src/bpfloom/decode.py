"""Decode raw BPF records into Python values, and encode Python values into bytes.

Decoding is built for batches. A :class:`Decoder` is made **once per type** (at load
time, never per event): it walks the C type (``bpfloom.types``) and compiles it into a
tree of *column readers*. ``Decoder.decode_batch`` then takes ``n`` records as one 2-D
``uint8`` array of shape ``(n, size)`` and decodes **column by column**: every field is
read for all ``n`` records at once with numpy (a typed view of the field's bytes, then
``tolist()``), and the events are assembled from the columns by C-level iteration
(``map``/``zip``). No Python code runs per event per field; the only per-event work is
the creation of the event object itself. This follows the performance model in
docs/design.md: a per-event Python callback tops out near 1.4 M events/s, columns get
several times that (``bench/decode_micro.py`` measures it).

What a C value becomes in Python:

============================  ==========================================================
C type                        Python value
============================  ==========================================================
integers (1, 2, 4, 8, 16 B)   ``int``
``_Bool`` / BTF bool          ``bool``
``char[N]`` (``char`` named,  ``str``: bytes up to the first NUL, UTF-8 with
or BTF/DWARF char encoding)   ``errors="replace"`` (or ``Decoder(t, strings=
                              "surrogateescape")``: lossless); bytes after the NUL
                              are ignored
other arrays                  ``list`` (nested lists for multi-dimensional arrays)
struct / union                an event: a namedtuple-like tuple (see below)
enum                          the enumerator's name (``str``) when known, else the ``int``
bitfields                     ``int`` (``bool``/enum name for bool/enum bitfields)
float / double                ``float``
pointers                      ``int`` (the address)
anything else with a size     ``bytes``
============================  ==========================================================

Event classes. Each struct or union type gets a tuple subclass made from
``collections.namedtuple`` (``ev.pid``, ``ev._asdict()``, ``ev._replace(...)``,
``Event._make(values)``), with one attribute per member in declaration order. To keep
``tuple``'s C constructor on the hot path, the class is called with ONE sequence, like
``time.struct_time``: ``Event((1, 2, 3))``, not ``Event(1, 2, 3)``. Members of anonymous
struct/union members are flattened into the parent, as C does. C member names that are
not valid namedtuple field names are renamed: leading underscores move to the end
(``__pad`` -> ``pad__``), Python keywords get a trailing underscore (``class`` ->
``class_``), anything else invalid becomes ``field<i>``, and a clash gets ``_<k>``
appended. The C names stay available as ``Decoder.c_fields`` and as the class attribute
``_c_fields``; :func:`to_jsonable` uses them as JSON keys. Event classes pickle by value
(their name and fields travel with them), so events can be sent to worker processes.

Garbage collection. Events are GC-tracked objects that can never form cycles, and a
large batch of them set off collection after collection while it is built; so building
a batch pauses the cyclic collector (``_paused_gc``; without it the collector costs
more than the decoding itself). Several reader threads may decode at once: the pause
is counted, the collector comes back when the last of them is done, and only if it
was enabled when the first began (a collector the application disabled stays off).

Encoding (:func:`encode`) writes a Python value as exactly ``sizeof(t)`` little-endian
bytes, with range checks whose messages name the C type; :func:`parse_text` turns
command-line text into such a value. Both raise :class:`TypeInfoError`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import keyword
import math
import struct
import sys
import threading
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from ._exceptions import TypeInfoError
from .types import (
    Array,
    Enum,
    Float,
    Int,
    Member,
    Pointer,
    Struct,
    Type,
    Union,
    describe,
    sizeof,
    strip,
)

__all__ = [
    "Decoder",
    "decode_value",
    "encode",
    "pad_records",
    "parse_text",
    "to_jsonable",
]

Rows: TypeAlias = npt.NDArray[np.uint8]
"""``n`` records as a 2-D ``uint8`` array whose last axis is contiguous (stride 1)."""

_namedtuple: Any = namedtuple  # called with field names known only at run time
#: How ``char`` arrays that are not valid UTF-8 become ``str``: "replace" (U+FFFD for
#: each bad sequence: safe to print, lossy) or "surrogateescape" (lossless, as
#: ``os.fsdecode`` does: bad bytes become lone surrogates that
#: ``s.encode("utf-8", "surrogateescape")`` turns back into the exact bytes).
STRING_POLICIES = ("replace", "surrogateescape")
_MAX_DEPTH = 64  # nesting bound; a struct cannot contain itself by value
MAX_SIZE = (1 << 30) - 1
"""The largest value, in bytes and in array elements, that is decoded or encoded.

No record the kernel hands over is larger: a ring buffer record's length has 30 bits
(the top two of its header are the busy and discard flags), a perf sample is under
64 KiB, and map values are limited to what kmalloc gives (4 MiB on x86-64). A bigger
type (``char x[1UL << 40]`` in a hostile object's DWARF) is a ``TypeInfoError`` instead
of an allocation or a numpy shape that cannot exist."""


# --------------------------------------------------------------------------- layout


class _Field:
    """One member of a (flattened) struct or union, with its absolute bit offset."""

    __slots__ = ("bit_offset", "bits", "c_name", "py_name", "type")

    def __init__(self, c_name: str, py_name: str, bit_offset: int, t: Type | None, bits: int):
        self.c_name = c_name
        self.py_name = py_name
        self.bit_offset = bit_offset
        self.type = t
        self.bits = bits  # 0 unless a real bitfield


def _is_aggregate(t: Type | None) -> bool:
    return isinstance(t, (Struct, Union))


def _members(t: Struct | Union, base_bits: int, out: list[tuple[str, int, Member]]) -> None:
    """Collect named members of ``t``, descending into anonymous struct/union members."""
    for m in t.members:
        inner = strip(m.type)
        if not m.name:
            if _is_aggregate(inner) and m.bitfield_size == 0:
                assert isinstance(inner, (Struct, Union))
                _members(inner, base_bits + m.offset_bits, out)
            # An unnamed non-aggregate member is padding (``int :3;``): nothing to show.
            continue
        out.append((m.name, base_bits + m.offset_bits, m))


def _python_names(c_names: Sequence[str]) -> list[str]:
    """Namedtuple-safe attribute names for ``c_names`` (rules in the module docstring)."""
    out: list[str] = []
    taken: set[str] = set()
    for i, name in enumerate(c_names):
        core = name.lstrip("_")
        py = core + "_" * (len(name) - len(core))
        if not core or not py.isidentifier():
            py = f"field{i}"
        elif keyword.iskeyword(py):
            py += "_"
        base, k = py, 1
        while py in taken:
            py = f"{base}_{k}"
            k += 1
        taken.add(py)
        out.append(py)
    return out


def _layout(t: Struct | Union) -> list[_Field]:
    """The flattened fields of ``t`` in declaration order."""
    raw: list[tuple[str, int, Member]] = []
    _members(t, 0, raw)
    py_names = _python_names([name for name, _, _ in raw])
    fields = []
    for (name, bit_offset, m), py in zip(raw, py_names, strict=True):
        bits = m.bitfield_size
        if bits and bit_offset % 8 == 0:
            try:
                if bits == _size_of(m.type) * 8:
                    bits = 0  # a "bitfield" that covers its whole type is a plain member
            except TypeInfoError:
                pass
        if not bits and bit_offset % 8:
            raise TypeInfoError(f"member {name} of {describe(t)} is not byte aligned")
        fields.append(_Field(name, py, bit_offset, m.type, bits))
    return fields


def _size_of(t: Type | None) -> int:
    """``sizeof(t)`` for a type to decode or encode: at most ``MAX_SIZE`` bytes."""
    try:
        size = sizeof(t)
    except ValueError as exc:
        raise TypeInfoError(f"{describe(t)} has no size: {exc}") from exc
    if size > MAX_SIZE:
        raise TypeInfoError(
            f"{describe(t)} is {size} bytes; bpfloom decodes values of at most {MAX_SIZE}"
        )
    return size


def _is_char(t: Type | None) -> bool:
    """Whether ``t`` is plain C ``char``, the element of a C string.

    Decided by name: ``unsigned char``/``__u8``/``signed char`` arrays are bytes of
    data and decode to lists of ints. (DWARF marks ``unsigned char`` as a character
    type too, and clang's BTF marks no type as one, so the flag cannot decide.)
    """
    s = strip(t)
    return isinstance(s, Int) and s.size == 1 and not s.is_bool and s.name == "char"


def _array_shape(t: Array) -> tuple[tuple[int, ...], Type | None]:
    """The dimensions of a (multi-dimensional) array and its innermost non-array element.

    Raises ``TypeInfoError`` for more than ``_MAX_DEPTH`` dimensions (a cyclic array from
    a hostile file) or more than ``MAX_SIZE`` elements (zero dimensions count as one:
    ``x[1 << 40][0]`` would still be ``1 << 40`` empty lists).
    """
    dims: list[int] = []
    cur: Type | None = t
    while isinstance(cur, Array):
        if len(dims) == _MAX_DEPTH:
            raise TypeInfoError(f"{describe(t)} has too many dimensions")
        dims.append(cur.length)
        cur = strip(cur.element)
    if math.prod(max(d, 1) for d in dims) > MAX_SIZE:
        raise TypeInfoError(
            f"{describe(t)} has too many elements; bpfloom decodes at most {MAX_SIZE}"
        )
    return tuple(dims), cur


def _enum_signed(t: Enum) -> bool:
    """Whether ``t`` holds signed values: BTF before ``BTF_KIND_ENUM``'s kind_flag (and
    libbpf 1.1's view of it) marks every enum unsigned, even with negative enumerators."""
    return t.signed or any(v < 0 for v in t.values.values())


def _int_label(size: int, signed: bool) -> str:
    return f"{'s' if signed else 'u'}{size * 8}"


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _int_dtype(size: int, signed: bool) -> np.dtype[Any] | None:
    if size in (1, 2, 4, 8):
        return np.dtype(f"<{'i' if signed else 'u'}{size}")
    return None


# --------------------------------------------------------------------------- event classes


def _event_reduce(self: tuple[Any, ...]) -> tuple[Any, ...]:
    cls = type(self)
    return (_event_from_pickle, (cls.__name__, cls._fields, cls._c_fields, tuple(self)))  # type: ignore[attr-defined]


@functools.cache
def _event_class(name: str, fields: tuple[str, ...], c_fields: tuple[str, ...]) -> type[Any]:
    """The event class for a struct; one class per (name, fields) in a process.

    It is ``collections.namedtuple``'s class body (field getters, ``_fields``, ``_make``,
    ``_replace``, ``_asdict``, ``__repr__``) on a direct ``tuple`` subclass *without* the
    generated Python ``__new__``: the class then keeps ``tuple``'s C constructor, so
    ``map(cls, rows)`` builds events without running Python code (measured ~20% faster
    than ``tuple.__new__(cls, row)``, the fastest way into a real namedtuple). The cost:
    like ``time.struct_time``, the class is called with ONE sequence of all values.
    """
    template = _namedtuple(name, fields, module=__name__)
    body = {k: v for k, v in vars(template).items() if k not in ("__new__", "__dict__")}
    body["_c_fields"] = c_fields
    body["__reduce__"] = _event_reduce
    body["__doc__"] = f"{name}({', '.join(fields)}): a decoded C {name}; call with one sequence"
    return type(name, (tuple,), body)


def _event_from_pickle(
    name: str, fields: tuple[str, ...], c_fields: tuple[str, ...], values: tuple[Any, ...]
) -> tuple[Any, ...]:
    """Rebuild a pickled event (its class is made on demand in the receiving process)."""
    return _event_class(name, fields, c_fields)(values)  # type: ignore[no-any-return]


def _class_name(t: Struct | Union) -> str:
    name = t.name
    if name and name.isidentifier() and not keyword.iskeyword(name):
        return name
    return "anon_union" if isinstance(t, Union) else "anon_struct"


# --------------------------------------------------------------------------- column readers


class _Node:
    """Reads one C type for every record: ``column(rows, off)`` returns ``n`` values.

    ``off`` is the byte offset of the value inside each row; the node reads bytes
    ``[off, off + size)`` of every row. ``dtype`` is the numpy spelling of the type, or
    ``None`` when numpy cannot express it (then it is left out of structured dtypes).
    """

    size: int = 0
    dtype: np.dtype[Any] | None = None

    def column(self, rows: Rows, off: int) -> list[Any]:
        raise NotImplementedError

    def _view(self, rows: Rows, off: int, dtype: np.dtype[Any], count: int = 1) -> npt.NDArray[Any]:
        """A ``(n, count)`` typed view of ``count`` consecutive values at ``off``."""
        return rows[:, off : off + dtype.itemsize * count].view(dtype)


_STRUCT_CODES = {
    ("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q",
    ("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q",
    ("f", 2): "e", ("f", 4): "f", ("f", 8): "d",
}  # fmt: skip
# At most this many rows: a struct's number members are read by one struct.iter_unpack
# instead of one numpy view each (whose fixed cost dominates a batch of a few records).
_FEW_ROWS = 16


class _NumberNode(_Node):
    """Integers of 1/2/4/8 bytes, floats, pointers: one numpy view, one ``tolist``."""

    def __init__(self, dtype: np.dtype[Any]):
        self.dtype = self.raw = dtype
        self.size = dtype.itemsize
        little = dtype.byteorder == "<" or (dtype.byteorder in "=|" and sys.byteorder == "little")
        #: The ``struct`` code of the same value (little-endian), for small batches.
        self.struct_code = _STRUCT_CODES.get((dtype.kind, dtype.itemsize)) if little else None

    def column(self, rows: Rows, off: int) -> list[Any]:
        return self._view(rows, off, self.raw)[:, 0].tolist()  # type: ignore[no-any-return]


class _BoolNode(_Node):
    def __init__(self, size: int):
        self.size = size
        self.dtype = np.dtype("?") if size == 1 else _int_dtype(size, False)
        self.raw = np.dtype(f"<u{size}")

    def column(self, rows: Rows, off: int) -> list[Any]:
        return (self._view(rows, off, self.raw)[:, 0] != 0).tolist()  # type: ignore[no-any-return]


class _WideIntNode(_Node):
    """A 16-byte integer (``__int128``): two 64-bit halves combined per value."""

    def __init__(self, signed: bool):
        self.size = 16
        self.dtype = np.dtype("V16")
        self._hi = np.dtype("<i8" if signed else "<u8")

    def column(self, rows: Rows, off: int) -> list[Any]:
        lo = self._view(rows, off, np.dtype("<u8"))[:, 0].tolist()
        hi = self._view(rows, off + 8, self._hi)[:, 0].tolist()
        shifted = map(int.__lshift__, hi, repeat(64))
        return list(map(int.__or__, shifted, lo))


class _EnumNode(_Node):
    """An enum: the enumerator name when the value is known, else the raw int."""

    def __init__(self, inner: _Node, names: dict[int, str]):
        self.size = inner.size
        self.dtype = inner.dtype
        self._inner = inner
        self._names = names

    def column(self, rows: Rows, off: int) -> list[Any]:
        values = self._inner.column(rows, off)
        return list(map(self._names.get, values, values))


class _BytesNode(_Node):
    """A value bpfloom cannot interpret (long double, odd-sized int): raw ``bytes``."""

    def __init__(self, size: int):
        self.size = size
        self.dtype = np.dtype(f"V{size}") if size else None

    def column(self, rows: Rows, off: int) -> list[Any]:
        if not self.size:
            return [b""] * rows.shape[0]
        return self._view(rows, off, np.dtype(f"V{self.size}"))[:, 0].tolist()  # type: ignore[no-any-return]


class _BitfieldNode(_Node):
    """A bitfield: covering bytes -> little-endian uint64 -> shift, mask, sign-extend.

    ``bit_offset`` is relative to the ``off`` given to ``column`` (the aggregate start).
    Bit 0 is the least significant bit of the first byte, as BTF numbers bits on
    little-endian targets.
    """

    def __init__(self, bit_offset: int, bits: int, signed: bool, kind: _Node | None):
        if not 0 < bits <= 64:
            raise TypeInfoError(f"bitfield of {bits} bits is not supported")
        self._start = bit_offset // 8
        self._shift = bit_offset % 8
        self._nbytes = (self._shift + bits + 7) // 8  # at most 9
        self._bits = bits
        self._signed = signed
        self._names = kind._names if isinstance(kind, _EnumNode) else None
        self._bool = isinstance(kind, _BoolNode)

    def column(self, rows: Rows, off: int) -> list[Any]:
        n = rows.shape[0]
        start = off + self._start
        words = np.zeros((n, 2 if self._nbytes > 8 else 1), dtype="<u8")
        words.view(np.uint8)[:, : self._nbytes] = rows[:, start : start + self._nbytes]
        value = words[:, 0] >> np.uint64(self._shift)
        if self._nbytes > 8:
            value |= words[:, 1] << np.uint64(64 - self._shift)
        if self._bits < 64:
            value &= np.uint64((1 << self._bits) - 1)
        if self._bool:
            return (value != 0).tolist()  # type: ignore[no-any-return]
        if self._signed:
            if self._bits < 64:
                sign = np.uint64(1 << (self._bits - 1))
                value = (value ^ sign) - sign  # wraps modulo 2**64: two's complement
            values: list[Any] = value.view(np.int64).tolist()
        else:
            values = value.tolist()
        if self._names is not None:
            return list(map(self._names.get, values, values))
        return values


_FEW_STRINGS = 32  # at most this many strings per column: decode one by one
_LONG_STRING = 96  # strings this long or longer: decode one by one


class _StringNode(_Node):
    """``char[...][L]``: each innermost ``char[L]`` becomes a ``str``.

    Instead of decoding ``n`` small ``bytes`` objects one by one, the bytes of every
    string up to its first NUL are packed into one buffer, each followed by a NUL, and
    decoded in one call, then split on NUL. This is exact: a string holds no NUL, and a
    NUL (ASCII) ends any incomplete UTF-8 sequence, so "replace" (and
    "surrogateescape") yields the same characters as decoding each string alone. It
    measures ~2x faster than per-string ``bytes.decode`` for many short strings; but its
    fixed cost (~15 us) dominates a small batch, and it scans every byte of long buffers
    (paths), so few strings and long ones are decoded one by one from a single copy
    (measured: 256-byte strings 2-7x faster that way at any batch size; 16-byte ones up
    to ~32 per batch).
    """

    def __init__(self, outer: tuple[int, ...], length: int, errors: str = "replace"):
        self._outer = outer
        self._count = math.prod(outer)
        self._length = length
        self._errors = errors
        self.size = self._count * length
        base = np.dtype(f"S{length}") if length else None
        self.dtype = None if base is None else (np.dtype((base, outer)) if outer else base)

    def column(self, rows: Rows, off: int) -> list[Any]:
        n = rows.shape[0]
        total = n * self._count
        length = self._length
        if length == 0:
            strings: list[Any] = [""] * total
        elif total == 0:
            strings = []
        elif total <= _FEW_STRINGS or length >= _LONG_STRING:
            raw = rows[:, off : off + self.size].tobytes()
            strings = [
                raw[i : i + length].split(b"\0", 1)[0].decode("utf-8", self._errors)
                for i in range(0, len(raw), length)
            ]
        else:
            chars = rows[:, off : off + self.size].reshape(total, length)
            packed = np.zeros((total, length + 1), dtype=np.uint8)
            packed[:, :length] = chars
            keep = np.ones((total, length + 1), dtype=np.bool_)
            np.logical_or.accumulate(chars == 0, axis=1, out=keep[:, :length])
            np.logical_not(keep[:, :length], out=keep[:, :length])
            text = packed[keep].tobytes().decode("utf-8", self._errors)
            strings = text.split("\0")
            strings.pop()  # the text ends with a separator
        if not self._outer:
            return strings
        return _regroup(strings, n, self._outer)


class _ArrayNode(_Node):
    """A non-string array: nested lists; numeric elements in one numpy pass."""

    def __init__(self, dims: tuple[int, ...], element: _Node):
        self._dims = dims
        self._count = math.prod(dims)
        self._element = element
        self.size = self._count * element.size
        self.dtype = None
        if element.dtype is not None and self._count:
            e = element.dtype
            self.dtype = np.dtype((e.base, dims + e.shape)) if e.shape else np.dtype((e, dims))

    def column(self, rows: Rows, off: int) -> list[Any]:
        n = rows.shape[0]
        if self._count == 0:
            return np.empty((n, *self._dims), dtype=np.uint8).tolist()  # type: ignore[no-any-return]
        if isinstance(self._element, _NumberNode):
            view = self._view(rows, off, self._element.raw, self._count)
            return view.reshape(n, *self._dims).tolist()  # type: ignore[no-any-return]
        if isinstance(self._element, _BoolNode):
            view = self._view(rows, off, self._element.raw, self._count)
            return (view != 0).reshape(n, *self._dims).tolist()  # type: ignore[no-any-return]
        flat_rows = rows[:, off : off + self.size].reshape(n * self._count, self._element.size)
        return _regroup(self._element.column(flat_rows, 0), n, self._dims)


def _regroup(flat: list[Any], n: int, dims: tuple[int, ...]) -> list[Any]:
    """Split ``n * prod(dims)`` values, row-major, into ``n`` nested lists of shape ``dims``."""
    if math.prod(dims) == 0:
        return np.empty((n, *dims), dtype=np.uint8).tolist()  # type: ignore[no-any-return]
    out = flat
    for k in reversed(dims):
        out = list(map(list, zip(*([iter(out)] * k), strict=False)))
    return out


class _AggregateNode(_Node):
    """A struct or union: one column per field, then events built by C-level ``map``."""

    def __init__(self, t: Struct | Union, build: Callable[[Type | None, int], _Node], depth: int):
        self.size = t.size
        self.fields = _layout(t)
        self.columns: list[tuple[_Node, int]] = []
        names: list[str] = []
        formats: list[np.dtype[Any]] = []
        offsets: list[int] = []
        for f in self.fields:
            try:
                if f.bits:
                    if (f.bit_offset + f.bits + 7) // 8 > t.size:
                        raise TypeInfoError(f"bitfield overruns {describe(t)} ({t.size} bytes)")
                    self.columns.append((self._bitfield(f, build, depth), 0))
                    continue
                node = build(f.type, depth + 1)
            except TypeInfoError as exc:
                raise TypeInfoError(f"{describe(t)}.{f.c_name}: {exc}") from exc
            off = f.bit_offset // 8
            if off + node.size > t.size:
                raise TypeInfoError(f"member {f.c_name} overruns {describe(t)} ({t.size} bytes)")
            self.columns.append((node, off))
            if node.dtype is not None:
                names.append(f.py_name)
                formats.append(node.dtype)
                offsets.append(off)
        self.dtype = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": t.size}
        )
        self._numbers = _number_struct(self.columns, t.size) if isinstance(t, Struct) else None
        self.event_type = _event_class(
            _class_name(t),
            tuple(f.py_name for f in self.fields),
            tuple(f.c_name for f in self.fields),
        )

    @staticmethod
    def _bitfield(f: _Field, build: Callable[[Type | None, int], _Node], depth: int) -> _Node:
        base = strip(f.type)
        if isinstance(base, Int):
            signed = base.signed and not base.is_bool
        elif isinstance(base, Enum):
            signed = _enum_signed(base)
        else:
            raise TypeInfoError(f"bitfield of type {describe(f.type)} is not supported")
        return _BitfieldNode(f.bit_offset, f.bits, signed, build(base, depth + 1))

    def column(self, rows: Rows, off: int) -> list[Any]:
        cls = self.event_type
        if not self.columns:
            return [cls(())] * rows.shape[0]
        return list(map(cls, zip(*self.field_columns(rows, off), strict=True)))

    def field_columns(self, rows: Rows, off: int) -> list[Sequence[Any]]:
        """One column of values per field, for every row."""
        n = rows.shape[0]
        if self._numbers is not None and 0 < n <= _FEW_ROWS:
            layout, slots = self._numbers
            raw = rows[:, off : off + self.size].tobytes()
            numbers = dict(zip(slots, zip(*layout.iter_unpack(raw), strict=True), strict=True))
            return [
                numbers[i] if i in numbers else node.column(rows, off + rel)
                for i, (node, rel) in enumerate(self.columns)
            ]
        return [node.column(rows, off + rel) for node, rel in self.columns]


def _number_struct(
    columns: list[tuple[_Node, int]], size: int
) -> tuple[struct.Struct, list[int]] | None:
    """One ``struct.Struct`` that reads every plain number member of a struct at once
    (pad bytes over the rest), and the column index of each value it yields; None if
    the struct has no such member."""
    fmt, pos, slots = "<", 0, []
    for i in sorted(range(len(columns)), key=lambda i: columns[i][1]):
        node, rel = columns[i]
        code = node.struct_code if isinstance(node, _NumberNode) else None
        if code is None or rel < pos:
            continue
        fmt += f"{rel - pos}x{code}" if rel > pos else code
        pos = rel + node.size
        slots.append(i)
    if not slots:
        return None
    if size > pos:
        fmt += f"{size - pos}x"
    return struct.Struct(fmt), slots


class _Builder:
    """Compiles types into nodes, sharing one node per distinct type object."""

    def __init__(self, strings: str = "replace") -> None:
        self._strings = strings
        self._memo: dict[int, _Node] = {}
        self._keep: list[Type] = []  # keeps ids in _memo valid while building

    def build(self, t: Type | None, depth: int = 0) -> _Node:
        if depth > _MAX_DEPTH:
            raise TypeInfoError(f"{describe(t)} nests too deeply (a struct containing itself?)")
        s = strip(t)
        if s is None:
            raise TypeInfoError(f"{describe(t)} has no value to decode")
        key = id(s)
        node = self._memo.get(key)
        if node is None:
            node = self._make(s, depth)
            self._memo[key] = node
            self._keep.append(s)
        return node

    def _make(self, s: Type, depth: int) -> _Node:
        _size_of(s)  # refuse what has no size or is too big before building anything
        if isinstance(s, Int):
            if s.is_bool:
                return _BoolNode(s.size)
            dtype = _int_dtype(s.size, s.signed)
            if dtype is not None:
                return _NumberNode(dtype)
            if s.size == 16:
                return _WideIntNode(s.signed)
            return _BytesNode(s.size)
        if isinstance(s, Enum):
            inner = self._make(Int("", s.size, _enum_signed(s)), depth)
            names: dict[int, str] = {}
            for name, value in s.values.items():
                names.setdefault(value, name)
            return _EnumNode(inner, names)
        if isinstance(s, Float):
            if s.size in (2, 4, 8):
                return _NumberNode(np.dtype(f"<f{s.size}"))
            return _BytesNode(s.size)
        if isinstance(s, Pointer):
            return _NumberNode(np.dtype("<u8"))
        if isinstance(s, Array):
            dims, element = _array_shape(s)
            if _is_char(element):
                return _StringNode(dims[:-1], dims[-1], self._strings)
            return _ArrayNode(dims, self.build(element, depth + 1))
        if isinstance(s, (Struct, Union)):
            return _AggregateNode(s, self.build, depth)
        return _BytesNode(_size_of(s))


# --------------------------------------------------------------------------- Decoder


_gc_lock = threading.Lock()
_gc_pauses = 0  # decodes running now with the collector paused
_gc_was_enabled = False  # whether the first of them found the collector enabled


@contextlib.contextmanager
def _paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while events are built.

    Events are tuple subclasses, which CPython's collector tracks and, unlike exact
    tuples, never untracks. Built with the collector running, a million of them set off
    hundreds of collections that traverse the young events again and again (measured:
    the whole decode 3x slower). Events hold only ints, str, bytes, lists and other
    events, so they never form reference cycles: pausing the collector while they are
    built loses nothing. Pauses of several threads nest: the collector is enabled again
    when the last one ends, and only if the first one found it enabled.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _decode_rows(node: _Node, rows: Rows) -> list[Any]:
    """Run ``node.column`` over all rows with the cyclic GC paused (``_paused_gc``)."""
    with _paused_gc():
        return node.column(rows, 0)


class Decoder:
    """Decodes records of one C type; build once per type, reuse for every batch.

    ``fields`` are the event attribute names (see the module docstring for renaming),
    ``c_fields`` the C member names and ``field_types`` their types, in the same order;
    all are empty for a type that is
    not a struct or union, whose values decode to bare Python values (an ``int`` for a
    ``u32`` map key, a ``str`` for ``char[16]``) and whose ``event_type`` is ``None``.

    ``dtype`` is the numpy spelling of the type with ``itemsize == size``, for zero-copy
    views (``records.view(decoder.dtype)``). It leaves out what numpy cannot express:
    bitfields, zero-length (flexible) arrays and arrays of such; 16-byte ints and other
    oddities appear as opaque ``V<n>`` fields. For a non-aggregate type it is the plain
    dtype of that value (``<u4``, ``S16``, ...).

    A type of more than ``MAX_SIZE`` bytes or array elements raises ``TypeInfoError``.

    Thread-safe: a decoder holds no per-call state.
    """

    def __init__(self, t: Type, *, strings: str = "replace") -> None:
        if strings not in STRING_POLICIES:
            raise TypeInfoError(f"strings must be one of {', '.join(STRING_POLICIES)}")
        self.type = t
        self.strings = strings
        self.size = _size_of(t)
        self._node = _Builder(strings).build(t)
        if isinstance(self._node, _AggregateNode):
            self.event_type: type[Any] | None = self._node.event_type
            self.fields: tuple[str, ...] = tuple(f.py_name for f in self._node.fields)
            self.c_fields: tuple[str, ...] = tuple(f.c_name for f in self._node.fields)
            self.field_types: tuple[Type | None, ...] = tuple(f.type for f in self._node.fields)
        else:
            self.event_type = None
            self.fields = ()
            self.c_fields = ()
            self.field_types = ()
        self.dtype: np.dtype[Any] = (
            self._node.dtype if self._node.dtype is not None else np.dtype(f"V{self.size}")
        )

    def __repr__(self) -> str:
        return f"<Decoder {describe(self.type)} {self.size}B>"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as its type and string policy (worker processes rebuild it)."""
        return (_rebuild_decoder, (self.type, self.strings))

    def decode_batch(self, records: npt.NDArray[np.uint8]) -> list[Any]:
        """Decode ``n`` records given as a 2-D ``uint8`` array of shape ``(n, width)``.

        ``width`` must be at least ``size``; only the first ``size`` bytes of each row are
        read, so a strided view into a larger buffer works without a copy. Records that
        may be *shorter* than the type (variable-size records) must be padded by the
        caller, e.g. with :func:`pad_records`. Raises ``TypeInfoError`` on a bad shape.
        """
        return _decode_rows(self._node, self._checked(records))

    def iter_batch(self, records: npt.NDArray[np.uint8]) -> Iterator[Any]:
        """Like ``decode_batch``, but events are made one at a time as you iterate.

        The columns are decoded up front; each event tuple is built only when the
        consumer asks for it and can be freed before the next one, so a loop that
        handles events one by one never holds the whole batch of event objects (faster
        than a list for large batches: the memory stays warm and the GC stays idle).
        """
        rows = self._checked(records)
        node = self._node
        if not isinstance(node, _AggregateNode) or not node.columns:
            return iter(_decode_rows(node, rows))
        with _paused_gc():
            cols = node.field_columns(rows, 0)
        return map(node.event_type, zip(*cols, strict=True))

    def _checked(self, records: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        if not isinstance(records, np.ndarray) or records.ndim != 2:
            raise TypeInfoError("decode_batch needs a 2-D uint8 array of shape (n, size)")
        if records.dtype != np.uint8:
            raise TypeInfoError(f"decode_batch needs uint8 records, not {records.dtype}")
        if records.shape[1] < self.size:
            raise TypeInfoError(
                f"records are {records.shape[1]} bytes wide, {describe(self.type)} needs "
                f"{self.size}: pad them with pad_records()"
            )
        if records.strides[1] != 1:
            records = np.ascontiguousarray(records)
        return records

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode one record (a map key or value); a shorter record is zero-padded, bytes
        beyond ``size`` are ignored. Same code as ``decode_batch``, with ``n = 1``."""
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size < self.size:
            padded = np.zeros(self.size, dtype=np.uint8)
            padded[: raw.size] = raw
            raw = padded
        return self.decode_batch(raw[: self.size].reshape(1, self.size))[0]


def _rebuild_decoder(t: Type, strings: str) -> Decoder:
    return Decoder(t, strings=strings)


@functools.lru_cache(maxsize=256)
def _decoder_for(t: Type) -> Decoder:
    return Decoder(t)


def decode_value(t: Type, data: bytes | bytearray | memoryview) -> Any:
    """Decode one value of type ``t`` (decoders are cached per type object)."""
    return _decoder_for(t).decode(data)


def pad_records(
    records: Iterable[bytes | bytearray | memoryview] | npt.NDArray[np.uint8], size: int
) -> npt.NDArray[np.uint8]:
    """Records of any lengths as an ``(n, size)`` array: short ones zero-padded, long cut.

    For variable-size records (``bpf_ringbuf_output`` of a partial struct, perf samples).
    A 2-D ``uint8`` array narrower than ``size`` gets zero columns appended; a wider one
    is returned as a view of its first ``size`` columns.
    """
    if isinstance(records, np.ndarray):
        if records.ndim != 2 or records.dtype != np.uint8:
            raise TypeInfoError("pad_records needs a 2-D uint8 array or an iterable of bytes")
        if records.shape[1] >= size:
            return records[:, :size]
        out = np.zeros((records.shape[0], size), dtype=np.uint8)
        out[:, : records.shape[1]] = records
        return out
    items = [bytes(r[:size]) for r in records]
    joined = b"".join(r.ljust(size, b"\0") for r in items)
    return np.frombuffer(bytearray(joined), dtype=np.uint8).reshape(len(items), size)


def to_jsonable(value: Any) -> Any:
    """``value`` (events, nested) as dicts, lists, str, int, float, bool and None.

    Events become dicts keyed by C member names; ``bytes`` become hex strings; numpy
    scalars and arrays become Python values; NaN and infinities are left as they are.
    """
    kind = type(value)
    if kind in _JSON_PLAIN:
        return value
    names = getattr(kind, "_c_fields", None)
    if names is not None:  # one of our events
        return dict(zip(names, map(to_jsonable, value), strict=True))
    if isinstance(value, tuple):
        fields = getattr(value, "_fields", None)
        if fields is not None:
            return dict(zip(fields, map(to_jsonable, value), strict=True))
        return list(map(to_jsonable, value))
    if isinstance(value, list):
        return list(map(to_jsonable, value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (np.generic, np.ndarray)):
        return to_jsonable(value.tolist())
    return value


_JSON_PLAIN = frozenset({int, str, float, bool, type(None)})


# --------------------------------------------------------------------------- encoding


def _fail(path: str, message: str) -> TypeInfoError:
    return TypeInfoError(f"{path}: {message}" if path else message)


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_int(value: object, path: str, what: str) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    raise _fail(path, f"{_short_repr(value)} is not an integer ({what} needs one)")


def _check_int(value: int, bits: int, signed: bool, label: str, path: str) -> None:
    low, high = _int_range(bits, signed)
    if not low <= value <= high:
        raise _fail(path, f"{value} does not fit {label} ({low}..{high})")


def _enum_value(t: Enum, value: object, path: str) -> int:
    if isinstance(value, str):
        if value in t.values:
            return t.values[value]
        valid = ", ".join(t.values) or "none"
        raise _fail(path, f"{value!r} is not an enumerator of {describe(t)} (valid: {valid})")
    return _as_int(value, path, describe(t))


def _encode_into(
    t: Type | None, value: object, buf: bytearray, off: int, path: str, full: bool = False
) -> None:
    """Write ``value`` as type ``t`` into ``buf`` at byte ``off``."""
    s = strip(t)
    if isinstance(s, Int):
        if s.is_bool:
            if value not in (0, 1) or not isinstance(value, (bool, int, np.integer, np.bool_)):
                raise _fail(path, f"{_short_repr(value)} is not a bool (give True/False or 1/0)")
            buf[off : off + s.size] = int(value).to_bytes(s.size, "little")
            return
        number = _as_int(value, path, describe(t))
        _check_int(number, s.size * 8, s.signed, _int_label(s.size, s.signed), path)
        buf[off : off + s.size] = number.to_bytes(s.size, "little", signed=s.signed)
    elif isinstance(s, Enum):
        number = _enum_value(s, value, path)
        signed = _enum_signed(s) or number < 0
        _check_int(number, s.size * 8, signed, describe(s), path)
        buf[off : off + s.size] = number.to_bytes(s.size, "little", signed=signed)
    elif isinstance(s, Float):
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise _fail(path, f"{_short_repr(value)} is not a number ({describe(t)} needs one)")
        code = {2: "<e", 4: "<f", 8: "<d"}.get(s.size)
        if code is None:
            raise _fail(path, f"cannot encode a {s.size}-byte float")
        try:
            struct.pack_into(code, buf, off, float(value))
        except (OverflowError, struct.error) as exc:
            raise _fail(path, f"{value} does not fit {describe(t)}") from exc
    elif isinstance(s, Pointer):
        number = _as_int(value, path, "a pointer")
        _check_int(number, 64, False, "a pointer", path)
        buf[off : off + 8] = number.to_bytes(8, "little")
    elif isinstance(s, Array):
        _encode_array(s, value, buf, off, path, full)
    elif isinstance(s, (Struct, Union)):
        _encode_aggregate(s, value, buf, off, path, full)
    else:
        raise _fail(path, f"cannot encode {describe(t)}")


def _encode_array(
    t: Array, value: object, buf: bytearray, off: int, path: str, full: bool = False
) -> None:
    element = strip(t.element)
    if _is_char(element):
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _fail(path, f"{_short_repr(value)} is not a str ({describe(t)} needs one)")
        data = bytes(data)
        room = t.length if full else t.length - 1  # full: no NUL needed, as decode gives
        if len(data) > room:
            raise _fail(
                path,
                f"{_short_repr(value)} is {len(data)} bytes, {describe(t)} holds at most "
                f"{max(room, 0)}",
            )
        buf[off : off + len(data)] = data
        return
    if isinstance(value, (bytes, bytearray, memoryview)) and _size_of(element) == 1:
        data = bytes(value)
        if len(data) > t.length:
            raise _fail(path, f"{len(data)} bytes given, {describe(t)} holds {t.length}")
        buf[off : off + len(data)] = data
        return
    if isinstance(value, str) or not isinstance(value, (Sequence, np.ndarray)):
        raise _fail(path, f"{_short_repr(value)} is not a sequence ({describe(t)} needs one)")
    if len(value) > t.length:
        raise _fail(path, f"{len(value)} values given, {describe(t)} holds {t.length}")
    step = _size_of(element)
    for i, item in enumerate(value):
        _encode_into(element, item, buf, off + i * step, f"{path}[{i}]", full)


def _encode_aggregate(
    t: Struct | Union, value: object, buf: bytearray, off: int, path: str, full: bool = False
) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) == t.size:
        buf[off : off + t.size] = bytes(value)
        return
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        items: Iterable[tuple[object, object]] = zip(value._fields, value, strict=True)
    elif isinstance(value, Mapping):
        items = value.items()
    else:
        raise _fail(
            path,
            f"{_short_repr(value)} is not a mapping or namedtuple of members "
            f"({describe(t)} needs one)",
        )
    fields = _layout(t)
    by_name = {f.py_name: f for f in fields}
    by_name.update({f.c_name: f for f in fields})
    for name, item in items:
        f = by_name.get(name) if isinstance(name, str) else None
        if f is None:
            valid = ", ".join(f.c_name for f in fields) or "none"
            raise _fail(path, f"{describe(t)} has no member {name!r} (members: {valid})")
        if item is None:
            continue
        inner = f"{path}.{f.c_name}" if path else f.c_name
        if f.bits:
            _encode_bitfield(f, item, buf, off, inner)
        else:
            _encode_into(f.type, item, buf, off + f.bit_offset // 8, inner, full)


def _encode_bitfield(f: _Field, value: object, buf: bytearray, off: int, path: str) -> None:
    base = strip(f.type)
    if isinstance(base, Enum):
        number = _enum_value(base, value, path)
        signed = _enum_signed(base)
    elif isinstance(base, Int) and base.is_bool:
        if value not in (0, 1) or not isinstance(value, (bool, int, np.integer, np.bool_)):
            raise _fail(path, f"{_short_repr(value)} is not a bool (give True/False or 1/0)")
        number, signed = int(value), False
    elif isinstance(base, Int):
        number, signed = _as_int(value, path, "a bitfield"), base.signed
    else:
        raise _fail(path, f"bitfield of type {describe(f.type)} is not supported")
    kind = "signed" if signed else "unsigned"
    _check_int(number, f.bits, signed, f"a {f.bits}-bit {kind} bitfield", path)
    start = off + f.bit_offset // 8
    shift = f.bit_offset % 8
    nbytes = (shift + f.bits + 7) // 8
    mask = ((1 << f.bits) - 1) << shift
    word = int.from_bytes(buf[start : start + nbytes], "little")
    word = (word & ~mask) | ((number << shift) & mask)
    buf[start : start + nbytes] = word.to_bytes(nbytes, "little")


def encode(t: Type, value: object, *, full_strings: bool = False) -> bytes:
    """``value`` as exactly ``sizeof(t)`` little-endian bytes; raises ``TypeInfoError``.

    Ints are range-checked; bools take ``True``/``False`` or 1/0; ``char[N]`` takes a
    ``str`` (UTF-8) or ``bytes`` of at most N-1 bytes (room for the NUL); enums take an
    enumerator name or an int; other arrays take a sequence of at most N items (byte
    arrays also take ``bytes``); structs and unions take a mapping or namedtuple of
    members by C or attribute name (missing or ``None`` members are zero; union members
    are written in the order given, so give one) or ``bytes`` of exactly their size.
    ``full_strings=True`` lets a ``char[N]`` take N bytes (no NUL), which is what the
    decoder returns for a full array: map keys and values must round-trip.
    """
    buf = bytearray(_size_of(t))
    _encode_into(t, value, buf, 0, "", full_strings)
    return bytes(buf)


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def _parse_int(text: str) -> int:
    cleaned = text.strip()
    try:
        return int(cleaned, 0)
    except ValueError:
        return int(cleaned, 10)  # "010": base 0 refuses leading zeros


def _parse(t: Type | None, text: str) -> object:
    s = strip(t)
    what = describe(t)
    try:
        if isinstance(s, Int) and s.is_bool:
            word = text.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            raise TypeInfoError(f"{text!r} is not a bool (true/false, yes/no, 1/0)")
        if isinstance(s, (Int, Pointer)):
            if isinstance(s, Int) and _is_char(s) and len(text) == 1 and not text.isdigit():
                return ord(text)
            return _parse_int(text)
        if isinstance(s, Enum):
            name = text.strip()
            if name in s.values:
                return name
            folded = [k for k in s.values if k.lower() == name.lower()]
            if len(folded) == 1:
                return folded[0]
            try:
                return _parse_int(name)
            except ValueError:
                return name  # encode() reports the unknown enumerator with the valid ones
        if isinstance(s, Float):
            return float(text)
        if isinstance(s, Array):
            if _is_char(s.element):
                return text
            element = s.element
            parts = [p for p in text.split(",")] if text.strip() else []
            return [_parse(element, p) for p in parts]
    except ValueError as exc:
        raise TypeInfoError(f"{text!r} is not a valid {what}") from exc
    raise TypeInfoError(f"cannot parse {what} from text; set its members one by one")


def parse_text(t: Type, text: str) -> object:
    """Turn command-line ``text`` into a value for ``t`` (checked by :func:`encode`).

    Ints accept decimal, ``0x``/``0o``/``0b`` prefixes and ``_`` separators; bools accept
    true/false, yes/no, on/off, 1/0; enums accept an enumerator name (case-insensitive
    when unambiguous) or an int; ``char[N]`` takes the text itself; other arrays take
    comma-separated items. Structs and unions cannot be given as text.
    """
    value = _parse(t, text)
    encode(t, value)
    return value
