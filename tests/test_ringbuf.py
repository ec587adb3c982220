"""Ring buffer readers: sized before load, woken on demand."""

from __future__ import annotations

import struct
import threading
import time

import pytest

import bpfloom
from bpfloom import BpfObject, ClosedError, MapError
from conftest import ROOT

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
    with bpfloom.load(DRAIN) as obj, pytest.raises(ClosedError):
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
