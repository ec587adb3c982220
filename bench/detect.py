"""Detection benchmark: rule-evaluation throughput and syscall-to-alert latency.

Three sections, one run:

- ``live``: the whole detector in this process (default rules, readers, decoding,
  rules on one worker thread) under a child failing ``--opens`` opens as fast as it
  can: events handled per CPU-second of this process, drops, and the sizes of the
  batches the rules evaluated (``live_mean_batch``: what the reader's 2 ms wait and
  the worker's joining of queued batches make of this flood).
- ``throughput``: the default rules (``bpfloom/rules/default.yaml``) evaluated on one
  core over a fixed mix of records shaped like the tools' (60% open, 25% exec, 15%
  exit; paths, commands and parents drawn from realistic lists, a few of them
  suspicious), against two baselines measured in the same process: a rule set of one
  trivial rule, and the bare loop that only hands each record to a no-op. Events/s
  per core = records evaluated per second of CPU time of this (single) thread.
  Column-wise (``evaluate_table``): ``rules_events_per_s_per_core`` in batches of the
  live section's mean size (``--batch-size`` to choose another), beside it in batches
  of 256 and of detect's ``MERGE_EVENTS`` (the most a busy worker joins).
- ``latency``: ``bpfloom detect --json`` with a one-rule file (fires on an open of a
  marker path, no rate limit) runs as a subprocess; this script opens the marker and
  times until the alert line arrives on the pipe. The baseline is
  ``bpfloom opensnoop --json -p <this pid>``: the same open, until its record
  arrives. Ratios are medians against medians.

Nothing here asserts a timing. ``--json`` prints one JSON object per line; the last
line is the summary. The machine may be shared: the summary records the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bpfloom.batch import Batch
from bpfloom.bpf import object_path
from bpfloom.decode import Decoder
from bpfloom.object import BpfObject
from bpfloom.rules import RuleSet, load_rules
from bpfloom.tools.detect import MERGE_EVENTS, Detector
from bpfloom.tools.detect_columns import TABLES, EventTable, ExecTable
from bpfloom.tools.execsnoop import ExecSnoop
from bpfloom.tools.exitsnoop import ExitSnoop
from bpfloom.tools.opensnoop import OpenSnoop
from bpfloom.tools.tool import _MONO_TO_WALL_NS

BPFLOOM = [sys.executable, "-m", "bpfloom"]
SMALL_BATCH = 256  # a fixed small batch, beside the live one
TRIVIAL_RULE = """
- rule: never
  condition: event == exec and comm == nothing-runs-under-this-name
  output: "%comm"
  priority: DEBUG
"""
MARKER_RULE = """
- rule: marker opened
  condition: event == open and path startswith "{prefix}"
  output: "%comm opened %path"
  priority: NOTICE
"""

COMMS = ["bash", "python3", "nginx", "postgres", "sshd", "cron", "make", "gcc", "cat", "sh"]
PATHS = [
    "/etc/ld.so.cache",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/python3.11/os.py",
    "/proc/self/status",
    "/etc/passwd",
    "/var/log/syslog",
    "/home/user/.bashrc",
    "/etc/shadow",
    "/tmp/build/output.o",
    "/dev/null",
]
EXEC_PATHS = ["/usr/bin/ls", "/usr/bin/cat", "/bin/sh", "/usr/bin/python3", "/tmp/x/run"]


def records(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """A deterministic mix of open, exec and exit records (the tools' schema)."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    now = time.time()
    for i in range(n):
        pid = rnd.randint(100, 40000)
        comm = rnd.choice(COMMS)
        kind = rnd.random()
        if kind < 0.60:
            err = 2 if rnd.random() < 0.2 else 0
            out.append(
                {
                    "event": "open",
                    "time": now,
                    "pid": pid,
                    "tid": pid,
                    "uid": 0,
                    "comm": comm,
                    "fd": -1 if err else 3,
                    "err": err,
                    "flags": 0,
                    "path": (opened := rnd.choice(PATHS)),
                    "norm_path": opened,  # as detect's events carry it
                }
            )
        elif kind < 0.85:
            path = rnd.choice(EXEC_PATHS)
            out.append(
                {
                    "event": "exec",
                    "time": now,
                    "pid": pid,
                    "ppid": pid - 1,
                    "uid": 0,
                    "comm": os.path.basename(path)[:15],
                    "pcomm": os.path.basename(path)[:15],
                    "parent_comm": rnd.choice(COMMS),
                    "path": path,
                    "norm_path": path,
                    "args": [path, "-l", f"arg{i}"],
                    "ret": 0,
                    "cgroup": "/",
                }
            )
        else:
            out.append(
                {
                    "event": "exit",
                    "time": now,
                    "pid": pid,
                    "ppid": pid - 1,
                    "tid": pid,
                    "comm": comm,
                    "pcomm": comm,
                    "age": 1.5,
                    "exit_code": 0,
                    "signal": 0,
                }
            )
    return out


def _cpu_rate(
    evaluate: Callable[[dict[str, Any]], Any], events: Sequence[dict[str, Any]], rounds: int
) -> float:
    """Best events per CPU-second of this thread over ``rounds`` passes."""
    best = 0.0
    for _ in range(rounds):
        t0 = time.thread_time()
        for ev in events:
            evaluate(ev)
        spent = time.thread_time() - t0
        best = max(best, len(events) / spent)
    return best


# The same records as the tools' raw ones, for the column-wise engine.
OBJECTS = {"open": ("opensnoop", "open_event"), "exec": ("execsnoop", "event"),
           "exit": ("exitsnoop", "exit_event")}  # fmt: skip


def _c(value: str) -> bytes:
    return value.encode()


def raw_batches(events: Sequence[dict[str, Any]], size: int) -> list[tuple[str, Batch]]:
    """``events`` in the tools' record layouts (each kind from its object's BTF), cut
    into batches of ``size`` records of one kind, in order of first appearance; paths
    as the kernel resolves them (``fs_path``, so ``norm_path`` is read from bytes)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_kind.setdefault(ev["event"], []).append(ev)
    out: list[tuple[str, Batch]] = []
    for kind, evs in by_kind.items():
        name, record = OBJECTS[kind]
        with BpfObject(object_path(name)) as obj:
            dec = Decoder(obj.record_type("events", record))
        arr = np.zeros(len(evs), dtype=dec.dtype)
        arr["ts_ns"] = [int(ev["time"] * 1e9) - _MONO_TO_WALL_NS for ev in evs]
        arr["pid"] = [ev["pid"] for ev in evs]
        arr["comm"] = [_c(ev["comm"]) for ev in evs]
        if kind == "open":
            arr["tid"] = arr["pid"]
            arr["ret"] = [-ev["err"] if ev["err"] else ev["fd"] for ev in evs]
        if kind == "exec":
            arr["ppid"] = [ev["ppid"] for ev in evs]
            arr["parent_comm"] = [_c(ev["parent_comm"]) for ev in evs]
            arr["cgroup_id"] = 1
            arr["args_count"] = [len(ev["args"]) for ev in evs]
            for i, ev in enumerate(evs):
                arr["args"][i, : len(ev["args"])] = [_c(a) for a in ev["args"]]
        if kind in ("open", "exec"):
            arr["path"] = [_c(ev["path"]) for ev in evs]
            arr["fs_path"] = [_c(ev["norm_path"]) if not ev.get("err") else b"" for ev in evs]
            arr["fs_path_kind"] = [0 if ev.get("err") else 1 for ev in evs]
        if kind == "exit":
            arr["tid"] = arr["pid"]
            arr["ppid"] = [ev["ppid"] for ev in evs]
            arr["start_ns"] = arr["ts_ns"] - int(1.5e9)
            arr["cgroup_id"] = 1
        raw = arr.view(np.uint8).reshape(len(evs), dec.size)
        out.extend(
            (kind, Batch(raw[i : i + size], dec, "events")) for i in range(0, len(evs), size)
        )
    return out


def _record_makers() -> dict[str, Callable[[Batch], EventTable]]:
    """Tables as detect makes them, with the tools' record methods on stand-ins for
    loaded tools (no kernel here)."""
    cgroups = SimpleNamespace(path=lambda cgroup_id: "/")
    open_tool = SimpleNamespace(full_path=True)
    exec_tool = SimpleNamespace(resolve_paths=True, cgroups=cgroups)
    exit_tool = SimpleNamespace(cgroups=cgroups)
    return {
        "open": lambda b: TABLES["open"](b, lambda ev: OpenSnoop.record(open_tool, ev)),  # type: ignore[arg-type]
        "exec": lambda b: ExecTable(b, lambda ev: ExecSnoop.record(exec_tool, ev), cgroups.path),  # type: ignore[arg-type]
        "exit": lambda b: TABLES["exit"](b, lambda ev: ExitSnoop.record(exit_tool, ev)),  # type: ignore[arg-type]
    }


def _table_rate(rules: RuleSet, batches: Sequence[tuple[str, Batch]], rounds: int) -> float:
    """Best records per CPU-second of this thread through ``evaluate_table``, tables
    made inside the timing as detect makes them per batch."""
    makers = _record_makers()
    total = sum(len(b) for _, b in batches)
    best = 0.0
    for _ in range(rounds):
        t0 = time.thread_time()
        for kind, batch in batches:
            rules.evaluate_table(makers[kind](batch))
        best = max(best, total / (time.thread_time() - t0))
    return best


def throughput(n: int, rounds: int, batch_size: int) -> dict[str, Any]:
    events = records(n)
    default = load_rules()
    default_rate = _cpu_rate(default.evaluate, events, rounds)
    probe = load_rules()  # fresh rate-limit and threshold state
    alerts = sum(len(probe.evaluate(ev)) for ev in events)
    trivial = RuleSet.from_text(TRIVIAL_RULE, name="trivial")
    trivial_rate = _cpu_rate(trivial.evaluate, events, rounds)
    bare_rate = _cpu_rate(lambda ev: None, events, rounds)
    batches = raw_batches(events, batch_size)
    table_rate = _table_rate(load_rules(), batches, rounds)
    small_rate = _table_rate(load_rules(), raw_batches(events, SMALL_BATCH), rounds)
    # Under load detect's worker joins queued batches up to MERGE_EVENTS events.
    merged_rate = _table_rate(load_rules(), raw_batches(events, MERGE_EVENTS), rounds)
    probe = load_rules()
    makers = _record_makers()
    table_alerts = sum(len(probe.evaluate_table(makers[k](b))) for k, b in batches)
    return {
        "section": "throughput",
        "records": n,
        "rules_default": len(default.rules),
        "default_rules_events_per_s_per_core": round(default_rate),
        "one_rule_events_per_s_per_core": round(trivial_rate),
        "bare_loop_events_per_s": round(bare_rate),
        "default_vs_one_rule": round(default_rate / trivial_rate, 3),
        "batch_size": batch_size,
        "rules_events_per_s_per_core": round(table_rate),
        "columns_vs_records": round(table_rate / default_rate, 3),
        f"rules_events_per_s_per_core_{SMALL_BATCH}": round(small_rate),
        "merged_batch_size": MERGE_EVENTS,
        "rules_events_per_s_per_core_merged": round(merged_rate),
        "alerts_in_sample_columns": table_alerts,
        "alerts_in_sample": alerts,
        "suppressed_in_sample": sum(probe.suppressed.values()),
    }


# A child that fails to open `n` missing files as fast as it can: opens to detect.
FAILED_OPENS = """
import os, sys
for i in range(int(sys.argv[1])):
    try:
        os.open(f"/nonexistent-bpfloom-bench/{i}", os.O_RDONLY)
    except FileNotFoundError:
        pass
"""


def live(opens: int) -> dict[str, Any]:
    """The whole detector in this process (default rules; readers, decoding, records,
    rules on one worker thread) under a burst of ``opens`` failed opens from a child:
    events handled per CPU-second of this process, and what was dropped."""
    alerts = []
    sizes: list[int] = []  # the batches the rules evaluated (list.append: thread-safe)
    with Detector(load_rules(), alerts.append, workers=1) as detector:
        evaluate = detector.alerts_of

        def counted(batch: Batch) -> list[Any]:
            sizes.append(len(batch))
            return evaluate(batch)

        detector.alerts_of = counted  # type: ignore[method-assign]
        detector.start()
        cpu0, wall0 = time.process_time(), time.monotonic()
        subprocess.run([sys.executable, "-c", FAILED_OPENS, str(opens)], check=True)
        child_done = time.monotonic() - wall0
        last, still = -1, 0
        while still < 3:  # until nothing new arrived for 0.3 s
            time.sleep(0.1)
            now = detector.pipeline.stats.snapshot()["received"]
            still = still + 1 if now == last else 0
            last = now
        stats = detector.stop()
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0 - 0.3
    return {
        "section": "live",
        "offered_opens": opens,
        "offered_opens_per_s": round(opens / child_done),
        "handled": stats["handled"],
        "dropped_kernel": stats["dropped_kernel"],
        "dropped_queue": stats["dropped_queue"],
        "live_events_per_cpu_s": round(stats["handled"] / cpu),
        "live_events_per_wall_s": round(stats["handled"] / wall),
        "live_batches": len(sizes),
        "live_mean_batch": round(sum(sizes) / len(sizes)) if sizes else 0,
        "live_events_in_merged_batches": round(
            sum(n for n in sizes if n >= MERGE_EVENTS // 2) / max(sum(sizes), 1), 3
        ),
        "alerts": len(alerts),
    }


class _Lines:
    """A subprocess's stdout lines, read by a thread, stamped with arrival time."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.ready = threading.Event()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.time(), line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if ": tracing" in line:
                self.ready.set()

    def wait_line(self, text: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line with {text!r}")
            arrived, line = self.lines.get(timeout=left)
            if text in line:
                return arrived

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _latencies(args: list[str], prefix: str, samples: int) -> list[float]:
    run = _Lines(args)
    try:
        if not run.ready.wait(60):
            raise RuntimeError(f"{args[3]} did not start tracing")
        out = []
        for i in range(samples):
            path = f"{prefix}{i}"
            t0 = time.time()
            with contextlib.suppress(FileNotFoundError):
                os.close(os.open(path, os.O_RDONLY))
            out.append(run.wait_line(path) - t0)
            time.sleep(0.05)  # one event at a time: latency, not throughput
        return out
    finally:
        run.stop()


def latency(samples: int, tmp: Path) -> dict[str, Any]:
    prefix = f"/tmp/bpfloom-bench-marker-{os.getpid()}-"
    rules = tmp / "marker.yaml"
    rules.write_text(MARKER_RULE.format(prefix=prefix))
    detect = _latencies([*BPFLOOM, "detect", "--json", "--rules", str(rules)], prefix, samples)
    snoop = _latencies([*BPFLOOM, "opensnoop", "--json", "-p", str(os.getpid())], prefix, samples)

    def ms(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[int(q) - 1] * 1000, 3)

    return {
        "section": "latency",
        "samples": samples,
        "detect_ms_p50": round(statistics.median(detect) * 1000, 3),
        "detect_ms_p90": ms(detect, 90),
        "detect_ms_max": round(max(detect) * 1000, 3),
        "opensnoop_ms_p50": round(statistics.median(snoop) * 1000, 3),
        "opensnoop_ms_p90": ms(snoop, 90),
        "detect_vs_opensnoop_p50": round(statistics.median(detect) / statistics.median(snoop), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size of rules_events_per_s_per_core (default: the live section's mean)",
    )
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--opens", type=int, default=300_000)
    args = parser.parse_args()
    load_before = os.getloadavg()
    live_run = live(args.opens)
    batch_size = args.batch_size or max(live_run["live_mean_batch"], 1)
    results = [throughput(args.records, args.rounds, batch_size), live_run]
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bpfloom-bench-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    results.append(latency(args.samples, tmp))
    summary: dict[str, Any] = {"section": "summary"}
    for r in results:
        summary.update({k: v for k, v in r.items() if k not in ("section",)})
    summary["loadavg_before"] = [round(x, 2) for x in load_before]
    summary["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    for r in [*results, summary]:
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
