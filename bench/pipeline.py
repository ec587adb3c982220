"""Pipeline benchmark: what each executor of ``bpfloom.Pipeline`` sustains, side by side.

Events come from the kernel. ``produce`` in ``bench/bpf/drain.bpf.o`` (a ``SEC("syscall")``
program run with BPF_PROG_TEST_RUN) writes N fixed 32-byte records into ring buffer
``rb``; live load comes from ``tests/bpf/tracepoint.bpf.o`` tracing a child process that
calls getppid() in a tight loop. Every configuration runs in a fresh subprocess of this
script, so its peak RSS (VmHWM, reset through /proc/self/clear_refs just before the
timed part) is its own. Sections, all in one run:

- ``noop``: a no-op handler on each executor (inline, thread, async, process): the
  cost of dispatch itself (the thread and async executors hand events to their
  workers in chunks, ``bpfloom.pipeline``).
- ``io``: a 1 ms I/O-bound handler (``await asyncio.sleep(0.001)`` on the async executor,
  ``time.sleep(0.001)`` on threads) against concurrency (``max_inflight``, ``workers``),
  and the same stream consumed the way the Go article does it, taken literally: a plain
  loop over a ``RingBuffer`` starting a new ``threading.Thread`` per event, unbounded.
- ``stream``: an offered load (80% of the best async rate, for a few seconds, into a
  1 MiB ring) consumed by the best async and thread configurations and by the
  thread-per-event loop: what each handles, what the kernel drops, what memory it takes.
- ``cpu``: ~20 us of pure-Python work per event (calibrated here), inline and on the
  process executor with 1 and 2 workers.
- ``batch``: ``batch=True`` on the inline executor with a numpy handler, against the C
  consumer (``build/drain_c``: libbpf ``ring_buffer__consume``) on the same event count.
- ``live``: a getppid() loop (a child process) traced by a tracepoint program: the
  events/s an inline pipeline with a no-op handler handles (16 MiB ring, so that no
  record has to be dropped), and how much the traced loop slows down against the same
  loop untraced, with the kernel's adaptive wakeups, a wakeup per event, and no wakeups
  (the reader polls every 0.1 s); plus an inline batch pipeline on the object's own
  64 KiB ring (adaptive wakeups), to show what a small ring drops. Medians of rounds.

Throughput runs start the pipeline, warm it up, then time from producing N events to
the moment the pipeline has handled all of them (drained backlog included). The batch
run and the C consumer time the draining of an already produced backlog (pipeline
start included). Ratios are measured side by side in the same run; nothing here asserts
a timing. ``--json`` prints one JSON object per line; the last line is the summary.
This machine may be shared: the summary records the load average around the run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpfloom

ROOT = Path(__file__).resolve().parent.parent
OBJECT = ROOT / "bench" / "bpf" / "drain.bpf.o"
DRAIN_C = ROOT / "build" / "drain_c"
TRACEPOINT_OBJECT = ROOT / "tests" / "bpf" / "tracepoint.bpf.o"
BPF_RB_NO_WAKEUP = 1
MAX_PER_RUN = 1 << 23  # bpf_loop()'s limit on iterations per produce run
RECORD_BYTES = 40  # 32-byte drain_event + 8-byte ring record header
WAKEUP_MODES = {"adaptive": 0, "no_wakeup": 1, "per_event_wakeup": 2}

# The traced workload of the live section: a child process that runs `n` getppid()
# calls for every line `n` it reads and prints the seconds they took.
LOOP_CHILD = """
import os, sys, time
getppid = os.getppid
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    t0 = time.perf_counter()
    for _ in range(n):
        getppid()
    print(time.perf_counter() - t0, flush=True)
"""


# --- handlers ----------------------------------------------------------------------
# Module-level functions: the process executor pickles them by reference and its
# workers (multiprocessing spawn) import this file again as __mp_main__.


def noop(event: Any) -> None:
    """The no-op handler."""


def sleep_1ms(event: Any) -> None:
    """A blocking I/O-bound handler (threads)."""
    time.sleep(0.001)


async def sleep_1ms_async(event: Any) -> None:
    """A non-blocking I/O-bound handler (asyncio)."""
    await asyncio.sleep(0.001)


def cpu_work(iterations: int, event: Any) -> int:
    """CPU-bound handler: FNV-1a over ``iterations`` integers seeded by the event."""
    h: int = 2166136261 ^ (event.seq & 0xFFFFFFFF)
    for i in range(iterations):
        h = ((h ^ i) * 16777619) & 0xFFFFFFFF
    return h


def count_batch(batch: bpfloom.Batch) -> int:
    """A batch handler that only looks at the batch's length."""
    return len(batch)


def numpy_sum(batch: bpfloom.Batch) -> int:
    """A batch handler that touches every record through numpy."""
    return int(batch.numpy()["value"].sum())


class ClockedNumpySum:
    """``numpy_sum`` that also counts the records it saw and notes when it last ran."""

    def __init__(self) -> None:
        self.seen = 0
        self.last = 0.0

    def __call__(self, batch: bpfloom.Batch) -> None:
        numpy_sum(batch)
        self.seen += len(batch)
        self.last = time.perf_counter()


HANDLERS: dict[str, Callable[..., Any]] = {
    "noop": noop,
    "sleep_1ms": sleep_1ms,
    "sleep_1ms_async": sleep_1ms_async,
}


def make_handler(cfg: dict[str, Any]) -> Callable[..., Any]:
    if cfg["handler"] == "cpu":
        return functools.partial(cpu_work, cfg["cpu_iterations"])
    return HANDLERS[cfg["handler"]]


def calibrate_cpu(target_us: float) -> tuple[int, float]:
    """Iterations of ``cpu_work`` that take about ``target_us``, and the measured us."""
    ev = type("Ev", (), {"seq": 12345})()
    iterations = 100
    per_call = 0.0
    for _ in range(4):
        calls = 2000
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(calls):
                cpu_work(iterations, ev)
            best = min(best, (time.perf_counter() - t0) / calls)
        per_call = best * 1e6
        iterations = max(1, round(iterations * target_us / per_call))
    t0 = time.perf_counter()
    for _ in range(2000):
        cpu_work(iterations, ev)
    per_call = (time.perf_counter() - t0) / 2000 * 1e6
    return iterations, per_call


# --- helpers -----------------------------------------------------------------------


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (clear_refs "5", Linux >= 4.0); returns RSS KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS")


def load_drain(ring_bytes: int | None = None) -> bpfloom.BpfObject:
    """drain.bpf.o, loaded; ``ring_bytes`` resizes ring ``rb`` before load."""
    obj = bpfloom.BpfObject(OBJECT)
    try:
        if ring_bytes:
            obj.map("rb").max_entries = ring_bytes
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def produce(obj: bpfloom.BpfObject, count: int, flags: int = 0) -> None:
    prog = obj.program("produce")
    while count > 0:
        n = min(count, MAX_PER_RUN)
        ret = prog.test_run(struct.pack("<QQ", n, flags))
        if ret != 0:
            raise RuntimeError(f"produce returned {ret}")
        count -= n


def wait_handled(p: bpfloom.Pipeline, target: int, deadline: float) -> bool:
    """Poll (1 ms) until the pipeline has handled or dropped ``target`` events."""
    s = p.stats
    while s.handled + s.dropped_queue < target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def accounting(snap: dict[str, Any], expected_produced: int) -> bool:
    """The pipeline's invariant holds, and it saw every record the kernel produced."""
    return bool(
        snap["produced"]
        == snap["handled"] + snap["dropped_kernel"] + snap["dropped_queue"]
        == expected_produced
    )


def rate_of(r: dict[str, Any] | None) -> float:
    return float((r or {}).get("events_per_s") or 0.0)


def best(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """The faster of two runs of one configuration (a run that failed counts as 0)."""
    return b if a is None or rate_of(b) > rate_of(a) else a


def compact(snap: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: snap[k]
        for k in ("handled", "dropped_kernel", "dropped_queue", "queue_depth_max", "inflight_max")
    }
    lat = snap.get("handler_latency")
    if lat:
        out["handler_p50_us"] = lat["p50_us"]
        out["handler_p99_us"] = lat["p99_us"]
    return out


class OfferedLoad:
    """Produces ``rate`` events/s for ``duration`` s, in ticks, from a thread."""

    TICK = 0.002

    def __init__(self, obj: bpfloom.BpfObject, rate: int, duration: float) -> None:
        self.obj = obj
        self.total = int(rate * duration)
        self.rate = rate
        self.produced = 0
        self.thread = threading.Thread(target=self._run, name="offered-load")

    def _run(self) -> None:
        t0 = time.perf_counter()
        while self.produced < self.total:
            due = min(self.total, int((time.perf_counter() - t0) * self.rate) + 1)
            if due > self.produced:
                produce(self.obj, due - self.produced)
                self.produced = due
            time.sleep(self.TICK)

    def start(self) -> OfferedLoad:
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join()


# --- configurations (each runs in a fresh subprocess) --------------------------------


def run_pipeline(cfg: dict[str, Any]) -> dict[str, Any]:
    """A warm pipeline handles N events produced in the kernel (closed loop), or an
    offered load at a fixed rate (``cfg["rate"]``, open loop)."""
    obj = load_drain(cfg.get("ring_bytes"))
    with obj:
        rb = obj.ring_buffer("rb")
        if cfg.get("batch_records"):
            rb.batch_bytes = cfg["batch_records"] * RECORD_BYTES
        p = bpfloom.Pipeline(
            rb,
            make_handler(cfg),
            executor=cfg["executor"],
            workers=cfg.get("workers", 4),
            max_inflight=cfg.get("max_inflight", 1024),
            queue_size=cfg.get("queue_size", 65536),
            shutdown_timeout=120.0,
        )
        p.start()
        warmup = cfg.get("warmup", 1000)
        produce(obj, warmup)
        if not wait_handled(p, warmup, time.monotonic() + 60):
            p.stop(5.0)
            raise RuntimeError("the pipeline did not handle the warm-up events in 60 s")
        rss0 = reset_peak_rss()
        t0 = time.perf_counter()
        if "rate" in cfg:
            load = OfferedLoad(obj, cfg["rate"], cfg["duration"]).start()
            load.join()
            n = load.total
            complete = True
            snap = p.stop()  # drains what the ring and the queue still hold: timed
            elapsed = time.perf_counter() - t0
        else:
            n = cfg["events"]
            produce(obj, n)
            complete = wait_handled(p, warmup + n, time.monotonic() + 300)
            elapsed = time.perf_counter() - t0
            snap = p.stop()  # not timed: worker processes take a while to exit
        hwm = status_kib("VmHWM")
    out = {k: v for k, v in cfg.items() if k not in ("section", "kind")}
    out.update(
        events=n,
        seconds=elapsed,
        complete=complete,
        events_per_s=(snap["handled"] - warmup) / elapsed,
        accounting_exact=accounting(snap, warmup + n),
        peak_rss_delta_mib=(hwm - rss0) / 1024,
        **compact(snap),
    )
    if "rate" in cfg:
        out["never_handled"] = n + warmup - snap["handled"]
    return out


def run_thread_per_event(cfg: dict[str, Any]) -> dict[str, Any]:
    """The article's pattern taken literally: ``go handleEvent(event)`` becomes a new
    ``threading.Thread`` per event, started from a plain loop over the reader's batches;
    nothing bounds how many run at once."""
    obj = load_drain(cfg.get("ring_bytes"))
    with obj:
        rb = obj.ring_buffer("rb")
        lock = threading.Lock()
        done = 0

        def handle(event: Any) -> None:
            nonlocal done
            time.sleep(0.001)  # the same 1 ms I/O-bound handler
            with lock:
                done += 1

        started = failed = received = 0
        peak_threads = threading.active_count()

        def consume(batch: bpfloom.Batch) -> None:
            nonlocal started, failed, received, peak_threads
            received += len(batch)
            for ev in batch:
                try:
                    threading.Thread(target=handle, args=(ev,), daemon=True).start()
                    started += 1
                except RuntimeError:  # "can't start new thread": the event is lost
                    failed += 1
                if not started & 63:
                    peak_threads = max(peak_threads, threading.active_count())

        rss0 = reset_peak_rss()
        t0 = time.perf_counter()
        if "rate" in cfg:
            load = OfferedLoad(obj, cfg["rate"], cfg["duration"]).start()
            n = load.total
        else:
            n = cfg["events"]
            load = None
            producer = threading.Thread(target=produce, args=(obj, n))
            producer.start()
        while True:
            batch = rb.read(timeout=0.05)
            if batch:
                consume(batch)
            elif received + obj.dropped_kernel() >= n or (
                load is not None and not load.thread.is_alive() and not rb.pending_bytes()
            ):
                break
        if load is not None:
            load.join()
        else:
            producer.join()
        deadline = time.monotonic() + 120
        while done < started and time.monotonic() < deadline:
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
        hwm = status_kib("VmHWM")
        dropped_kernel = obj.dropped_kernel()
    out = {k: v for k, v in cfg.items() if k not in ("section", "kind")}
    out.update(
        executor="thread_per_event",
        events=n,
        seconds=elapsed,
        events_per_s=done / elapsed,
        handled=done,
        dropped_kernel=dropped_kernel,
        thread_start_failures=failed,
        never_handled=n - done,
        peak_threads=peak_threads,
        peak_rss_delta_mib=(hwm - rss0) / 1024,
    )
    return out


def run_batch(cfg: dict[str, Any]) -> dict[str, Any]:
    """Inline, batch=True, numpy handler: time to drain a produced backlog (best round)."""
    n = cfg["events"]
    rates = []
    ok = True
    with load_drain() as obj:
        for _ in range(cfg["rounds"]):
            handler = ClockedNumpySum()
            p = bpfloom.Pipeline(obj, handler, executor="inline", batch=True)
            produce(obj, n, BPF_RB_NO_WAKEUP)
            t0 = time.perf_counter()
            p.start()
            # The clock stops at the handler's last call: stop() is not timed.
            snap = p.stop(60.0)
            ok = ok and accounting(snap, n) and handler.seen == n
            rates.append(n / (handler.last - t0))
    return {
        "executor": "inline",
        "batch": True,
        "handler": "numpy_sum",
        "events": n,
        "events_per_s": max(rates),
        "median_events_per_s": statistics.median(rates),
        "rounds": len(rates),
        "accounting_exact": ok,
    }


def run_live(cfg: dict[str, Any]) -> dict[str, Any]:
    """A getppid() loop in a child process, untraced and traced with each wakeup mode;
    the traced runs are read by an inline pipeline with a no-op handler."""
    n = cfg["calls"]
    child = subprocess.Popen(
        [sys.executable, "-c", LOOP_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdout.readline()

    def loop() -> tuple[float, float]:
        """Runs the loop; returns (when it was started, seconds it took in the child)."""
        assert child.stdin is not None and child.stdout is not None
        t = time.perf_counter()
        child.stdin.write(f"{n}\n")
        child.stdin.flush()
        return t, float(child.stdout.readline())

    # (name, wakeup flags, batch handler?, ring bytes): the three wakeup modes with an
    # inline per-event pipeline and a ring that holds a whole run, plus an inline batch
    # pipeline on the object's own 64 KiB ring (adaptive wakeups).
    modes = [(m, flags, False, cfg["ring_bytes"]) for m, flags in WAKEUP_MODES.items()]
    modes.append(("batch_small_ring", 0, True, None))
    times: dict[str, list[float]] = {"untraced": [], **{m[0]: [] for m in modes}}
    runs: list[dict[str, Any]] = []
    try:
        loop()  # warm the child up
        for _ in range(cfg["rounds"]):
            times["untraced"].append(loop()[1])
            for mode, flags, batch, ring_bytes in modes:
                obj = bpfloom.BpfObject(TRACEPOINT_OBJECT)
                with obj:
                    obj.globals["target_pid"] = child.pid
                    obj.globals["bpfloom_wakeup_flags"] = flags
                    if ring_bytes:
                        obj.map("rb").max_entries = ring_bytes
                    obj.load()
                    obj.program("on_tracepoint").attach_tracepoint("syscalls", "sys_enter_getppid")
                    handler = count_batch if batch else noop
                    p = bpfloom.Pipeline(obj, handler, executor="inline", batch=batch).start()
                    t0, loop_s = loop()
                    drops = obj.dropped_kernel()
                    wait_handled(p, n - drops, time.monotonic() + 60)
                    handled_s = time.perf_counter() - t0
                    snap = p.stop()
                    times[mode].append(loop_s)
                    runs.append(
                        {
                            "mode": mode,
                            "loop_s": loop_s,
                            "handled_s": handled_s,
                            "events_per_s": snap["handled"] / handled_s,
                            "accounting_exact": accounting(snap, n),
                            **compact(snap),
                        }
                    )
    finally:
        child.stdin.close()
        child.wait(10)
    base = statistics.median(times["untraced"])
    out: dict[str, Any] = {
        "calls": n,
        "ring_bytes": cfg["ring_bytes"],
        "untraced_loop_s": base,
        "untraced_calls_per_s": n / base,
    }
    for mode, *_ in modes:
        mine = [r for r in runs if r["mode"] == mode]
        out[f"{mode}_loop_s"] = statistics.median(times[mode])
        out[f"slowdown_{mode}"] = statistics.median(times[mode]) / base
        out[f"{mode}_events_per_s"] = statistics.median(r["events_per_s"] for r in mine)
        out[f"{mode}_dropped_kernel"] = sum(r["dropped_kernel"] for r in mine)
        out[f"{mode}_accounting_exact"] = all(r["accounting_exact"] for r in mine)
    out["runs"] = runs
    return out


CHILD_KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": run_pipeline,
    "thread_per_event": run_thread_per_event,
    "batch": run_batch,
    "live": run_live,
}


def in_subprocess(cfg: dict[str, Any]) -> dict[str, Any]:
    """Runs one configuration in a fresh interpreter; returns its result line."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {**cfg, "error": " | ".join(tail) or f"exit status {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"section": cfg["section"], **result}


def bench_c(events: int, rounds: int) -> dict[str, Any]:
    rates = []
    for _ in range(rounds):
        out = subprocess.run(
            [str(DRAIN_C), str(OBJECT), str(events), "1"],
            check=True,
            capture_output=True,
            text=True,
        )
        rates.append(json.loads(out.stdout.strip().splitlines()[-1])["events_per_s"])
    return {
        "section": "batch",
        "consumer": "c_ring_buffer__consume",
        "events": events,
        "events_per_s": max(rates),
        "median_events_per_s": statistics.median(rates),
        "rounds": rounds,
    }


# --- the run ------------------------------------------------------------------------


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "noop": {"inline": 1_000_000, "thread": 500_000, "async": 300_000, "process": 300_000},
            "io_events": 40_000,
            "io_seconds": 1.0,
            "inflight": [100, 500, 2000],
            "workers": [8, 32, 128],
            "io_rounds": 1,
            "stream_s": 2.0,
            "cpu_events": 60_000,
            "cpu_rounds": 2,
            "batch_events": 4_000_000,
            "batch_rounds": 3,
            "live_calls": 200_000,
            "live_rounds": 2,
        }
    return {
        # Thread and async dispatch in chunks (about 1 M events/s): runs of a second
        # or more, so that timer and scheduling noise stay small.
        "noop": {
            "inline": 4_000_000,
            "thread": 2_000_000,
            "async": 1_000_000,
            "process": 1_000_000,
        },
        "io_events": 100_000,
        "io_seconds": 2.0,
        "inflight": [100, 500, 1000, 2000],
        "workers": [8, 32, 128],
        "io_rounds": 2,
        "stream_s": 3.0,
        "cpu_events": 100_000,
        "cpu_rounds": 3,
        "batch_events": 6_000_000,
        "batch_rounds": 5,
        "live_calls": 500_000,
        "live_rounds": 3,
    }


def run_all(args: argparse.Namespace, show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    cfgs = plan(args.quick)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    exact: list[bool] = []  # every accounting check of every pipeline run
    errors: list[str] = []

    def emit(r: dict[str, Any]) -> None:
        show(r)
        exact.extend(bool(v) for k, v in r.items() if k.endswith("accounting_exact"))
        if "error" in r:
            errors.append(f"{r.get('section')}: {r['error']}")

    # No-op handler on each executor.
    noop_rates = {}
    noop_exact = {}
    for executor, n in cfgs["noop"].items():
        r = in_subprocess(
            {
                "section": "noop",
                "kind": "pipeline",
                "executor": executor,
                "handler": "noop",
                "events": n,
                "workers": 2,
            }
        )
        emit(r)
        noop_rates[executor] = r.get("events_per_s")
        noop_exact[executor] = bool(r.get("accounting_exact"))

    # I/O-bound handlers against concurrency.
    # Each configuration runs io_rounds times (rounds interleaved); the best run counts.
    io_async: dict[int, dict[str, Any]] = {}
    io_threads: dict[int, dict[str, Any]] = {}
    for _ in range(cfgs["io_rounds"]):
        for inflight in cfgs["inflight"]:
            n = min(cfgs["io_events"], int(inflight * 1000 * cfgs["io_seconds"]))
            r = in_subprocess(
                {
                    "section": "io",
                    "kind": "pipeline",
                    "executor": "async",
                    "handler": "sleep_1ms_async",
                    "events": n,
                    "max_inflight": inflight,
                }
            )
            emit(r)
            io_async[inflight] = best(io_async.get(inflight), r)
        for workers in cfgs["workers"]:
            n = min(cfgs["io_events"], int(workers * 900 * cfgs["io_seconds"]))
            r = in_subprocess(
                {
                    "section": "io",
                    "kind": "pipeline",
                    "executor": "thread",
                    "handler": "sleep_1ms",
                    "events": n,
                    "workers": workers,
                }
            )
            emit(r)
            io_threads[workers] = best(io_threads.get(workers), r)
    tpe = in_subprocess(
        {
            "section": "io",
            "kind": "thread_per_event",
            "handler": "sleep_1ms",
            "events": cfgs["io_events"],
        }
    )
    emit(tpe)
    best_async = max(io_async.values(), key=rate_of)
    best_thread = max(io_threads.values(), key=rate_of)

    # The same offered stream (80% of the best async rate) into a 1 MiB ring.
    rate = int(0.8 * (best_async.get("events_per_s") or 10_000))
    stream_base = {
        "section": "stream",
        "rate": rate,
        "duration": cfgs["stream_s"],
        "ring_bytes": 1 << 20,
    }
    stream = {}
    for name, extra in (
        (
            "async",
            {
                "kind": "pipeline",
                "executor": "async",
                "handler": "sleep_1ms_async",
                "max_inflight": best_async.get("max_inflight"),
            },
        ),
        (
            "thread",
            {
                "kind": "pipeline",
                "executor": "thread",
                "handler": "sleep_1ms",
                "workers": best_thread.get("workers"),
            },
        ),
        ("thread_per_event", {"kind": "thread_per_event", "handler": "sleep_1ms"}),
    ):
        r = in_subprocess({**stream_base, **extra})
        emit(r)
        stream[name] = r

    # CPU-bound handlers: process executor, 1 vs 2 workers (best of rounds, alternating).
    iterations, per_call_us = calibrate_cpu(20.0)
    cpu: dict[str, list[float]] = {"inline": [], "process_1": [], "process_2": []}
    for _ in range(cfgs["cpu_rounds"]):
        for name, extra in (
            ("inline", {"executor": "inline"}),
            ("process_1", {"executor": "process", "workers": 1}),
            ("process_2", {"executor": "process", "workers": 2}),
        ):
            if name == "inline" and cpu["inline"]:
                continue
            r = in_subprocess(
                {
                    "section": "cpu",
                    "kind": "pipeline",
                    "handler": "cpu",
                    "cpu_iterations": iterations,
                    "cpu_us": round(per_call_us, 2),
                    "events": cfgs["cpu_events"],
                    "batch_records": 1024,
                    "warmup": 4096,
                    **extra,
                }
            )
            emit(r)
            cpu[name].append(r.get("events_per_s") or 0.0)

    # Batches as numpy against the C consumer, same event count.
    c = bench_c(cfgs["batch_events"], cfgs["batch_rounds"])
    emit(c)
    b = in_subprocess(
        {
            "section": "batch",
            "kind": "batch",
            "events": cfgs["batch_events"],
            "rounds": cfgs["batch_rounds"],
        }
    )
    emit(b)

    # Live load.
    live = in_subprocess(
        {
            "section": "live",
            "kind": "live",
            "calls": cfgs["live_calls"],
            "rounds": cfgs["live_rounds"],
            "ring_bytes": 16 << 20,
        }
    )
    emit(live)

    best_p1, best_p2 = max(cpu["process_1"]), max(cpu["process_2"])
    return {
        "summary": "pipeline",
        "quick": args.quick,
        "noop_events_per_s": noop_rates,
        "accounting_exact": noop_exact,
        "accounting_exact_all_runs": all(exact) and not errors,
        "async_1ms_events_per_s": best_async.get("events_per_s"),
        "async_1ms_by_max_inflight": {k: rate_of(r) for k, r in io_async.items()},
        "async_1ms_peak_rss_delta_mib_by_max_inflight": {
            k: r.get("peak_rss_delta_mib") for k, r in io_async.items()
        },
        "thread_1ms_by_workers": {k: rate_of(r) for k, r in io_threads.items()},
        "thread_1ms_peak_rss_delta_mib_by_workers": {
            k: r.get("peak_rss_delta_mib") for k, r in io_threads.items()
        },
        "async_1ms_best_max_inflight": best_async.get("max_inflight"),
        "async_1ms_peak_rss_delta_mib": best_async.get("peak_rss_delta_mib"),
        "thread_1ms_events_per_s": best_thread.get("events_per_s"),
        "thread_1ms_best_workers": best_thread.get("workers"),
        "thread_per_event_1ms_events_per_s": tpe.get("events_per_s"),
        "thread_per_event_peak_rss_delta_mib": tpe.get("peak_rss_delta_mib"),
        "thread_per_event_peak_threads": tpe.get("peak_threads"),
        "stream_rate": rate,
        "stream_never_handled": {k: v.get("never_handled") for k, v in stream.items()},
        "stream_dropped_kernel": {k: v.get("dropped_kernel") for k, v in stream.items()},
        "stream_peak_rss_delta_mib": {k: v.get("peak_rss_delta_mib") for k, v in stream.items()},
        "cpu_handler_us": round(per_call_us, 2),
        "cpu_inline_events_per_s": max(cpu["inline"]),
        "cpu_process_1_events_per_s": best_p1,
        "cpu_process_2_events_per_s": best_p2,
        "process_speedup": best_p2 / best_p1 if best_p1 else None,
        "c_events_per_s": c["events_per_s"],
        "batch_events_per_s": b.get("events_per_s"),
        "batch_handler_vs_c": (b.get("events_per_s") or 0) / c["events_per_s"],
        "live_events_per_s": live.get("adaptive_events_per_s"),
        "live_dropped_kernel": live.get("adaptive_dropped_kernel"),
        "live_ring_bytes": live.get("ring_bytes"),
        "live_batch_small_ring_events_per_s": live.get("batch_small_ring_events_per_s"),
        "live_batch_small_ring_dropped_kernel": live.get("batch_small_ring_dropped_kernel"),
        "live_slowdown_adaptive": live.get("slowdown_adaptive"),
        "live_slowdown_per_event_wakeup": live.get("slowdown_per_event_wakeup"),
        "live_slowdown_no_wakeup": live.get("slowdown_no_wakeup"),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": time.perf_counter() - t_start,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 minute run")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cfg = json.loads(args.child)
        print(json.dumps(CHILD_KINDS[cfg["kind"]](cfg)))
        return 0
    if os.geteuid() != 0:
        print("pipeline.py: run as root (it loads BPF programs)", file=sys.stderr)
        return 1
    for path in (OBJECT, DRAIN_C, TRACEPOINT_OBJECT):
        if not path.exists():
            print(f"pipeline.py: {path} is missing; run `make bpf`", file=sys.stderr)
            return 1

    def emit(r: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(
                "  ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r.items()
                    if k != "runs"
                ),
                flush=True,
            )

    emit(run_all(args, emit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
