"""``bpfloom export``: ebpf_exporter configurations written here, run for real.

Every configuration is a fresh ``<name>.bpf.c`` + ``<name>.yaml`` pair in
ebpf_exporter's format (tracepoint, raw_tp, tp_btf and uprobe hooks only: this kernel
has no kprobes or fentry), compiled with clang against ``build/vmlinux.h``. The tests
make activity of their own (getpid calls, O_DIRECT writes to a loop device of their
own, calls of a probed function) and check exact values: through a real Prometheus
server scraping ``bpfloom export`` (its HTTP API), or from ``Exporter.scrape()``.
``promtool check metrics`` must pass on every exposition.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bpfloom.export import Exporter, load_configs
from bpfloom.export.decoders import cgroup2_mount
from conftest import ROOT, TESTS_BPF, compile_bpf, kernel_prog_ids
from promserver import Prometheus, free_port, promtool_check

pytestmark = pytest.mark.kernel

BPFLOOM = [sys.executable, "-m", "bpfloom"]
DEADLINE = 60.0  # seconds a wait may take at most; bounds a failure, measures nothing

HEADER = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* Add one to map[key], creating the entry (as ebpf_exporter's maps.bpf.h does). */
static __always_inline void increment(void *map, const void *key)
{
    u64 one = 1, *count = bpf_map_lookup_elem(map, key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return;
    }
    if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
        return;
    count = bpf_map_lookup_elem(map, key); /* another CPU created it meanwhile */
    if (count)
        __sync_fetch_and_add(count, 1);
}
"""


def build(tmp_path: Path, name: str, source: str, config: str) -> Path:
    """Compile ``name.bpf.c`` and write ``name.yaml`` beside it; return the yaml path."""
    compile_bpf(
        source,
        tmp_path,
        name=name,
        headers={"exportmaps.h": HEADER},
        extra_flags=["-I", str(ROOT / "build")],
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(config)
    return path


@contextlib.contextmanager
def exporter(
    *configs: Path, globals: dict[str, Any] | None = None, **kw: Any
) -> Iterator[Exporter]:
    """An ``Exporter`` of ``configs``, loaded and started; ``globals`` are set on every
    object that has them, before load."""
    with Exporter(load_configs([str(c) for c in configs]), **kw) as ex:
        for obj in ex.objects.values():
            for name, value in (globals or {}).items():
                if name in obj.globals:
                    obj.globals[name] = value
        ex.load()
        ex.start()
        yield ex


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) → value, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(ex: Exporter) -> str:
    text = ex.scrape().decode()
    promtool_check(text)
    return text


# --- per-syscall counters (raw_tp), Prometheus, the CLI -----------------------------------

SYSCALLS_C = r"""
#include "exportmaps.h"

struct comm_key {
    char comm[16];
    u32 nr;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct comm_key);
    __type(value, u64);
} syscalls_total SEC(".maps");

SEC("raw_tp/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
    struct comm_key key = {};

    bpf_get_current_comm(key.comm, sizeof(key.comm));
    if (key.comm[0] != 'b' || key.comm[1] != 'x')
        return 0; /* the tests' own programs only: the map stays small */
    key.nr = id;
    increment(&syscalls_total, &key);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

SYSCALLS_YAML = """\
metrics:
  counters:
    - name: syscalls_total
      help: System calls by command and name
      labels:
        - name: comm
          size: 16
          decoders:
            - name: string
            - name: regexp
              regexps:
                - ^{comm}$
        - name: syscall
          size: 4
          decoders:
            - name: uint
            - name: syscall
"""

GETPID_LOOP_C = r"""
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = strtol(argv[1], NULL, 10);
    for (long i = 0; i < n; i++)
        syscall(SYS_getpid);
    return 0;
}
"""


def getpid_program(tmp_path: Path) -> Path:
    """A C program named ``bx<hex>`` (its comm) that calls getpid(2) argv[1] times."""
    name = "bx" + uuid.uuid4().hex[:10]
    src = tmp_path / "getpid_loop.c"
    src.write_text(GETPID_LOOP_C)
    out = tmp_path / name
    subprocess.run(["gcc", "-O1", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


# --- block I/O latency histogram (tp_btf), majorminor -------------------------------------

BIOLATENCY_C = r"""
#include "exportmaps.h"

#define MAX_SLOT 26
#define REQ_OP_MASK 0xff

struct disk_key {
    u32 dev;
    u8 op;
    u64 slot;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, struct request *);
    __type(value, u64);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, struct disk_key);
    __type(value, u64);
} bio_latency_seconds SEC(".maps");

static __always_inline u64 log2_u32(u32 v)
{
    u32 shift, r;

    r = (v > 0xFFFF) << 4; v >>= r;
    shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
    shift = (v > 0xF) << 2; v >>= shift; r |= shift;
    shift = (v > 0x3) << 1; v >>= shift; r |= shift;
    r |= (v >> 1);
    return r;
}

static __always_inline u64 log2l(u64 v)
{
    u32 hi = v >> 32;
    return hi ? log2_u32(hi) + 32 : log2_u32(v);
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
    u64 ts = bpf_ktime_get_ns();

    bpf_map_update_elem(&start, &rq, &ts, BPF_ANY);
    return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
    struct disk_key key = {};
    struct gendisk *disk;
    u64 *tsp, delta_us, one = 1, *sum;
    u32 major, minor;

    tsp = bpf_map_lookup_elem(&start, &rq);
    if (!tsp)
        return 0;
    delta_us = (bpf_ktime_get_ns() - *tsp) / 1000;
    bpf_map_delete_elem(&start, &rq);

    disk = rq->q->disk;
    major = disk->major;
    minor = disk->first_minor;
    /* new_encode_dev(), as ebpf_exporter's majorminor decoder expects */
    key.dev = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12);
    key.op = rq->cmd_flags & REQ_OP_MASK;
    /* key k counts latencies in (2^(k-1), 2^k] microseconds */
    key.slot = delta_us <= 1 ? 0 : log2l(delta_us - 1) + 1;
    if (key.slot > MAX_SLOT)
        key.slot = MAX_SLOT;
    increment(&bio_latency_seconds, &key);
    /* bucket_max + 1 holds the sum (ebpf_exporter's optional sum key) */
    key.slot = MAX_SLOT + 1;
    sum = bpf_map_lookup_elem(&bio_latency_seconds, &key);
    if (sum)
        __sync_fetch_and_add(sum, delta_us);
    else
        bpf_map_update_elem(&bio_latency_seconds, &key, &delta_us, BPF_NOEXIST);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

BIOLATENCY_YAML = """\
metrics:
  histograms:
    - name: bio_latency_seconds
      help: Block IO latency histogram
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 26
      bucket_multiplier: 0.000001 # microseconds to seconds
      labels:
        - name: device
          size: 4
          decoders:
            - name: majorminor
        - name: operation
          size: 1
          padding: 3
          decoders:
            - name: uint
            - name: static_map
              static_map:
                0: read
                1: write
        - name: bucket
          size: 8
          decoders:
            - name: uint
"""


@contextlib.contextmanager
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A loop device of our own over an 8 MiB file; its name (``loop3``)."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield os.path.basename(dev)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False, capture_output=True)


def direct_writes(device: str, n: int) -> None:
    """``n`` separate 4 KiB O_DIRECT writes to /dev/<device>, one after the other: each
    is one request (a synchronous direct write waits for its completion)."""
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    buf.write(b"x" * 4096)
    fd = os.open(f"/dev/{device}", os.O_WRONLY | os.O_DIRECT)
    try:
        for i in range(n):
            assert os.pwritev(fd, [buf], i * 8192) == 4096
    finally:
        os.close(fd)
        buf.close()


# --- timers and softirqs (tp_btf), ksym --------------------------------------------------

TIMERS_C = r"""
#include "exportmaps.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, u64);
    __type(value, u64);
} timer_starts_total SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 10);
    __type(key, u32);
    __type(value, u64);
} softirqs_total SEC(".maps");

SEC("tp_btf/timer_start")
int BPF_PROG(timer_start, struct timer_list *timer)
{
    u64 function = (u64)timer->function;

    increment(&timer_starts_total, &function);
    return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry, unsigned int vec_nr)
{
    u32 key = vec_nr;
    u64 *count = bpf_map_lookup_elem(&softirqs_total, &key);

    if (count)
        *count += 1; /* per-CPU: no other CPU writes this slot */
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

SOFTIRQS = (
    "hi",
    "timer",
    "net_tx",
    "net_rx",
    "block",
    "irq_poll",
    "tasklet",
    "sched",
    "hrtimer",
    "rcu",
)

TIMERS_YAML = """\
metrics:
  counters:
    - name: timer_starts_total
      help: Timers started in the kernel, by function
      labels:
        - name: function
          size: 8
          decoders:
            - name: ksym
    - name: softirqs_total
      help: Softirqs run, by kind
      labels:
        - name: kind
          size: 4
          decoders:
            - name: uint
            - name: static_map
              static_map:
""" + "".join(f"                {i}: {name}\n" for i, name in enumerate(SOFTIRQS))

# --- a uprobe counter --------------------------------------------------------------------

UPROBE_C = r"""
#include "exportmaps.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, u32);
    __type(value, u64);
} probe_calls_total SEC(".maps");

SEC("uprobe/BINARY:bpfloom_probe_me")
int BPF_KPROBE(probe_me, int x)
{
    u32 key = (u32)x % 4;

    increment(&probe_calls_total, &key);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

UPROBE_YAML = """\
metrics:
  counters:
    - name: probe_calls_total
      help: Calls of bpfloom_probe_me by argument modulo 4
      labels:
        - name: remainder
          size: 4
          decoders:
            - name: uint
            - name: static_map
              static_map:
                0: zero
                1: one
                2: two
"""


def uprobe_target(tmp_path: Path) -> Path:
    out = tmp_path / "uprobe_target"
    subprocess.run(
        ["gcc", "-O1", "-g", "-o", str(out), str(TESTS_BPF / "uprobe_target.c")],
        check=True,
        capture_output=True,
    )
    return out


class ExportRun:
    """``bpfloom export CONFIGS --listen 127.0.0.1:0`` in the background; ``url`` is
    read from its ``tracing`` line."""

    def __init__(self, tmp_path: Path, configs: list[Path], *args: str) -> None:
        self.err_path = tmp_path / f"export.{time.monotonic_ns()}.err"
        self.err = open(self.err_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*BPFLOOM, "export", *map(str, configs), "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )
        deadline = time.monotonic() + DEADLINE
        while True:
            found = re.search(r"metrics at (http://\S+/metrics)", self.err_path.read_text())
            if found:
                self.url = found[1]
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"bpfloom export did not start:\n{self.err_path.read_text()}")
            time.sleep(0.05)
        self.target = self.url.removeprefix("http://").removesuffix("/metrics")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return str(response.read().decode())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.err.close()
        return code

    def stderr(self) -> str:
        return self.err_path.read_text()


def test_four_configs_through_prometheus(tmp_path: Path) -> None:
    """Four configurations in ebpf_exporter's format (raw_tp syscalls, tp_btf block I/O
    latency with majorminor, tp_btf timers/softirqs with ksym, a uprobe counter) run
    unmodified in one ``bpfloom export``; a real Prometheus scrapes it, and its HTTP API
    returns exactly the activity the test made."""
    program = getpid_program(tmp_path)
    target = uprobe_target(tmp_path)
    configs = [
        build(tmp_path, "syscalls", SYSCALLS_C, SYSCALLS_YAML.format(comm=program.name)),
        build(tmp_path, "biolatency", BIOLATENCY_C, BIOLATENCY_YAML),
        build(tmp_path, "timers", TIMERS_C, TIMERS_YAML),
        build(tmp_path, "uprobe", UPROBE_C.replace("BINARY", str(target)), UPROBE_YAML),
    ]
    with loop_device(tmp_path) as device:
        run = ExportRun(tmp_path, configs)
        prometheus = Prometheus(tmp_path, [run.target])
        try:
            subprocess.run([str(program), "1234"], check=True)
            direct_writes(device, 7)
            subprocess.run([str(target), "10"], check=True, capture_output=True)
            getpid = f'ebpf_exporter_syscalls_total{{comm="{program.name}",syscall="getpid"}}'
            assert prometheus.wait_value(getpid, 1234) == 1234
            writes = f'{{device="{device}",operation="write"}}'
            count = prometheus.wait_value(f"ebpf_exporter_bio_latency_seconds_count{writes}", 7)
            assert count == 7
            bucket = "ebpf_exporter_bio_latency_seconds_bucket"
            inf = f'{bucket}{{device="{device}",operation="write",le="+Inf"}}'
            assert prometheus.value(inf) == 7
            total = prometheus.value(f"ebpf_exporter_bio_latency_seconds_sum{writes}")
            assert total is not None and total > 0
            buckets = prometheus.query(f"ebpf_exporter_bio_latency_seconds_bucket{writes}")
            assert len(buckets) == 28  # 27 bounds (2^0..2^26 µs) and +Inf
            assert "1.048576" in {b["metric"]["le"] for b in buckets}  # 2^20 µs, as Go writes
            probe = "ebpf_exporter_probe_calls_total"
            assert prometheus.wait_value(f'{probe}{{remainder="zero"}}', 3) == 3
            assert prometheus.value(f'{probe}{{remainder="one"}}') == 3
            assert prometheus.value(f'{probe}{{remainder="two"}}') == 2
            assert prometheus.value(f'{probe}{{remainder="unknown:3"}}') == 2
            softirqs = prometheus.query("ebpf_exporter_softirqs_total")
            assert sorted(s["metric"]["kind"] for s in softirqs) == sorted(SOFTIRQS)
            timers = prometheus.query("ebpf_exporter_timer_starts_total")
            kernel = kernel_symbols()
            assert timers, "no timer was started while the test ran"
            for series in timers:
                function = series["metric"]["function"]
                assert function.split("\t")[0] in kernel, function
            (up,) = prometheus.targets()
            assert up["health"] == "up" and up["lastError"] == "", up
            promtool_check(run.metrics())
        finally:
            prometheus.stop()
            code = run.stop()
    assert code == 0, run.stderr()


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds file descriptors for (its fdinfo):
    other test runs on the machine load programs of their own meanwhile."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids.update(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
        except OSError:
            continue  # closed while we looked
    return ids


def kernel_symbols() -> set[str]:
    with open("/proc/kallsyms") as f:
        return {line.split()[2] for line in f}


def test_cli_stops_cleanly_and_detaches(tmp_path: Path) -> None:
    """SIGTERM ends ``bpfloom export`` with status 0, and none of its programs stays
    in the kernel; only the address given is bound."""
    program = getpid_program(tmp_path)
    config = build(tmp_path, "syscalls", SYSCALLS_C, SYSCALLS_YAML.format(comm=program.name))
    run = ExportRun(tmp_path, [config])
    ours = prog_ids_of(run.proc.pid)
    assert ours, "no program of bpfloom export in the kernel while it runs"
    assert ours <= kernel_prog_ids()
    listening = subprocess.run(
        ["ss", "-Hltnp"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    bound = [line for line in listening if f"pid={run.proc.pid}," in line]
    assert len(bound) == 1 and f" {run.target} " in bound[0] + " ", bound
    subprocess.run([str(program), "5"], check=True)
    text = run.metrics()
    promtool_check(text)
    assert value(text, "ebpf_exporter_syscalls_total", comm=program.name, syscall="getpid") == 5
    assert run.stop() == 0, run.stderr()
    deadline = time.monotonic() + DEADLINE
    while ours & kernel_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours & kernel_prog_ids()
    assert "Traceback" not in run.stderr()


def test_own_metrics_on_metrics_addr(tmp_path: Path) -> None:
    """--metrics-addr serves the exporter's own series: every scrape of /metrics
    counted, with its duration."""
    program = getpid_program(tmp_path)
    config = build(tmp_path, "syscalls", SYSCALLS_C, SYSCALLS_YAML.format(comm=program.name))
    own = free_port()
    run = ExportRun(tmp_path, [config], "--metrics-addr", str(own))
    try:
        for _ in range(3):
            run.metrics()
        with urllib.request.urlopen(f"http://127.0.0.1:{own}/metrics", timeout=10) as response:
            text = response.read().decode()
        promtool_check(text)
        assert 'bpfloom_export_scrapes_total{tool="export"} 3' in text.splitlines()
        assert 'bpfloom_export_scrape_duration_seconds_count{tool="export"} 3' in text
    finally:
        assert run.stop() == 0, run.stderr()


# --- library-level tests: exact values from Exporter.scrape() ------------------------------

PERCPU_C = r"""
#include "exportmaps.h"

const volatile u32 target_tgid = 0;

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} getpid_calls_total SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} getpid_calls_by_cpu_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(void *ctx)
{
    u32 zero = 0;
    u64 *a, *b;

    if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
        return 0;
    a = bpf_map_lookup_elem(&getpid_calls_total, &zero);
    b = bpf_map_lookup_elem(&getpid_calls_by_cpu_total, &zero);
    if (a)
        *a += 1;
    if (b)
        *b += 1;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

PERCPU_YAML = """\
metrics:
  counters:
    - name: getpid_calls_total
      help: getpid calls, summed over CPUs
    - name: getpid_calls_by_cpu_total
      help: getpid calls by CPU
      labels:
        - name: cpu
          size: 2
          decoders:
            - name: uint
"""


def test_percpu_summed_or_split_by_cpu(tmp_path: Path) -> None:
    """A per-CPU map is summed, or split by a last label named cpu (ebpf_exporter's
    rule); exact counts of getpid calls made on CPU 0 and CPU 1."""
    cpus = sorted(os.sched_getaffinity(0))
    config = build(tmp_path, "percpu", PERCPU_C, PERCPU_YAML)
    calls = {cpu: 100 + 17 * i for i, cpu in enumerate(cpus[:2])}
    saved = os.sched_getaffinity(0)
    with exporter(config, globals={"target_tgid": os.getpid()}) as ex:
        try:
            for cpu, n in calls.items():
                os.sched_setaffinity(0, {cpu})
                for _ in range(n):
                    os.getpid()
        finally:
            os.sched_setaffinity(0, saved)
        text = scrape(ex)
    assert value(text, "ebpf_exporter_getpid_calls_total") == sum(calls.values())
    for cpu, n in calls.items():
        assert value(text, "ebpf_exporter_getpid_calls_by_cpu_total", cpu=str(cpu)) == n
        possible = ex.objects["percpu"].possible_cpus
    split = [k for k in samples(text) if k[0] == "ebpf_exporter_getpid_calls_by_cpu_total"]
    assert len(split) == possible  # every possible CPU, zeros included


KADDRS_C = r"""
#include "exportmaps.h"

const volatile u32 target_tgid = 0;
const volatile u64 kaddr_schedule = 0;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, u64);
    __type(value, u64);
} kaddr_hits_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    u64 address = kaddr_schedule;

    if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
        return 0;
    increment(&kaddr_hits_total, &address);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

KADDRS_YAML = """\
kaddrs:
  - schedule
metrics:
  counters:
    - name: kaddr_hits_total
      help: getppid calls, keyed by the address of schedule()
      labels:
        - name: function
          size: 8
          decoders:
            - name: ksym
"""


def test_kaddrs_and_ksym(tmp_path: Path) -> None:
    """``kaddrs`` sets kaddr_schedule from /proc/kallsyms; the program keys its counts
    by that address; the ksym decoder turns it back into ``schedule``."""
    config = build(tmp_path, "kaddrs", KADDRS_C, KADDRS_YAML)
    with exporter(config, globals={"target_tgid": os.getpid()}) as ex:
        for _ in range(25):
            os.getppid()
        text = scrape(ex)
    assert value(text, "ebpf_exporter_kaddr_hits_total", function="schedule") == 25


RINGBUF_C = r"""
#include "exportmaps.h"

const volatile u32 target_tgid = 0;
u32 seq = 0;

struct event {
    u32 kind;
    u16 cpu_hint;
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} ringbuf_events_total SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(u32));
    __uint(value_size, sizeof(u32));
} perf_events_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    struct event *e, copy;
    u32 kind;

    if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
        return 0;
    kind = seq % 3; /* one thread of ours calls getppid: no race on seq */
    seq++;
    __builtin_memset(&copy, 0, sizeof(copy));
    copy.kind = kind;
    bpf_perf_event_output(ctx, &perf_events_total, BPF_F_CURRENT_CPU, &copy, sizeof(copy));
    e = bpf_ringbuf_reserve(&ringbuf_events_total, sizeof(*e), 0);
    if (!e)
        return 0;
    e->kind = kind;
    e->cpu_hint = 0;
    bpf_ringbuf_submit(e, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

RINGBUF_YAML = """\
metrics:
  counters:
    - name: ringbuf_events_total
      help: Events of the ring buffer by kind (sizes from the record's BTF)
      ring_buffer: true
      labels:
        - name: kind
          decoders:
            - name: uint
            - name: static_map
              static_map:
                0: zero
                1: one
                2: two
        - name: hint
          decoders:
            - name: uint
    - name: perf_events_total
      help: Events of the perf buffer by kind, as ebpf_exporter's perf_event_array counters
      perf_event_array: true
      flush_interval: 1h
      labels:
        - name: kind
          size: 4
          decoders:
            - name: uint
"""


def test_ring_buffer_counter(tmp_path: Path) -> None:
    """Counters fed from a ring buffer's events (``ring_buffer: true``): one count per
    record, by the labels decoded from it; label sizes come from the record's type. The
    same events through a perf event array (``perf_event_array: true``, explicit sizes)."""
    config = build(tmp_path, "ringbuf", RINGBUF_C, RINGBUF_YAML)
    with exporter(config, globals={"target_tgid": os.getpid()}) as ex:
        for _ in range(10):
            os.getppid()
        deadline = time.monotonic() + DEADLINE
        while True:
            text = scrape(ex)
            got = {k: int(v) for k, v in samples(text).items() if "_events_" in k[0]}
            if sum(got.values()) >= 20 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    name = "ebpf_exporter_ringbuf_events_total"
    assert got == {
        (name, frozenset({("kind", "zero"), ("hint", "0")})): 4,
        (name, frozenset({("kind", "one"), ("hint", "0")})): 3,
        (name, frozenset({("kind", "two"), ("hint", "0")})): 3,
        ("ebpf_exporter_perf_events_total", frozenset({("kind", "0")})): 4,
        ("ebpf_exporter_perf_events_total", frozenset({("kind", "1")})): 3,
        ("ebpf_exporter_perf_events_total", frozenset({("kind", "2")})): 3,
    }


USERSPACE_MAPS_C = r"""
#include "exportmaps.h"

struct group_key {
    u32 group;
    u32 bucket;
};

#define HIST(name)                                  \
    struct {                                        \
        __uint(type, BPF_MAP_TYPE_HASH);            \
        __uint(max_entries, 256);                   \
        __type(key, struct group_key);              \
        __type(value, u64);                         \
    } name SEC(".maps");

HIST(lat_exp2)
HIST(lat_exp2zero)
HIST(lat_linear)
HIST(lat_fixed)

struct sized_key {
    u32 pid;
    u8 op;
    u64 slot;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, struct sized_key);
    __type(value, u64);
} inferred_seconds SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, u32);
    __type(value, u64);
} queue_depth SEC(".maps");

struct decoded_key {
    u8 v4[4];
    u8 v6[16];
    u32 ifindex;
    u64 cgroup;
    u32 err;
    char name[12];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, struct decoded_key);
    __type(value, u64);
} decoded SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int unused(void *ctx)
{
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

GROUP_LABELS = """\
      labels:
        - name: group
          size: 4
          decoders:
            - name: uint
        - name: bucket
          size: 4
          decoders:
            - name: uint
"""

USERSPACE_MAPS_YAML = (
    """\
metrics:
  histograms:
    - name: lat_exp2
      help: exp2 buckets
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 3
"""
    + GROUP_LABELS
    + """\
    - name: lat_exp2zero
      help: exp2zero buckets
      bucket_type: exp2zero
      bucket_min: 0
      bucket_max: 3
"""
    + GROUP_LABELS
    + """\
    - name: lat_linear
      help: linear buckets
      bucket_type: linear
      bucket_min: 1
      bucket_max: 3
      bucket_multiplier: 0.5
"""
    + GROUP_LABELS
    + """\
    - name: lat_fixed
      help: fixed buckets
      bucket_type: fixed
      bucket_keys: [10, 20, 50]
      bucket_multiplier: 0.001
"""
    + GROUP_LABELS
    + """\
    - name: inferred_seconds
      help: label sizes and padding taken from the key's BTF
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 2
      labels:
        - name: pid
          decoders:
            - name: uint
        - name: op
          decoders:
            - name: uint
        - name: bucket
          decoders:
            - name: uint
  gauges:
    - name: queue_depth
      help: A gauge with at most 3 label sets
      max_series: 3
      labels:
        - name: queue
          size: 4
          decoders:
            - name: uint
    - name: decoded
      help: Every decoder on one key
      labels:
        - name: v4
          size: 4
          decoders:
            - name: inet_ip
        - name: v6
          size: 16
          decoders:
            - name: inet_ip
        - name: ifname
          size: 4
          decoders:
            - name: ifname
        - name: cgroup
          size: 8
          decoders:
            - name: uint
            - name: cgroup
        - name: errno
          size: 4
          decoders:
            - name: uint
            - name: errno
        - name: name
          size: 12
          reuse: true
          decoders:
            - name: string
        - name: name_hex
          size: 12
          decoders:
            - name: hex
"""
)


def test_histograms_gauges_cap_and_decoders(tmp_path: Path) -> None:
    """Maps filled from user space (real kernel maps) against hand-computed results:
    the four bucket types (back-filled, cumulative, sum at bucket_max + 1), label sizes
    and padding inferred from BTF, a gauge capped at 3 label sets with the rest in the
    overflow series, and the decoders inet_ip, ifname, cgroup, errno, string, hex."""
    config = build(tmp_path, "maps", USERSPACE_MAPS_C, USERSPACE_MAPS_YAML)
    with exporter(config) as ex:
        obj = ex.objects["maps"]
        for name in ("lat_exp2", "lat_exp2zero", "lat_linear"):
            for bucket, n in ((0, 2), (1, 3), (3, 5), (4, 40)):  # 4 = bucket_max + 1: sum
                obj.map(name)[{"group": 7, "bucket": bucket}] = n
        for bucket, n in ((10, 1), (50, 4), (51, 900)):  # 51 = last key + 1: sum
            obj.map("lat_fixed")[{"group": 7, "bucket": bucket}] = n
        obj.map("inferred_seconds")[{"pid": 42, "op": 1, "slot": 2}] = 6
        for queue in range(10):
            obj.map("queue_depth")[queue] = 100 + queue
        cgroup_root = cgroup2_mount()
        root_cgroup = os.stat(cgroup_root).st_ino
        obj.map("decoded")[
            {
                "v4": [10, 1, 2, 3],
                "v6": [0] * 10 + [0xFF, 0xFF, 1, 2, 3, 4],
                "ifindex": socket.if_nametoindex("lo"),
                "cgroup": root_cgroup,
                "err": 2,
                "name": 'disk"a\\b',
            }
        ] = 1
        text = scrape(ex)
        again = scrape(ex)  # from the caches this time: the same text
    assert text == again
    got = samples(text)

    def histogram(name: str, **labels: str) -> dict[str, float]:
        buckets = {}
        for (sample, sample_labels), v in got.items():
            rest = dict(sample_labels)
            le = rest.pop("le", None)
            if sample == f"{name}_bucket" and rest == labels:
                buckets[le] = v
        return buckets

    group = {"group": "7"}
    assert histogram("ebpf_exporter_lat_exp2", **group) == {
        "1": 2,
        "2": 5,
        "4": 5,
        "8": 10,
        "+Inf": 10,
    }
    assert histogram("ebpf_exporter_lat_exp2zero", **group) == {
        "0": 2,
        "1": 5,
        "2": 5,
        "4": 10,
        "+Inf": 10,
    }
    assert histogram("ebpf_exporter_lat_linear", **group) == {"0.5": 3, "1": 3, "1.5": 8, "+Inf": 8}
    assert histogram("ebpf_exporter_lat_fixed", **group) == {
        "0.01": 1,
        "0.02": 1,
        "0.05": 5,
        "+Inf": 5,
    }
    labels = frozenset(group.items())
    assert got[("ebpf_exporter_lat_exp2_sum", labels)] == 40
    assert got[("ebpf_exporter_lat_exp2_count", labels)] == 10
    assert got[("ebpf_exporter_lat_linear_sum", labels)] == 20  # 40 * 0.5
    assert got[("ebpf_exporter_lat_fixed_sum", labels)] == pytest.approx(0.9)
    assert histogram("ebpf_exporter_inferred_seconds", pid="42", op="1") == {
        "1": 0,
        "2": 0,
        "4": 6,
        "+Inf": 6,
    }
    depth = {dict(k[1])["queue"]: v for k, v in got.items() if k[0] == "ebpf_exporter_queue_depth"}
    assert len(depth) == 4 and "__overflow__" in depth
    kept = {q: v for q, v in depth.items() if q != "__overflow__"}
    assert all(v == 100 + int(q) for q, v in kept.items())
    assert depth["__overflow__"] == sum(range(100, 110)) - sum(kept.values())
    overflow = (
        "ebpf_exporter_overflow_label_sets",
        frozenset({("config", "maps"), ("metric", "ebpf_exporter_queue_depth")}),
    )
    assert got[overflow] == 7
    ((_, decoded_labels),) = [k for k in got if k[0] == "ebpf_exporter_decoded"]
    assert dict(decoded_labels) == {
        "v4": "10.1.2.3",
        "v6": "1.2.3.4",
        "ifname": "lo",
        "cgroup": cgroup_root,
        "errno": "ENOENT",
        "name": 'disk"a\\b',
        "name_hex": b'disk"a\\b\0\0\0\0'.hex(),
    }
