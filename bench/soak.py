"""Soak benchmark: is memory bounded under a long flood of events?

For each target — ``bpfloom opensnoop --json``, ``bpfloom detect --json`` (default
rules), and a library ``Pipeline`` (opensnoop's readers, thread executor, a handler
that builds each record) — this runs the target for ``--minutes`` while a load process
fails ``--rate`` opens per second (paths that do not exist), and samples the target's
resident set size (VmRSS) every ``--every`` seconds. Outputs go to /dev/null.

Memory is called bounded when the peak RSS of the run's second half is at most
``--tolerance`` MiB above the peak of its first half (after a first minute of warm-up:
caches, allocator arenas, the kernel's ring pages touched once). Peaks, not two single
samples: the RSS of a process that frees and allocates in bursts goes up and down. The
summary gives, per target, the start, peak and end RSS and the two halves' peaks.

Not run in CI (it takes ``3 x --minutes``). ``--json`` prints one JSON object per
sample line and a final summary line; without it, a table. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

BPFLOOM = [sys.executable, "-m", "bpfloom"]

# Fails `rate` opens per second, in batches of 1000, until killed.
LOAD = textwrap.dedent(
    """
    import os, sys, time
    rate = int(sys.argv[1])
    batch = 1000
    start = time.monotonic()
    done = 0
    while True:
        for i in range(batch):
            try:
                os.open(f"/nonexistent-bpfloom-soak/{i}", os.O_RDONLY)
            except FileNotFoundError:
                pass
        done += batch
        ahead = done / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    """
)

# The library target: opensnoop's readers through a thread-executor Pipeline.
PIPELINE = textwrap.dedent(
    """
    import sys
    from bpfloom import Pipeline
    from bpfloom.tools.opensnoop import OpenSnoop

    with OpenSnoop(failed_only=True) as tool:
        tool.attach()
        handled = 0

        def handle(event):
            global handled
            tool.record(event)
            handled += 1

        pipeline = Pipeline(tool.readers, handle, executor="thread", workers=4)
        print("ready", flush=True)
        pipeline.run(float(sys.argv[1]))
    """
)

TARGETS = {
    "opensnoop": lambda minutes: [
        *BPFLOOM,
        "opensnoop",
        "--json",
        "-x",
        "--duration",
        str(minutes * 60),
    ],
    "detect": lambda minutes: [*BPFLOOM, "detect", "--json", "--duration", str(minutes * 60)],
    "pipeline": lambda minutes: [sys.executable, "-c", PIPELINE, str(minutes * 60)],
}


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def soak(name: str, minutes: float, every: float, rate: int, as_json: bool) -> dict[str, Any]:
    target = subprocess.Popen(
        TARGETS[name](minutes),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(rate)])
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    try:
        while target.poll() is None:
            rss = rss_mib(target.pid)
            if rss is not None:
                t = time.monotonic() - start
                samples.append((t, rss))
                if as_json:
                    print(json.dumps({"target": name, "t_s": round(t, 1), "rss_mib": rss}))
                else:
                    print(f"{name:10} {t:7.1f} s {rss:8.1f} MiB", flush=True)
            time.sleep(every)
    finally:
        load.kill()
        load.wait()
        if target.poll() is None:
            target.kill()
        err = target.communicate()[1]
    end = samples[-1][0] if samples else 0.0
    first = [rss for t, rss in samples if 60 <= t < end / 2]
    second = [rss for t, rss in samples if t >= end / 2]
    result: dict[str, Any] = {
        "target": name,
        "minutes": minutes,
        "rate_per_s": rate,
        "samples": len(samples),
        "rss_start_mib": samples[0][1] if samples else None,
        "rss_peak_mib": max(r for _, r in samples) if samples else None,
        "rss_end_mib": samples[-1][1] if samples else None,
        "first_half_peak_mib": max(first) if first else None,
        "second_half_peak_mib": max(second) if second else None,
        "exit_status": target.returncode,
        "exit_line": (err.strip().splitlines() or [""])[-1],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--rate", type=int, default=100_000, help="failed opens per second")
    parser.add_argument("--tolerance", type=float, default=2.0, help="MiB of late growth")
    parser.add_argument("--target", choices=sorted(TARGETS), action="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [
        soak(name, args.minutes, args.every, args.rate, args.json)
        for name in (args.target or ["opensnoop", "detect", "pipeline"])
    ]
    for r in results:
        first, second = r["first_half_peak_mib"], r["second_half_peak_mib"]
        r["bounded"] = None not in (first, second) and second - first <= args.tolerance
    summary = {"soak": results, "loadavg": os.getloadavg()}
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
