"""``Pipeline(merge_batches=N)`` (thread executor, ``batch=True``): a worker hands the
batches queued behind its own to the handler as one per run of one reader, at most N
events each; order within a reader and the accounting stay exact. ``bpfloom detect``
uses it (``tools/detect.py: MERGE_EVENTS``). No kernel: fake readers."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from bpfloom import Batch, Pipeline
from bpfloom.pipeline import _merged
from conftest import assert_exact
from test_pipeline_fake import DECODER, WAIT, FakeReader, make_batch


def _seqs(batch: Batch) -> list[int]:
    return [int(x) for x in batch.numpy()["seq"]]


def _from(source: str, seqs: range) -> Batch:
    b = make_batch(seqs)
    return Batch(b.records, DECODER, source)


def test_runs_of_one_reader_are_joined_up_to_the_limit() -> None:
    runs = [("a", 0, 3), ("a", 3, 7), ("b", 100, 102), ("a", 7, 12), ("a", 12, 13), ("a", 13, 20)]
    batches = [_from(source, range(lo, hi)) for source, lo, hi in runs]
    out = _merged(batches, 10)
    assert [(b.source, _seqs(b)) for b in out] == [
        ("a", list(range(0, 7))),
        ("b", [100, 101]),
        ("a", list(range(7, 13))),  # 6 events; with the next 7 it would be 13 > 10
        ("a", list(range(13, 20))),
    ]
    assert out[3] is batches[5]  # alone: not copied
    assert all(b.decoder is DECODER and b.lost == 0 for b in out)


def test_a_busy_worker_gets_the_queued_batches_joined_and_counts_agree() -> None:
    reader = FakeReader()
    release = threading.Event()
    seen: list[Batch] = []

    def handler(batch: Batch) -> None:
        if not seen:
            release.wait(WAIT)  # the first call holds the worker while batches queue
        seen.append(batch)

    p = Pipeline(reader, handler, workers=1, batch=True, merge_batches=40)
    p.start()
    reader.feed(make_batch(range(0, 5)))
    for start in range(5, 205, 8):
        reader.feed(make_batch(range(start, start + 8)))
    deadline = threading.Event()
    while reader.pending and not deadline.wait(0.01):
        pass
    release.set()
    stats = p.stop()
    assert_exact(stats, 205)
    assert stats["handled"] == 205
    got = np.concatenate([b.numpy()["seq"] for b in seen]).tolist()
    assert got == list(range(205))
    assert all(len(b) <= 40 for b in seen)
    assert max(len(b) for b in seen) > 8  # queued batches were joined
    assert len(seen) < 26


def test_without_merge_batches_every_batch_is_its_own_call() -> None:
    reader = FakeReader([make_batch(range(i, i + 4)) for i in range(0, 40, 4)])
    sizes: list[int] = []
    lock = threading.Lock()

    def handler(batch: Any) -> None:
        with lock:
            sizes.append(len(batch))

    p = Pipeline(reader, handler, workers=1, batch=True)
    p.start()
    stats = p.stop()
    assert_exact(stats, 40)
    assert sizes == [4] * 10
