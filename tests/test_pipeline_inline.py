"""The inline executor: per-event handlers accounted per batch; prompt stop()."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest

import bpfloom
from conftest import ROOT

pytestmark = pytest.mark.kernel

DRAIN = ROOT / "bench" / "bpf" / "drain.bpf.o"


def _produce(obj: bpfloom.BpfObject, count: int) -> None:
    obj.program("produce").test_run(struct.pack("<QQ", count, 1))


@pytest.mark.parametrize("fail_every", [0, 1, 7])
def test_inline_per_event_accounting_is_exact(fail_every: int) -> None:
    seen: list[int] = []

    def handler(ev: Any) -> None:
        seen.append(ev.seq)
        if fail_every and ev.seq % fail_every == 0:
            raise ValueError("boom")

    n = 100_000
    with bpfloom.load(DRAIN) as obj:
        p = bpfloom.Pipeline(obj, handler, executor="inline", sample_every=10)
        _produce(obj, n)
        p.start()
        snap = p.stop(30)
    assert seen == list(range(n))
    assert snap["produced"] == snap["handled"] == n
    assert snap["handler_errors"] == (len(range(0, n, fail_every)) if fail_every else 0)
    # One event in sample_every of each batch is timed.
    assert n // 10 - 100 <= snap["handler_latency"]["samples"] <= n // 10
    assert snap["inflight_max"] == 1


@pytest.mark.parametrize("executor", ["inline", "thread", "async"])
def test_stop_does_not_wait_for_the_read_timeout(executor: str) -> None:
    with bpfloom.load(DRAIN) as obj:
        p = bpfloom.Pipeline(obj, lambda ev: None, executor=executor, read_timeout=30)
        p.start()
        time.sleep(0.2)  # the reader is now blocked in read(timeout=30)
        t0 = time.monotonic()
        p.stop()
        assert time.monotonic() - t0 < 5
