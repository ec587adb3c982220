"""Fuzzing the BTF and DWARF readers: on any input they return or raise TypeInfoError,
never another exception and never a hang (each call runs under a SIGALRM time limit)."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfloom._exceptions import TypeInfoError
from bpfloom.btf import parse_btf
from bpfloom.dwarf import dwarf_types
from conftest import compile_bpf, time_limit

SOURCE = r"""
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

typedef unsigned long long u64;
enum mode { M_A = 1, M_B = -2 };
struct node { struct node *next; int v; };
struct rec {
    __u32 pid;
    u64 ts;
    char comm[16];
    unsigned int a : 3, b : 5;
    enum mode m;
    struct node *head;
    union { int i; float f; } u;
    int grid[2][2];
    char tail[];
};
struct only_local { int x; long long y; };

const volatile int filter_pid = 0;
const volatile char name[8] = "x";
struct rec g_rec;

SEC("tracepoint/syscalls/sys_enter_openat")
int handle(void *ctx)
{
    struct only_local *l = (struct only_local *)ctx;
    return l->x + filter_pid;
}

char LICENSE[] SEC("license") = "GPL";
"""

DWARF_SECTIONS = (".debug_info", ".debug_abbrev", ".debug_str", ".debug_line")


def check_btf(raw: bytes) -> None:
    with time_limit(), contextlib.suppress(TypeInfoError):
        parse_btf(raw)


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(SOURCE, tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def valid_btf(obj: Path) -> bytes:
    with obj.open("rb") as f:
        section = ELFFile(f).get_section_by_name(".BTF")
        assert section is not None
        raw: bytes = section.data()
    parse_btf(raw)  # the unmutated blob parses
    return raw


@pytest.fixture(scope="module")
def dwarf_ranges(obj: Path) -> list[tuple[int, int]]:
    """(file offset, size) of each DWARF section the fuzzer mutates."""
    ranges = []
    with obj.open("rb") as f:
        elf = ELFFile(f)
        for name in DWARF_SECTIONS:
            section = elf.get_section_by_name(name)
            assert section is not None, name
            ranges.append((section["sh_offset"], section["sh_size"]))
    assert dwarf_types(obj)  # the unmutated object parses
    return ranges


# (a) arbitrary bytes, with and without a plausible header in front

header = st.builds(
    lambda version, hdr_len, type_off, type_len, str_off, str_len: struct.pack(
        "<HBBIIIII", 0xEB9F, version, 0, hdr_len, type_off, type_len, str_off, str_len
    ),
    st.sampled_from([1, 1, 1, 0, 2]),
    st.sampled_from([24, 24, 24, 0, 23, 32, 0xFFFFFFFF]),
    st.integers(0, 64),
    st.integers(0, 512) | st.just(0xFFFFFFFF),
    st.integers(0, 512) | st.just(0xFFFFFFFF),
    st.integers(0, 128) | st.just(0xFFFFFFFF),
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024) | st.builds(bytes.__add__, header, st.binary(max_size=1024)))
def test_parse_btf_arbitrary_bytes(raw: bytes) -> None:
    check_btf(raw)


# (b) a real blob with random byte/word mutations and truncation

byte_edit = st.tuples(st.integers(0, 1 << 20), st.integers(0, 255), st.just(1))
word_edit = st.tuples(
    st.integers(0, 1 << 20),
    st.sampled_from([0, 1, 0x7F, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
    st.just(4),
)


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(byte_edit | word_edit, min_size=1, max_size=8),
    cut=st.none() | st.integers(0, 1 << 20),
)
def test_parse_btf_mutated(
    valid_btf: bytes, edits: list[tuple[int, int, int]], cut: int | None
) -> None:
    data = bytearray(valid_btf)
    for position, value, width in edits:
        at = position % (len(data) - width + 1)
        data[at : at + width] = value.to_bytes(width, "little")
    if cut is not None:
        del data[cut % len(data) :]
    check_btf(bytes(data))


# (c) a real object with mutated DWARF sections


@settings(max_examples=60, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    )
)
def test_dwarf_types_mutated(
    obj: Path,
    dwarf_ranges: list[tuple[int, int]],
    edits: list[tuple[int, int, int]],
) -> None:
    data = bytearray(obj.read_bytes())
    for section, position, value in edits:
        offset, size = dwarf_ranges[section]
        data[offset + position % size] = value
    mutated = obj.with_name("mutated.bpf.o")
    mutated.write_bytes(bytes(data))
    with time_limit(), contextlib.suppress(TypeInfoError):
        dwarf_types(mutated)
