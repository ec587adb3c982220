"""Ring buffer readers: sized before load, woken on demand."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

import bpfloom
from bpfloom import AlreadyLoadedError, BpfObject, MapError, TypeInfoError
from conftest import ROOT, compile_bpf

pytestmark = pytest.mark.kernel

DRAIN = ROOT / "bench" / "bpf" / "drain.bpf.o"
RECORD = 40  # struct drain_event (32 bytes) + the 8-byte ring record header


def _produce(obj: BpfObject, count: int) -> None:
    obj.program("produce").test_run(struct.pack("<QQ", count, 1))  # BPF_RB_NO_WAKEUP


@pytest.mark.parametrize("size", [4096, 1 << 20, 1 << 24])
def test_ring_resized_before_load_holds_what_its_size_says(size: int) -> None:
    obj = BpfObject(DRAIN)
    with obj:
        obj.map("rb").max_entries = size
        obj.load()
        assert obj.map("rb").max_entries == size
        fits = size // RECORD
        _produce(obj, fits + 10)
        assert obj.dropped_kernel() == 10
        with obj.ring_buffer("rb") as rb:
            taken = 0
            while batch := rb.poll():
                taken += len(batch)
            assert taken == fits


@pytest.mark.parametrize("size", [0, 1000, 4096 * 3, 2048])
def test_ring_size_must_be_a_power_of_two_pages(size: int) -> None:
    with BpfObject(DRAIN) as obj, pytest.raises(MapError):
        obj.map("rb").max_entries = size


def test_resize_after_load_is_refused() -> None:
    with bpfloom.load(DRAIN) as obj, pytest.raises(AlreadyLoadedError):
        obj.map("rb").max_entries = 4096


def test_wakeup_ends_a_pending_read_early_and_only_once() -> None:
    with bpfloom.load(DRAIN) as obj, obj.ring_buffer("rb") as rb:
        took: list[float] = []

        def read() -> None:
            t0 = time.monotonic()
            assert len(rb.read(timeout=30)) == 0
            took.append(time.monotonic() - t0)

        t = threading.Thread(target=read)
        t.start()
        time.sleep(0.2)
        rb.wakeup()
        t.join(10)
        assert took and took[0] < 5
        # The wake-up was consumed: the next read waits for its timeout again.
        t0 = time.monotonic()
        assert len(rb.read(timeout=0.3)) == 0
        assert time.monotonic() - t0 >= 0.25
        # A wake-up does not hide records that are there.
        _produce(obj, 3)
        rb.wakeup()
        assert len(rb.read(timeout=30)) == 3
    rb.wakeup()  # closed: nothing to wake, no error


OVERSIZED = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct small { __u32 pid; };
struct big { char bytes[8192]; };       /* larger than the 4 KiB ring */
struct huge { char bytes[70000]; };     /* larger than any perf sample */

const struct small *unused_small __attribute__((unused));
const struct big *unused_big __attribute__((unused));
const struct huge *unused_huge __attribute__((unused));

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} rb SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
} pb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int emit(void *ctx)
{
    struct small s = { .pid = bpf_get_current_pid_tgid() >> 32 };
    bpf_ringbuf_output(&rb, &s, sizeof(s), 0);
    bpf_perf_event_output(ctx, &pb, BPF_F_CURRENT_CPU, &s, sizeof(s));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.parametrize(
    ("reader", "event_type", "message"),
    [
        (
            "ring_buffer",
            "big",
            "ring buffer 'rb' holds records of at most 4088 bytes, "
            "but struct big is 8192: not its record type",
        ),
        (
            "perf_buffer",
            "huge",
            "perf buffer 'pb' holds samples of at most 65523 bytes, "
            "but struct huge is 70000: not its record type",
        ),
    ],
)
def test_a_record_type_larger_than_any_record_is_refused(
    tmp_path: Path, reader: str, event_type: str, message: str
) -> None:
    """Every short record would be padded to the type's size: refuse a type no record
    of the buffer can have, instead of allocating that much per record."""
    path = compile_bpf(OVERSIZED, tmp_path)
    with bpfloom.load(path) as obj:
        with pytest.raises(TypeInfoError) as info:
            getattr(obj, reader)("rb" if reader == "ring_buffer" else "pb", event_type)
        assert str(info.value) == message
        fine = getattr(obj, reader)("rb" if reader == "ring_buffer" else "pb", "small")
        assert fine.decoder.size == 4
