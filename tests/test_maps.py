"""Maps of tests/bpf/shapes.bpf.o in the kernel: typed lookup/update/delete/iterate.

No program touches ``by_key``, ``arr`` or ``pcpu`` (shapes.h), so every value seen is
one the test wrote. Values are cross-checked with ``bpftool`` in both directions (our
writes read raw by bpftool and packed independently with ``struct``; bpftool's writes
read by us), so the test does not only trust bpfloom's own encoder and decoder.
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import bpfloom
from bpfloom import BpfObject, Map, MapError, NotFoundError, TypeInfoError
from conftest import bpf_object

pytestmark = pytest.mark.kernel

KEY_FORMAT = "<IH6s"  # struct shape_key { __u32 a; __u16 b; char tag[6]; }
VALUE_FORMAT = "<Qi12s"  # struct shape_val { __u64 count; __s32 delta; char label[12]; }
PCPU_FORMAT = "<QQ"  # struct pcpu_stat { __u64 packets; __u64 bytes; }


@pytest.fixture(params=["shapes", "shapes_btf"])
def obj(request: pytest.FixtureRequest) -> Iterator[BpfObject]:
    with bpfloom.load(bpf_object(str(request.param))) as loaded:
        yield loaded


def map_id(m: Map) -> int:
    with open(f"/proc/self/fdinfo/{m.fd}") as f:
        for line in f:
            if line.startswith("map_id:"):
                return int(line.split()[1])
    raise AssertionError(f"no map_id in fdinfo of {m.name}")


def bpftool(*args: str) -> Any:
    proc = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr or proc.stdout
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def hex_args(data: bytes) -> list[str]:
    return ["hex", *(f"{b:02x}" for b in data)]


def raw(items: list[str]) -> bytes:
    return bytes(int(x, 16) for x in items)


def bpftool_lookup(m: Map, key: bytes) -> Any:
    return bpftool("map", "lookup", "id", str(map_id(m)), "key", *hex_args(key))


def possible_cpus() -> int:
    """Count of possible CPUs from sysfs ("0-1", "0,2-3"), independent of libbpf."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


# --- HASH by_key: struct shape_key -> struct shape_val -----------------------------------

KEYS = [
    {"a": 0, "b": 0, "tag": ""},
    {"a": 1, "b": 2, "tag": "one"},
    {"a": 2**32 - 1, "b": 65535, "tag": "abcde"},  # 5 chars + NUL fill char[6]
    {"a": 7, "b": 8, "tag": "xy"},
]
VALUES = [
    {"count": 0, "delta": 0, "label": ""},
    {"count": 1, "delta": -1, "label": "first"},
    {"count": 2**64 - 1, "delta": -(2**31), "label": "eleven char"},  # 11 + NUL
    {"count": 12345, "delta": 2**31 - 1, "label": "x"},
]


def test_hash_update_and_lookup_with_dicts(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    assert by_key.type == "hash"
    assert (by_key.key_size, by_key.value_size, by_key.max_entries) == (12, 24, 128)
    for key, value in zip(KEYS, VALUES, strict=True):
        by_key.update(key, value)
    for key, value in zip(KEYS, VALUES, strict=True):
        got = by_key.lookup(key)
        assert got._asdict() == value
        assert type(got).__name__ == "shape_val"
        assert (got.count, got.delta, got.label) == tuple(value.values())
        assert isinstance(got.label, str)
        assert by_key[key] == got


def test_hash_lookup_missing(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    missing = {"a": 99, "b": 99, "tag": "none"}
    assert by_key.lookup(missing) is None
    assert by_key.lookup(missing, default="absent") == "absent"
    with pytest.raises(KeyError):
        by_key[missing]


def test_hash_keys_are_namedtuples_and_usable_as_keys(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    by_key.update(KEYS[1], VALUES[1])
    (key,) = list(by_key.keys())
    assert type(key).__name__ == "shape_key"
    assert key._asdict() == KEYS[1]
    assert by_key[key]._asdict() == VALUES[1]  # a decoded key looks its value up


def test_hash_delete_returns_whether_it_was_there(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    by_key[KEYS[1]] = VALUES[1]
    assert by_key.delete(KEYS[1]) is True
    assert by_key.delete(KEYS[1]) is False
    assert by_key.lookup(KEYS[1]) is None
    by_key[KEYS[2]] = VALUES[2]
    del by_key[KEYS[2]]
    with pytest.raises(KeyError):
        del by_key[KEYS[2]]


def test_hash_iterate_keys_items_values_and_clear(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    assert list(by_key) == []
    entries = {(k["a"], k["b"], k["tag"]): v for k, v in zip(KEYS, VALUES, strict=True)}
    for i in range(20):  # plus generated ones, more than one page of get_next_key
        entries[(1000 + i, i, f"k{i}")] = {"count": i, "delta": -i, "label": f"v{i}"}
    for (a, b, tag), value in entries.items():
        by_key[{"a": a, "b": b, "tag": tag}] = value
    keys = list(map(tuple, by_key.keys()))
    assert sorted(keys) == sorted(entries)
    assert len(keys) == len(set(keys))
    items = {tuple(k): v._asdict() for k, v in by_key.items()}
    assert items == entries
    assert sorted(v.count for v in by_key.values()) == sorted(v["count"] for v in entries.values())
    assert by_key.clear() == len(entries)
    assert list(by_key.keys()) == []
    assert by_key.clear() == 0


def test_hash_update_flags(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    with pytest.raises(MapError) as info:  # BPF_EXIST on a missing key: ENOENT
        by_key.update(KEYS[1], VALUES[1], flags=2)
    assert info.value.errno == 2
    assert "by_key" in str(info.value)
    by_key.update(KEYS[1], VALUES[1], flags=1)  # BPF_NOEXIST
    with pytest.raises(MapError) as info:
        by_key.update(KEYS[1], VALUES[2], flags=1)
    assert info.value.errno == 17  # EEXIST
    by_key.update(KEYS[1], VALUES[2], flags=2)
    assert by_key[KEYS[1]]._asdict() == VALUES[2]


def test_hash_partial_struct_zero_fills(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    by_key[{"a": 5}] = {"delta": -9}
    assert by_key[{"a": 5, "b": 0, "tag": ""}]._asdict() == {"count": 0, "delta": -9, "label": ""}


def test_hash_written_by_us_read_by_bpftool(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    for key, value in zip(KEYS, VALUES, strict=True):
        by_key[key] = value
    for key, value in zip(KEYS, VALUES, strict=True):
        key_bytes = struct.pack(KEY_FORMAT, key["a"], key["b"], key["tag"].encode())
        entry = bpftool_lookup(by_key, key_bytes)
        assert raw(entry["key"]) == key_bytes
        assert raw(entry["value"]) == struct.pack(
            VALUE_FORMAT, value["count"], value["delta"], value["label"].encode()
        )
        assert entry["formatted"]["value"] == value  # bpftool's own BTF decoding
    dumped = bpftool("map", "dump", "id", str(map_id(by_key)))
    assert sorted(json.dumps(e["formatted"]["key"], sort_keys=True) for e in dumped) == sorted(
        json.dumps(k, sort_keys=True) for k in KEYS
    )


def test_hash_written_by_bpftool_read_by_us(obj: BpfObject) -> None:
    by_key = obj.map("by_key")
    key_bytes = struct.pack(KEY_FORMAT, 0xA1B2C3D4, 0xBEEF, b"tag")
    value_bytes = struct.pack(VALUE_FORMAT, 2**63 + 5, -123456, b"from bpftool")[:24]
    bpftool(
        "map", "update", "id", str(map_id(by_key)),
        "key", *hex_args(key_bytes), "value", *hex_args(value_bytes),
    )  # fmt: skip
    got = by_key[{"a": 0xA1B2C3D4, "b": 0xBEEF, "tag": "tag"}]
    # label is char[12] and "from bpftool" fills all 12 bytes (no NUL): all of it is text.
    assert got._asdict() == {"count": 2**63 + 5, "delta": -123456, "label": "from bpftool"}


def test_hash_key_with_full_char_array_round_trips(obj: BpfObject) -> None:
    """A key whose char[6] is full (no NUL, legal C) is listed by keys(); that same key
    must work for lookup and delete."""
    by_key = obj.map("by_key")
    key_bytes = struct.pack(KEY_FORMAT, 1, 2, b"abcdef")
    bpftool(
        "map", "update", "id", str(map_id(by_key)),
        "key", *hex_args(key_bytes), "value", *hex_args(bytes(24)),
    )  # fmt: skip
    (key,) = list(by_key.keys())
    assert key.tag == "abcdef"
    assert by_key.lookup(key) is not None
    assert by_key.delete(key) is True
    assert list(by_key.keys()) == []


# --- ARRAY arr: __u32 -> __u64 -----------------------------------------------------------


def test_array_every_index_starts_at_zero(obj: BpfObject) -> None:
    arr = obj.map("arr")
    assert arr.type == "array"
    assert arr.max_entries == 8
    assert [arr[i] for i in range(8)] == [0] * 8
    assert list(arr.keys()) == list(range(8))
    assert list(arr) == list(range(8))
    assert dict(arr.items()) == dict.fromkeys(range(8), 0)


ARRAY_VALUES = [0, 1, 255, 256, 2**32, 2**63, 2**64 - 2, 2**64 - 1]


def test_array_update_every_index(obj: BpfObject) -> None:
    arr = obj.map("arr")
    for i, value in enumerate(ARRAY_VALUES):
        arr[i] = value
    assert [arr.lookup(i) for i in range(8)] == ARRAY_VALUES
    assert list(arr.values()) == ARRAY_VALUES
    for i, value in enumerate(ARRAY_VALUES):
        entry = bpftool_lookup(arr, struct.pack("<I", i))
        assert raw(entry["value"]) == struct.pack("<Q", value)


def test_array_written_by_bpftool_read_by_us(obj: BpfObject) -> None:
    arr = obj.map("arr")
    bpftool(
        "map", "update", "id", str(map_id(arr)),
        "key", *hex_args(struct.pack("<I", 5)), "value", *hex_args(struct.pack("<Q", 0xC0FFEE)),
    )  # fmt: skip
    assert arr[5] == 0xC0FFEE


@pytest.mark.parametrize("index", [0, 7, 8])
def test_array_delete_raises_map_error(obj: BpfObject, index: int) -> None:
    arr = obj.map("arr")
    with pytest.raises(MapError) as info:
        arr.delete(index)
    assert "arr" in str(info.value)
    assert info.value.errno == 22  # EINVAL: array elements cannot be deleted


def test_array_index_out_of_range(obj: BpfObject) -> None:
    arr = obj.map("arr")
    assert arr.lookup(8) is None
    with pytest.raises(KeyError):
        arr[8]
    with pytest.raises(MapError) as info:
        arr[8] = 1
    assert info.value.errno == 7  # E2BIG, as the kernel's array_map_update_elem says


# --- PERCPU_ARRAY pcpu: __u32 -> struct pcpu_stat ----------------------------------------


def test_percpu_lookup_gives_one_value_per_possible_cpu(obj: BpfObject) -> None:
    pcpu = obj.map("pcpu")
    assert pcpu.percpu
    assert obj.possible_cpus == possible_cpus()
    for i in range(4):
        values = pcpu[i]
        assert isinstance(values, list)
        assert len(values) == possible_cpus()
        assert all(v._asdict() == {"packets": 0, "bytes": 0} for v in values)


def test_percpu_update_with_a_list(obj: BpfObject) -> None:
    pcpu = obj.map("pcpu")
    n = possible_cpus()
    values = [{"packets": cpu + 1, "bytes": (cpu + 1) * 1000 + 2**40} for cpu in range(n)]
    pcpu[2] = values
    assert [v._asdict() for v in pcpu[2]] == values
    assert all(v.packets == 0 for v in pcpu[1])  # neighbours untouched
    entry = bpftool_lookup(pcpu, struct.pack("<I", 2))
    per_cpu = {e["cpu"]: raw(e["value"]) for e in entry["values"]}
    assert len(per_cpu) == n
    for cpu, value in enumerate(values):
        assert per_cpu[cpu] == struct.pack(PCPU_FORMAT, value["packets"], value["bytes"])


def test_percpu_update_with_a_single_value_sets_every_cpu(obj: BpfObject) -> None:
    pcpu = obj.map("pcpu")
    pcpu[3] = {"packets": 7, "bytes": 2**64 - 1}
    assert [v._asdict() for v in pcpu[3]] == [{"packets": 7, "bytes": 2**64 - 1}] * possible_cpus()
    entry = bpftool_lookup(pcpu, struct.pack("<I", 3))
    assert {raw(e["value"]) for e in entry["values"]} == {struct.pack(PCPU_FORMAT, 7, 2**64 - 1)}


def test_percpu_written_by_bpftool_read_by_us(obj: BpfObject) -> None:
    pcpu = obj.map("pcpu")
    value = struct.pack(PCPU_FORMAT, 11, 22)
    # bpftool takes one value and writes it to every CPU.
    bpftool(
        "map", "update", "id", str(map_id(pcpu)),
        "key", *hex_args(struct.pack("<I", 0)), "value", *hex_args(value),
    )  # fmt: skip
    assert [tuple(v) for v in pcpu[0]] == [(11, 22)] * possible_cpus()


@pytest.mark.parametrize("count", [1, 3])
def test_percpu_update_with_wrong_number_of_values(obj: BpfObject, count: int) -> None:
    pcpu = obj.map("pcpu")
    if count == possible_cpus():
        pytest.skip("this machine has exactly that many CPUs")
    with pytest.raises(MapError) as info:
        pcpu[0] = [{"packets": 1}] * count
    assert str(possible_cpus()) in str(info.value)
    assert "pcpu" in str(info.value)


# --- encoding errors ----------------------------------------------------------------------

# (map, key, value or None for a lookup, words the message must contain)
ENCODING_ERRORS: list[tuple[str, str, Any, Any, list[str]]] = [
    ("bad key member", "by_key", {"a": 1, "nope": 2}, None, ["nope", "shape_key", "tag"]),
    ("bad value member", "by_key", {"a": 1}, {"cnt": 1}, ["cnt", "shape_val", "count"]),
    ("key member out of range", "by_key", {"a": 2**32}, None, ["a", "u32"]),
    ("key u16 negative", "by_key", {"b": -1}, None, ["b", "u16"]),
    ("value out of range", "by_key", {"a": 1}, {"count": -1}, ["count", "u64"]),
    ("value s32 too big", "by_key", {"a": 1}, {"delta": 2**31}, ["delta", "s32"]),
    ("key char array too long", "by_key", {"tag": "toolong"}, None, ["tag", "char[6]"]),
    ("value label too long", "by_key", {"a": 1}, {"label": "x" * 13}, ["label", "char[12]"]),
    ("key not a struct", "by_key", 5, None, ["shape_key"]),
    ("array index negative", "arr", -1, None, ["u32"]),
    ("array value too big", "arr", 0, 2**64, ["u64"]),
    ("array value not int", "arr", 0, "1", ["integer"]),
    ("percpu member", "pcpu", 0, {"packet": 1}, ["packet", "pcpu_stat"]),
]


@pytest.mark.parametrize(
    ("what", "map_name", "key", "value", "words"),
    ENCODING_ERRORS,
    ids=[e[0] for e in ENCODING_ERRORS],
)
def test_encoding_errors_raise_type_info_error(
    obj: BpfObject, what: str, map_name: str, key: Any, value: Any, words: list[str]
) -> None:
    m = obj.map(map_name)
    with pytest.raises(TypeInfoError) as info:
        if value is None:
            m.lookup(key)
        else:
            m.update(key, value)
    for word in words:
        assert word in str(info.value)
    if m.type == "hash":
        assert list(m.keys()) == []  # nothing was written


def test_unknown_map_names_the_maps(obj: BpfObject) -> None:
    with pytest.raises(NotFoundError) as info:
        obj.map("no_such_map")
    for name in ("by_key", "arr", "pcpu", "rb"):
        assert name in str(info.value)


def test_ring_buffer_map_has_no_keys(obj: BpfObject) -> None:
    with pytest.raises(MapError, match="no keys"):
        list(obj.map("rb").keys())
