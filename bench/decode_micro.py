"""Micro-benchmark of ``Decoder.decode_batch``: decode a batch, then touch every event.

Prints one JSON line. Each ``*_events_per_s`` figure is "decode n records, then
``for ev in events: n += 1``", best of ``--repeat`` runs, in events per second; the
``*_with_free_events_per_s`` figures also count freeing the events afterwards. For:

- ``ints``: ``struct {u64 ts; u32 pid; u32 cpu; u64 seq; u64 value}`` (32 bytes);
- ``comm``: ``struct {u64 ts; u32 pid; u32 cpu; char comm[16]}`` (32 bytes);
- ``baseline_unpack``: the same ``ints`` records decoded per event with a precompiled
  ``struct.Struct`` into the same event class, all in C-level ``map`` calls: the best
  a per-event decoder can do (a ctypes ring buffer callback does more per event).

Ratios against the baseline are measured in the same run. Usage:
``python bench/decode_micro.py [--events N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from bpfloom.decode import Decoder
from bpfloom.types import Array, Int, Member, Struct

U64 = Int("unsigned long long", 8, False)
U32 = Int("unsigned int", 4, False)
CHAR = Int("char", 1, True)

INTS = Struct(
    "event",
    32,
    [
        Member("ts", U64, 0),
        Member("pid", U32, 64),
        Member("cpu", U32, 96),
        Member("seq", U64, 128),
        Member("value", U64, 192),
    ],
)
COMM = Struct(
    "exec_event",
    32,
    [
        Member("ts", U64, 0),
        Member("pid", U32, 64),
        Member("cpu", U32, 96),
        Member("comm", Array(CHAR, 16), 128),
    ],
)
COMMS = [b"bash", b"systemd-journal", b"kworker/0:1H", b"python3", b"sshd", b"containerd"]


def make_records(n: int, with_comm: bool) -> npt.NDArray[np.uint8]:
    """Realistic records: rising timestamps, pids in the thousands, 2 cpus."""
    rng = np.random.default_rng(7)
    dtype = np.dtype(
        {
            "names": ["ts", "pid", "cpu", "tail"],
            "formats": ["<u8", "<u4", "<u4", "V16"],
            "offsets": [0, 8, 12, 16],
            "itemsize": 32,
        }
    )
    rec = np.zeros(n, dtype=dtype)
    rec["ts"] = 1_700_000_000_000_000_000 + np.arange(n, dtype=np.uint64) * 137
    rec["pid"] = rng.integers(300, 4_000_000, n)
    rec["cpu"] = rng.integers(0, 2, n)
    rows = rec.view(np.uint8).reshape(n, 32)
    if with_comm:
        table = np.zeros((len(COMMS), 16), dtype=np.uint8)
        for i, name in enumerate(COMMS):
            table[i, : len(name)] = np.frombuffer(name, dtype=np.uint8)
        rows[:, 16:] = table[rng.integers(0, len(COMMS), n)]
    else:
        rows[:, 16:24] = np.arange(n, dtype="<u8").view(np.uint8).reshape(n, 8)
        rows[:, 24:32] = rng.integers(0, 2**63, n, dtype="<u8").view(np.uint8).reshape(n, 8)
    return rows


def consume(events: list[Any]) -> int:
    n = 0
    for _ in events:
        n += 1
    return n


def best_rates(decode: Callable[[], list[Any]], n: int, repeat_count: int) -> tuple[float, float]:
    """Best rate of decode+loop, and best rate of decode+loop+free."""
    best, best_with_free = float("inf"), float("inf")
    for _ in range(repeat_count):
        gc.collect()
        start = time.perf_counter()
        events = decode()
        got = consume(events)
        looped = time.perf_counter()
        del events
        freed = time.perf_counter()
        assert got == n
        best = min(best, looped - start)
        best_with_free = min(best_with_free, freed - start)
    return n / best, n / best_with_free


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.events

    ints = Decoder(INTS)
    comm = Decoder(COMM)
    ints_rows = make_records(n, with_comm=False)
    comm_rows = make_records(n, with_comm=True)

    unpack = struct.Struct("<QIIQQ").unpack_from
    cls = ints.event_type
    buf = ints_rows.tobytes()
    offsets = range(0, 32 * n, 32)

    def per_event() -> list[Any]:
        return list(map(cls, map(unpack, repeat(buf), offsets)))

    rates: dict[str, float] = {}
    for label, run in (
        ("ints", lambda: ints.decode_batch(ints_rows)),
        ("comm", lambda: comm.decode_batch(comm_rows)),
        ("baseline_unpack", per_event),
    ):
        rate, rate_with_free = best_rates(run, n, args.repeat)
        rates[f"{label}_events_per_s"] = rate
        rates[f"{label}_with_free_events_per_s"] = rate_with_free
    base = rates["baseline_unpack_events_per_s"]
    out: dict[str, Any] = {"events": n, "repeat": args.repeat}
    out.update({k: round(v) for k, v in rates.items()})
    out["ints_vs_baseline"] = round(rates["ints_events_per_s"] / base, 2)
    out["comm_vs_baseline"] = round(rates["comm_events_per_s"] / base, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
