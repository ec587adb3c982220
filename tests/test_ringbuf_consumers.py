"""The ring reader's two walkers, the pure-Python one and libbpf's ``ring_buffer__consume``
(the default on weakly ordered CPUs), forced on this x86 machine so the fallback does
not rot: same records, same batches, same accounting."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bpfloom
from bpfloom import BpfloomError, BpfObject, ClosedError, RingBuffer
from bpfloom.ringbuf import CONSUMER_ENV, choose_consumer
from conftest import ROOT, compile_bpf
from test_events import VARSIZE_SOURCE

DRAIN = ROOT / "bench" / "bpf" / "drain.bpf.o"
RECORD = 40  # struct drain_event (32 bytes) + the 8-byte record header
GOLDEN = 2654435761  # drain.bpf.c: value = seq * GOLDEN (mod 2**64)
CONSUMERS = ["python", "libbpf"]


# --- which walker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "env", "machine", "chosen"),
    [
        (None, None, "x86_64", "python"),
        (None, None, "aarch64", "libbpf"),
        (None, None, "ppc64le", "libbpf"),
        ("auto", None, "AMD64", "python"),
        ("libbpf", None, "x86_64", "libbpf"),
        (None, "libbpf", "x86_64", "libbpf"),
        (None, "auto", "aarch64", "libbpf"),
        ("python", "libbpf", "x86_64", "python"),  # the caller wins over the environment
    ],
)
def test_consumer_choice(
    monkeypatch: pytest.MonkeyPatch,
    requested: str | None,
    env: str | None,
    machine: str,
    chosen: str,
) -> None:
    if env is None:
        monkeypatch.delenv(CONSUMER_ENV, raising=False)
    else:
        monkeypatch.setenv(CONSUMER_ENV, env)
    assert choose_consumer(requested, machine) == chosen


def test_python_walker_refused_on_a_weakly_ordered_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONSUMER_ENV, raising=False)
    with pytest.raises(BpfloomError, match="aarch64 does not give; use the libbpf consumer"):
        choose_consumer("python", "aarch64")
    monkeypatch.setenv(CONSUMER_ENV, "fast")
    with pytest.raises(BpfloomError, match=f"'fast' \\(from {CONSUMER_ENV}\\)"):
        choose_consumer(None, "x86_64")


# --- same records, same batches ------------------------------------------------------


def _produce(obj: BpfObject, count: int) -> None:
    assert obj.program("produce").test_run(struct.pack("<QQ", count, 1)) == 0  # NO_WAKEUP


def _drain_all(rb: RingBuffer, **kwargs: Any) -> tuple[list[int], np.ndarray]:
    """Every record there now: batch sizes and the records (struct drain_event)."""
    sizes: list[int] = []
    arrays = []
    while batch := rb.poll(**kwargs):
        sizes.append(len(batch))
        arrays.append(batch.numpy().copy())
    return sizes, np.concatenate(arrays) if arrays else np.zeros(0)


@pytest.mark.kernel
def test_both_walkers_read_the_same_records_in_the_same_batches() -> None:
    count = 30_000
    per_batch = 1000
    seen = {}
    with bpfloom.load(DRAIN) as obj:
        for consumer in CONSUMERS:
            _produce(obj, count)
            with obj.ring_buffer("rb", consumer=consumer) as rb:
                assert rb.consumer == consumer
                rb.batch_bytes = per_batch * RECORD + RECORD // 2  # half a record spare
                assert rb.pending_bytes() == count * RECORD
                sizes, records = _drain_all(rb)
                assert rb.pending_bytes() == 0
                assert rb.received == count
                assert rb.discarded == 0
            seen[consumer] = sizes, records
        assert obj.dropped_kernel() == 0
    for sizes, records in seen.values():
        assert sizes == [per_batch] * (count // per_batch)
        assert records["seq"].tolist() == list(range(count))
        assert np.array_equal(records["value"], records["seq"] * np.uint64(GOLDEN))
        assert set(records["pid"].tolist()) == {os.getpid()}


@pytest.mark.kernel
@pytest.mark.parametrize("consumer", CONSUMERS)
def test_max_records_and_a_record_larger_than_the_budget(consumer: str) -> None:
    with bpfloom.load(DRAIN) as obj, obj.ring_buffer("rb", consumer=consumer) as rb:
        _produce(obj, 25)
        assert [len(rb.poll(max_records=10)) for _ in range(4)] == [10, 10, 5, 0]
        assert len(rb.poll(max_records=0)) == 0
        rb.batch_bytes = RECORD - 1  # not even one record: still one per batch
        _produce(obj, 3)
        assert [len(rb.poll()) for _ in range(4)] == [1, 1, 1, 0]
        assert rb.received == 28


# test_events.py's records of 8, 24 and 64 bytes, with every fourth one reserved and
# discarded instead.
DISCARDING_SOURCE = (
    VARSIZE_SOURCE
    + r"""
static long emit_or_discard(__u64 index, void *ctx)
{
	struct var_event *r;

	if (index % 4 != 3)
		return emit_one(index, ctx);
	r = bpf_ringbuf_reserve(&rb, sizeof(*r), 0);
	if (r)
		bpf_ringbuf_discard(r, 0);
	return 0;
}

SEC("syscall")
int emit_discarding(__u64 *count)
{
	bpf_loop(*count, emit_or_discard, 0, 0);
	return 0;
}
"""
)


@pytest.mark.kernel
def test_both_walkers_agree_on_mixed_sizes_and_discards(tmp_path: Path) -> None:
    """Records of 8, 24 and 64 bytes interleaved with discarded ones, read in batches
    cut by a small budget: both walkers deliver the same events in the same order, short
    ones zero-padded; only the pure-Python one can count discards (libbpf skips them
    without telling)."""
    path = compile_bpf(
        DISCARDING_SOURCE,
        tmp_path,
        name="discarding",
        extra_flags=[f"-I{ROOT / 'build'}", f"-I{ROOT / 'src' / 'bpfloom' / 'bpf'}"],
    )
    count = 600
    got: dict[str, list[tuple[int, ...]]] = {}
    discarded: dict[str, int] = {}
    with bpfloom.load(path) as obj:
        for consumer in CONSUMERS:
            assert obj.program("emit_discarding").test_run(struct.pack("<Q", count)) == 0
            with obj.ring_buffer("rb", event_type="var_event", consumer=consumer) as rb:
                rb.batch_bytes = 1024
                events: list[Any] = []
                batches = 0
                while batch := rb.poll():
                    events.extend(batch)
                    batches += 1
                assert batches > 10
                got[consumer] = [(e.seq, e.len, *e.payload) for e in events]
                discarded[consumer] = rb.discarded
                assert rb.received == len(events)
        assert obj.dropped_kernel() == 0
    expected = []
    for i in range(count):
        if i % 4 == 3:
            continue
        length = (8, 24, 64)[i % 3]
        words = (length - 8) // 8
        expected.append((i, length, *(i * 100 + k + 1 for k in range(words)), *[0] * (7 - words)))
    assert got["python"] == expected
    assert got["libbpf"] == expected
    assert discarded == {"python": count // 4, "libbpf": 0}


# --- through the pipeline and a tool ---------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("consumer", CONSUMERS)
def test_pipeline_accounting_is_the_same_with_either_walker(
    monkeypatch: pytest.MonkeyPatch, consumer: str
) -> None:
    """A 4 KiB ring overfilled: what the pipeline received plus what the kernel dropped
    is what was produced, whichever walker read it (chosen by the environment)."""
    monkeypatch.setenv(CONSUMER_ENV, consumer)
    produced = 5 * 4096 // RECORD
    handled: list[int] = []
    obj = BpfObject(DRAIN)
    with obj:
        obj.map("rb").max_entries = 4096
        obj.load()
        pipeline = bpfloom.Pipeline(obj, lambda ev: handled.append(ev.seq), executor="inline")
        with pipeline:
            _produce(obj, produced)  # one bpf_loop: five times what the ring holds
            deadline = time.monotonic() + 30
            while (
                pipeline.stats.received + obj.dropped_kernel() < produced
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
        stats = pipeline.stats.snapshot()
        assert [r.consumer for r in obj._readers if isinstance(r, RingBuffer)] == [consumer]
    assert stats["received"] == stats["handled"] == len(handled)
    assert stats["dropped_kernel"] > 0
    assert stats["received"] + stats["dropped_kernel"] == stats["produced"] == produced
    assert handled == sorted(set(handled))  # in order, none twice
    assert handled[0] == 0


@pytest.mark.kernel
def test_close_unblocks_a_pending_read_of_the_libbpf_walker() -> None:
    with bpfloom.load(DRAIN) as obj:
        rb = obj.ring_buffer("rb", consumer="libbpf")
        raised: list[BaseException] = []

        def read() -> None:
            try:
                rb.read(timeout=None)
            except BaseException as exc:
                raised.append(exc)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not rb._lock.locked() and time.monotonic() < deadline:
            time.sleep(0.001)
        rb.close()
        thread.join(30)
        assert not thread.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], ClosedError)
        with pytest.raises(ClosedError):
            rb.poll()
        # A new reader of the same ring works after the first one's libbpf state is freed.
        again = obj.ring_buffer("rb", consumer="libbpf")
        _produce(obj, 5)
        assert len(again.read(timeout=10)) == 5
