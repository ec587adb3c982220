"""Array lengths at every boundary of the DWARF and BTF forms that carry them.

A DWARF bound is written in the smallest form that holds it (data1 up to 255, data2 up to
65535, then data4, data8), and the top bit of a form is part of the number: a
``char fname[130]`` once decoded as ``""`` because a data1 count of 130 was read as -1.
Real compiler output is checked at each boundary (clang for BPF through BTF and through
DWARF, gcc and g++ for x86-64), the forms themselves are asserted so the boundaries stay
covered, and records with known bytes decode to exactly the expected values. Hostile
lengths (2^40, 2^63, 2^64 - 1 elements, cyclic arrays) are a ``TypeInfoError``, never an
allocation, a crash or a hang.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from elftools.dwarf.die import DIE, AttributeValue
from elftools.elf.elffile import ELFFile

from bpfloom._exceptions import TypeInfoError
from bpfloom.btf import btf_from_elf, parse_btf
from bpfloom.decode import MAX_SIZE, Decoder, decode_value, encode
from bpfloom.dwarf import _bound, _Builder, dwarf_types
from bpfloom.typeinfo import TypeInfo, _member_struct_names
from bpfloom.types import Array, Int, Member, Struct, Type, describe, sizeof, strip
from conftest import CLANG, compile_bpf, time_limit

HEAD, TAIL = 0x11223344, 0xA1B2C3D4
LENGTHS = [1, 127, 128, 255, 256, 32767, 32768, 65535, 65536]
KINDS = ["char", "__u8"]  # char[N] decodes as str, __u8[N] as a list of ints


def tag(kind: str, n: int) -> str:
    return f"{'c' if kind == 'char' else 'u'}_{n}"


def payload(kind: str, n: int) -> tuple[bytes, Any]:
    """Bytes that fill an array of ``n`` elements up to its last one, and their value."""
    if kind == "char":
        text = "".join(chr(ord("a") + i % 26) for i in range(n))  # no NUL anywhere
        return text.encode(), text
    values = [(255 - i) % 256 for i in range(n)]  # starts at 255: unsigned
    return bytes(values), values


def padded(size: int) -> int:
    return (size + 3) // 4 * 4


# --- what the compiler wrote, read independently with pyelftools ---------------------------


Bound = tuple[str, str, int]  # (attribute, form, raw value)


def array_bounds(path: Path) -> dict[str, dict[str, list[Bound]]]:
    """struct name -> member name -> the bound attributes of each of its array's
    subranges (flattened; ``[]`` for a flexible array), as written in the file."""
    with path.open("rb") as f:
        info = ELFFile(f).get_dwarf_info()  # relocated: also right for gcc's RELA objects
        out: dict[str, dict[str, list[Bound]]] = {}
        for cu in info.iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_structure_type" or "DW_AT_name" not in die.attributes:
                    continue
                members: dict[str, list[Bound]] = {}
                for m in die.iter_children():
                    if m.tag != "DW_TAG_member":
                        continue
                    t = m.get_DIE_from_attribute("DW_AT_type")
                    if t.tag == "DW_TAG_array_type":
                        members[m.attributes["DW_AT_name"].value.decode()] = _subranges(t)
                out[die.attributes["DW_AT_name"].value.decode()] = members
    return out


def _subranges(array: DIE) -> list[Bound]:
    names = ("DW_AT_count", "DW_AT_upper_bound", "DW_AT_lower_bound")
    return [
        (a.name, a.form, a.value)
        for s in array.iter_children()
        for a in s.attributes.values()
        if a.name in names
    ]


def compile_host(source: str, tmp_path: Path, cmd: Sequence[str], name: str) -> Path:
    """Compile ``source`` to an object with ``cmd`` (gcc, g++ or clang and flags)."""
    suffix = ".cc" if cmd[0].startswith(("g++", "clang++")) else ".c"
    src = tmp_path / f"{name}{suffix}"
    obj = tmp_path / f"{name}.o"
    src.write_text(source)
    proc = subprocess.run(
        [*cmd, "-c", str(src), "-o", str(obj)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr}", pytrace=False)
    return obj


def members_of(t: Struct) -> dict[str, Member]:
    return {m.name: m for m in t.members}


# --- clang for BPF: the length sweep through BTF and through DWARF ------------------------

INCLUDES = "#include <linux/types.h>\n#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
SWEEP_STRUCTS = "\n".join(
    f"struct {tag(kind, n)} {{ __u32 head; {kind} a[{n}]; __u32 tail; }};"
    for n in LENGTHS
    for kind in KINDS
)
# Globals put every struct into BTF.
BTF_SOURCE = (
    INCLUDES
    + SWEEP_STRUCTS
    + "\n"
    + "\n".join(f"struct {tag(k, n)} g_{tag(k, n)};" for n in LENGTHS for k in KINDS)
    + '\nchar LICENSE[] SEC("license") = "GPL";\n'
)
# Written only through reserved ring buffer slots: in DWARF, never in BTF.
RESERVE = """
    {{
        struct {t} *e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
        if (e) {{
            e->head = 1; e->a[{last}] = 2; e->tail = 3;
            bpf_ringbuf_submit(e, 0);
        }}
    }}"""
DWARF_SOURCE = (
    INCLUDES
    + SWEEP_STRUCTS
    + """
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} rb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpgid")
int handle(void *ctx)
{"""
    + "".join(RESERVE.format(t=tag(k, n), last=n - 1) for n in LENGTHS for k in KINDS)
    + '\n    return 0;\n}\n\nchar LICENSE[] SEC("license") = "GPL";\n'
)
PATHS = {
    "btf": (BTF_SOURCE, ()),
    "dwarf4": (DWARF_SOURCE, ("-gdwarf-4",)),
    "dwarf5": (DWARF_SOURCE, ("-gdwarf-5",)),
}


@pytest.fixture(scope="module")
def sweep_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sweep")
    return {
        path: compile_bpf(source, tmp, name=path, extra_flags=flags)
        for path, (source, flags) in PATHS.items()
    }


@pytest.fixture(scope="module")
def sweep_info(sweep_objects: dict[str, Path]) -> dict[str, TypeInfo]:
    """Each object's type lookup (BTF, then DWARF parsed once)."""
    return {path: TypeInfo(str(obj), btf_from_elf(obj)) for path, obj in sweep_objects.items()}


@pytest.fixture(scope="module")
def sweep_bounds(sweep_objects: dict[str, Path]) -> dict[str, dict[str, dict[str, list[Bound]]]]:
    return {path: array_bounds(obj) for path, obj in sweep_objects.items()}


def count_form(n: int) -> str:
    """The form clang gives a DW_AT_count of ``n`` (the smallest that holds it)."""
    return "DW_FORM_data1" if n <= 0xFF else "DW_FORM_data2" if n <= 0xFFFF else "DW_FORM_data4"


def check_struct(t: Struct, fields: list[tuple[str, str, int]]) -> bytes:
    """Assert the layout of ``struct { u32 head; KIND NAME[N]...; u32 tail; }`` and that a
    record of known bytes decodes (and encodes back) exactly; return the record."""
    by_name = members_of(t)
    offset = 4
    record = struct.pack("<I", HEAD)
    expected: dict[str, Any] = {"head": HEAD}
    for name, kind, n in fields:
        m = by_name[name]
        array = strip(m.type)
        assert isinstance(array, Array) and array.length == n, describe(m.type)
        assert describe(m.type) == f"{kind}[{n}]"
        assert m.offset_bits == offset * 8
        data, value = payload(kind, n)
        record += data
        expected[name] = value
        offset += n
    record += b"\0" * (padded(offset) - offset) + struct.pack("<I", TAIL)
    expected["tail"] = TAIL
    assert by_name["tail"].offset_bits == padded(offset) * 8
    assert t.size == sizeof(t) == padded(offset) + 4 == len(record)
    event = decode_value(t, record)
    assert event._asdict() == expected
    assert encode(t, event, full_strings=True) == record
    return record


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", list(PATHS))
def test_length_sweep(
    sweep_info: dict[str, TypeInfo],
    sweep_bounds: dict[str, dict[str, dict[str, list[Bound]]]],
    path: str,
    kind: str,
    n: int,
) -> None:
    info = sweep_info[path]
    assert info.btf is not None
    name = tag(kind, n)
    t = info.find(name)  # BTF first, DWARF as the fallback, as `bpfloom run` looks
    assert isinstance(t, Struct)
    if path == "btf":
        assert t.decl_file is None  # only DWARF records where a struct was declared
    else:
        assert info.btf.by_name(name) == []
        assert t.decl_file is not None and t.decl_file.endswith(f"{path}.bpf.c")
        assert sweep_bounds[path][name]["a"] == [("DW_AT_count", count_form(n), n)]
    check_struct(t, [("a", kind, n)])


# --- gcc for x86-64: DW_AT_upper_bound at each form boundary ------------------------------

GCC_BOUNDS = [
    (127, "DW_FORM_data1"),
    (128, "DW_FORM_data1"),
    (255, "DW_FORM_data1"),
    (32767, "DW_FORM_data2"),
    (32768, "DW_FORM_data2"),
    (65535, "DW_FORM_data2"),
    (2**31 - 1, "DW_FORM_data4"),
    (2**31, "DW_FORM_data4"),
    (2**31 + 1, "DW_FORM_data4"),
    (2**32 - 1, "DW_FORM_data4"),  # all ones in data4: 2^32 elements, not "-1"
    (2**32, "DW_FORM_data8"),
]
# Reached through pointers, so arrays of gigabytes are only types.
GCC_SOURCE = "\n".join(
    f"struct g_{ub} {{ unsigned int head; char c[{ub + 1}UL]; unsigned char u[{ub + 1}UL]; "
    f"unsigned int tail; }};\nstruct g_{ub} *p_{ub};"
    for ub, _ in GCC_BOUNDS
)
GCC = {"gcc-dwarf5": ("gcc", "-g", "-gdwarf-5"), "gcc-dwarf4": ("gcc", "-g", "-gdwarf-4")}


@pytest.fixture(scope="module")
def gcc_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gcc")
    return {name: compile_host(GCC_SOURCE, tmp, cmd, name) for name, cmd in GCC.items()}


@pytest.fixture(scope="module")
def gcc_types(gcc_objects: dict[str, Path]) -> dict[str, dict[str, Type]]:
    return {name: {t.name: t for t in dwarf_types(obj)} for name, obj in gcc_objects.items()}


@pytest.mark.parametrize(("upper", "form"), GCC_BOUNDS)
@pytest.mark.parametrize("compiler", list(GCC))
def test_gcc_upper_bound(
    gcc_objects: dict[str, Path],
    gcc_types: dict[str, dict[str, Type]],
    compiler: str,
    upper: int,
    form: str,
) -> None:
    name = f"g_{upper}"
    if compiler == "gcc-dwarf5" and form == "DW_FORM_data8":
        # DWARF 5 moves a constant that every DIE of one abbreviation repeats (c's and
        # u's 8-byte bound) into the abbreviation; gcc does that only where it saves bytes.
        form = "DW_FORM_implicit_const"
    written = array_bounds(gcc_objects[compiler])[name]
    assert written == {m: [("DW_AT_upper_bound", form, upper)] for m in ("c", "u")}
    t = gcc_types[compiler][name]
    assert isinstance(t, Struct)
    assert t.decl_file is not None and t.decl_file.endswith(f"{compiler}.c")
    n = upper + 1
    fields = [("c", "char", n), ("u", "unsigned char", n)]
    if n <= 65536:
        check_struct(t, fields)
        return
    # Types only: sized exactly without allocating, and refused by decoders.
    by_name = members_of(t)
    for member, kind, _ in fields:
        assert describe(by_name[member].type) == f"{kind}[{n}]"
        assert sizeof(by_name[member].type) == n
    assert by_name["u"].offset_bits == (4 + n) * 8
    assert t.size == sizeof(t) == padded(4 + 2 * n) + 4
    with pytest.raises(TypeInfoError, match=f"is {t.size} bytes"):
        Decoder(t)


# --- flexible and zero-length arrays -------------------------------------------------------

FLEX_SOURCE = """
struct flex { int n; char tail[]; };
struct zero { int n; int z[0]; };
struct flex *pf;
struct zero *pz;
"""
# What each compiler writes for `char tail[]` and `int z[0]`.
FLEX = {
    "clang-bpf": (
        (CLANG, "-g", "-O2", "-target", "bpf"),
        [],
        [("DW_AT_count", "DW_FORM_data1", 0)],
    ),
    "gcc-dwarf5": (("gcc", "-g", "-gdwarf-5"), [], [("DW_AT_count", "DW_FORM_data1", 0)]),
    "gcc-dwarf4": (("gcc", "-g", "-gdwarf-4"), [], [("DW_AT_count", "DW_FORM_data1", 0)]),
    # g++'s zero-length array: an upper bound of -1 as all ones in data8.
    "g++": (("g++", "-g"), [], [("DW_AT_upper_bound", "DW_FORM_data8", 2**64 - 1)]),
}


@pytest.mark.parametrize("compiler", list(FLEX))
def test_flexible_and_zero_length(tmp_path: Path, compiler: str) -> None:
    cmd, flex_bounds, zero_bounds = FLEX[compiler]
    obj = compile_host(FLEX_SOURCE, tmp_path, cmd, "flex")
    written = array_bounds(obj)
    assert written["flex"] == {"tail": flex_bounds}
    assert written["zero"] == {"z": zero_bounds}
    types = {t.name: t for t in dwarf_types(obj)}
    for name, member, spelled, empty in (
        ("flex", "tail", "char[0]", ""),
        ("zero", "z", "int[0]", []),
    ):
        t = types[name]
        assert isinstance(t, Struct) and t.size == sizeof(t) == 4
        m = members_of(t)[member]
        assert describe(m.type) == spelled and sizeof(m.type) == 0
        assert m.offset_bits == 32
        assert decode_value(t, struct.pack("<i", -7))._asdict() == {"n": -7, member: empty}


# --- each constant form, including those no local compiler writes for a bound -------------


def attr(form: str, value: Any, name: str = "DW_AT_upper_bound") -> AttributeValue:
    return AttributeValue(name, form, value, value, 0, 0)


@pytest.mark.parametrize(
    ("form", "value", "expected"),
    [
        ("DW_FORM_data1", 0x7F, 0x7F),
        ("DW_FORM_data1", 0x80, 0x80),
        ("DW_FORM_data1", 0xFF, 0xFF),
        ("DW_FORM_data2", 0x8000, 0x8000),
        ("DW_FORM_data2", 0xFFFF, 0xFFFF),
        ("DW_FORM_data4", 0x80000000, 0x80000000),
        ("DW_FORM_data4", 0xFFFFFFFF, 0xFFFFFFFF),
        ("DW_FORM_data8", 2**63, 2**63),
        ("DW_FORM_data8", 2**64 - 2, 2**64 - 2),
        ("DW_FORM_data8", 2**64 - 1, -1),  # g++'s -1
        ("DW_FORM_udata", 200, 200),
        ("DW_FORM_udata", 2**64 - 1, 2**64 - 1),
        ("DW_FORM_sdata", 200, 200),
        ("DW_FORM_sdata", -1, -1),  # older gcc's -1
        ("DW_FORM_implicit_const", 0, 0),
        ("DW_FORM_implicit_const", -1, -1),
        ("DW_FORM_exprloc", [0x91, 0x68, 0x06], None),  # a VLA: DW_OP_fbreg -24, deref
        ("DW_FORM_block1", [0x91, 0x68, 0x06], None),
        ("DW_FORM_ref4", 0xC8, None),  # clang's VLA count: a reference to a variable
    ],
)
def test_bound_forms(form: str, value: Any, expected: int | None) -> None:
    assert _bound(attr(form, value)) == expected


@pytest.mark.parametrize(
    ("attrs", "length"),
    [
        ({}, 0),  # flexible
        ({"DW_AT_count": attr("DW_FORM_data1", 0x82, "DW_AT_count")}, 130),
        ({"DW_AT_count": attr("DW_FORM_sdata", -1, "DW_AT_count")}, 0),
        ({"DW_AT_count": attr("DW_FORM_data8", 2**64 - 1, "DW_AT_count")}, 0),
        ({"DW_AT_upper_bound": attr("DW_FORM_data1", 0xFF)}, 256),
        ({"DW_AT_upper_bound": attr("DW_FORM_data2", 0xFFFF)}, 65536),
        ({"DW_AT_upper_bound": attr("DW_FORM_data4", 0xFFFFFFFF)}, 2**32),
        ({"DW_AT_upper_bound": attr("DW_FORM_data8", 2**64 - 1)}, 0),
        ({"DW_AT_upper_bound": attr("DW_FORM_sdata", -1)}, 0),
        ({"DW_AT_upper_bound": attr("DW_FORM_exprloc", [0x91, 0x68, 0x06])}, 0),
        (
            {
                "DW_AT_lower_bound": attr("DW_FORM_data1", 0x80, "DW_AT_lower_bound"),
                "DW_AT_upper_bound": attr("DW_FORM_data1", 0xFF),
            },
            128,
        ),
        (
            {
                "DW_AT_lower_bound": attr("DW_FORM_data1", 0xFF, "DW_AT_lower_bound"),
                "DW_AT_upper_bound": attr("DW_FORM_data1", 0x80),
            },
            0,
        ),
    ],
)
def test_subrange_length(attrs: dict[str, AttributeValue], length: int) -> None:
    die: Any = SimpleNamespace(attributes=attrs)
    builder: Any = None  # the length depends on the attributes alone
    assert _Builder._subrange_length(builder, die) == length


# --- hostile lengths -----------------------------------------------------------------------

HUGE_SOURCE = "struct huge { unsigned int head; char c[1UL << 40]; };\nstruct huge *ph;\n"


def patch_bound(obj: Path, tmp_path: Path, value: int) -> Path:
    """A copy of ``obj`` whose one data8 array bound is ``value``."""
    raw = bytearray(obj.read_bytes())
    with obj.open("rb") as f:
        elf = ELFFile(f)
        section = elf.get_section_by_name(".debug_info")
        found = [
            a
            for cu in elf.get_dwarf_info().iter_CUs()
            for die in cu.iter_DIEs()
            if die.tag == "DW_TAG_subrange_type"
            for a in die.attributes.values()
            if a.form == "DW_FORM_data8"
        ]
        assert len(found) == 1, found
        at = section["sh_offset"] + found[0].offset
    assert int.from_bytes(raw[at : at + 8], "little") == found[0].value
    raw[at : at + 8] = value.to_bytes(8, "little")
    patched = tmp_path / f"patched-{obj.name}"
    patched.write_bytes(bytes(raw))
    return patched


@pytest.mark.parametrize(
    ("compiler", "value", "length"),
    [
        ("clang-bpf", 2**40, 2**40),  # DW_AT_count as compiled
        ("clang-bpf", 2**63, 2**63),
        ("clang-bpf", 2**64 - 2, 2**64 - 2),
        ("clang-bpf", 2**64 - 1, 0),  # all ones: -1, no count
        ("gcc", 2**40 - 1, 2**40),  # DW_AT_upper_bound as compiled
        ("gcc", 2**63 - 1, 2**63),
        ("gcc", 2**64 - 2, 2**64 - 1),
        ("gcc", 2**64 - 1, 0),  # all ones: -1, an empty array
    ],
)
def test_absurd_lengths_are_refused(tmp_path: Path, compiler: str, value: int, length: int) -> None:
    cmd = (CLANG, "-g", "-O2", "-target", "bpf") if compiler == "clang-bpf" else ("gcc", "-g")
    obj = patch_bound(compile_host(HUGE_SOURCE, tmp_path, cmd, "huge"), tmp_path, value)
    with time_limit():
        (huge,) = [t for t in dwarf_types(obj) if t.name == "huge"]
        assert isinstance(huge, Struct)
        c = members_of(huge)["c"].type
        assert isinstance(c, Array) and c.length == length
        assert sizeof(c) == length  # sized by multiplying, never allocated
        assert huge.size == 4 + 2**40  # DW_AT_byte_size, not patched
        with pytest.raises(TypeInfoError, match="bytes; bpfloom decodes values of at most"):
            Decoder(huge)
        if length:
            for call in (lambda: Decoder(c), lambda: encode(c, ""), lambda: decode_value(c, b"")):
                with pytest.raises(TypeInfoError, match=f"char\\[{length}\\] is {length} bytes"):
                    call()
        else:
            assert decode_value(c, b"") == ""


def blob(records: bytes, strings: bytes = b"\0a\0") -> bytes:
    """A little-endian BTF blob from raw type records and a string section."""
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(records), len(records), len(strings))
    return header + records + strings


def rec(name_off: int, kind: int, vlen: int, size_or_type: int, *extra: int) -> bytes:
    return struct.pack(f"<III{len(extra)}I", name_off, (kind << 24) | vlen, size_or_type, *extra)


U8 = rec(1, 1, 0, 1, 8)  # [1] INT 'a' size 1, 8 bits, unsigned


@pytest.mark.parametrize(
    "nelems",
    [0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xFFFFFFFF],
)
def test_btf_array_lengths(nelems: int) -> None:
    """BTF's nelems is a u32 and its struct sizes too: read unsigned at every boundary."""
    size = min(nelems, 0xFFFFFFFF - 3)
    records = U8 + rec(0, 3, 0, 0, 1, 1, nelems)  # [2] ARRAY of [1], index [1]
    records += rec(1, 4, 1, size + 3, 1, 2, 0)  # [3] STRUCT 'a' { [2] a; } (size u32)
    btf = parse_btf(blob(records))
    array, holder = btf.types[2], btf.types[3]
    assert isinstance(array, Array) and array.length == nelems
    assert isinstance(holder, Struct) and holder.size == size + 3
    assert sizeof(array) == nelems
    if nelems <= 0xFFFF:
        data = bytes((255 - i) % 256 for i in range(nelems))
        assert decode_value(array, data) == list(data)
    elif nelems > MAX_SIZE:
        with pytest.raises(TypeInfoError, match=f"is {nelems} bytes"):
            Decoder(array)


def test_btf_nested_absurd_array() -> None:
    u64 = rec(1, 1, 0, 8, 64)  # [1] u64
    inner = rec(0, 3, 0, 0, 1, 1, 0xFFFFFFFF)  # [2] u64[2^32 - 1]
    outer = rec(0, 3, 0, 0, 2, 1, 0xFFFFFFFF)  # [3] [2][2^32 - 1]
    btf = parse_btf(blob(u64 + inner + outer))
    outer_t = btf.types[3]
    assert sizeof(outer_t) == (2**32 - 1) ** 2 * 8
    with time_limit(), pytest.raises(TypeInfoError, match="bytes; bpfloom decodes"):
        Decoder(outer_t)


def test_btf_cyclic_array() -> None:
    """An array whose element is itself: no size, no decoder, no hang anywhere."""
    records = U8 + rec(0, 3, 0, 0, 2, 1, 2)  # [2] ARRAY of [2] (itself)
    records += rec(1, 4, 1, 4, 1, 2, 0)  # [3] STRUCT 'a' { [2] a; }
    btf = parse_btf(blob(records))
    cyclic, holder = btf.types[2], btf.types[3]
    assert isinstance(holder, Struct)
    with time_limit():
        with pytest.raises(ValueError, match="too deep"):
            sizeof(cyclic)
        assert describe(cyclic).startswith("...")
        for t in (cyclic, holder):
            with pytest.raises(TypeInfoError):
                Decoder(t)
        assert _member_struct_names(holder) == set()


@pytest.mark.parametrize(
    ("dims", "error"),
    [
        ((3, 0), None),  # three empty lists
        ((2**40, 0), "too many elements"),  # 0 bytes, but 2^40 empty lists
        ((0, 2**40), "too many elements"),
        ((2**15, 2**15 - 1), None),  # just below MAX_SIZE (2^30 - 1)
        ((2**15, 2**15), "bytes; bpfloom decodes"),  # 2^30 bytes
    ],
)
def test_element_count_limit(dims: tuple[int, ...], error: str | None) -> None:
    t: Type = Int("unsigned char", 1, signed=False)
    for d in reversed(dims):
        t = Array(t, d)
    if error is not None:
        with pytest.raises(TypeInfoError, match=error):
            Decoder(t)
        return
    decoder = Decoder(t)
    assert decoder.size == sizeof(t)
    if dims == (3, 0):
        assert decode_value(t, b"") == [[], [], []]
