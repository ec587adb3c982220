"""Events from the kernel: every field of ``struct shapes`` decoded from real ring and
perf buffers (type from DWARF and from BTF), record types found or named, losses of
both transports counted exactly, and readers that unblock and release on close."""

from __future__ import annotations

import operator
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bpfloom
from bpfloom import BpfObject, ClosedError, PerfBuffer, RingBuffer, TypeInfoError
from conftest import (
    ROOT,
    assert_gone_from_kernel,
    bpf_object,
    compile_bpf,
    kernel_prog_ids,
    own_bpf_ids,
)

pytestmark = pytest.mark.kernel

DRAIN = ROOT / "bench" / "bpf" / "drain.bpf.o"
SHAPES_OBJECTS = {"dwarf": "shapes", "btf": "shapes_btf"}
SHAPES_SIZE = 240
SHAPES_MAGIC = 0xFEEDFACECAFEBEEF
FROM_TRACEPOINT, FROM_SYSCALL = 1, 2
DRAIN_EVENT_SIZE = 32  # struct drain_event; 40 bytes in the ring, 48 in a perf ring
GOLDEN = 2654435761  # drain.bpf.c: value = seq * GOLDEN (mod 2**64)

# The table of shapes.h, as dotted paths into the decoded event. `pid` is added per
# test; `globals.*` echo the globals' defaults (only target_pid, not echoed, is set).
EXPECTED_SHAPES: dict[str, Any] = {
    "magic": SHAPES_MAGIC,
    "source": FROM_TRACEPOINT,
    "s8": -128,
    "u8": 255,
    "s16": -32768,
    "u16": 65535,
    "s32": -(2**31),
    "u32": 2**32 - 1,
    "s64": -(2**63),
    "u64": 2**64 - 1,
    "flag": True,
    "name": "hello",  # stops at the NUL, despite b"GARBAGE\xff\x01Z" after it
    "full": "ABCDEFGH",  # all 8 bytes, no NUL
    "ints": [-1, 0, 1, 2147483647],
    "grid": [[1, 2, 3], [400, 500, 65535]],
    "inner.tag": 0xBEEF,
    "inner.pt.x": -7,
    "inner.pt.y": 7,
    "inner.flags": [1, 2, 3],  # __u8[3]: numbers, not a string
    "val.u": 0x41424344FFFFFFFE,
    "val.i": -2,
    "val.bytes": [0xFE, 0xFF, 0xFF, 0xFF, 0x44, 0x43, 0x42, 0x41],
    "color": "SHAPE_BLUE",
    "color_unknown": 42,
    "bf_u3": 5,
    "bf_u12": 0xABC,
    "bf_s5": -11,
    "bf_s7": -50,
    "bf_u1": 1,
    "id": 0xC0FFEE,
    "vol16": 0x1234,
    "cv_pt.x": -100,
    "cv_pt.y": 100,
    "anon_a": 0xAAAA,
    "anon_b": 0x5555,
    "anon_word": 0xDEADBEEF,
    "anon_bytes": [0xEF, 0xBE, 0xAD, 0xDE],
    "globals.g_s8": -5,
    "globals.g_u8": 250,
    "globals.g_s16": -300,
    "globals.g_u16": 60000,
    "globals.g_s32": -70000,
    "globals.g_u32": 4000000000,
    "globals.g_s64": -5000000000,
    "globals.g_u64": 18000000000000000000,
    "globals.g_bool": False,
    "globals.g_str": "default",
    "globals.g_color": "SHAPE_GREEN",
    "globals.data_value": 0x1122334455667788,
    "globals.emit_count": 1,
}

# The same values as numpy reads them (batch.numpy()): plain ints, no bitfields.
EXPECTED_NUMPY: dict[str, Any] = {
    "magic": SHAPES_MAGIC,
    "s8": -128,
    "u8": 255,
    "s16": -(2**15),
    "u16": 2**16 - 1,
    "s32": -(2**31),
    "u32": 2**32 - 1,
    "s64": -(2**63),
    "u64": 2**64 - 1,
    "flag": True,
    "ints": [-1, 0, 1, 2147483647],
    "grid": [[1, 2, 3], [400, 500, 65535]],
    "color": 4,
    "color_unknown": 42,
    "id": 0xC0FFEE,
    "vol16": 0x1234,
    "anon_a": 0xAAAA,
    "anon_b": 0x5555,
    "anon_word": 0xDEADBEEF,
}
BITFIELDS = ("bf_u3", "bf_u12", "bf_s5", "bf_s7", "bf_u1")


def _same(actual: Any, expected: Any) -> bool:
    """Equal, and of the same kind: True is not 1, a str is not a list of ints."""
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return type(actual) is type(expected) and actual == expected


def _mismatches(event: Any, expected: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields of ``event`` that differ from ``expected``: path -> (got, wanted)."""
    out = {}
    for path, want in expected.items():
        got = operator.attrgetter(path)(event)
        if not _same(got, want):
            out[path] = (got, want)
    return out


@pytest.fixture
def shapes_loaded(request: pytest.FixtureRequest) -> Iterator[BpfObject]:
    """shapes(.bpf.o|_btf.bpf.o) filtered to this process, loaded and attached."""
    obj = BpfObject(bpf_object(SHAPES_OBJECTS[request.param]))
    try:
        obj.globals["target_pid"] = os.getpid()
        obj.load()
        obj.attach_all()
        yield obj
    finally:
        obj.close()


def _open(obj: BpfObject, buffer: str, **kwargs: Any) -> RingBuffer | PerfBuffer:
    if buffer == "rb":
        return obj.ring_buffer("rb", **kwargs)
    return obj.perf_buffer("pb", **kwargs)


# --- every field, both transports, both type sources ------------------------------------


@pytest.mark.parametrize("buffer", ["rb", "pb"])
@pytest.mark.parametrize("shapes_loaded", ["dwarf", "btf"], indirect=True)
def test_every_field_of_shapes_decodes(shapes_loaded: BpfObject, buffer: str) -> None:
    reader = _open(shapes_loaded, buffer, event_type="shapes")
    os.getpgid(0)
    batch = reader.read(timeout=10)
    assert len(batch) == 1, f"expected the one event of os.getpgid(0), got {len(batch)}"
    assert batch.lost == 0
    event = batch.events()[0]
    assert type(event).__name__ == "shapes"
    expected = {**EXPECTED_SHAPES, "pid": os.getpid()}
    assert _mismatches(event, expected) == {}
    # Anonymous members are flattened into the event; bitfields are plain members.
    assert {"anon_a", "anon_b", "anon_word", "anon_bytes", *BITFIELDS} <= set(event._fields)


@pytest.mark.parametrize("buffer", ["rb", "pb"])
@pytest.mark.parametrize("shapes_loaded", ["dwarf", "btf"], indirect=True)
def test_numpy_view_of_shapes(shapes_loaded: BpfObject, buffer: str) -> None:
    reader = _open(shapes_loaded, buffer, event_type="shapes")
    os.getpgid(0)
    batch = reader.read(timeout=10)
    assert len(batch) == 1
    arr = batch.numpy()
    assert arr.dtype.itemsize == SHAPES_SIZE
    assert arr.dtype.names is not None
    assert not set(BITFIELDS) & set(arr.dtype.names), "numpy has no bitfields"
    assert arr.shape == (1,)
    got = {name: arr[name][0].tolist() for name in EXPECTED_NUMPY}
    assert got == EXPECTED_NUMPY
    assert arr["pid"][0] == os.getpid()
    assert arr["u64"][0] == 2**64 - 1
    assert arr["s32"][0] == -(2**31)
    # Nested structs are nested fields of the structured dtype.
    assert arr["inner"]["pt"]["x"][0] == -7
    assert arr["cv_pt"]["y"][0] == 100


# --- many records in one batch ----------------------------------------------------------


@pytest.mark.parametrize("shapes_loaded", ["dwarf", "btf"], indirect=True)
def test_emit_shapes_many_records_in_one_batch(shapes_loaded: BpfObject) -> None:
    runs = 200
    rb = shapes_loaded.ring_buffer("rb", event_type="shapes")
    emit = shapes_loaded.program("emit_shapes")
    assert [emit.test_run() for _ in range(runs)] == [0] * runs
    batch = rb.read(timeout=10)
    assert len(batch) == runs  # all in one read: one fixed-stride run
    assert rb.read(timeout=0.05).records.shape[0] == 0
    assert rb.received == runs
    events = batch.events()
    assert {e.source for e in events} == {FROM_SYSCALL}
    assert {e.magic for e in events} == {SHAPES_MAGIC}
    # Each run counted itself once before filling: the echoes are 1..runs, in order.
    assert [e.globals.emit_count for e in events] == list(range(1, runs + 1))
    assert {(e.pid, e.u64, e.s64, e.name, e.bf_s7) for e in events} == {
        (os.getpid(), 2**64 - 1, -(2**63), "hello", -50)
    }
    assert batch.numpy()["source"].tolist() == [FROM_SYSCALL] * runs


@pytest.mark.parametrize("shapes_loaded", ["dwarf", "btf"], indirect=True)
def test_bss_global_reads_the_live_value(shapes_loaded: BpfObject) -> None:
    """.bss globals read after load are what the programs wrote (``emit_count``)."""
    emit = shapes_loaded.program("emit_shapes")
    rb = shapes_loaded.ring_buffer("rb", event_type="shapes")
    for _ in range(3):
        assert emit.test_run() == 0
    assert len(rb.read(timeout=10)) == 3
    assert shapes_loaded.globals["emit_count"] == 3


# --- record types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "buffer", "record"),
    [
        ("shapes", "rb", "shapes"),
        ("shapes", "pb", "shapes"),
        ("shapes_btf", "rb", "shapes"),
        ("shapes_btf", "pb", "shapes"),
        ("ecli/execsnoop", "events", "event"),
        ("ecli/sigsnoop", "rb", "event"),
        ("ecli/exitsnoop", "rb", "event"),
        ("ecli/goroutine", "rb", "goroutine_execute_data"),
    ],
)
def test_record_type_is_found_automatically(name: str, buffer: str, record: str) -> None:
    with BpfObject(bpf_object(name)) as obj:
        assert buffer in [m.name for m in obj.event_buffers()]
        found = obj.record_type(buffer)
        assert found.name == record


def test_record_type_found_automatically_decodes_from_the_kernel() -> None:
    """No event_type: shapes.bpf.o's reader picks `struct shapes` (from DWARF)."""
    with BpfObject(bpf_object("shapes")) as obj:
        obj.load()
        rb = obj.ring_buffer("rb")
        assert rb.decoder.size == SHAPES_SIZE
        assert obj.program("emit_shapes").test_run() == 0
        (event,) = rb.read(timeout=10).events()
        assert event.magic == SHAPES_MAGIC and event.source == FROM_SYSCALL


@pytest.mark.parametrize("name", ["shapes", "shapes_btf"])
def test_record_type_can_be_named(name: str) -> None:
    with BpfObject(bpf_object(name)) as obj:
        assert obj.record_type("rb", "shapes").name == "shapes"
        assert obj.record_type("rb", "struct shapes").name == "shapes"
        obj.load()
        pb = obj.perf_buffer("pb", event_type="shapes")
        assert pb.decoder.size == SHAPES_SIZE


@pytest.mark.parametrize(
    ("name", "defined"),
    [
        ("shapes", {"shapes", "shape_inner", "shape_point", "shapes_globals"}),
        ("ecli/sigsnoop", {"event", "sig_args"}),
        ("ecli/goroutine", {"goroutine_execute_data"}),
    ],
)
def test_naming_a_missing_record_type_lists_the_programs_structs(
    name: str, defined: set[str]
) -> None:
    with BpfObject(bpf_object(name)) as obj:
        buffer = obj.event_buffers()[0].name
        with pytest.raises(TypeInfoError) as info:
            obj.record_type(buffer, "no_such_struct")
        message = str(info.value)
        assert "no_such_struct" in message
        for struct_name in defined:
            assert struct_name in message


# --- losses -----------------------------------------------------------------------------


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """Pin this thread to one CPU (and restore the affinity afterwards)."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def _drain(reader: RingBuffer | PerfBuffer) -> tuple[int, int, list[np.ndarray]]:
    """Read until nothing is left: (records, lost samples, numpy arrays of the batches)."""
    records = lost = 0
    arrays = []
    while True:
        batch = reader.poll()
        if not batch and not batch.lost:
            return records, lost, arrays
        records += len(batch)
        lost += batch.lost
        if batch:
            arrays.append(batch.numpy())


def test_perf_buffer_reports_lost_samples_exactly(one_cpu: int) -> None:
    count = 5000  # 48 bytes each in the perf ring: ~85 fit in one page
    with bpfloom.load(DRAIN) as obj:
        pb = obj.perf_buffer("pb", pages=1)
        produce = obj.program("produce_perf")
        # A raw_tp test run runs the whole bpf_loop on this (pinned) CPU.
        assert produce.test_run(struct.pack("<QQ", count, 0)) == 0
        received, lost, arrays = _drain(pb)
        assert 0 < received < count
        seqs = np.concatenate(arrays)["seq"]
        assert seqs.tolist() == list(range(received))  # the first ones, in order
        # The kernel writes its PERF_RECORD_LOST only when the next sample fits (as
        # perf_output_begin does): one more sample, on the same CPU, brings it.
        assert produce.test_run(struct.pack("<QQ", 1, 0)) == 0
        batch = pb.read(timeout=10)
        assert batch.lost > 0
        assert len(batch) == 1
        lost += batch.lost
        received += len(batch)
        assert lost == count - (received - 1)
        assert pb.lost_samples == lost
        assert pb.received == received
        assert pb.received + pb.lost_samples == count + 1


def test_perf_buffer_drops_counted_in_bss_global(one_cpu: int) -> None:
    """drain.bpf.c counts failed perf outputs in its .bss global ``dropped``."""
    count = 2000
    with bpfloom.load(DRAIN) as obj:
        pb = obj.perf_buffer("pb", pages=1)
        assert obj.program("produce_perf").test_run(struct.pack("<QQ", count, 0)) == 0
        received, _, _ = _drain(pb)
        assert 0 < received < count
        assert obj.globals["dropped"] == count - received


def test_ring_buffer_drops_add_up() -> None:
    # The ring is 256 MiB: 2**28 // 40 records of 40 bytes fit (a reservation fails
    # once producer - consumer would exceed the mask). Two runs of 4 M without a
    # drain in between: the first fits whole, the second partly, the rest is counted.
    per_run = 4_000_000
    fits = (1 << 28) // (DRAIN_EVENT_SIZE + 8)
    with bpfloom.load(DRAIN) as obj:
        rb = obj.ring_buffer("rb")
        produce = obj.program("produce")
        for _ in range(2):
            assert produce.test_run(struct.pack("<QQ", per_run, 1)) == 0  # BPF_RB_NO_WAKEUP
        received, lost, arrays = _drain(rb)
        assert lost == 0  # ring buffers do not report losses: the program counts them
        assert received == fits
        assert rb.received == received
        dropped = obj.dropped_kernel()
        assert dropped == 2 * per_run - fits
        assert received + dropped == 2 * per_run
        records = np.concatenate(arrays)
        expected_seq = np.concatenate(
            [np.arange(per_run, dtype=np.uint64), np.arange(fits - per_run, dtype=np.uint64)]
        )
        assert np.array_equal(records["seq"], expected_seq)
        assert np.array_equal(records["value"], expected_seq * np.uint64(GOLDEN))
        assert set(records["pid"].tolist()) == {os.getpid()}


# --- variable-size records --------------------------------------------------------------

VARSIZE_SOURCE = r"""
#include "bpfloom.h"

/* 8, 24 or 64 bytes of it are written, by seq % 3; the rest is not. */
struct var_event {
	__u32 seq;
	__u32 len;
	__u64 payload[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} rb SEC(".maps");

static long emit_one(__u64 index, void *ctx)
{
	struct var_event e = {};

	e.seq = index;
	for (int k = 0; k < 7; k++)
		e.payload[k] = index * 100 + k + 1;
	switch (index % 3) {
	case 0:
		e.len = 8;
		bpfloom_output(&rb, &e, 8);
		break;
	case 1:
		e.len = 24;
		bpfloom_output(&rb, &e, 24);
		break;
	default:
		e.len = sizeof(e);
		bpfloom_output(&rb, &e, sizeof(e));
	}
	return 0;
}

SEC("syscall")
int emit_mixed(__u64 *count)
{
	bpf_loop(*count, emit_one, 0, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


def test_ring_buffer_mixed_record_sizes(tmp_path: Path) -> None:
    """Records of three sizes interleaved in one ring: every header is walked, short
    records are zero-padded to the struct, and the order is kept."""
    obj_path = compile_bpf(
        VARSIZE_SOURCE,
        tmp_path,
        name="varsize",
        extra_flags=[f"-I{ROOT / 'build'}", f"-I{ROOT / 'src' / 'bpfloom' / 'bpf'}"],
    )
    count = 300
    with bpfloom.load(obj_path) as obj:
        rb = obj.ring_buffer("rb")
        assert rb.decoder.size == 64
        assert obj.program("emit_mixed").test_run(struct.pack("<Q", count)) == 0
        events: list[Any] = []
        while batch := rb.poll():
            events.extend(batch)
        assert obj.dropped_kernel() == 0
    assert [e.seq for e in events] == list(range(count))
    for e in events:
        words = {8: 0, 24: 2, 64: 7}[e.len]
        assert e.len == (8, 24, 64)[e.seq % 3]
        want = [e.seq * 100 + k + 1 for k in range(words)] + [0] * (7 - words)
        assert e.payload == want, e


# --- close ------------------------------------------------------------------------------


def _blocked_reader(
    reader: RingBuffer | PerfBuffer,
) -> tuple[threading.Thread, list[BaseException]]:
    """A thread blocked in ``reader.read(timeout=None)``; what it raised goes in the list."""
    raised: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            reader.read(timeout=None)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    # read() holds the reader's lock while it waits: once it is taken, read is waiting.
    deadline = time.monotonic() + 10
    while not reader._lock.locked() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert reader._lock.locked(), "the reader thread never entered read()"
    return thread, raised


@pytest.mark.parametrize("buffer", ["rb", "pb"])
def test_close_unblocks_a_pending_read(buffer: str) -> None:
    with BpfObject(bpf_object("shapes_btf")) as obj:
        obj.globals["target_pid"] = os.getpid()
        obj.load()
        obj.attach_all()
        reader = _open(obj, buffer)
        thread, raised = _blocked_reader(reader)
        assert thread.is_alive()
        reader.close()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], ClosedError), raised
        assert reader.closed
        with pytest.raises(ClosedError):
            reader.read(timeout=0)
        with pytest.raises(ClosedError):
            reader.poll()
        reader.close()  # idempotent
        # The object still works with a new reader.
        again = _open(obj, buffer)
        os.getpgid(0)
        assert len(again.read(timeout=10)) == 1


@pytest.mark.parametrize("buffer", ["rb", "pb"])
def test_object_close_unblocks_reader_and_leaves_nothing_in_the_kernel(buffer: str) -> None:
    obj = BpfObject(bpf_object("shapes_btf"))
    try:
        obj.globals["target_pid"] = os.getpid()
        obj.load()
        links = obj.attach_all()
        assert len(links) == 1
        reader = _open(obj, buffer)
        ours = own_bpf_ids()
        assert ours["prog"] and ours["map"] and ours["link"]
        assert ours["prog"] <= kernel_prog_ids()
        thread, raised = _blocked_reader(reader)
    finally:
        obj.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], ClosedError), raised
    assert reader.closed and obj.closed and all(link.closed for link in links)
    with pytest.raises(ClosedError):
        reader.read(timeout=None)
    obj.close()  # idempotent
    left = own_bpf_ids()
    assert left["prog"] == left["map"] == left["link"] == set()
    assert_gone_from_kernel(ours)
