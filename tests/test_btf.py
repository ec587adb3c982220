"""bpfloom.btf: real clang output and the kernel's own BTF parse to exact shapes;
malformed blobs raise TypeInfoError."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bpfloom import _libbpf
from bpfloom._exceptions import TypeInfoError
from bpfloom.btf import Btf, btf_from_elf, parse_btf
from bpfloom.types import (
    Array,
    Const,
    Datasec,
    Enum,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Pointer,
    Struct,
    Type,
    Typedef,
    Union,
    Var,
    Void,
    Volatile,
    describe,
    sizeof,
    strip,
)
from conftest import compile_bpf

SOURCE = r"""
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

typedef unsigned int u32;
typedef unsigned long long u64;

enum color { RED = 1, GREEN = 2, BLUE = -5 };
enum wide { WIDE_BIG = 0x100000000ULL };

struct inner { short a; char tag[3]; };
union num { int i; float f; unsigned char b[4]; };
struct opaque;

struct outer {
    u32 x;
    struct inner in;
    union num un;
    unsigned int flag : 1;
    unsigned int mode : 3;
    int neg : 5;
    enum color c;
    const volatile u64 *p;
    struct { int ax; int ay; };
    union { int ux; short uy; } nu;
    int grid[2][3];
    _Bool ok;
    struct opaque *hidden;
    char tail[];
};

struct node { struct node *next; int value; };

const volatile int cv_int = 1;
const volatile unsigned short cv_ushort = 2;
const volatile char cv_char = 'a';
const volatile _Bool cv_bool = 0;
const volatile long long cv_ll = -1;
const volatile unsigned long long cv_ull = 7;
const volatile char cv_str[16] = "hi";
struct outer g_outer;
struct node g_node;
enum wide g_wide;
int counter;

SEC("tracepoint/syscalls/sys_enter_openat")
int handle(void *ctx)
{
    counter += cv_int;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(SOURCE, tmp_path_factory.mktemp("btf"))


@pytest.fixture(scope="module")
def btf(obj: Path) -> Btf:
    parsed = btf_from_elf(obj)
    assert parsed is not None
    return parsed


@pytest.fixture(scope="module")
def libbpf_btf(obj: Path) -> Btf:
    """The object's BTF after libbpf opened it (DATASEC sizes and offsets fixed up)."""
    handle, image = _libbpf.open_mem(obj.read_bytes(), obj.name)
    try:
        return parse_btf(_libbpf.btf_raw(_libbpf.object_btf(handle)))
    finally:
        _libbpf.object_close(handle)
        del image  # libbpf read the object from it until now


def one(btf: Btf, name: str, kind: type[Type]) -> Type:
    found = btf.by_name(name, kind)
    assert len(found) == 1, found
    return found[0]


def chain(t: Type | None) -> list[str]:
    """The spelling of a typedef/qualifier chain, outermost first."""
    out: list[str] = []
    for _ in range(10):
        out.append(f"{type(t).__name__}:{t.name}" if t is not None and t.name else type(t).__name__)
        if isinstance(t, (Typedef, Const, Volatile, Pointer)):
            t = t.target
        else:
            return out
    raise AssertionError("chain too long")


def test_void_is_type_zero(btf: Btf) -> None:
    assert isinstance(btf.types[0], Void)
    assert btf.type_id(btf.types[0]) == 0
    assert btf.by_name("void") == []


@pytest.mark.parametrize(
    ("var", "size", "signed", "is_bool"),
    [
        ("cv_int", 4, True, False),
        ("cv_ushort", 2, False, False),
        ("cv_char", 1, True, False),  # clang's BTF marks char SIGNED, never CHAR
        ("cv_bool", 1, False, True),
        ("cv_ll", 8, True, False),
        ("cv_ull", 8, False, False),
    ],
)
def test_const_volatile_globals(btf: Btf, var: str, size: int, signed: bool, is_bool: bool) -> None:
    v = one(btf, var, Var)
    assert isinstance(v, Var) and v.linkage == 1
    assert isinstance(v.type, Const)
    assert isinstance(v.type.target, Volatile)
    base = v.type.target.target
    assert isinstance(base, Int)
    assert (base.size, base.signed, base.is_bool) == (size, signed, is_bool)


def test_char_array_global(btf: Btf) -> None:
    v = one(btf, "cv_str", Var)
    assert isinstance(v, Var)
    arr = v.type
    assert isinstance(arr, Array) and arr.length == 16
    assert chain(arr.element) == ["Const", "Volatile", "Int:char"]
    assert sizeof(arr) == 16


OUTER_MEMBERS = [
    # name, offset_bits, bitfield_size, C spelling of the type
    ("x", 0, 0, "u32"),
    ("in", 32, 0, "struct inner"),
    ("un", 96, 0, "union num"),
    ("flag", 128, 1, "unsigned int"),
    ("mode", 129, 3, "unsigned int"),
    ("neg", 132, 5, "int"),
    ("c", 160, 0, "enum color"),
    ("p", 192, 0, "u64 *"),
    ("", 256, 0, "struct (anon)"),
    ("nu", 320, 0, "union (anon)"),
    ("grid", 352, 0, "int[3][2]"),  # describe() spells nested arrays inside-out
    ("ok", 544, 0, "_Bool"),
    ("hidden", 576, 0, "opaque *"),
    ("tail", 640, 0, "char[0]"),
]


def test_struct_shape(btf: Btf) -> None:
    outer = one(btf, "outer", Struct)
    assert isinstance(outer, Struct) and outer.size == 80
    got = [(m.name, m.offset_bits, m.bitfield_size, describe(m.type)) for m in outer.members]
    assert got == OUTER_MEMBERS


def test_nested_struct_and_union(btf: Btf) -> None:
    inner = one(btf, "inner", Struct)
    assert isinstance(inner, Struct) and inner.size == 6
    assert [(m.name, m.offset_bits, describe(m.type)) for m in inner.members] == [
        ("a", 0, "short"),
        ("tag", 16, "char[3]"),
    ]
    num = one(btf, "num", Union)
    assert isinstance(num, Union) and num.size == 4
    assert [(m.name, m.offset_bits) for m in num.members] == [("i", 0), ("f", 0), ("b", 0)]
    assert isinstance(num.members[1].type, Float) and num.members[1].type.size == 4
    b = num.members[2].type
    assert isinstance(b, Array) and b.length == 4
    assert isinstance(b.element, Int) and not b.element.signed


def test_anonymous_members_and_multidim_array(btf: Btf) -> None:
    outer = one(btf, "outer", Struct)
    assert isinstance(outer, Struct)
    members = {m.name: m for m in outer.members}
    anon = members[""].type
    assert isinstance(anon, Struct) and anon.name == "" and anon.size == 8
    assert [(m.name, m.offset_bits) for m in anon.members] == [("ax", 0), ("ay", 32)]
    nu = members["nu"].type
    assert isinstance(nu, Union) and [m.name for m in nu.members] == ["ux", "uy"]
    grid = members["grid"].type
    assert isinstance(grid, Array) and grid.length == 2
    assert isinstance(grid.element, Array) and grid.element.length == 3
    assert isinstance(grid.element.element, Int) and grid.element.element.size == 4
    assert sizeof(grid) == 24
    tail = members["tail"].type
    assert isinstance(tail, Array) and tail.length == 0 and sizeof(tail) == 0


def test_typedef_const_volatile_pointer_chain(btf: Btf) -> None:
    outer = one(btf, "outer", Struct)
    assert isinstance(outer, Struct)
    p = next(m for m in outer.members if m.name == "p")
    assert chain(p.type) == [
        "Pointer",
        "Const",
        "Volatile",
        "Typedef:u64",
        "Int:unsigned long long",
    ]
    x = outer.members[0]
    assert isinstance(x.type, Typedef) and x.type.name == "u32"
    assert strip(x.type) is one(btf, "unsigned int", Int)


def test_forward_declaration(btf: Btf) -> None:
    fwd = one(btf, "opaque", Fwd)
    assert isinstance(fwd, Fwd) and not fwd.is_union


def test_enums(btf: Btf) -> None:
    color = one(btf, "color", Enum)
    assert isinstance(color, Enum)
    assert (color.size, color.signed) == (4, True)
    assert color.values == {"RED": 1, "GREEN": 2, "BLUE": -5}
    wide = one(btf, "wide", Enum)  # an ENUM64
    assert isinstance(wide, Enum)
    assert (wide.size, wide.signed, wide.values) == (8, False, {"WIDE_BIG": 1 << 32})


def test_cyclic_struct(btf: Btf) -> None:
    node = one(btf, "node", Struct)
    assert isinstance(node, Struct)
    nxt = node.members[0].type
    assert isinstance(nxt, Pointer) and nxt.target is node


def test_function_and_prototype(btf: Btf) -> None:
    func = one(btf, "handle", Func)
    assert isinstance(func, Func)
    proto = func.proto
    assert isinstance(proto, FuncProto)
    assert describe(proto.return_type) == "int"
    assert len(proto.params) == 1 and proto.params[0][0] == "ctx"
    ctx = proto.params[0][1]
    assert isinstance(ctx, Pointer) and isinstance(ctx.target, Void)


def test_lookups(btf: Btf) -> None:
    names = {s.name for s in btf.structs()}
    assert {"outer", "inner", "node"} <= names
    assert "" not in names
    outer = one(btf, "outer", Struct)
    assert btf.types[btf.type_id(outer)] is outer
    assert btf.by_name("outer", Union) == []
    with pytest.raises(TypeInfoError):
        btf.type_id(Struct("outer", 80))


def test_datasec_as_compiled(btf: Btf) -> None:
    """In the .BTF section clang writes, DATASEC sizes and offsets are still 0."""
    rodata = btf.datasec(".rodata")
    assert isinstance(rodata, Datasec)
    names = [si.var.name for si in rodata.vars if si.var is not None]
    assert names == ["cv_int", "cv_ushort", "cv_char", "cv_bool", "cv_ll", "cv_ull", "cv_str"]
    assert btf.datasec(".nope") is None


def test_datasec_fixed_by_libbpf(libbpf_btf: Btf) -> None:
    rodata = libbpf_btf.datasec(".rodata")
    assert isinstance(rodata, Datasec)
    layout = [(si.var.name, si.offset, si.size) for si in rodata.vars if si.var is not None]
    assert layout == [
        ("cv_int", 0, 4),
        ("cv_ushort", 4, 2),
        ("cv_char", 6, 1),
        ("cv_bool", 7, 1),
        ("cv_ll", 8, 8),
        ("cv_ull", 16, 8),
        ("cv_str", 24, 16),
    ]
    assert rodata.size == 40
    bss = libbpf_btf.datasec(".bss")
    assert isinstance(bss, Datasec)
    for si in bss.vars:
        assert isinstance(si.var, Var)
        assert si.size == sizeof(si.var.type)
        assert si.offset + si.size <= bss.size


def test_vmlinux() -> None:
    raw = Path("/sys/kernel/btf/vmlinux").read_bytes()
    btf = parse_btf(raw)
    assert len(btf.types) > 10_000
    task = btf.by_name("task_struct", Struct)
    assert len(task) == 1 and isinstance(task[0], Struct)
    pid = next(m for m in task[0].members if m.name == "pid")
    assert sizeof(pid.type) == 4 and pid.offset_bits % 32 == 0
    assert isinstance(strip(pid.type), Int)


# --- malformed input ------------------------------------------------------------


def blob(
    records: bytes,
    strings: bytes = b"\0a\0",
    *,
    order: str = "<",
    version: int = 1,
    hdr_len: int = 24,
) -> bytes:
    """A BTF blob from raw type records and a string section."""
    header = struct.pack(
        order + "HBBIIIII", 0xEB9F, version, 0, hdr_len, 0, len(records), len(records), len(strings)
    )
    return header + b"\0" * (hdr_len - 24) + records + strings


def rec(
    name_off: int, kind: int, vlen: int, size_or_type: int, *extra: int, order: str = "<"
) -> bytes:
    """One btf_type record followed by ``extra`` u32 words."""
    info = (kind << 24) | vlen
    return struct.pack(f"{order}III{len(extra)}I", name_off, info, size_or_type, *extra)


INT_A = rec(1, 1, 0, 4, (1 << 24) | 32)  # [1] INT 'a' size 4 signed


def test_handmade_blob_both_byte_orders() -> None:
    for order in "<>":
        records = rec(1, 1, 0, 4, (1 << 24) | 32, order=order) + rec(0, 2, 0, 1, order=order)
        btf = parse_btf(blob(records, order=order))
        a, ptr = btf.types[1], btf.types[2]
        assert isinstance(a, Int) and (a.name, a.size, a.signed) == ("a", 4, True)
        assert isinstance(ptr, Pointer) and ptr.target is a


def typed(kind: int, kflag: int, vlen: int, size: int, *words: int) -> bytes:
    """One btf_type record with its kind_flag, named 'a', followed by ``words``."""
    info = (kflag << 31) | (kind << 24) | vlen
    return struct.pack(f"<III{len(words)}I", 1, info, size, *words)


@pytest.mark.parametrize(
    ("record", "value"),
    [
        (typed(6, 1, 1, 4, 1, 0xC8), 200),
        (typed(6, 0, 1, 4, 1, 0xC8), 200),
        (typed(6, 1, 1, 4, 1, 0x7FFFFFFF), 2**31 - 1),
        (typed(6, 1, 1, 4, 1, 0x80000000), -(2**31)),  # kind_flag: signed
        (typed(6, 0, 1, 4, 1, 0x80000000), 2**31),
        (typed(6, 1, 1, 4, 1, 0xFFFFFFFF), -1),
        (typed(6, 0, 1, 4, 1, 0xFFFFFFFF), 2**32 - 1),
        (typed(19, 1, 1, 8, 1, 0x80000000, 0), 2**31),  # the low word's top bit is a bit
        (typed(19, 1, 1, 8, 1, 0xFFFFFFFF, 0x7FFFFFFF), 2**63 - 1),
        (typed(19, 1, 1, 8, 1, 0, 0x80000000), -(2**63)),
        (typed(19, 0, 1, 8, 1, 0, 0x80000000), 2**63),
        (typed(19, 1, 1, 8, 1, 0xFFFFFFFF, 0xFFFFFFFF), -1),
        (typed(19, 0, 1, 8, 1, 0xFFFFFFFF, 0xFFFFFFFF), 2**64 - 1),
    ],
)
def test_enum_values_at_boundaries(record: bytes, value: int) -> None:
    t = parse_btf(blob(record)).types[1]
    assert isinstance(t, Enum) and t.values == {"a": value}


@pytest.mark.parametrize(
    ("kflag", "offset_word", "offset_bits", "bitfield_size"),
    [
        (0, 0x7FFFFFFF, 2**31 - 1, 0),
        (0, 0x80000000, 2**31, 0),
        (0, 0xFFFFFFFF, 2**32 - 1, 0),
        (1, 0x00FFFFFF, 2**24 - 1, 0),  # kind_flag: 24 bits of offset, 8 of bitfield size
        (1, 0x80800000, 2**23, 0x80),
        (1, 0xFFFFFFFF, 2**24 - 1, 0xFF),
    ],
)
def test_member_offsets_at_boundaries(
    kflag: int, offset_word: int, offset_bits: int, bitfield_size: int
) -> None:
    records = INT_A + typed(4, kflag, 1, 0xFFFFFFFF, 1, 1, offset_word)
    t = parse_btf(blob(records)).types[2]
    assert isinstance(t, Struct) and t.size == 2**32 - 1
    (m,) = t.members
    assert (m.offset_bits, m.bitfield_size) == (offset_bits, bitfield_size)


def test_empty_btf() -> None:
    btf = parse_btf(blob(b"", b"\0"))
    assert len(btf.types) == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "too short"),
        (b"\0" * 24, "magic"),
        (blob(INT_A, version=2), "version"),
        (blob(INT_A, hdr_len=8), "header length"),
        (blob(INT_A)[:-2], "past the end"),
        (blob(INT_A, b"a\0"), "string section"),
        (blob(INT_A, b"\0a"), "string section"),
        (blob(rec(99, 1, 0, 4, 32)), "string offset"),
        (blob(rec(0, 2, 0, 5)), "out of range"),
        (blob(rec(0, 0, 0, 0)), "unknown BTF kind"),
        (blob(rec(0, 25, 0, 0)), "unknown BTF kind"),
        (blob(rec(1, 4, 3, 8, 0, 0, 0)), "members"),  # vlen 3, one member
        (blob(rec(1, 6, 0xFFFF, 4)), "values"),
        (blob(rec(1, 13, 0xFFFF, 0)), "parameters"),
        (blob(rec(1, 1, 0, 3, 24)), "bad size"),
        (blob(rec(1, 1, 0, 4, 33)), "bit count"),
        (blob(rec(1, 1, 0, 4, (8 << 16) | 8)), "bit offset"),
        (blob(rec(1, 1, 0, 4)), "INT a"),  # INT without its encoding word
        (blob(rec(1, 16, 0, 3)), "FLOAT"),
        (blob(rec(1, 6, 0, 3)), "ENUM"),
        (blob(INT_A + b"\0\0\0\0"), "truncated"),
        (blob(rec(1, 4, 1, 4, 1, 7, 0)), "out of range"),  # member type id 7
        (blob(rec(1, 15, 1, 0, 9, 0, 4)), "out of range"),  # secinfo type id 9
        (blob(rec(0, 13, 1, 0, 1, 3)), "out of range"),  # param type id 3
        (blob(rec(1, 1, 0, 4, 32), b"\0\xff\0"), "UTF-8"),
    ],
)
def test_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(TypeInfoError, match=message):
        parse_btf(raw)


def test_btf_from_elf_without_btf(tmp_path: Path) -> None:
    obj = compile_bpf("int x;\n", tmp_path, debug=False)
    assert btf_from_elf(obj) is None


def test_btf_from_elf_not_elf(tmp_path: Path) -> None:
    path = tmp_path / "junk.o"
    path.write_bytes(b"\x7fELF" + b"\xff" * 60)
    with pytest.raises(TypeInfoError):
        btf_from_elf(path)
    with pytest.raises(FileNotFoundError):
        btf_from_elf(tmp_path / "missing.o")
