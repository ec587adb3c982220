"""``bpfloom export`` benchmark: scraping 100 000 label sets, and what the metric
programs add to a traced system call.

Three sections, one run (as root, after ``make bpf``):

- ``scrape``: a hash map of 100 000 counters keyed by (id, kind), as ebpf_exporter's
  ``bench_requests_total`` (``bench/bpf/export_scrape.yaml``), filled from user space.
  Three ways of scraping it, each in a fresh process of its own (so its peak RSS is its
  own): bpfloom's exporter (``Exporter.scrape()``: bulk map read, cached labels,
  exposition text written directly), prometheus_client's custom-collector path (a
  ``Collector`` yielding a ``CounterMetricFamily`` with one ``add_metric`` per series,
  then ``generate_latest``), and its ``labels()`` path (one child per series, set each
  scrape, then ``generate_latest``). The two baselines read the same map the same way
  and reuse the same decoded labels, so the difference is the exposition path.
  Times are the median of warm scrapes (the first scrape, which decodes every key, is
  reported apart), wall time and the thread's CPU time (ratios use CPU time, which
  other processes on a shared machine do not inflate); RSS is the peak added by
  scraping (VmHWM reset first), and the process's whole peak beside it.
- ``overhead``: nanoseconds of CPU time per ``getpid()`` a C loop pinned to one CPU
  spends (its thread's CPU clock: the system call and the probes in it), with no
  probe, and with the probes of ebpf_exporter's benchmark on ``tp_btf/sys_enter``
  (empty; "simple": a hash map keyed by pid; "complex": pid, a random number and the
  command), each loaded from its config by ``Exporter``. ebpf_exporter publishes
  +35 ns for the simple map update on a tracepoint; the number to compare is the
  difference. Rounds alternate with and without probes; the minimum of each is kept.

- ``sinks``: events per second written to a file from a stream of batches (256
  records of a 112-byte opensnoop-like event: ts, pid, tid, uid, ret, comm[16],
  path[64]), by the Parquet sink (Arrow columns straight from the numpy batch, one row
  group per batch) and, as the baseline, the JSON-lines sink fed what ``bpfloom run
  -o x.jsonl`` feeds it (each event decoded, made JSON-able, one line each). CPU time
  of this process, best of ``--rounds``; the file sizes beside.

Nothing here asserts a timing. ``--json`` prints one JSON object per line; the last
line is the summary. The machine may be shared: the summary records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_BPF = ROOT / "bench" / "bpf"
SERIES = 100_000
KINDS = 4
WARM_SCRAPES = 5

GETPID_LOOP_C = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = strtol(argv[1], NULL, 10);
    cpu_set_t set;
    struct timespec a, b;

    CPU_ZERO(&set);
    CPU_SET(atoi(argv[2]), &set);
    sched_setaffinity(0, sizeof(set), &set);
    for (long i = 0; i < n / 10; i++)  /* warm up */
        syscall(SYS_getpid);
    /* CPU time of this thread, not wall time: time spent waiting for the CPU while
       other processes run is not the probes' cost */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++)
        syscall(SYS_getpid);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    printf("%.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (clear_refs "5", Linux >= 4.0); return RSS KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS")


# --- scrape (one worker process per way) ---------------------------------------------------


def _scrape_config(tmp: Path) -> Path:
    """The config and its object side by side in ``tmp`` (the object is built by make)."""
    obj = BENCH_BPF / "export_scrape.bpf.o"
    if not obj.exists():
        sys.exit(f"bench: {obj} is missing; run `make bpf` first")
    shutil.copy(obj, tmp / "export_scrape.bpf.o")
    shutil.copy(BENCH_BPF / "export_scrape.yaml", tmp / "export_scrape.yaml")
    return tmp / "export_scrape.yaml"


def _fill(m: Any) -> None:
    """SERIES entries (id, kind) → a value, written straight through libbpf."""
    from bpfloom import _libbpf

    fd = m.fd
    for i in range(SERIES):
        key = struct.pack("<II", i // KINDS, i % KINDS)
        value = struct.pack("<Q", (i * 2654435761) % 10**9)
        if _libbpf.bpf_map_update_elem(fd, key, value, 0) != 0:
            sys.exit(f"bench: filling the map failed at entry {i}")


def worker(way: str) -> dict[str, Any]:
    """Scrape the 100k-series map ``way`` (bpfloom, custom, labels) in this process."""
    from bpfloom.export import Exporter, load_configs
    from bpfloom.export.collector import CounterCollector, keys_as_bytes
    from bpfloom.export.mapread import read_u64_map

    with tempfile.TemporaryDirectory(prefix="bpfloom-bench-export-") as tmp:
        config = _scrape_config(Path(tmp))
        with Exporter(load_configs([str(config)])) as ex:
            ex.load()
            obj = ex.objects["export_scrape"]
            m = obj.map("bench_requests_total")
            _fill(m)
            (collector,) = ex.collectors["export_scrape"]
            assert isinstance(collector, CounterCollector)
            out: dict[str, Any] = {"way": way}
            if way == "read":
                t0 = time.perf_counter()
                rows = read_u64_map(m, obj.possible_cpus)
                out["map_read_batch_seconds"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                keywise = read_u64_map(m, obj.possible_cpus, batch=False)
                out["map_read_keywise_seconds"] = time.perf_counter() - t0
                out["entries"] = [len(rows), len(keywise)]
                return out
            rss_before = reset_peak()
            if way == "bpfloom":
                scrape = ex.scrape
            else:
                scrape = _baseline(
                    way, collector, m, obj.possible_cpus, read_u64_map, keys_as_bytes
                )
            t0, c0 = time.perf_counter(), time.thread_time()
            first = scrape()
            out["cold_seconds"] = time.perf_counter() - t0
            out["cold_cpu_seconds"] = time.thread_time() - c0
            times, cpu = [], []
            for _ in range(WARM_SCRAPES):
                t0, c0 = time.perf_counter(), time.thread_time()
                text = scrape()
                times.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
            out["seconds"] = statistics.median(times)
            out["cpu_seconds"] = statistics.median(cpu)
            out["rss_mib"] = (status_kib("VmHWM") - rss_before) / 1024
            out["process_rss_mib"] = status_kib("VmHWM") / 1024
            series = sum(1 for line in text.split(b"\n") if line.startswith(b"ebpf_exporter_bench"))
            out["series"] = series
            out["bytes"] = len(text)
            assert len(first) > 0
            return out


def _baseline(
    way: str, collector: Any, m: Any, cpus: int, read_u64_map: Any, keys_as_bytes: Any
) -> Any:
    """A prometheus_client scrape of the same map: same bulk read, same decoded labels."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest
    from prometheus_client.core import CounterMetricFamily

    names = ["id", "kind"]
    registry = CollectorRegistry()
    labels = collector.labels

    cache: dict[bytes, tuple[str, ...] | None] = {}  # key → labels, as ebpf_exporter caches

    def rows() -> list[tuple[tuple[str, ...], int]]:
        data = read_u64_map(m, cpus)
        out = []
        for key, value in zip(keys_as_bytes(data.keys), data.values.tolist(), strict=True):
            decoded = cache.get(key)
            if decoded is None:
                decoded = cache[key] = labels.values(key)
            if decoded is not None:
                out.append((decoded, value))
        return out

    if way == "custom":

        class MapCollector:
            def collect(self) -> Any:
                family = CounterMetricFamily(
                    "ebpf_exporter_bench_requests", "Requests by id and kind", labels=names
                )
                for decoded, value in rows():
                    family.add_metric(list(decoded), float(value))
                yield family

        registry.register(MapCollector())  # type: ignore[arg-type]
        return lambda: generate_latest(registry)
    gauge = Gauge(
        "ebpf_exporter_bench_requests_total", "Requests by id and kind", names, registry=registry
    )

    def scrape() -> bytes:
        for decoded, value in rows():
            gauge.labels(*decoded).set(value)
        return generate_latest(registry)

    return scrape


def scrape_section() -> dict[str, Any]:
    results = {}
    for way in ("read", "bpfloom", "custom", "labels"):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", way],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            sys.exit(f"bench: worker {way} failed:\n{proc.stderr}")
        results[way] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, custom, labels = results["bpfloom"], results["custom"], results["labels"]
    return {
        "section": "scrape",
        "series": ours["series"],
        "exposition_mib": round(ours["bytes"] / (1 << 20), 2),
        "scrape_100k_seconds": round(ours["seconds"], 4),
        "scrape_100k_cpu_seconds": round(ours["cpu_seconds"], 4),
        "scrape_100k_cold_seconds": round(ours["cold_seconds"], 4),
        "scrape_100k_cold_cpu_seconds": round(ours["cold_cpu_seconds"], 4),
        "scrape_100k_rss_mib": round(ours["rss_mib"], 1),
        "scrape_100k_process_rss_mib": round(ours["process_rss_mib"], 1),
        "custom_collector_seconds": round(custom["seconds"], 4),
        "custom_collector_cpu_seconds": round(custom["cpu_seconds"], 4),
        "custom_collector_rss_mib": round(custom["rss_mib"], 1),
        "custom_collector_process_rss_mib": round(custom["process_rss_mib"], 1),
        "labels_path_seconds": round(labels["seconds"], 4),
        "labels_path_cpu_seconds": round(labels["cpu_seconds"], 4),
        "labels_path_cold_seconds": round(labels["cold_seconds"], 4),
        "labels_path_rss_mib": round(labels["rss_mib"], 1),
        "labels_path_process_rss_mib": round(labels["process_rss_mib"], 1),
        # ratios of CPU time: steadier than wall time on a shared machine
        "custom_vs_bpfloom": round(custom["cpu_seconds"] / ours["cpu_seconds"], 2),
        "labels_vs_bpfloom": round(labels["cpu_seconds"] / ours["cpu_seconds"], 2),
        "map_read_batch_seconds": round(results["read"]["map_read_batch_seconds"], 4),
        "map_read_keywise_seconds": round(results["read"]["map_read_keywise_seconds"], 4),
        "series_seen": [ours["series"], custom["series"], labels["series"]],
    }


# --- overhead ------------------------------------------------------------------------------


def overhead_section(calls: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from bpfloom import BpfObject
    from bpfloom.export import Exporter, load_configs

    src = tmp / "getpid_loop.c"
    src.write_text(GETPID_LOOP_C)
    loop = tmp / "getpid_loop"
    subprocess.run(["gcc", "-O2", "-o", str(loop), str(src)], check=True)
    cpu = max(os.sched_getaffinity(0))

    def ns_per_call() -> float:
        out = subprocess.run(
            [str(loop), str(calls), str(cpu)], capture_output=True, text=True, check=True
        ).stdout
        return float(out)

    cases: dict[str, list[float]] = {"none": [], "empty": [], "simple": [], "complex": []}
    for case in ("simple", "complex"):
        shutil.copy(BENCH_BPF / f"export_{case}.bpf.o", tmp / f"export_{case}.bpf.o")
        shutil.copy(BENCH_BPF / f"export_{case}.yaml", tmp / f"export_{case}.yaml")
    for _ in range(rounds):
        cases["none"].append(ns_per_call())
        with BpfObject(BENCH_BPF / "export_empty.bpf.o") as obj:
            obj.load()
            obj.attach_all()
            cases["empty"].append(ns_per_call())
        for case in ("simple", "complex"):
            with Exporter(load_configs([str(tmp / f"export_{case}.yaml")])) as ex:
                ex.load().start()
                cases[case].append(ns_per_call())
                scraped = ex.scrape()
                assert b"ebpf_exporter_syscalls_by" in scraped
    base = min(cases["none"])
    return {
        "section": "overhead",
        "calls": calls,
        "rounds": rounds,
        "getpid_ns": round(base, 1),
        "overhead_empty_ns": round(min(cases["empty"]) - base, 1),
        "overhead_simple_ns": round(min(cases["simple"]) - base, 1),
        "overhead_complex_ns": round(min(cases["complex"]) - base, 1),
        "ebpf_exporter_published_simple_tracepoint_ns": 35,
        "all_ns": {k: [round(x, 1) for x in v] for k, v in cases.items()},
    }


# --- sinks -------------------------------------------------------------------------------


def _sink_batches(count: int, size: int) -> list[Any]:
    import numpy as np

    from bpfloom.batch import Batch
    from bpfloom.decode import Decoder
    from bpfloom.types import Array, Int, Member, Struct

    u64, u32, s32 = Int("u64", 8, False), Int("u32", 4, False), Int("int", 4, True)
    char = Int("char", 1, True, is_char=True)
    event = Struct(
        "open_event",
        112,
        [
            Member("ts", u64, 0),
            Member("pid", u32, 64),
            Member("tid", u32, 96),
            Member("uid", u32, 128),
            Member("ret", s32, 160),
            Member("comm", Array(char, 16), 192),
            Member("path", Array(char, 64), 320),
            Member("flags", u64, 832),
        ],
    )
    decoder = Decoder(event)
    rec = struct.Struct("<QIIIi16s64sQ")
    assert rec.size == 112
    batches = []
    for b in range(count):
        raw = b"".join(
            rec.pack(
                time.time_ns(),
                1000 + i,
                1000 + i,
                0,
                -2 if i % 3 else 3,
                b"python3",
                f"/usr/lib/python3/dist-packages/module_{b}_{i}.py".encode(),
                0o2000000,
            )
            for i in range(size)
        )
        records = np.frombuffer(raw, dtype=np.uint8).reshape(size, rec.size).copy()
        batches.append(Batch(records, decoder, "bench"))
    return batches


def sinks_section(rounds: int, tmp: Path) -> dict[str, Any]:
    from bpfloom import decode
    from bpfloom.sinks.jsonl import JsonLinesSink
    from bpfloom.sinks.parquet import ParquetSink

    batches = _sink_batches(400, 256)
    events = sum(len(b) for b in batches)

    def parquet(path: Path) -> None:
        sink = ParquetSink(str(path))
        for batch in batches:
            sink.write_batch(batch, [])
        sink.close()
        assert sink.written == events and not sink.errors

    def jsonl(path: Path) -> None:
        sink = JsonLinesSink(str(path))
        for batch in batches:
            sink.write_batch(batch, [decode.to_jsonable(ev) for ev in batch])
        sink.close()
        assert sink.written == events and not sink.errors

    cpu: dict[str, list[float]] = {"parquet": [], "jsonl": []}
    size: dict[str, int] = {}
    for r in range(rounds):
        for name, write in (("parquet", parquet), ("jsonl", jsonl)):
            path = tmp / f"sink{r}.{name}"
            start = time.process_time()  # all threads: Arrow may use its own
            write(path)
            cpu[name].append(time.process_time() - start)
            size[name] = path.stat().st_size
            path.unlink()
    parquet_rate = events / min(cpu["parquet"])
    jsonl_rate = events / min(cpu["jsonl"])
    return {
        "section": "sinks",
        "sink_events": events,
        "parquet_events_per_s": round(parquet_rate),
        "jsonl_events_per_s": round(jsonl_rate),
        "parquet_vs_jsonl": round(parquet_rate / jsonl_rate, 2),
        "parquet_file_mib": round(size["parquet"] / (1 << 20), 2),
        "jsonl_file_mib": round(size["jsonl"] / (1 << 20), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    parser.add_argument("--calls", type=int, default=2_000_000, help="getpid calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--worker", choices=("read", "bpfloom", "custom", "labels"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    load_before = os.getloadavg()
    results = [scrape_section()]
    with tempfile.TemporaryDirectory(prefix="bpfloom-bench-export-") as tmp:
        results.append(overhead_section(args.calls, args.rounds, Path(tmp)))
        results.append(sinks_section(args.rounds, Path(tmp)))
    summary: dict[str, Any] = {"section": "summary"}
    for r in results:
        summary.update({k: v for k, v in r.items() if k not in ("section", "all_ns")})
    summary["loadavg_before"] = [round(x, 2) for x in load_before]
    summary["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    for r in [*results, summary]:
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(json.dumps(r, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
