"""Whole objects with structurally valid but hostile BTF, run with `bpfloom run`.

Each example takes a real object (tests/bpf/ecli/counters_rb.bpf.o: a ring buffer of
events, maps with struct keys and histogram values, globals) and rewrites one field of
one BTF type record: a type that refers to itself (an array of itself, a typedef
cycle), a size or element count near 2^32, a member offset far past its struct. The
run must end by itself within its --duration, with status 0 (libbpf and the kernel
accepted it and bpfloom coped) or one `bpfloom: error:` line, status 1 — never a
traceback, an "internal error", or a hang (a generous wall timeout catches that).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import bpf_object

pytestmark = pytest.mark.kernel

BASE = bpf_object("ecli/counters_rb")
WALL = 120  # seconds: only a real hang takes this long

# BTF_KIND_* whose third header word is a type id, and those whose record is followed
# by fixed-size entries: kind -> (entry size, per vlen?)
_REF_KINDS = {2, 8, 9, 10, 11, 12, 14, 17, 18}  # ptr typedef volatile const restrict
# func var decl_tag type_tag
_EXTRA = {
    1: (4, False),
    3: (12, False),
    4: (12, True),
    5: (12, True),
    6: (8, True),
    13: (8, True),
    14: (4, False),
    15: (12, True),
    17: (4, False),
    19: (12, True),
}


def _btf_records(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """(file offset of the type section, [(file offset, kind, vlen) per type record])."""
    with open(BASE, "rb") as f:
        section = ELFFile(f).get_section_by_name(".BTF")
        base = section["sh_offset"]
    hdr_len, type_off, type_len = struct.unpack_from("<III", data, base + 4)
    start = base + hdr_len + type_off
    records, pos = [], start
    while pos < start + type_len:
        info = struct.unpack_from("<I", data, pos + 4)[0]
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        records.append((pos, kind, vlen))
        size, per_vlen = _EXTRA.get(kind, (0, False))
        pos += 12 + (size * vlen if per_vlen else size)
    return start, records


MUTATIONS = ["self_reference", "huge_size", "huge_count", "far_member", "zero_size"]


def _mutate(data: bytearray, records: list[tuple[int, int, int]], index: int, how: str) -> bool:
    """Apply one mutation to record ``index``; False when it does not apply there."""
    pos, kind, vlen = records[index]
    type_id = index + 1
    if how == "self_reference" and kind in _REF_KINDS:
        struct.pack_into("<I", data, pos + 8, type_id)
    elif how == "self_reference" and kind == 3:  # an array of itself
        struct.pack_into("<I", data, pos + 12, type_id)
    elif how == "huge_size" and kind in (4, 5, 6, 19):
        struct.pack_into("<I", data, pos + 8, 0xFFFFFFFF)
    elif how == "zero_size" and kind in (4, 5):
        struct.pack_into("<I", data, pos + 8, 0)
    elif how == "huge_count" and kind == 3:
        struct.pack_into("<I", data, pos + 20, 0xFFFFFFFF)
    elif how == "far_member" and kind in (4, 5) and vlen:
        struct.pack_into("<I", data, pos + 12 + 8, 0x7FFFFFF8)  # first member's offset
    else:
        return False
    return True


_DATA = BASE.read_bytes()
_START, _RECORDS = _btf_records(_DATA)
# Every (record, mutation) pair that applies; the test draws from these.
_CASES = [
    (i, how)
    for i in range(len(_RECORDS))
    for how in MUTATIONS
    if _mutate(bytearray(_DATA), _RECORDS, i, how)
]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=st.sampled_from(_CASES))
def test_hostile_btf_never_hangs_or_crashes(tmp_path: Path, case: tuple[int, str]) -> None:
    index, how = case
    data = bytearray(_DATA)
    assert _mutate(data, _RECORDS, index, how)
    path = tmp_path / f"hostile-{index}-{how}.bpf.o"
    path.write_bytes(bytes(data))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bpfloom", "run", str(path), "--duration", "0.5", "--json"],
            capture_output=True,
            text=True,
            timeout=WALL,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"bpfloom run hung on record {index} ({how})")
    err = proc.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    if proc.returncode == 1:
        errors = [line for line in err.splitlines() if line.startswith("bpfloom: error:")]
        assert len(errors) == 1, err
    else:
        assert proc.returncode == 0, err
