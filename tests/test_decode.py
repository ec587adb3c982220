"""Decoders and encoders (``bpfloom.decode``), on hand-built types.

Expected values come from ``struct.pack`` and plain integer arithmetic, never from the
code under test.
"""

from __future__ import annotations

import gc
import json
import math
import pickle
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfloom._exceptions import TypeInfoError
from bpfloom.btf import btf_from_elf
from bpfloom.decode import (
    Decoder,
    decode_value,
    encode,
    pad_records,
    parse_text,
    to_jsonable,
)
from bpfloom.types import (
    Array,
    Const,
    Enum,
    Float,
    Int,
    Member,
    Pointer,
    Struct,
    Type,
    Typedef,
    Union,
    Void,
    Volatile,
)

U8 = Int("unsigned char", 1, False)
S8 = Int("signed char", 1, True)
U16 = Int("unsigned short", 2, False)
S16 = Int("short", 2, True)
U32 = Int("unsigned int", 4, False)
S32 = Int("int", 4, True)
U64 = Int("unsigned long long", 8, False)
S64 = Int("long long", 8, True)
U128 = Int("unsigned __int128", 16, False)
S128 = Int("__int128", 16, True)
CHAR = Int("char", 1, True)
DWARF_UCHAR = Int("unsigned char", 1, False, is_char=True)
BOOL = Int("_Bool", 1, False, is_bool=True)
HALF = Float("_Float16", 2)
FLOAT = Float("float", 4)
DOUBLE = Float("double", 8)
LONG_DOUBLE = Float("long double", 16)
VOID_PTR = Pointer(Void())
STATE = Enum("state", 4, False, {"RUNNING": 0, "SLEEPING": 1, "DEAD": 4})
SIGNED_ENUM = Enum("err", 4, False, {"EFAULT": -14, "OK": 0})  # old BTF: unsigned flag
U32_T = Typedef("u32", Typedef("__u32", U32))
CONST_VOLATILE_U16 = Const(Volatile(Typedef("__u16", U16)))


def member(name: str, t: Type, byte_offset: int) -> Member:
    return Member(name, t, byte_offset * 8)


def bitfield(name: str, t: Type, bit_offset: int, bits: int) -> Member:
    return Member(name, t, bit_offset, bits)


def struct_of(name: str, size: int, *members: Member) -> Struct:
    return Struct(name, size, list(members))


def table(rows: list[tuple[Any, ...]]) -> list[Any]:
    """Parametrize rows whose first item is the case id."""
    return [pytest.param(*row[1:], id=row[0]) for row in rows]


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def rows_of(*records: bytes) -> np.ndarray:
    return np.frombuffer(b"".join(records), dtype=np.uint8).reshape(len(records), -1)


# --------------------------------------------------------------------------- values

SCALARS: list[tuple[str, Type, bytes, Any]] = [
    ("u8 min", U8, struct.pack("<B", 0), 0),
    ("u8 max", U8, struct.pack("<B", 255), 255),
    ("s8 min", S8, struct.pack("<b", -128), -128),
    ("s8 max", S8, struct.pack("<b", 127), 127),
    ("u16 max", U16, struct.pack("<H", 65535), 65535),
    ("s16 min", S16, struct.pack("<h", -32768), -32768),
    ("u32 max", U32, struct.pack("<I", 2**32 - 1), 2**32 - 1),
    ("s32 min", S32, struct.pack("<i", -(2**31)), -(2**31)),
    ("s32 max", S32, struct.pack("<i", 2**31 - 1), 2**31 - 1),
    ("u64 max", U64, struct.pack("<Q", 2**64 - 1), 2**64 - 1),
    ("s64 min", S64, struct.pack("<q", -(2**63)), -(2**63)),
    ("s64 -1", S64, struct.pack("<q", -1), -1),
    ("u128 max", U128, b"\xff" * 16, 2**128 - 1),
    ("u128 hi", U128, struct.pack("<QQ", 5, 7), (7 << 64) | 5),
    ("s128 min", S128, struct.pack("<Qq", 0, -(2**63)), -(2**127)),
    ("s128 -2", S128, struct.pack("<qq", -2, -1), -2),
    ("bool false", BOOL, b"\x00", False),
    ("bool true", BOOL, b"\x01", True),
    ("bool nonzero", BOOL, b"\x02", True),
    ("half", HALF, struct.pack("<e", 1.5), 1.5),
    ("float", FLOAT, struct.pack("<f", -0.25), -0.25),
    ("double", DOUBLE, struct.pack("<d", 1e300), 1e300),
    ("long double as bytes", LONG_DOUBLE, bytes(range(16)), bytes(range(16))),
    ("pointer", VOID_PTR, struct.pack("<Q", 0xFFFF_8880_0000_1000), 0xFFFF_8880_0000_1000),
    ("enum known", STATE, struct.pack("<I", 4), "DEAD"),
    ("enum unknown", STATE, struct.pack("<I", 3), 3),
    ("enum negative", SIGNED_ENUM, struct.pack("<i", -14), "EFAULT"),
    ("typedef chain", U32_T, struct.pack("<I", 123456), 123456),
    ("const volatile typedef", CONST_VOLATILE_U16, struct.pack("<H", 7), 7),
    ("char scalar is an int", CHAR, b"A", 65),
    ("char[8]", Array(CHAR, 8), b"bash\0\0\0\0", "bash"),
    ("char[8] garbage after NUL", Array(CHAR, 8), b"sh\0XYZ\0Q", "sh"),
    ("char[4] no NUL", Array(CHAR, 4), b"abcd", "abcd"),
    ("char[4] empty", Array(CHAR, 4), b"\0bcd", ""),
    ("char[8] utf-8", Array(CHAR, 8), "héllo".encode() + b"\0\0", "héllo"),
    ("char[4] invalid utf-8", Array(CHAR, 4), b"a\xffb\0", "a\ufffdb"),
    ("char[4] cut utf-8", Array(CHAR, 4), b"ab\xe2\x82", "ab\ufffd"),
    # DWARF flags unsigned char as a character type; only plain char makes strings.
    ("unsigned char[3] is a list", Array(DWARF_UCHAR, 3), b"ok\0", [111, 107, 0]),
    ("typedef char array", Typedef("comm_t", Array(Const(CHAR), 4)), b"id\0\0", "id"),
    ("u8[4] is a list", Array(U8, 4), b"\x01\x02\x03\xff", [1, 2, 3, 255]),
    ("s16[3]", Array(S16, 3), struct.pack("<3h", -1, 0, 300), [-1, 0, 300]),
    ("u32[2][3]", Array(Array(U32, 3), 2), struct.pack("<6I", *range(6)), [[0, 1, 2], [3, 4, 5]]),
    ("bool[3]", Array(BOOL, 3), b"\x00\x01\x05", [False, True, True]),
    ("double[2]", Array(DOUBLE, 2), struct.pack("<2d", 0.5, -2.0), [0.5, -2.0]),
    ("enum[3]", Array(STATE, 3), struct.pack("<3I", 1, 9, 0), ["SLEEPING", 9, "RUNNING"]),
    ("char[2][4]", Array(Array(CHAR, 4), 2), b"ab\0x" + b"cdef", ["ab", "cdef"]),
    ("u64[0]", Array(U64, 0), b"", []),
    ("char[0]", Array(CHAR, 0), b"", ""),
    ("u128[2]", Array(U128, 2), struct.pack("<4Q", 1, 0, 0, 1), [1, 1 << 64]),
]


@pytest.mark.parametrize(("t", "data", "expected"), table(SCALARS))
def test_decode_value(t: Type, data: bytes, expected: Any) -> None:
    value = decode_value(t, data)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("t", "data", "expected"), table(SCALARS))
def test_value_as_struct_member_in_a_batch(t: Type, data: bytes, expected: Any) -> None:
    """Each shape also decodes inside a struct, at an odd offset, over several rows."""
    size = 3 + len(data) + 1
    s = struct_of("holder", size, member("pre", U16, 0), member("v", t, 3))
    record = struct.pack("<H", 0xBEEF) + b"\xaa" + data + b"\xcc"
    events = Decoder(s).decode_batch(rows_of(record, record, record))
    assert [ev.v for ev in events] == [expected] * 3
    assert [ev.pre for ev in events] == [0xBEEF] * 3


@pytest.mark.parametrize("length", [4, 16, 95, 96, 256])
@pytest.mark.parametrize("rows", [1, 32, 33, 200])
def test_strings_decode_the_same_one_by_one_and_packed(length: int, rows: int) -> None:
    """Few or long strings are decoded one by one, many short ones packed: the two
    ways agree, on full buffers (no NUL), empty ones and invalid or cut UTF-8 alike."""
    samples = [b"", b"a", "héllo".encode(), b"x\xffy", b"ab\xe2\x82", b"z" * length]
    s = struct_of("holder", length, member("s", Array(CHAR, length), 0))
    datas = [(samples[i % len(samples)] + b"\0" * length)[:length] for i in range(rows)]
    events = Decoder(s).decode_batch(rows_of(*datas))
    expected = [d.split(b"\0", 1)[0].decode("utf-8", "replace") for d in datas]
    assert [ev.s for ev in events] == expected


@pytest.mark.parametrize(("t", "data", "expected"), table(SCALARS))
def test_small_and_large_batches_decode_alike(t: Type, data: bytes, expected: Any) -> None:
    """A few rows read plain numbers with one struct.unpack, many rows through numpy
    views: the same values and types either way, at an odd offset among other fields."""
    size = 3 + len(data) + 9
    s = struct_of(
        "holder", size, member("pre", U16, 0), member("v", t, 3), member("post", U64, size - 8)
    )
    record = struct.pack("<H", 0xBEEF) + b"\xaa" + data + b"\xcc" + struct.pack("<Q", 7)
    decoder = Decoder(s)
    few = decoder.decode_batch(rows_of(*[record] * 2))
    many = decoder.decode_batch(rows_of(*[record] * 40))
    assert few == many[:2]
    assert [type(v) for v in few[0]] == [type(v) for v in many[0]]
    assert (few[0].pre, few[0].v, few[0].post) == (0xBEEF, expected, 7)


# --------------------------------------------------------------------------- aggregates

POINT = struct_of("point", 8, member("x", S32, 0), member("y", S32, 4))
NUMBER = Union(
    "number", 8, [member("u", U64, 0), member("d", DOUBLE, 0), member("b", Array(U8, 4), 0)]
)


def test_nested_struct_and_array_of_structs() -> None:
    line = struct_of(
        "line",
        28,
        member("id", U32, 0),
        member("ends", Array(POINT, 2), 4),
        member("center", Typedef("point_t", POINT), 20),
    )
    data = struct.pack("<I2i2i2i", 9, 1, -2, 3, -4, 5, 6)
    ev = Decoder(line).decode(data)
    assert ev.id == 9
    assert ev.ends == [(1, -2), (3, -4)]
    assert ev.ends[1].y == -4
    assert ev.center.x == 5
    assert type(ev.center).__name__ == "point"
    assert type(ev.center) is type(ev.ends[0])


def test_union_members_share_bytes() -> None:
    ev = Decoder(NUMBER).decode(struct.pack("<d", 1.0))
    assert ev.d == 1.0
    assert ev.u == struct.unpack("<Q", struct.pack("<d", 1.0))[0]
    assert ev.b == list(struct.pack("<d", 1.0)[:4])


def test_anonymous_members_are_flattened() -> None:
    inner_struct = struct_of("", 8, member("lo", U32, 0), member("hi", U32, 4))
    inner_union = Union("", 8, [member("raw", U64, 0), member("pair", Array(U32, 2), 0)])
    s = struct_of(
        "anon",
        24,
        member("kind", U32, 0),
        Member("", inner_struct, 32),
        Member("", inner_union, 96),
        Member("", U32, 160, 3),  # unnamed bitfield: padding, not a field
    )
    dec = Decoder(s)
    assert dec.fields == ("kind", "lo", "hi", "raw", "pair")
    ev = dec.decode(struct.pack("<IIIQI", 1, 2, 3, 5 | (6 << 32), 0xFFFFFFFF))
    assert ev == (1, 2, 3, 5 | (6 << 32), [5, 6])
    assert dec.dtype.names == ("kind", "lo", "hi", "raw", "pair")
    assert dec.dtype.fields is not None
    assert dec.dtype.fields["raw"][1] == dec.dtype.fields["pair"][1] == 12


def pack_bits(*fields: tuple[int, int, int], size: int) -> bytes:
    """Little-endian bytes with ``value`` of ``bits`` bits stored at ``offset``."""
    word = 0
    for offset, bits, value in fields:
        word |= (value & ((1 << bits) - 1)) << offset
    return word.to_bytes(size, "little")


BITS = struct_of(
    "bits",
    16,
    bitfield("a", U32, 0, 3),
    bitfield("b", S32, 3, 5),
    bitfield("c", U32, 8, 12),
    bitfield("d", S32, 20, 12),
    bitfield("e", STATE, 32, 3),
    bitfield("f", BOOL, 35, 1),
    bitfield("g", U64, 36, 61),  # crosses into a 9th byte counted from byte 4
    bitfield("h", S8, 97, 2),
    member("tail", U16, 14),
)
BITS_CASES = [
    (
        "typical",
        {"a": 5, "b": -7, "c": 0xABC, "d": -2048, "e": 4, "f": 1, "g": (1 << 60) | 3, "h": -1},
        {"a": 5, "b": -7, "c": 0xABC, "d": -2048, "e": "DEAD", "f": True, "g": (1 << 60) | 3},
    ),
    (
        "extremes",
        {"a": 7, "b": 15, "c": 0, "d": 2047, "e": 3, "f": 0, "g": 2**61 - 1, "h": 1},
        {"a": 7, "b": 15, "c": 0, "d": 2047, "e": 3, "f": False, "g": 2**61 - 1},
    ),
    (
        "minimums",
        {"a": 0, "b": -16, "c": 4095, "d": 0, "e": 0, "f": 1, "g": 0, "h": -2},
        {"a": 0, "b": -16, "c": 4095, "d": 0, "e": "RUNNING", "f": True, "g": 0},
    ),
]


@pytest.mark.parametrize(("raw", "expected"), table(BITS_CASES))
def test_bitfields(raw: dict[str, int], expected: dict[str, Any]) -> None:
    layout = [(0, 3, "a"), (3, 5, "b"), (8, 12, "c"), (20, 12, "d"), (32, 3, "e")]
    layout += [(35, 1, "f"), (36, 61, "g"), (97, 2, "h")]
    data = bytearray(pack_bits(*[(o, n, raw[k]) for o, n, k in layout], size=16))
    data[14:16] = struct.pack("<H", 0x1234)
    dec = Decoder(BITS)
    ev = dec.decode(bytes(data))
    assert {k: getattr(ev, k) for k in expected} == expected
    assert ev.h == raw["h"]
    assert ev.tail == 0x1234
    assert dec.dtype.names == ("tail",)  # numpy cannot express bitfields
    assert encode(BITS, ev) == bytes(data)


def test_bitfield_with_full_width_is_a_plain_member() -> None:
    s = struct_of("s", 8, bitfield("x", U32, 0, 32), bitfield("y", U32, 32, 32))
    dec = Decoder(s)
    assert dec.dtype.names == ("x", "y")
    assert dec.decode(struct.pack("<II", 1, 2)) == (1, 2)


def test_member_names_are_renamed_for_python() -> None:
    s = struct_of(
        "names",
        24,
        member("pid", U32, 0),
        member("class", U32, 4),
        member("__pad", U32, 8),
        member("from_", U32, 12),
        member("from", U32, 16),
        member("lambda", U32, 20),
    )
    dec = Decoder(s)
    assert dec.c_fields == ("pid", "class", "__pad", "from_", "from", "lambda")
    assert dec.fields == ("pid", "class_", "pad__", "from_", "from__1", "lambda_")
    ev = dec.decode(struct.pack("<6I", 1, 2, 3, 4, 5, 6))
    assert (ev.class_, ev.pad__, ev.from__1, ev.lambda_) == (2, 3, 5, 6)
    assert to_jsonable(ev) == {"pid": 1, "class": 2, "__pad": 3, "from_": 4, "from": 5, "lambda": 6}
    assert encode(s, {"class": 2, "pad__": 3}) == struct.pack("<6I", 0, 2, 3, 0, 0, 0)


def test_flexible_array_member_decodes_empty() -> None:
    s = struct_of("msg", 4, member("len", U32, 0), member("data", Array(CHAR, 0), 4))
    dec = Decoder(s)
    assert dec.decode(struct.pack("<I", 3) + b"abc") == (3, "")
    assert dec.dtype.names == ("len",)


def test_empty_struct() -> None:
    dec = Decoder(struct_of("empty", 0))
    assert dec.decode(b"") == ()
    assert dec.decode_batch(np.zeros((3, 0), dtype=np.uint8)) == [(), (), ()]


def test_anonymous_struct_type_gets_a_class_name() -> None:
    s = struct_of("", 4, member("v", U32, 0))
    assert type(Decoder(s).decode(b"\1\0\0\0")).__name__ == "anon_struct"


@pytest.mark.parametrize(
    ("t", "message"),
    [
        (Void(), "has no size"),
        (struct_of("bad", 4, Member("x", U32, 4)), "not byte aligned"),
        (struct_of("bad", 4, member("x", U64, 0)), "overruns"),
        (struct_of("bad", 4, bitfield("x", POINT, 0, 3)), "bitfield of type"),
    ],
    ids=["void", "unaligned", "overrun", "struct bitfield"],
)
def test_decoder_rejects_bad_types(t: Type, message: str) -> None:
    with pytest.raises(TypeInfoError, match=message):
        Decoder(t)


# --------------------------------------------------------------------------- batches

EVENT = struct_of(
    "event",
    32,
    member("ts", U64, 0),
    member("pid", U32, 8),
    member("state", STATE, 12),
    member("comm", Array(CHAR, 16), 16),
)


def event_record(ts: int, pid: int, state: int, comm: bytes) -> bytes:
    return struct.pack("<QII16s", ts, pid, state, comm)


RECORDS = [
    event_record(1, 100, 0, b"bash"),
    event_record(2**64 - 1, 2**32 - 1, 7, b"kworker/0:1\0xyz"),
    event_record(3, 0, 1, "naïve".encode()),
]
EXPECTED = [
    (1, 100, "RUNNING", "bash"),
    (2**64 - 1, 2**32 - 1, 7, "kworker/0:1"),
    (3, 0, "SLEEPING", "naïve"),
]


def test_batch_decodes_every_record() -> None:
    dec = Decoder(EVENT)
    events = dec.decode_batch(rows_of(*RECORDS))
    assert events == EXPECTED
    assert [ev.comm for ev in events] == ["bash", "kworker/0:1", "naïve"]
    assert events[0]._asdict() == {"ts": 1, "pid": 100, "state": "RUNNING", "comm": "bash"}
    assert repr(events[0]) == "event(ts=1, pid=100, state='RUNNING', comm='bash')"
    assert events[0]._replace(pid=5).pid == 5
    assert isinstance(events[0], dec.event_type)  # type: ignore[arg-type]


def test_event_class_is_namedtuple_like() -> None:
    cls = Decoder(EVENT).event_type
    assert cls is not None
    assert cls._fields == ("ts", "pid", "state", "comm")
    made = cls._make([1, 2, "DEAD", "x"])
    assert made == cls((1, 2, "DEAD", "x"))
    assert made.state == "DEAD"
    assert isinstance(made, tuple)
    assert made._asdict()["comm"] == "x"
    assert cls._c_fields == cls._fields


def test_batch_accepts_wider_and_strided_rows() -> None:
    dec = Decoder(EVENT)
    wide = rows_of(*[r + b"\xee" * 8 for r in RECORDS])
    assert dec.decode_batch(wide) == EXPECTED
    every_other = rows_of(*[r for rec in RECORDS for r in (rec, b"\0" * 32)])[::2]
    assert dec.decode_batch(every_other) == EXPECTED
    fortran = np.asfortranarray(rows_of(*RECORDS))
    assert dec.decode_batch(fortran) == EXPECTED


def test_batch_of_zero_records() -> None:
    assert Decoder(EVENT).decode_batch(np.zeros((0, 32), dtype=np.uint8)) == []


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (np.zeros((2, 31), dtype=np.uint8), "pad them with pad_records"),
        (np.zeros(32, dtype=np.uint8), "2-D uint8"),
        (np.zeros((2, 32), dtype=np.int8), "uint8 records"),
    ],
    ids=["narrow", "1-D", "int8"],
)
def test_batch_rejects_bad_arrays(records: np.ndarray, message: str) -> None:
    with pytest.raises(TypeInfoError, match=message):
        Decoder(EVENT).decode_batch(records)


def test_short_records_padded() -> None:
    dec = Decoder(EVENT)
    short = [RECORDS[0][:12], RECORDS[1], RECORDS[2] + b"extra"]
    rows = pad_records(short, dec.size)
    assert rows.shape == (3, 32)
    assert dec.decode_batch(rows) == [(1, 100, "RUNNING", ""), EXPECTED[1], EXPECTED[2]]
    narrow = pad_records(rows_of(*[r[:12] for r in RECORDS]), dec.size)
    assert dec.decode_batch(narrow)[1] == (2**64 - 1, 2**32 - 1, "RUNNING", "")
    assert pad_records(rows_of(*RECORDS), 16).shape == (3, 16)
    assert dec.decode(RECORDS[0][:8]) == (1, 0, "RUNNING", "")


def test_batch_equals_single_decodes_for_many_rows() -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, size=(3000, 32), dtype=np.uint8)
    dec = Decoder(EVENT)
    assert dec.decode_batch(rows) == [dec.decode(row.tobytes()) for row in rows]


def test_dtype_views_match_decoded_values() -> None:
    dec = Decoder(EVENT)
    assert dec.dtype.itemsize == dec.size == 32
    view = rows_of(*RECORDS).view(dec.dtype)[:, 0]
    assert view["pid"].tolist() == [100, 2**32 - 1, 0]
    assert view["state"].tolist() == [0, 7, 1]
    assert view["comm"][0] == b"bash"
    assert dec.dtype["comm"] == np.dtype("S16")
    nested = Decoder(struct_of("n", 12, member("p", POINT, 0), member("flag", BOOL, 8)))
    assert nested.dtype["p"].names == ("x", "y")
    assert nested.dtype["flag"] == np.dtype("?")
    assert Decoder(Array(Array(U32, 3), 2)).dtype == np.dtype(("<u4", (2, 3)))
    assert Decoder(U32_T).dtype == np.dtype("<u4")
    assert Decoder(VOID_PTR).dtype == np.dtype("<u8")
    assert Decoder(NUMBER).dtype.itemsize == 8


def test_non_struct_decoder_gives_bare_values() -> None:
    dec = Decoder(U32_T)
    assert dec.event_type is None
    assert dec.fields == ()
    assert dec.decode_batch(rows_of(struct.pack("<I", 1), struct.pack("<I", 2))) == [1, 2]
    assert Decoder(Array(CHAR, 16)).decode(memoryview(b"comm\0")) == "comm"


def test_large_batch_keeps_the_collector_state() -> None:
    dec = Decoder(EVENT)
    rows = rows_of(*RECORDS * 1000)
    assert gc.isenabled()
    assert dec.decode_batch(rows)[-1] == EXPECTED[-1]
    assert gc.isenabled()
    gc.disable()
    try:
        dec.decode_batch(rows)
        assert not gc.isenabled()
    finally:
        gc.enable()
    frozen = gc.get_freeze_count()
    gc.freeze()
    try:
        dec.decode_batch(rows)
        assert gc.get_freeze_count() >= frozen
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("enabled", [True, False], ids=["collector on", "collector off"])
def test_reader_threads_leave_the_collector_as_the_application_set_it(enabled: bool) -> None:
    """Several threads decoding at once pause the collector together: it is on again
    when the last one is done, and only if it was on before (one that ended first
    must not switch it back on under the others, nor switch on what the
    application switched off)."""
    import threading

    dec = Decoder(EVENT)
    rows = rows_of(*RECORDS * 2000)
    seen_on_while_decoding: list[bool] = []
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for _ in range(10):
            dec.decode_batch(rows)
            list(dec.iter_batch(rows))
            seen_on_while_decoding.append(gc.isenabled())

    (gc.enable if enabled else gc.disable)()
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert gc.isenabled() is enabled
        if not enabled:
            assert not any(seen_on_while_decoding)
    finally:
        gc.enable()


def test_events_pickle_and_serialize() -> None:
    line = struct_of("seg", 16, member("a", POINT, 0), member("b", POINT, 8))
    ev = Decoder(line).decode(struct.pack("<4i", 1, 2, 3, 4))
    back = pickle.loads(pickle.dumps([ev, ev]))
    assert back == [ev, ev]
    assert type(back[0]) is type(ev)
    assert back[0].b.y == 4
    assert json.loads(json.dumps(to_jsonable(ev))) == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 4}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x01\xff", "01ff"),
        ([1, (2, 3)], [1, [2, 3]]),
        ({"k": np.uint32(5)}, {"k": 5}),
        (np.array([1.5, 2.5]), [1.5, 2.5]),
        ("s", "s"),
        (None, None),
    ],
)
def test_to_jsonable(value: Any, expected: Any) -> None:
    assert to_jsonable(value) == expected


def test_to_jsonable_keeps_nan() -> None:
    out = to_jsonable(Decoder(Array(DOUBLE, 1)).decode(struct.pack("<d", math.nan)))
    assert math.isnan(out[0])


# --------------------------------------------------------------------------- encoding

ROUND_TRIPS: list[tuple[str, Type, Any, bytes]] = [
    ("u8", U8, 255, b"\xff"),
    ("s8", S8, -128, b"\x80"),
    ("u16", U16, 0x1234, b"\x34\x12"),
    ("s32", S32, -2, struct.pack("<i", -2)),
    ("u64", U64, 2**64 - 1, b"\xff" * 8),
    ("s64", S64, -(2**63), struct.pack("<q", -(2**63))),
    ("s128", S128, -1, b"\xff" * 16),
    ("numpy int", U32, np.uint32(7), struct.pack("<I", 7)),
    ("bool", BOOL, True, b"\x01"),
    ("bool from int", BOOL, 0, b"\x00"),
    ("float", FLOAT, 0.5, struct.pack("<f", 0.5)),
    ("double from int", DOUBLE, 3, struct.pack("<d", 3.0)),
    ("pointer", VOID_PTR, 4096, struct.pack("<Q", 4096)),
    ("enum by name", STATE, "DEAD", struct.pack("<I", 4)),
    ("enum by int", STATE, 9, struct.pack("<I", 9)),
    ("negative enum", SIGNED_ENUM, "EFAULT", struct.pack("<i", -14)),
    ("char[8] str", Array(CHAR, 8), "héllo", "héllo".encode() + b"\0\0"),
    ("char[4] bytes", Array(CHAR, 4), b"abc", b"abc\0"),
    ("u8[4] bytes", Array(U8, 4), b"\x01\x02", b"\x01\x02\0\0"),
    ("u16[3] short list", Array(U16, 3), [1, 2], struct.pack("<3H", 1, 2, 0)),
    ("u32[2][2]", Array(Array(U32, 2), 2), [[1, 2], [3]], struct.pack("<4I", 1, 2, 3, 0)),
    ("char[2][3]", Array(Array(CHAR, 3), 2), ["ab", "c"], b"ab\0c\0\0"),
    ("struct by mapping", POINT, {"x": -1}, struct.pack("<ii", -1, 0)),
    ("struct None member", POINT, {"x": None, "y": 2}, struct.pack("<ii", 0, 2)),
    ("struct raw bytes", POINT, b"\1" * 8, b"\1" * 8),
    ("union", NUMBER, {"d": 2.0}, struct.pack("<d", 2.0)),
    ("typedef", U32_T, 5, struct.pack("<I", 5)),
]


@pytest.mark.parametrize(("t", "value", "data"), table(ROUND_TRIPS))
def test_encode(t: Type, value: Any, data: bytes) -> None:
    assert encode(t, value) == data


def test_encode_then_decode_struct() -> None:
    dec = Decoder(EVENT)
    for record, expected in zip(RECORDS, EXPECTED, strict=True):
        ev = dec.decode(record)
        assert ev == expected
        assert dec.decode(encode(EVENT, ev)) == ev
        assert dec.decode(encode(EVENT, ev._asdict())) == ev


ENCODE_ERRORS: list[tuple[str, Type, Any, str]] = [
    ("u8 too big", U8, 300, r"300 does not fit u8 \(0\.\.255\)"),
    ("u32 negative", U32_T, -1, r"-1 does not fit u32 \(0\.\.4294967295\)"),
    ("s16 too small", S16, -32769, r"does not fit s16 \(-32768\.\.32767\)"),
    ("int from str", U32, "5", "is not an integer"),
    ("int from float", U32, 1.5, "is not an integer"),
    ("bool 2", BOOL, 2, "is not a bool"),
    ("float from str", DOUBLE, "x", "is not a number"),
    ("float overflow", FLOAT, 1e300, "does not fit float"),
    ("long double", LONG_DOUBLE, 1.0, "cannot encode a 16-byte float"),
    (
        "string too long",
        Array(CHAR, 16),
        "x" * 20,
        r"'x+' is 20 bytes, char\[16\] holds at most 15",
    ),
    ("string exactly full", Array(CHAR, 4), "abcd", r"is 4 bytes, char\[4\] holds at most 3"),
    ("utf-8 length counts", Array(CHAR, 4), "ééé", "is 6 bytes"),
    ("string from int", Array(CHAR, 4), 5, "is not a str"),
    (
        "unknown enumerator",
        STATE,
        "ZOMBIE",
        r"'ZOMBIE' is not an enumerator of enum state \(valid: RUNNING, SLEEPING, DEAD\)",
    ),
    ("array too long", Array(U32, 2), [1, 2, 3], r"3 values given, unsigned int\[2\] holds 2"),
    ("array from str", Array(U32, 2), "12", "is not a sequence"),
    ("bytes too long", Array(U8, 2), b"abc", r"3 bytes given"),
    ("array element", Array(U8, 2), [1, 256], r"\[1\]: 256 does not fit u8"),
    ("unknown member", POINT, {"z": 1}, r"struct point has no member 'z' \(members: x, y\)"),
    ("struct from list", POINT, [1, 2], "is not a mapping or namedtuple"),
    (
        "nested member",
        struct_of("o", 8, member("p", POINT, 0)),
        {"p": {"y": 2**31}},
        r"p\.y: 2147483648 does not fit s32",
    ),
    ("void", Void(), 0, "has no size"),
]


@pytest.mark.parametrize(("t", "value", "message"), table(ENCODE_ERRORS))
def test_encode_errors(t: Type, value: Any, message: str) -> None:
    with pytest.raises(TypeInfoError, match=message):
        encode(t, value)


BITFIELD_ERRORS = [
    ("a", 8, r"a: 8 does not fit a 3-bit unsigned bitfield \(0\.\.7\)"),
    ("b", 16, r"b: 16 does not fit a 5-bit signed bitfield \(-16\.\.15\)"),
    ("e", "NOPE", "is not an enumerator"),
    ("f", 2, "is not a bool"),
]


@pytest.mark.parametrize(("name", "value", "message"), BITFIELD_ERRORS)
def test_encode_bitfield_errors(name: str, value: Any, message: str) -> None:
    with pytest.raises(TypeInfoError, match=message):
        encode(BITS, {name: value})


def test_encode_bitfields_leave_neighbours_alone() -> None:
    data = encode(BITS, {"b": -1, "g": 2**61 - 1})
    expected = pack_bits((3, 5, -1), (36, 61, 2**61 - 1), size=16)
    assert data == expected


# --------------------------------------------------------------------------- parse_text

PARSE_CASES: list[tuple[str, Type, str, Any]] = [
    ("decimal", U32, "42", 42),
    ("hex", U32_T, "0x2a", 42),
    ("octal prefix", U16, "0o17", 15),
    ("binary", U8, "0b101", 5),
    ("leading zero", U32, "010", 10),
    ("underscores", U64, "1_000", 1000),
    ("negative", S32, "-5", -5),
    ("spaces", S32, " 7 ", 7),
    ("bool true", BOOL, "true", True),
    ("bool yes", BOOL, "YES", True),
    ("bool 1", BOOL, "1", True),
    ("bool off", BOOL, "off", False),
    ("bool no", BOOL, "no", False),
    ("bool 0", BOOL, "0", False),
    ("enum name", STATE, "DEAD", "DEAD"),
    ("enum folded case", STATE, "sleeping", "SLEEPING"),
    ("enum int", STATE, "0x4", 4),
    ("char array", Array(CHAR, 16), "bash", "bash"),
    ("char array spaces", Array(CHAR, 16), " a b ", " a b "),
    ("char scalar", CHAR, "x", ord("x")),
    ("char scalar digit", CHAR, "7", 7),
    ("float", DOUBLE, "1.5e3", 1500.0),
    ("pointer", VOID_PTR, "0xffff", 0xFFFF),
    ("int list", Array(U16, 4), "1,2,0x3", [1, 2, 3]),
    ("empty list", Array(U16, 4), "", []),
    ("string list", Array(Array(CHAR, 8), 2), "a,b", ["a", "b"]),
]


@pytest.mark.parametrize(("t", "text", "expected"), table(PARSE_CASES))
def test_parse_text(t: Type, text: str, expected: Any) -> None:
    value = parse_text(t, text)
    assert value == expected
    assert type(value) is type(expected)


PARSE_ERRORS: list[tuple[str, Type, str, str]] = [
    ("not an int", U32, "abc", "'abc' is not a valid unsigned int"),
    ("out of range", U8, "256", "256 does not fit u8"),
    ("bad bool", BOOL, "maybe", "is not a bool"),
    ("unknown enumerator", STATE, "ZOMBIE", r"valid: RUNNING, SLEEPING, DEAD"),
    ("string too long", Array(CHAR, 4), "abcd", "holds at most 3"),
    ("bad float", DOUBLE, "fast", "is not a valid double"),
    ("struct", POINT, "x=1", "cannot parse struct point from text"),
    ("list too long", Array(U8, 2), "1,2,3", "3 values given"),
]


@pytest.mark.parametrize(("t", "text", "message"), table(PARSE_ERRORS))
def test_parse_text_errors(t: Type, text: str, message: str) -> None:
    with pytest.raises(TypeInfoError, match=message):
        parse_text(t, text)


# --------------------------------------------------------------------------- properties


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Struct, dict[str, Any], dict[str, Any]]:
    """A random struct (natural alignment), values for it, and their decoded form."""
    ints = [U8, S8, U16, S16, U32, S32, U64, S64]
    members: list[Member] = []
    values: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    offset = 0

    def place(t: Type, size: int, align: int) -> int:
        nonlocal offset
        offset = (offset + align - 1) // align * align
        at = offset
        offset += size
        return at

    for i in range(draw(st.integers(1, 8))):
        name = f"m{i}"
        kinds = ["int", "bool", "double", "str", "array", "enum", "bits", "point"]
        kind = draw(st.sampled_from(kinds))
        if kind == "int":
            t = draw(st.sampled_from(ints))
            assert isinstance(t, Int)
            v: Any = draw(st.integers(*int_range(t.size * 8, t.signed)))
            members.append(member(name, t, place(t, t.size, t.size)))
            values[name] = expected[name] = v
        elif kind == "bool":
            members.append(member(name, BOOL, place(BOOL, 1, 1)))
            values[name] = expected[name] = draw(st.booleans())
        elif kind == "double":
            members.append(member(name, DOUBLE, place(DOUBLE, 8, 8)))
            values[name] = expected[name] = draw(st.floats(allow_nan=False))
        elif kind == "str":
            length = draw(st.integers(1, 24))
            chars = st.characters(exclude_characters="\0", codec="utf-8")
            text = draw(st.text(chars, max_size=length))
            while len(text.encode()) > length - 1:
                text = text[:-1]
            members.append(member(name, Array(CHAR, length), place(CHAR, length, 1)))
            values[name] = expected[name] = text
        elif kind == "array":
            count = draw(st.integers(1, 5))
            items = draw(st.lists(st.integers(0, 2**32 - 1), max_size=count))
            members.append(member(name, Array(U32, count), place(U32, 4 * count, 4)))
            values[name] = items
            expected[name] = items + [0] * (count - len(items))
        elif kind == "enum":
            label = draw(st.sampled_from([*STATE.values, 77]))
            members.append(member(name, STATE, place(STATE, 4, 4)))
            values[name] = expected[name] = label
        elif kind == "bits":
            base = place(U32, 4, 4) * 8
            widths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
            at = base
            for j, width in enumerate(widths):
                if at + width > base + 32:
                    break
                signed = draw(st.booleans())
                field = f"{name}_{j}"
                members.append(bitfield(field, S32 if signed else U32, at, width))
                values[field] = expected[field] = draw(st.integers(*int_range(width, signed)))
                at += width
        else:
            x, y = draw(st.integers(-(2**31), 2**31 - 1)), draw(st.integers(-(2**31), 2**31 - 1))
            members.append(member(name, POINT, place(POINT, 8, 4)))
            values[name] = {"x": x, "y": y}
            expected[name] = (x, y)
    size = (offset + 7) // 8 * 8
    return struct_of("random", size, *members), values, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_round_trip_random_structs(case: tuple[Struct, dict[str, Any], dict[str, Any]]) -> None:
    t, values, expected = case
    data = encode(t, values)
    assert len(data) == t.size
    dec = Decoder(t)
    ev = dec.decode(data)
    assert ev._asdict() == expected
    assert encode(t, ev) == data
    batch = dec.decode_batch(rows_of(data, data))
    assert batch == [ev, ev]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=6, max_size=6), min_size=1, max_size=40))
def test_strings_match_per_string_decoding(raw: list[bytes]) -> None:
    """The one-buffer string decoder equals decoding each string alone."""
    expected = [r.split(b"\0", 1)[0].decode("utf-8", "replace") for r in raw]
    assert Decoder(Array(CHAR, 6)).decode_batch(rows_of(*raw)) == expected


# --------------------------------------------------------------------------- real compilers

SAMPLE_H = r"""
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef int s32;
typedef long long s64;
enum state { RUNNING = 0, SLEEPING = 1, DEAD = 4, GONE = -3 };
struct point { s32 x; s32 y; };
struct sample {
    u64 ts;
    s8 small;
    u16 port;
    s64 delta;
    char comm[16];
    enum state state;
    enum state unknown;
    enum state gone;
    _Bool flag;
    u32 a:3, b:9;
    s32 c:5;
    u64 d:40;
    union { u32 word; u8 bytes[4]; };
    struct { struct point pts[2]; };
    u32 grid[2][3];
    const volatile u16 cv;
    void *ptr;
    double ratio;
};
"""
SAMPLE_BPF = '#include "sample.h"\nstruct sample sample_global;\n'
SAMPLE_HOST = r"""
#include <stdio.h>
#include <string.h>
#include "sample.h"
int main(void) {
    struct sample s;
    memset(&s, 0, sizeof(s));
    s.ts = 18446744073709551615ULL;
    s.small = -100;
    s.port = 8080;
    s.delta = -5000000000LL;
    memcpy(s.comm, "nginx\0garbage", 14);
    s.state = DEAD;
    s.unknown = (enum state)7;
    s.gone = GONE;
    s.flag = 1;
    s.a = 6; s.b = 300; s.c = -9; s.d = 0xABCDEF1234ULL;
    s.word = 0x04030201;
    s.pts[0].x = -1; s.pts[1].y = 2;
    for (int i = 0; i < 6; i++) s.grid[i / 3][i % 3] = i * 10;
    *(u16 *)&s.cv = 65535;
    s.ptr = (void *)0x7fff0000;
    s.ratio = 0.125;
    fwrite(&s, sizeof(s), 1, stdout);
    return 0;
}
"""


def test_decode_struct_laid_out_by_real_compilers(
    tmp_path: Path, compile_bpf: Callable[..., Path]
) -> None:
    """BTF from clang (BPF target) decodes bytes that gcc (x86-64 host) laid out."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to lay out the reference struct")
    obj = compile_bpf(SAMPLE_BPF, tmp_path, name="sample", headers={"sample.h": SAMPLE_H})
    (tmp_path / "host.c").write_text(SAMPLE_HOST)
    exe = tmp_path / "host"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(tmp_path / "host.c")], check=True)
    data = subprocess.run([str(exe)], capture_output=True, check=True).stdout

    btf = btf_from_elf(obj)
    assert btf is not None
    (sample,) = btf.by_name("sample", Struct)
    dec = Decoder(sample)
    assert dec.size == len(data)
    ev = dec.decode(data)
    assert ev._asdict() == {
        "ts": 2**64 - 1,
        "small": -100,
        "port": 8080,
        "delta": -5000000000,
        "comm": "nginx",
        "state": "DEAD",
        "unknown": 7,
        "gone": "GONE",
        "flag": True,
        "a": 6,
        "b": 300,
        "c": -9,
        "d": 0xABCDEF1234,
        "word": 0x04030201,
        "bytes": [1, 2, 3, 4],
        "pts": [(-1, 0), (0, 2)],
        "grid": [[0, 10, 20], [30, 40, 50]],
        "cv": 65535,
        "ptr": 0x7FFF0000,
        "ratio": 0.125,
    }
    reencoded = bytearray(encode(sample, ev))
    expected = bytearray(data)
    comm = sample.members[4].offset_bits // 8
    expected[comm : comm + 16] = b"nginx".ljust(16, b"\0")  # the garbage is not data
    assert reencoded == expected
