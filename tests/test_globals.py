"""Globals of every supported type, against tests/bpf/shapes.bpf.o and shapes_btf.bpf.o.

Values set before load must reach the programs: ``emit_shapes`` (a SEC("syscall")
program run with BPF_PROG_TEST_RUN) echoes every global into the ``globals`` member of
the event it writes to ring buffer ``rb`` (see tests/bpf/shapes.h for the table of
defaults). After load, ``.rodata`` is frozen while ``.data``/``.bss`` are live memory
shared with the programs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import bpfloom
from bpfloom import BpfObject, ClosedError, GlobalError, NotFoundError, RingBuffer
from conftest import bpf_object

OBJECTS = ["shapes", "shapes_btf"]

# name -> (section, default) as documented in shapes.h.
DEFAULTS: dict[str, tuple[str, Any]] = {
    "g_s8": (".rodata", -5),
    "g_u8": (".rodata", 250),
    "g_s16": (".rodata", -300),
    "g_u16": (".rodata", 60000),
    "g_s32": (".rodata", -70000),
    "g_u32": (".rodata", 4000000000),
    "g_s64": (".rodata", -5000000000),
    "g_u64": (".rodata", 18000000000000000000),
    "g_bool": (".rodata", False),
    "g_str": (".rodata", "default"),
    "g_color": (".rodata", "SHAPE_GREEN"),
    "target_pid": (".rodata", 0),
    "data_value": (".data", 0x1122334455667788),
    "emit_count": (".bss", 0),
}

# (global, value to set before load, what the program echoes back)
SET_CASES: list[tuple[str, Any, Any]] = [
    ("g_s8", -128, -128),
    ("g_s8", 127, 127),
    ("g_s8", 0, 0),
    ("g_u8", 0, 0),
    ("g_u8", 255, 255),
    ("g_s16", -32768, -32768),
    ("g_s16", 32767, 32767),
    ("g_u16", 0, 0),
    ("g_u16", 65535, 65535),
    ("g_s32", -(2**31), -(2**31)),
    ("g_s32", 2**31 - 1, 2**31 - 1),
    ("g_u32", 0, 0),
    ("g_u32", 2**32 - 1, 2**32 - 1),
    ("g_s64", -(2**63), -(2**63)),
    ("g_s64", 2**63 - 1, 2**63 - 1),
    ("g_u64", 0, 0),
    ("g_u64", 2**64 - 1, 2**64 - 1),
    ("g_bool", True, True),
    ("g_bool", 1, True),
    ("g_str", "abcdefghijklmno", "abcdefghijklmno"),  # 15 chars: char[16] with its NUL
    ("g_str", "", ""),
    ("g_str", "héllo wörld", "héllo wörld"),  # UTF-8, 13 bytes
    ("g_str", b"raw\x01bytes", "raw\x01bytes"),
    ("g_color", "SHAPE_RED", "SHAPE_RED"),
    ("g_color", "SHAPE_BLUE", "SHAPE_BLUE"),
    ("g_color", 4, "SHAPE_BLUE"),  # by int: decodes to the enumerator's name
    ("g_color", 42, 42),  # no enumerator: stays an int
    ("data_value", 0, 0),
    ("data_value", 2**64 - 1, 2**64 - 1),
    ("emit_count", 41, 42),  # .bss set before load; the run adds 1 before the echo
]


def _case_id(case: tuple[str, Any, Any]) -> str:
    return f"{case[0]}={case[1]!r}"


@pytest.fixture(params=OBJECTS)
def object_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opened(object_name: str) -> Iterator[BpfObject]:
    with BpfObject(bpf_object(object_name)) as obj:
        yield obj


def emit(obj: BpfObject, rb: RingBuffer) -> Any:
    """Run ``emit_shapes`` once and return the one event it wrote."""
    assert obj.program("emit_shapes").test_run() == 0
    batch = rb.read(timeout=2)
    events = batch.events()
    assert len(events) == 1, f"expected one event, got {len(events)}"
    assert events[0].magic == 0xFEEDFACECAFEBEEF
    assert events[0].source == 2  # SHAPES_FROM_SYSCALL
    return events[0]


# --- defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_default_before_load(opened: BpfObject, name: str) -> None:
    assert opened.globals[name] == DEFAULTS[name][1]
    assert type(opened.globals[name]) is type(DEFAULTS[name][1])


def test_globals_listing(opened: BpfObject) -> None:
    info = {v.name: v for v in opened.globals.info()}
    assert set(DEFAULTS) <= set(info)
    assert set(opened.globals) == set(info)
    for name, (section, _) in DEFAULTS.items():
        assert info[name].section == section, name
        assert info[name].readonly_after_load == (section == ".rodata"), name
    assert info["g_str"].size == 16
    assert info["g_color"].size == 4


@pytest.mark.kernel
def test_defaults_reach_the_program(opened: BpfObject) -> None:
    opened.load()
    # No event type named: the reader finds `struct shapes` itself (BTF or DWARF).
    with opened.ring_buffer("rb") as rb:
        echo = emit(opened, rb).globals
    for name, (_, default) in DEFAULTS.items():
        if name in ("target_pid", "emit_count"):
            continue
        assert getattr(echo, name) == default, name
    assert echo.emit_count == 1


# --- set before load ----------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("name", "value", "echoed"), SET_CASES, ids=[_case_id(c) for c in SET_CASES]
)
def test_set_before_load_reaches_the_program(
    opened: BpfObject, name: str, value: Any, echoed: Any
) -> None:
    opened.globals[name] = value
    assert opened.globals[name] == (value if name == "emit_count" else echoed)
    opened.load()
    with opened.ring_buffer("rb", "shapes") as rb:
        echo = emit(opened, rb).globals
    assert getattr(echo, name) == echoed
    # The other globals kept their defaults.
    for other, (_, default) in DEFAULTS.items():
        if other not in (name, "target_pid", "emit_count"):
            assert getattr(echo, other) == default, other


@pytest.mark.kernel
def test_set_every_global_at_once_with_load(object_name: str) -> None:
    values = {
        "g_s8": -128,
        "g_u8": 255,
        "g_s16": -32768,
        "g_u16": 65535,
        "g_s32": -(2**31),
        "g_u32": 2**32 - 1,
        "g_s64": -(2**63),
        "g_u64": 2**64 - 1,
        "g_bool": True,
        "g_str": "fifteen chars!!",
        "g_color": "SHAPE_BLUE",
        "data_value": 0xDEADBEEF,
    }
    with bpfloom.load(bpf_object(object_name), globals=values) as obj:
        with obj.ring_buffer("rb", "shapes") as rb:
            echo = emit(obj, rb).globals
        for name, value in values.items():
            assert getattr(echo, name) == value, name
            assert obj.globals[name] == value, name


@pytest.mark.kernel
def test_emit_count_increments_per_run(opened: BpfObject) -> None:
    opened.load()
    with opened.ring_buffer("rb", "shapes") as rb:
        counts = [emit(opened, rb).globals.emit_count for _ in range(3)]
    assert counts == [1, 2, 3]


@pytest.mark.kernel
def test_bss_global_reads_the_live_value_after_load(opened: BpfObject) -> None:
    """``obj.globals["emit_count"]`` after load is the kernel's value, not the image
    libbpf held before load (the programs incremented it)."""
    opened.load()
    assert opened.globals["emit_count"] == 0
    with opened.ring_buffer("rb", "shapes") as rb:
        for _ in range(3):
            emit(opened, rb)
    assert opened.globals["emit_count"] == 3


@pytest.mark.kernel
@pytest.mark.parametrize("value", [0, 7, 2**64 - 1])
def test_data_global_written_after_load_is_seen_by_the_program(
    opened: BpfObject, value: int
) -> None:
    opened.load()
    with opened.ring_buffer("rb", "shapes") as rb:
        assert emit(opened, rb).globals.data_value == DEFAULTS["data_value"][1]
        opened.globals["data_value"] = value
        assert opened.globals["data_value"] == value
        assert emit(opened, rb).globals.data_value == value


@pytest.mark.kernel
def test_bss_global_written_after_load_is_seen_by_the_program(opened: BpfObject) -> None:
    opened.load()
    with opened.ring_buffer("rb", "shapes") as rb:
        opened.globals["emit_count"] = 100
        assert emit(opened, rb).globals.emit_count == 101


# --- errors -------------------------------------------------------------------------------


def test_unknown_global_lists_valid_globals(opened: BpfObject) -> None:
    for action in (lambda: opened.globals["no_such_global"], _setter(opened, "no_such_global")):
        with pytest.raises(NotFoundError) as info:
            action()
        message = str(info.value)
        assert "no_such_global" in message
        for name in DEFAULTS:
            assert name in message


def _setter(obj: BpfObject, name: str, value: Any = 1) -> Any:
    return lambda: obj.globals.__setitem__(name, value)


# (global, bad value, words the message must contain besides the global's name)
BAD_VALUES: list[tuple[str, Any, list[str]]] = [
    ("g_u8", 256, ["u8", "256"]),
    ("g_u8", -1, ["u8", "-1"]),
    ("g_s8", -129, ["s8", "-129"]),
    ("g_s8", 128, ["s8", "128"]),
    ("g_u16", 65536, ["u16"]),
    ("g_s16", -32769, ["s16"]),
    ("g_u32", -1, ["u32", "-1"]),
    ("g_s32", 2**31, ["s32"]),
    ("g_u64", 2**64, ["u64"]),
    ("g_s64", -(2**63) - 1, ["s64"]),
    ("g_str", "0123456789abcdef", ["char[16]", "16"]),  # 16 chars: no room for the NUL
    ("g_str", "ééééééééé", ["char[16]", "18"]),  # 9 chars but 18 bytes of UTF-8
    ("g_color", "SHAPE_PURPLE", ["enum shape_color", "SHAPE_PURPLE", "SHAPE_GREEN"]),
    ("g_color", 2**32, ["enum shape_color"]),
    ("g_bool", 2, ["bool"]),
    ("g_s32", "12", ["s32", "integer"]),
    ("g_u64", 1.5, ["u64"]),
    ("data_value", -1, ["u64"]),
]


@pytest.mark.parametrize(
    ("name", "value", "words"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES]
)
def test_bad_value_raises_global_error(
    opened: BpfObject, name: str, value: Any, words: list[str]
) -> None:
    before = opened.globals[name]
    with pytest.raises(GlobalError) as info:
        opened.globals[name] = value
    message = str(info.value)
    assert repr(name) in message
    for word in words:
        assert word in message
    assert opened.globals[name] == before  # nothing was written


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("name", "value"),
    [("g_s8", 1), ("g_str", "late"), ("g_color", "SHAPE_RED"), ("target_pid", 1)],
)
def test_rodata_global_is_read_only_after_load(opened: BpfObject, name: str, value: Any) -> None:
    opened.load()
    with pytest.raises(GlobalError) as info:
        opened.globals[name] = value
    assert repr(name) in str(info.value)
    assert ".rodata" in str(info.value)
    assert opened.globals[name] == DEFAULTS[name][1]
    if name != "target_pid":
        with opened.ring_buffer("rb", "shapes") as rb:
            assert getattr(emit(opened, rb).globals, name) == DEFAULTS[name][1]


def test_globals_of_closed_object_raise_closed_error(opened: BpfObject) -> None:
    opened.close()
    with pytest.raises(ClosedError):
        opened.globals["g_s8"]
    with pytest.raises(ClosedError):
        opened.globals["g_s8"] = 1
