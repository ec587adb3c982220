"""Drain benchmark: how fast each consumer empties a BPF ring buffer.

The producer runs inside the kernel: ``produce`` in ``bench/bpf/drain.bpf.o`` is a
``SEC("syscall")`` program run with BPF_PROG_TEST_RUN that writes N fixed 32-byte
records with ``bpf_loop``, so only the consumer is timed. Consumers, side by side in
one run on the same object:

- ``c``: libbpf's ``ring_buffer__consume`` with a trivial callback (``build/drain_c``,
  compiled by ``make bpf`` from ``bench/drain_c.c``) — the limit;
- ``ctypes``: BCC's model — a ctypes callback per record through libbpf's
  ``ring_buffer__consume`` that decodes the record's fields;
- ``batch``: bpfloom's reader, each batch viewed as a numpy structured array;
- ``per_event``: bpfloom's reader, iterating decoded events one by one in Python.

Also measured: seconds from starting ``bpfloom run`` to its first printed event
(``run_first_event_s``), and its peak RSS. The object is tests/bpf/ecli/execsnoop.bpf.o,
written as eunomia-bpf's tutorials write them: its event struct is only in DWARF. Each
run is a fresh process with a private XDG_CACHE_HOME, while a child runs ``true``
every 5 ms; medians of ``--startup-rounds`` runs:

- ``run_first_event_s``: the usual case, the object seen before (bpfloom's type cache
  holds what its DWARF says) and Python's bytecode compiled, as for an installed
  package (PYTHONDONTWRITEBYTECODE is removed from the children's environment; one
  untimed run first);
- ``run_first_event_cold_cache_s``: the first run of that object (type cache emptied
  before each run): its DWARF is read;
- ``run_first_event_btf_object_s``: src/bpfloom/bpf/exec.bpf.o, whose record type is
  in BTF (the object earlier versions of this benchmark timed);
- ``run_first_event_cpu_s``: the CPU time the first case used until its first event
  (all threads, from /proc/PID/task/*/schedstat): about what it takes on an idle
  machine, where the wall-clock figures of a shared one are inflated by waiting.

``--json`` prints one JSON object per line; the last line is the summary with the
ratios ``batch_vs_c`` and ``per_event_vs_ctypes`` and the load average around the run
(the machine may be shared). ``--startup-only`` measures the start-up alone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bpfloom
from bpfloom import _libbpf

ROOT = Path(__file__).resolve().parent.parent
OBJECT = ROOT / "bench" / "bpf" / "drain.bpf.o"
DRAIN_C = ROOT / "build" / "drain_c"
EXEC_OBJECT = ROOT / "src" / "bpfloom" / "bpf" / "exec.bpf.o"
DWARF_OBJECT = ROOT / "tests" / "bpf" / "ecli" / "execsnoop.bpf.o"  # event only in DWARF
BPF_RB_NO_WAKEUP = 1


class DrainEvent(ctypes.Structure):
    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("seq", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
    ]


def produce(obj: bpfloom.BpfObject, count: int) -> None:
    obj.program("produce").test_run(struct.pack("<QQ", count, BPF_RB_NO_WAKEUP))


def bench_c(events: int, rounds: int) -> dict[str, Any]:
    out = subprocess.run(
        [str(DRAIN_C), str(OBJECT), str(events), str(rounds)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_ctypes(obj: bpfloom.BpfObject, events: int, rounds: int) -> dict[str, Any]:
    """BCC's model: one Python callback per record, decoding every field via ctypes."""
    lib = _libbpf.lib
    cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    lib.ring_buffer__new.restype = ctypes.c_void_p
    lib.ring_buffer__new.argtypes = [ctypes.c_int, cb_type, ctypes.c_void_p, ctypes.c_void_p]
    lib.ring_buffer__consume.restype = ctypes.c_int
    lib.ring_buffer__consume.argtypes = [ctypes.c_void_p]
    lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
    count = 0
    checksum = 0

    event_ptr = ctypes.POINTER(DrainEvent)

    def on_sample(_ctx: int, data: int, _size: int) -> int:
        # What BCC's ``table.event(data)`` does: cast the raw pointer to the struct.
        nonlocal count, checksum
        ev = ctypes.cast(data, event_ptr).contents
        fields = (ev.ts, ev.pid, ev.cpu, ev.seq, ev.value)
        checksum += fields[3]
        count += 1
        return 0

    callback = cb_type(on_sample)
    rb = lib.ring_buffer__new(obj.map("rb").fd, callback, None, None)
    if not rb:
        raise RuntimeError("ring_buffer__new failed")
    elapsed = 0.0
    try:
        for _ in range(rounds):
            produce(obj, events)
            t0 = time.perf_counter()
            lib.ring_buffer__consume(rb)
            elapsed += time.perf_counter() - t0
    finally:
        lib.ring_buffer__free(rb)
    return {
        "consumer": "ctypes_callback_decode",
        "events": count,
        "seconds": elapsed,
        "events_per_s": count / elapsed,
    }


def _drain_all(rb: bpfloom.RingBuffer, handle: Any) -> int:
    n = 0
    while True:
        batch = rb.poll()
        if not batch:
            return n
        n += handle(batch)


def bench_bpfloom(
    obj: bpfloom.BpfObject, rb: bpfloom.RingBuffer, events: int, rounds: int, mode: str
) -> dict[str, Any]:
    def as_numpy(batch: bpfloom.Batch) -> int:
        arr = batch.numpy()
        return int(arr.shape[0])

    def one_by_one(batch: bpfloom.Batch) -> int:
        n = 0
        for _ev in batch:
            n += 1
        return n

    handle = as_numpy if mode == "batch" else one_by_one
    total = 0
    elapsed = 0.0
    for _ in range(rounds):
        produce(obj, events)
        t0 = time.perf_counter()
        total += _drain_all(rb, handle)
        elapsed += time.perf_counter() - t0
    return {
        "consumer": f"bpfloom_{mode}",
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
    }


def first_event(obj: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds from starting `bpfloom run OBJ --json` to its first event line, the
    run's peak RSS in MiB, and the CPU seconds it used (it is stopped at its first
    event: that is about what start-up costs on an idle machine)."""
    exe = Path(sys.executable).with_name("bpfloom")
    stop = threading.Event()

    def make_execs() -> None:
        while not stop.wait(0.005):
            subprocess.run(["true"], check=False)

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "run", str(obj), "--json", "--duration", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    worker = threading.Thread(target=make_execs, daemon=True)
    worker.start()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    first = time.perf_counter() - t0
    stop.set()
    worker.join()
    with open(f"/proc/{proc.pid}/status") as f:
        peak_kib = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    cpu = _cpu_seconds(proc.pid)
    proc.terminate()
    proc.communicate(timeout=10)
    json.loads(line)  # it really was an event
    return first, peak_kib / 1024, cpu


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat: nanoseconds on a CPU)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def bench_first_event(rounds: int) -> dict[str, Any]:
    """``run_first_event_s`` and its variants (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bpfloom-bench-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        first_event(DWARF_OBJECT, env)  # untimed: compiles bytecode, fills the type cache
        first_event(EXEC_OBJECT, env)
        warm, cold, btf, cpu, rss = [], [], [], [], []
        for _ in range(rounds):  # interleaved, so that a change of load hits all three
            seconds, peak, used = first_event(DWARF_OBJECT, env)
            warm.append(seconds)
            rss.append(peak)
            cpu.append(used)
            btf.append(first_event(EXEC_OBJECT, env)[0])
            shutil.rmtree(Path(cache) / "bpfloom", ignore_errors=True)
            cold.append(first_event(DWARF_OBJECT, env)[0])
            first_event(EXEC_OBJECT, env)  # untimed: its type cache again
    return {
        "run_first_event_s": statistics.median(warm),
        "run_first_event_cold_cache_s": statistics.median(cold),
        "run_first_event_btf_object_s": statistics.median(btf),
        "run_first_event_all_s": [round(x, 4) for x in warm],
        "run_first_event_cpu_s": statistics.median(cpu),
        "run_first_event_rounds": rounds,
        "run_peak_rss_mib": max(rss),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="records per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--startup-rounds", type=int, default=7, help="runs per start-up case")
    parser.add_argument("--startup-only", action="store_true", help="measure start-up alone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("drain.py: run as root (it loads BPF programs)", file=sys.stderr)
        return 1
    for path in (OBJECT, DRAIN_C, EXEC_OBJECT, DWARF_OBJECT):
        if not path.exists():
            print(f"drain.py: {path} is missing; run `make bpf`", file=sys.stderr)
            return 1
    load_before = os.getloadavg()
    if args.startup_only:
        summary = {"summary": "drain_startup", **bench_first_event(args.startup_rounds)}
        summary["loadavg_before"] = [round(x, 2) for x in load_before]
        summary["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(summary))
        return 0
    results = [bench_c(args.events, args.rounds)]
    with bpfloom.load(OBJECT) as obj:
        with obj.ring_buffer("rb") as rb:
            results.append(bench_bpfloom(obj, rb, args.events, args.rounds, "batch"))
            results.append(bench_bpfloom(obj, rb, args.events, args.rounds, "per_event"))
        results.append(bench_ctypes(obj, args.events, args.rounds))
        dropped = obj.globals["dropped"]
    rates = {r["consumer"]: r["events_per_s"] for r in results}
    summary = {
        "summary": "drain",
        "events_per_round": args.events,
        "rounds": args.rounds,
        "c_events_per_s": rates["c_ring_buffer__consume"],
        "batch_events_per_s": rates["bpfloom_batch"],
        "per_event_events_per_s": rates["bpfloom_per_event"],
        "ctypes_events_per_s": rates["ctypes_callback_decode"],
        "batch_vs_c": rates["bpfloom_batch"] / rates["c_ring_buffer__consume"],
        "per_event_vs_ctypes": rates["bpfloom_per_event"] / rates["ctypes_callback_decode"],
        "kernel_dropped": dropped,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    summary.update(bench_first_event(args.startup_rounds))
    summary["loadavg_before"] = [round(x, 2) for x in load_before]
    summary["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    for r in [*results, summary]:
        if args.json:
            print(json.dumps(r))
        else:
            print(
                "  ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
