"""The ``flows`` section of bench/net.py (run that; this module only holds the
section).

- ``flows`` (``bpfloom flows``):

  - packets per second through a veth pair: a C sender in a network namespace of its
    own (``sendmmsg``, 16 UDP sockets round-robin, so 16 flows, 18-byte payloads:
    64-byte frames) pinned to one CPU sends to the host end for ``--seconds``; the
    host end's ``rx_packets`` counts what got through, and a socket there drops
    what its small buffer cannot hold. The receiving work (the hooks, IP, UDP) runs
    in softirq on the sender's CPU, inside its ``sendmmsg`` calls, so what a hook
    costs is CPU time the sender loses. The measure is packets per CPU-second: the
    sender thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``, its ``sum_exec_runtime``,
    which holds the softirq work done in its system calls: this kernel does not
    account irq time apart) plus that CPU's ksoftirqd's, for work left for later —
    which other processes on a shared machine do not inflate, where wall-clock pps
    move by ±20 % with their load (also reported, best round: ``flows_wall_*``).
    Conditions rotate every round, the median of each is kept: nothing attached;
    empty programs (``bench/bpf/net_pass.bpf.c``) on both tc hooks through tcx links
    and as clsact filters, and on XDP; ``Flows`` likewise (``--tc-mode tcx``,
    ``clsact``, ``--xdp``), polled every second as the command does.
    ``flows_pps_ratio`` is Flows with tcx links (the default on Linux 6.6+) ÷ nothing
    attached (target ≥ 0.9); ``flows_clsact_pps_ratio`` the same with clsact filters;
    ``flows_pps_vs_empty_tc``, ``flows_clsact_pps_vs_empty`` and
    ``flows_xdp_pps_ratio`` divide by the empty program on the same hook (attaching
    any XDP program changes how veth receives), which isolates the program's own
    cost; ``flows_ns_per_packet`` is the CPU time per packet of each condition.
  - the export rate at 100 000 concurrent flows: 100 000 UDP datagrams, each its own
    flow, sent from the host through tc egress into a ``Flows`` map of 262 144
    entries, then timed: a scan when nothing is due (``flows_scan_ms``: one batch
    walk and the per-flow bookkeeping, the cost of every second), the scan that
    exports all of them at the active timeout (``flows_exported_per_s``: records
    made per second of that scan), those records written as JSON lines to a file
    (``flows_json_lines_per_s``), and the scan that removes them all at the idle
    timeout (``flows_expired_per_s``: one lookup-and-delete each). Rates are per
    second of this thread's CPU time (system calls included), which other processes
    on a shared machine do not inflate.
  - the programs' own cost per packet (``flows_prog_ns_tc``, ``flows_prog_ns_xdp``,
    beside the empty programs'): BPF_PROG_TEST_RUN on a 64-byte UDP frame, a million
    runs timed by the kernel, best of five. No traffic, no other process in the
    number: what the pps ratio is made of, on a machine too busy to measure it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_BPF = ROOT / "bench" / "bpf"
EXPORT_FLOWS = 100_000
PAYLOAD = 18  # bytes: 14 + 20 + 8 + 18 = 60, a minimum Ethernet frame with its FCS
SOCKETS = 16
PORT = 9

UDPFLOOD_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32

/* udpflood DST_IP PORT SECONDS PAYLOAD SOCKETS CPU: prints "sent elapsed_s cpu_s", the
   last the thread's CPU time (sum_exec_runtime: with the softirq work run in its
   system calls, since this kernel does not account irq time apart) */
int main(int argc, char **argv)
{
    double seconds = atof(argv[3]);
    int payload = atoi(argv[4]), nsock = atoi(argv[5]);
    int socks[256];
    static char buf[1500];
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    struct mmsghdr msgs[BATCH];
    struct iovec iov = {.iov_base = buf, .iov_len = payload};
    struct timespec a, b, ca, cb;
    cpu_set_t set;
    long sent = 0;
    double elapsed = 0;

    CPU_ZERO(&set);
    CPU_SET(atoi(argv[6]), &set);
    sched_setaffinity(0, sizeof(set), &set);
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    for (int i = 0; i < nsock; i++) {
        socks[i] = socket(AF_INET, SOCK_DGRAM, 0);
        if (socks[i] < 0 || connect(socks[i], (void *)&dst, sizeof(dst))) {
            perror("socket");
            return 1;
        }
    }
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
    clock_gettime(CLOCK_MONOTONIC, &a);
    while (elapsed < seconds) {
        for (int i = 0; i < nsock; i++) {
            int n = sendmmsg(socks[i], msgs, BATCH, 0);
            if (n > 0)
                sent += n;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        elapsed = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cb);
    printf("%ld %.6f %.6f\n", sent, elapsed,
           (cb.tv_sec - ca.tv_sec) + (cb.tv_nsec - ca.tv_nsec) / 1e9);
    return 0;
}
"""


# --- a veth pair into a namespace -----------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """``host`` (address ``host_ip``) here, its peer (``peer_ip``) in namespace ``ns``."""

    ns: str
    host: str
    peer: str
    host_ip: str
    peer_ip: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair() -> Iterator[Pair]:
    """A veth pair whose far end sits in a namespace made for this run (names and the
    /30 from this process's pid, so runs side by side do not clash); removed after."""
    tag = os.getpid() % 100000
    subnet = os.getpid() % 16384
    base = f"10.251.{subnet // 64}.{(subnet % 64) * 4}"
    prefix, last = base.rsplit(".", 1)
    pair = Pair(
        f"bpfloom-bench-{tag}",
        f"bfb{tag}a",
        f"bfb{tag}b",
        f"{prefix}.{int(last) + 1}",
        f"{prefix}.{int(last) + 2}",
    )
    _ip("netns", "add", pair.ns)
    try:
        _ip("link", "add", pair.host, "type", "veth", "peer", "name", pair.peer)
        _ip("link", "set", pair.peer, "netns", pair.ns)
        _ip("addr", "add", f"{pair.host_ip}/30", "dev", pair.host)
        _ip("link", "set", pair.host, "up")
        _ip("-n", pair.ns, "addr", "add", f"{pair.peer_ip}/30", "dev", pair.peer)
        _ip("-n", pair.ns, "link", "set", pair.peer, "up")
        _ip("-n", pair.ns, "link", "set", "lo", "up")
        # Neighbours resolved both ways, so no datagram waits for ARP.
        subprocess.run(
            ["ping", "-c", "1", "-W", "2", pair.peer_ip], check=True, capture_output=True
        )
        yield pair
    finally:
        subprocess.run(["ip", "link", "del", pair.host], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", pair.ns], capture_output=True, check=False)


def _rx_packets(interface: str) -> int:
    return int(Path(f"/sys/class/net/{interface}/statistics/rx_packets").read_text())


# --- flows: packets per second ------------------------------------------------------------


class _Attached:
    """One condition of the pps rounds: what is attached to the host end meanwhile."""

    def __init__(self, kind: str, interface: str) -> None:
        import bpfloom
        from bpfloom.tools.flows import Flows

        self.kind = kind
        self.objects: list[Any] = []
        self.tool: Flows | None = None
        self.ingress_packets = 0  # in the records of Flows
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if kind.startswith("empty_"):
            obj = bpfloom.load(BENCH_BPF / "net_pass.bpf.o")
            self.objects.append(obj)
            if kind == "empty_tcx":
                obj.program("pass_tc").attach_tcx(interface, "ingress")
                obj.program("pass_tc").attach_tcx(interface, "egress")
            elif kind == "empty_clsact":
                obj.program("pass_tc").attach_tc(interface, "ingress")
                obj.program("pass_tc").attach_tc(interface, "egress")
            else:
                obj.program("pass_xdp").attach_xdp(interface)
        elif kind.startswith("flows_"):
            mode = kind.removeprefix("flows_")
            if mode == "xdp":
                self.tool = Flows(interface, xdp=True)
            else:
                self.tool = Flows(interface, tc_mode=mode)
            self.tool.attach()
            self._poller = threading.Thread(target=self._poll, name="bench-poll", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        assert self.tool is not None
        while not self._stop.wait(1.0):
            self._count(self.tool.poll())

    def _count(self, records: list[dict[str, Any]]) -> None:
        self.ingress_packets += sum(r["packets"] for r in records if r["direction"] == "ingress")

    def close(self) -> dict[str, int]:
        """Detach everything; for Flows, the ingress packets it counted in total."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        out: dict[str, int] = {}
        if self.tool is not None:
            self.tool.detach()
            self._count(self.tool.flush())
            out["counted"] = self.ingress_packets
            self.tool.close()
        for obj in self.objects:
            obj.close()
        return out


def _ksoftirqd_ns(cpu: int) -> int:
    """CPU time (ns, sum_exec_runtime) of ``cpu``'s ksoftirqd so far: softirq work the
    sender's system calls left for later is done there."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == f"ksoftirqd/{cpu}":
                return int((entry / "schedstat").read_text().split()[0])
        except OSError:
            continue
    return 0


def _pps_rounds(pair: Pair, sender: Path, seconds: float, rounds: int) -> dict[str, Any]:
    kinds = [
        "none",
        "empty_tcx",
        "flows_tcx",
        "empty_clsact",
        "flows_clsact",
        "empty_xdp",
        "flows_xdp",
    ]
    cpu = (os.cpu_count() or 1) - 1
    # The host end's socket: never read, it drops what its small buffer cannot hold.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind((pair.host_ip, PORT))
    per_cpu_s: dict[str, list[float]] = {k: [] for k in kinds}
    per_s: dict[str, list[float]] = {k: [] for k in kinds}
    counted: dict[str, int] = {}
    try:
        for r in range(rounds):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for kind in order:
                attached = _Attached(kind, pair.host)
                try:
                    rx0, soft0 = _rx_packets(pair.host), _ksoftirqd_ns(cpu)
                    out = subprocess.run(
                        [
                            "ip",
                            "netns",
                            "exec",
                            pair.ns,
                            str(sender),
                            pair.host_ip,
                            str(PORT),
                            str(seconds),
                            str(PAYLOAD),
                            str(SOCKETS),
                            str(cpu),
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout.split()
                    rx = _rx_packets(pair.host) - rx0
                    soft = (_ksoftirqd_ns(cpu) - soft0) / 1e9
                finally:
                    info = attached.close()
                elapsed, cpu_s = float(out[1]), float(out[2])
                per_cpu_s[kind].append(rx / (cpu_s + soft))
                per_s[kind].append(rx / elapsed)
                if "counted" in info:
                    # Everything that arrived was counted (but ARP): a sanity check.
                    counted[kind] = counted.get(kind, 0) + info["counted"] - rx
    finally:
        sink.close()
    cpu_pps = {k: statistics.median(v) for k, v in per_cpu_s.items()}
    wall_pps = {k: max(v) for k, v in per_s.items()}
    return {
        "flows_pps_ratio": round(cpu_pps["flows_tcx"] / cpu_pps["none"], 3),
        "flows_pps_vs_empty_tc": round(cpu_pps["flows_tcx"] / cpu_pps["empty_tcx"], 3),
        "flows_clsact_pps_ratio": round(cpu_pps["flows_clsact"] / cpu_pps["none"], 3),
        "flows_clsact_pps_vs_empty": round(cpu_pps["flows_clsact"] / cpu_pps["empty_clsact"], 3),
        "flows_xdp_pps_ratio": round(cpu_pps["flows_xdp"] / cpu_pps["empty_xdp"], 3),
        "flows_ns_per_packet": {k: round(1e9 / v) for k, v in cpu_pps.items()},
        "flows_pps_per_cpu_s": {k: round(v) for k, v in cpu_pps.items()},
        "flows_pps_per_cpu_s_rounds": {k: [round(x) for x in v] for k, v in per_cpu_s.items()},
        "flows_wall_pps_ratio": round(wall_pps["flows_tcx"] / wall_pps["none"], 3),
        "flows_wall_pps": {k: round(v) for k, v in wall_pps.items()},
        "flows_counted_minus_received": counted,
        "flows_pps_seconds": seconds,
        "flows_pps_cpu": cpu,
    }


# --- flows: export rate -------------------------------------------------------------------


def _export_rate(pair: Pair, tmp: Path) -> dict[str, Any]:
    from bpfloom.sinks.jsonl import JsonLinesSink
    from bpfloom.tools.flows import Flows

    active, idle = 5.0, 10.0
    with Flows(pair.host, active_timeout=active, idle_timeout=idle, max_flows=262_144) as tool:
        tool.attach()
        # 100 000 flows: two source ports times 50 000 destination ports.
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        t0 = time.perf_counter()
        for s in socks:
            for port in range(10_000, 10_000 + EXPORT_FLOWS // 2):
                s.sendto(b"f", (pair.peer_ip, port))
        send_seconds = time.perf_counter() - t0
        sent_ns = time.monotonic_ns()
        for s in socks:
            s.close()

        def timed(call: Callable[[], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], float]:
            """``call()`` and the CPU time this thread spent in it (system calls
            included; what other processes take on a shared machine is not)."""
            c = time.thread_time()
            out = call()
            return out, time.thread_time() - c

        # The timeouts are passed by telling poll() the time (its now_ns), not by
        # waiting: the work is the same, the run shorter.
        first, first_s = timed(tool.poll)  # meets every flow: nothing remembered yet
        again, scan_s = timed(tool.poll)  # nothing due: the steady cost of a scan
        at_active = sent_ns + int((active + 0.5) * 1e9)
        exported, export_s = timed(lambda: tool.poll(at_active))
        path = tmp / "flows.jsonl"
        sink = JsonLinesSink(str(path))

        def write() -> list[dict[str, Any]]:
            sink.summary("", exported)
            sink.close()
            return exported

        _, json_s = timed(write)
        expired_before = tool.removed
        at_idle = sent_ns + int((idle + 2) * 1e9)
        expired, expire_s = timed(lambda: tool.poll(at_idle))
        removed = tool.removed - expired_before
        tool.detach()
        tool.flush()
        return {
            "flows_export_flows": EXPORT_FLOWS,
            "flows_created": tool.created(),
            "flows_evicted": tool.evicted(),
            "flows_send_seconds": round(send_seconds, 3),
            "flows_first_scan_ms": round(first_s * 1e3, 1),
            "flows_scan_ms": round(scan_s * 1e3, 1),
            "flows_exported": len(exported),
            "flows_exported_per_s": round(len(exported) / export_s),
            "flows_json_lines_per_s": round(len(exported) / json_s),
            "flows_json_mib": round(path.stat().st_size / (1 << 20), 2),
            "flows_expired": removed,
            "flows_expired_per_s": round(removed / expire_s),
            "flows_records_at_first_scans": len(first) + len(again),
            "flows_records_at_idle": len(expired),
        }


def _udp_frame() -> bytes:
    """An Ethernet frame holding an IPv4 UDP datagram of PAYLOAD bytes."""
    payload = b"x" * PAYLOAD
    udp = struct.pack("!HHHH", 40000, PORT, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), bytes(4))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def _program_ns(path: Path, program: str, repeat: int = 1_000_000) -> float:
    """Nanoseconds one run of ``program`` takes on a UDP frame (BPF_PROG_TEST_RUN with
    ``repeat``; the kernel times the loop; best of five)."""
    import ctypes

    import bpfloom
    from bpfloom import _libbpf

    frame = _udp_frame()
    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(2048)
    best = float("inf")
    with bpfloom.BpfObject(path) as obj:
        obj.load()
        fd = obj.program(program).fd
        for _ in range(5):
            opts = _libbpf.TestRunOpts(sz=ctypes.sizeof(_libbpf.TestRunOpts), repeat=repeat)
            opts.data_in, opts.data_size_in = ctypes.addressof(data), len(frame)
            opts.data_out, opts.data_size_out = ctypes.addressof(out), len(out)
            _libbpf.check(_libbpf.bpf_prog_test_run_opts(fd, ctypes.byref(opts)), "test run")
            best = min(best, opts.duration)
    return best


def _program_costs() -> dict[str, Any]:
    """The programs' own cost per packet, away from any traffic: one flow, hit again
    and again (the common case), against the empty programs."""
    flows = ROOT / "src/bpfloom/bpf/flows.bpf.o"
    empty = BENCH_BPF / "net_pass.bpf.o"
    return {
        "flows_prog_ns_tc": _program_ns(flows, "flows_ingress"),
        "empty_prog_ns_tc": _program_ns(empty, "pass_tc"),
        "flows_prog_ns_xdp": _program_ns(flows, "flows_xdp"),
        "empty_prog_ns_xdp": _program_ns(empty, "pass_xdp"),
    }


def flows_section(args: argparse.Namespace) -> dict[str, Any]:
    """``bpfloom flows``: packets per second with and without it, and its export rate."""
    for obj in (ROOT / "src/bpfloom/bpf/flows.bpf.o", BENCH_BPF / "net_pass.bpf.o"):
        if not obj.exists():
            sys.exit(f"bench: {obj} is missing; run `make bpf` first")
    with tempfile.TemporaryDirectory(prefix="bpfloom-bench-net-") as tmp_name:
        tmp = Path(tmp_name)
        sender = tmp / "udpflood"
        (tmp / "udpflood.c").write_text(UDPFLOOD_C)
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(sender), str(tmp / "udpflood.c")], check=True
        )
        out: dict[str, Any] = {"section": "flows"}
        out.update(_program_costs())
        with veth_pair() as pair:
            out.update(_pps_rounds(pair, sender, args.seconds, args.rounds))
        with veth_pair() as pair:
            out.update(_export_rate(pair, tmp))
        return out
