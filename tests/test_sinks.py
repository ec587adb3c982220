"""Sinks without the kernel: what they write, what they count, how they fail, and how a
failing or stuck sink behind a running pipeline (fake source) is counted without
stalling the reader. The same with real events through the commands: test_outputs.py."""

from __future__ import annotations

import base64
import json
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from bpfloom import Pipeline
from bpfloom._exceptions import BpfloomError
from bpfloom.batch import Batch
from bpfloom.decode import Decoder
from bpfloom.sinks import Record, Sink, sink_errors
from bpfloom.sinks.jsonl import JsonLinesSink
from bpfloom.sinks.parquet import ParquetSink
from bpfloom.sinks.queued import QueuedSink
from bpfloom.sinks.table import Column, TableSink
from bpfloom.types import Array, Int, Member, Struct
from conftest import assert_exact
from test_pipeline_fake import WAIT, FakeReader, fake_batches, wait_for

U32 = Int("u32", 4, False)
CHAR = Int("char", 1, True, is_char=True)
EVENT = Struct(
    "ev",
    28,
    [
        Member("pid", U32, 0),
        Member("comm", Array(CHAR, 16), 32),
        Member("vals", Array(U32, 2), 160),
    ],
)


def _batch(rows: list[tuple[int, bytes, int, int]]) -> Batch:
    raw = b"".join(struct.pack("<I16sII", *r) for r in rows)
    return Batch(np.frombuffer(raw, dtype=np.uint8).reshape(len(rows), 28), Decoder(EVENT), "rb")


def test_table_widens_escapes_and_never_ends_lines_in_spaces(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = TableSink([Column("PID", 5, right=True), Column("COMM", 4), Column("ARGS", 0)])
    sink.write([{"pid": 1, "comm": "sh", "args": ["a"]}])
    sink.write([{"pid": 22, "comm": "a-long-name\x1b[2J", "args": ["x\ny", "z"]}])
    sink.write([{"pid": 3, "comm": "sh", "args": []}])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "  PID COMM ARGS",
        "    1 sh   a",
        "   22 a-long-name\\x1b[2J x\\ny z",
        "    3 sh",
    ]
    # COMM widened for the long name: from then on ARGS starts further right.
    sink.write([{"pid": 4, "comm": "sh", "args": ["b"]}])
    assert capsys.readouterr().out == "    4 " + "sh".ljust(len("a-long-name\\x1b[2J")) + " b\n"
    assert sink.written == 4 and sink.errors == 0


def test_jsonl_file_appends_and_keeps_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"earlier": true}\n')
    sink = JsonLinesSink(str(path))
    comm = b"x\xff".decode("utf-8", "surrogateescape")
    sink.write([{"pid": 1, "comm": comm}, {"pid": 2, "comm": "ok"}])
    sink.close()
    sink.close()  # idempotent
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"earlier": True}  # what the user had stays
    assert base64.b64decode(rows[1]["comm_b64"]) == b"x\xff"
    assert rows[2] == {"pid": 2, "comm": "ok"}
    assert sink.written == 2


def test_jsonl_file_that_cannot_be_opened_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BpfloomError, match="cannot write"):
        JsonLinesSink(str(tmp_path))  # a directory


def test_a_failing_sink_counts_stops_once_and_never_raises() -> None:
    stops: list[int] = []
    sink = JsonLinesSink("/dev/full", on_stop=lambda: stops.append(1))
    sink.write([{"n": i} for i in range(3)])
    sink.write([{"n": 3}])
    sink.close()
    assert sink.error is not None and sink.stopped
    assert sink.errors == 4 and sink.written == 0
    assert stops == [1]
    assert "No space left on device" in sink.error_message()
    assert sink_errors([sink, Sink()]) == 4


def test_parquet_from_numpy_batches(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "out.parquet"
    sink = ParquetSink(str(path))
    sink.write_batch(_batch([(1, b"bash\0junk", 5, 6), (2, b"x" * 16, 7, 8)]), [])
    sink.write_batch(_batch([(3, b"\xff\xfe", 9, 10)]), [])
    sink.close()
    assert sink.written == 3
    assert pq.read_table(path).to_pylist() == [
        {"pid": 1, "comm": b"bash", "vals": [5, 6]},
        {"pid": 2, "comm": b"x" * 16, "vals": [7, 8]},
        {"pid": 3, "comm": b"\xff\xfe", "vals": [9, 10]},
    ]


def test_parquet_never_overwrites(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "had.parquet"
    path.write_bytes(b"precious")
    with pytest.raises(BpfloomError, match="exists"):
        ParquetSink(str(path))
    assert path.read_bytes() == b"precious"


def test_closed_stdout_is_a_counted_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    sink = TableSink([Column("PID", 5)])
    sink.write([{"pid": 1}])
    assert sink.errors == 1 and isinstance(sink.error, OSError)


# --- sinks behind a running pipeline (fake source) ------------------------------------------


class FlakySink(Sink):
    """Takes records like a list; raises on every third write (a network hiccup)."""

    fatal = False

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Record] = []
        self.calls = 0

    def _write(self, records: Sequence[Record]) -> None:
        self.calls += 1
        if self.calls % 3 == 0:
            raise ConnectionResetError("peer went away")
        self.got.extend(records)


class StuckSink(Sink):
    """Blocks in every write until ``release`` is set (a server that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.got: list[Record] = []

    def _write(self, records: Sequence[Record]) -> None:
        self.entered.set()
        self.release.wait()
        self.got.extend(records)


def _records(batch: Batch) -> list[Record]:
    return [{"seq": ev.seq} for ev in batch]


@pytest.mark.parametrize("executor", ["thread", "async"])
def test_a_raising_sink_is_counted_and_the_pipeline_goes_on(
    executor: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    n = 2000
    sink = FlakySink()
    pipeline = make_pipeline(
        [FakeReader(fake_batches(n, 50))],
        lambda batch: sink.write(_records(batch)),
        executor=executor,
        workers=1,
        batch=True,
    )
    pipeline.start()
    wait_for(lambda: pipeline.stats.handled == n)
    assert_exact(pipeline.stop(), n)
    # Every record is either delivered or counted lost; the first failure is kept,
    # and a non-fatal sink keeps taking records after it.
    assert sink.written + sink.errors == n
    assert sink.written == len(sink.got) and sink.errors == (n // 50 // 3) * 50
    assert isinstance(sink.error, ConnectionResetError) and not sink.stopped


def test_a_blocked_sink_behind_a_queue_never_stalls_the_reader(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    n, capacity = 5000, 1000
    inner = StuckSink()
    sink = QueuedSink(inner, capacity=capacity, timeout=WAIT)
    pipeline = make_pipeline(
        [FakeReader(fake_batches(n, 50))],
        lambda batch: sink.write(_records(batch)),
        executor="thread",
        workers=1,
        batch=True,
    )
    pipeline.start()
    # The inner sink is stuck on its first batch, yet every event is handled: the
    # reader and the handler only ever append to the queue.
    wait_for(lambda: pipeline.stats.handled == n)
    # The sink's own thread may not have reached the stuck write yet: wait for it.
    assert inner.entered.wait(WAIT) and not inner.got
    stats = pipeline.stop()
    assert_exact(stats, n)
    assert stats["dropped_queue"] == 0 and stats["dropped_kernel"] == 0
    # What did not fit (capacity counts every record taken and not yet delivered, the
    # stuck writer's batch too) was dropped and counted as it came.
    assert sink.errors == n - capacity
    inner.release.set()
    sink.close()
    assert inner.written == len(inner.got) == sink.written == capacity
    assert sink.written + sink.errors == n
    assert [r["seq"] for r in inner.got] == list(range(capacity))  # in order


def test_a_queued_sink_stuck_at_close_counts_what_it_could_not_deliver() -> None:
    inner = StuckSink()
    sink = QueuedSink(inner, capacity=100, timeout=0.2)
    sink.write([{"seq": 0}])
    assert inner.entered.wait(WAIT)
    sink.write([{"seq": s} for s in range(1, 11)])
    sink.close()  # gives up after 0.2 s: the stuck batch and the queued ten are lost
    assert (sink.written, sink.errors) == (0, 11)
    sink.write([{"seq": 99}])  # after close: refused, counted
    assert sink.errors == 12
    inner.release.set()
