"""bpfloom.dwarf: clang's DWARF (versions 2-5, both byte orders) gives the same shapes
as BTF, plus types BTF lacks and where each struct was declared."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from bpfloom._exceptions import TypeInfoError
from bpfloom.btf import btf_from_elf
from bpfloom.dwarf import dwarf_types
from bpfloom.types import (
    Array,
    Const,
    Enum,
    Float,
    FuncProto,
    Fwd,
    Int,
    Pointer,
    Struct,
    Type,
    Typedef,
    Union,
    Void,
    Volatile,
    describe,
    sizeof,
)
from conftest import compile_bpf

HEADER = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
typedef const volatile u64 cv_u64;

enum level { LOW = 1, HIGH = 2, BAD = -5 };
enum flags { F_ONE = 1, F_BIG = 0x100000000ULL };

struct point { short x; short y; };
union num { int i; float f; unsigned char b[4]; };
struct opaque;

struct stats {
    u32 count;
    struct point where;
    union num value;
    unsigned int flag : 1;
    unsigned int mode : 3;
    int neg : 5;
    enum level lvl;
    cv_u64 *limit;
    struct { int ax; int ay; };
    union { int ux; short uy; } nu;
    int grid[2][3];
    _Bool ok;
    struct opaque *hidden;
    int (*callback)(int, const char *, ...);
    char tail[];
};

struct node { struct node *next; int value; };
"""

SOURCE = r"""
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "shapes.h"

/* Reached only through a pointer cast and a local: absent from BTF. */
struct event {
    __u32 pid;
    __u64 ts;
    char comm[16];
    unsigned int kind : 4;
    unsigned int urgent : 1;
    enum level lvl;
    struct point pts[2];
};

struct stats g_stats;
struct node g_node;
enum flags g_flags;
int counter;

SEC("tracepoint/syscalls/sys_enter_openat")
int handle(void *ctx)
{
    struct event *e = (struct event *)ctx;
    struct event copy = *e;

    counter += copy.pid + e->kind + e->pts[1].y;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

STATS_MEMBERS = [
    # name, offset_bits, bitfield_size, C spelling of the type
    ("count", 0, 0, "u32"),
    ("where", 32, 0, "struct point"),
    ("value", 64, 0, "union num"),
    ("flag", 96, 1, "unsigned int"),
    ("mode", 97, 3, "unsigned int"),
    ("neg", 100, 5, "int"),
    ("lvl", 128, 0, "enum level"),
    ("limit", 192, 0, "cv_u64 *"),
    ("", 256, 0, "struct (anon)"),
    ("nu", 320, 0, "union (anon)"),
    ("grid", 352, 0, "int[3][2]"),  # describe() spells nested arrays inside-out
    ("ok", 544, 0, "_Bool"),
    ("hidden", 576, 0, "opaque *"),
    ("callback", 640, 0, "funcproto *"),
    ("tail", 704, 0, "char[0]"),
]

EVENT_MEMBERS = [
    ("pid", 0, 0, "__u32"),
    ("ts", 64, 0, "__u64"),
    ("comm", 128, 0, "char[16]"),
    ("kind", 256, 4, "unsigned int"),
    ("urgent", 260, 1, "unsigned int"),
    ("lvl", 288, 0, "enum level"),
    ("pts", 320, 0, "struct point[2]"),
]


def build(tmp_path: Path, *flags: str) -> Path:
    return compile_bpf(SOURCE, tmp_path, headers={"shapes.h": HEADER}, extra_flags=flags)


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("dwarf"))


@pytest.fixture(scope="module")
def types(obj: Path) -> list[Type]:
    return dwarf_types(obj)


def named(types: list[Type], name: str, kind: type[Type]) -> Type:
    found = [t for t in types if t.name == name and isinstance(t, kind)]
    assert len(found) == 1, found
    return found[0]


def shape(t: Struct | Union) -> list[tuple[str, int, int, str]]:
    return [(m.name, m.offset_bits, m.bitfield_size, describe(m.type)) for m in t.members]


def test_lists_named_definitions_only(types: list[Type]) -> None:
    kinds = {(type(t).__name__, t.name) for t in types}
    assert {
        ("Struct", "event"),
        ("Struct", "stats"),
        ("Struct", "point"),
        ("Struct", "node"),
        ("Union", "num"),
        ("Enum", "level"),
        ("Enum", "flags"),
        ("Typedef", "u32"),
        ("Typedef", "cv_u64"),
        ("Typedef", "__u32"),
    } <= kinds
    assert all(t.name for t in types)
    assert not any(isinstance(t, Fwd) for t in types)


def test_struct_only_in_dwarf(obj: Path, types: list[Type]) -> None:
    btf = btf_from_elf(obj)
    assert btf is not None
    assert btf.by_name("event") == []
    event = named(types, "event", Struct)
    assert isinstance(event, Struct)
    assert event.size == 48
    assert shape(event) == EVENT_MEMBERS
    assert event.decl_file is not None and event.decl_file.endswith("/prog.bpf.c")


def test_decl_file_of_header_types(types: list[Type]) -> None:
    for name in ("stats", "point", "node"):
        t = named(types, name, Struct)
        assert isinstance(t, Struct)
        assert t.decl_file is not None and t.decl_file.endswith("/shapes.h"), t.decl_file
    num = named(types, "num", Union)
    assert isinstance(num, Union) and num.decl_file is not None
    assert num.decl_file.endswith("/shapes.h")


def test_struct_shape(types: list[Type]) -> None:
    stats = named(types, "stats", Struct)
    assert isinstance(stats, Struct) and stats.size == 88
    assert shape(stats) == STATS_MEMBERS


def test_base_types(types: list[Type]) -> None:
    stats = named(types, "stats", Struct)
    assert isinstance(stats, Struct)
    members = {m.name: m.type for m in stats.members}
    ok = members["ok"]
    assert isinstance(ok, Int) and (ok.size, ok.signed, ok.is_bool) == (1, False, True)
    value = members["value"]
    assert isinstance(value, Union)
    i, f, b = (m.type for m in value.members)
    assert isinstance(i, Int) and (i.size, i.signed) == (4, True)
    assert isinstance(f, Float) and f.size == 4
    assert isinstance(b, Array) and b.length == 4
    assert isinstance(b.element, Int) and b.element.is_char and not b.element.signed
    tail = members["tail"]
    assert isinstance(tail, Array) and tail.length == 0
    assert isinstance(tail.element, Int) and tail.element.is_char and tail.element.signed


def test_typedef_qualifier_pointer_chain(types: list[Type]) -> None:
    stats = named(types, "stats", Struct)
    assert isinstance(stats, Struct)
    limit = next(m.type for m in stats.members if m.name == "limit")
    assert isinstance(limit, Pointer)
    cv = limit.target
    assert isinstance(cv, Typedef) and cv.name == "cv_u64"
    assert isinstance(cv.target, Const)
    assert isinstance(cv.target.target, Volatile)
    u64 = cv.target.target.target
    assert isinstance(u64, Typedef) and u64.name == "u64"
    assert isinstance(u64.target, Int) and (u64.target.size, u64.target.signed) == (8, False)


def test_anonymous_members_multidim_and_fwd(types: list[Type]) -> None:
    stats = named(types, "stats", Struct)
    assert isinstance(stats, Struct)
    members = {m.name: m.type for m in stats.members}
    anon = members[""]
    assert isinstance(anon, Struct) and anon.name == "" and anon.decl_file is not None
    assert [(m.name, m.offset_bits) for m in anon.members] == [("ax", 0), ("ay", 32)]
    grid = members["grid"]
    assert isinstance(grid, Array) and grid.length == 2
    assert isinstance(grid.element, Array) and grid.element.length == 3
    assert sizeof(grid) == 24
    hidden = members["hidden"]
    assert isinstance(hidden, Pointer)
    assert isinstance(hidden.target, Fwd) and hidden.target.name == "opaque"


def test_function_pointer(types: list[Type]) -> None:
    stats = named(types, "stats", Struct)
    assert isinstance(stats, Struct)
    callback = next(m.type for m in stats.members if m.name == "callback")
    assert isinstance(callback, Pointer)
    proto = callback.target
    assert isinstance(proto, FuncProto)
    assert describe(proto.return_type) == "int"
    assert [describe(p) for _, p in proto.params] == ["int", "char *", "void"]
    assert isinstance(proto.params[2][1], Void)  # "..."


def test_enums(types: list[Type]) -> None:
    level = named(types, "level", Enum)
    assert isinstance(level, Enum)
    assert (level.size, level.signed, level.values) == (4, True, {"LOW": 1, "HIGH": 2, "BAD": -5})
    flags = named(types, "flags", Enum)
    assert isinstance(flags, Enum)
    assert (flags.size, flags.signed) == (8, False)
    assert flags.values == {"F_ONE": 1, "F_BIG": 1 << 32}


ENUM_SOURCE = """
enum es { S_200 = 200, S_M1 = -1, S_40000 = 40000, S_MAX = 0x7fffffff, S_MIN = -0x7fffffff - 1 };
enum eu { U_200 = 200, U_MAX = 0xffffffffu, U_TOP = 0x80000000u };
enum e8 { E8_MAX = 0xffffffffffffffffull, E8_TOP = 0x8000000000000000ull };
enum s8 { S8_NEG = -5, S8_MAX = 0x7fffffffffffffffll };
enum __attribute__((packed)) p1 { P1_255 = 255, P1_128 = 128 };
enum __attribute__((packed)) ps1 { PS1_MIN = -128, PS1_MAX = 127 };
struct holder { enum es a; enum eu b; enum e8 c; enum s8 d; enum p1 e; enum ps1 f; } *holder;
"""
ENUMS = {  # name: (size, signed, values)
    "es": (
        4,
        True,
        {"S_200": 200, "S_M1": -1, "S_40000": 40000, "S_MAX": 2**31 - 1, "S_MIN": -(2**31)},
    ),
    "eu": (4, False, {"U_200": 200, "U_MAX": 2**32 - 1, "U_TOP": 2**31}),
    "e8": (8, False, {"E8_MAX": 2**64 - 1, "E8_TOP": 2**63}),
    "s8": (8, True, {"S8_NEG": -5, "S8_MAX": 2**63 - 1}),
    "p1": (1, False, {"P1_255": 255, "P1_128": 128}),
    "ps1": (1, True, {"PS1_MIN": -128, "PS1_MAX": 127}),
}
# How gcc writes a signed enum's values: positive ones zero-extended in dataN, negative
# ones as sdata (clang writes sdata/udata only).
GCC_ENUM_FORMS = {
    "S_200": ("DW_FORM_data1", 200),
    "S_M1": ("DW_FORM_sdata", -1),
    "S_MAX": ("DW_FORM_data4", 2**31 - 1),
    "S8_MAX": ("DW_FORM_data8", 2**63 - 1),
    "PS1_MAX": ("DW_FORM_data1", 127),
}


def enumerator_forms(obj: Path) -> dict[str, tuple[str, int]]:
    with obj.open("rb") as f:
        info = ELFFile(f).get_dwarf_info()
        return {
            die.attributes["DW_AT_name"].value.decode(): (
                die.attributes["DW_AT_const_value"].form,
                die.attributes["DW_AT_const_value"].value,
            )
            for cu in info.iter_CUs()
            for die in cu.iter_DIEs()
            if die.tag == "DW_TAG_enumerator"
        }


@pytest.mark.parametrize(
    "cmd",
    [
        ("gcc", "-g", "-gdwarf-5"),
        ("gcc", "-g", "-gdwarf-4"),
        ("gcc", "-g", "-gdwarf-2"),
        ("clang-16", "-g", "-O2", "-target", "bpf"),
    ],
    ids=["gcc-dwarf5", "gcc-dwarf4", "gcc-dwarf2", "clang-bpf"],
)
def test_enum_values_at_form_boundaries(tmp_path: Path, cmd: tuple[str, ...]) -> None:
    """A signed enum's 200 in data1 is 200, not -56; every value at its boundary."""
    src, obj = tmp_path / "enums.c", tmp_path / "enums.o"
    src.write_text(ENUM_SOURCE)
    subprocess.run([*cmd, "-c", str(src), "-o", str(obj)], check=True)
    if cmd[0] == "gcc":
        forms = enumerator_forms(obj)
        assert {name: forms[name] for name in GCC_ENUM_FORMS} == GCC_ENUM_FORMS
    found = {t.name: t for t in dwarf_types(obj) if isinstance(t, Enum)}
    assert {name: (t.size, t.signed, t.values) for name, t in found.items()} == ENUMS
    if cmd[0] != "gcc":  # the same values through BTF
        btf = btf_from_elf(obj)
        assert btf is not None
        for name, expected in ENUMS.items():
            (t,) = btf.by_name(name, Enum)
            assert (t.size, t.signed, t.values) == expected


def test_gcc_relocatable_object(tmp_path: Path) -> None:
    """gcc's x86-64 .o keeps string offsets in RELA relocations: names must still be right."""
    src, obj = tmp_path / "host.c", tmp_path / "host.o"
    src.write_text(HEADER + "struct stats *p_stats;\nstruct node *p_node;\n")
    subprocess.run(["gcc", "-g", "-c", str(src), "-o", str(obj)], check=True)
    with obj.open("rb") as f:
        assert ELFFile(f).get_section_by_name(".rela.debug_info") is not None
    types = dwarf_types(obj)
    stats = named(types, "stats", Struct)
    assert isinstance(stats, Struct) and stats.size == 88
    assert [m.name for m in stats.members] == [name for name, *_ in STATS_MEMBERS]
    assert stats.decl_file is not None and stats.decl_file.endswith("/host.c")
    node = named(types, "node", Struct)
    assert isinstance(node, Struct) and [m.name for m in node.members] == ["next", "value"]


def test_cycles_share_objects(types: list[Type]) -> None:
    node = named(types, "node", Struct)
    assert isinstance(node, Struct)
    nxt = node.members[0].type
    assert isinstance(nxt, Pointer) and nxt.target is node
    stats = named(types, "stats", Struct)
    event = named(types, "event", Struct)
    assert isinstance(stats, Struct) and isinstance(event, Struct)
    lvl_stats = next(m.type for m in stats.members if m.name == "lvl")
    lvl_event = next(m.type for m in event.members if m.name == "lvl")
    assert lvl_stats is lvl_event is named(types, "level", Enum)


def test_matches_btf(obj: Path, types: list[Type]) -> None:
    """Every struct and union in both BTF and DWARF has the same layout in each."""
    btf = btf_from_elf(obj)
    assert btf is not None
    compared = 0
    for t in types:
        if not isinstance(t, (Struct, Union)):
            continue
        for other in btf.by_name(t.name, type(t)):
            assert isinstance(other, (Struct, Union))
            assert other.size == t.size
            assert shape(other) == shape(t), t.name
            compared += 1
    assert compared >= 4


@pytest.mark.parametrize("flags", [("-gdwarf-2",), ("-gdwarf-3",), ("-gdwarf-4",)])
def test_older_dwarf_versions(tmp_path: Path, flags: tuple[str, ...]) -> None:
    """DWARF 2/3 write bitfields as DW_AT_bit_offset; <5 numbers files from 1."""
    types = dwarf_types(build(tmp_path, *flags))
    stats = named(types, "stats", Struct)
    event = named(types, "event", Struct)
    assert isinstance(stats, Struct) and isinstance(event, Struct)
    assert shape(stats) == STATS_MEMBERS
    assert shape(event) == EVENT_MEMBERS
    assert stats.decl_file is not None and stats.decl_file.endswith("/shapes.h")
    assert event.decl_file is not None and event.decl_file.endswith("/prog.bpf.c")


@pytest.mark.parametrize("flags", [("-gdwarf-3",), ("-gdwarf-5",)])
def test_big_endian(tmp_path: Path, flags: tuple[str, ...]) -> None:
    """bpfeb objects: bitfield offsets use the big-endian numbering BTF also uses."""
    obj = compile_bpf(
        SOURCE,
        tmp_path,
        headers={"shapes.h": HEADER},
        extra_flags=("-target", "bpfeb", *flags),
    )
    assert obj.read_bytes()[5] == 2  # EI_DATA: ELFDATA2MSB
    stats = named(dwarf_types(obj), "stats", Struct)
    assert isinstance(stats, Struct)
    assert shape(stats) == STATS_MEMBERS
    btf = btf_from_elf(obj)
    assert btf is not None
    (btf_stats,) = btf.by_name("stats", Struct)
    assert isinstance(btf_stats, Struct)
    assert shape(btf_stats) == STATS_MEMBERS


def test_no_debug_info(tmp_path: Path) -> None:
    obj = compile_bpf("int x;\n", tmp_path, debug=False)
    assert dwarf_types(obj) == []


def test_not_elf(tmp_path: Path) -> None:
    path = tmp_path / "junk.o"
    path.write_bytes(b"not an ELF file at all")
    with pytest.raises(TypeInfoError, match=r"junk\.o"):
        dwarf_types(path)
    with pytest.raises(FileNotFoundError):
        dwarf_types(tmp_path / "missing.o")
