"""The ``tcplife`` section of bench/net.py (run that; this module only holds the
section).

- ``tcplife``: a connection storm (a C program, built here with gcc) — ``--clients``
  processes connecting over loopback as fast as they can to ``--servers`` processes
  (SO_REUSEPORT listeners), each connection carrying ``--payload`` bytes each way and
  closed by the client — in a network namespace of its own (so its ports and TIME_WAIT
  sockets are its own), for ``--seconds`` per phase. Phases alternate, ``--rounds``
  times: without tracing (the baseline), and with ``bpfloom tcplife --json`` writing
  every record to a file. Each connection is two sessions (the client's socket and the
  server's), so the sessions tcplife must report are twice the connections made (plus
  any failed connect). It reports the sessions per second it kept up with, what it lost
  (in the kernel, in user space, and sessions missing from its output), the storm's rate
  against the baseline, and CPU: the tool process's own (its ``/proc/PID/stat``, from
  "tracing" to the end of its drain) and its BPF programs' (the kernel's run-time
  statistics, switched on with BPF_ENABLE_STATS for the traced phases only: they run in
  the storm's context, where the storm's own CPU time is too noisy to show them), and
  their sum per 10 000 sessions/s.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BPFLOOM = [sys.executable, "-m", "bpfloom"]
CLONE_NEWNET = 0x40000000
STORM_PORT = 5001
LOST = re.compile(r"^bpfloom tcplife: (\d+) events; lost (\d+) in the kernel, (\d+) in user space")


# --- the connection storm -----------------------------------------------------------------

# The storm in C, compiled at run time (as bench/export.py does its getpid loop): Python
# clients made a fifth of the connections per second and spent most of the CPU in the
# interpreter, so the tool's share would have been measured against the wrong thing.
STORM_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* storm NETNS CLIENTS SERVERS SECONDS PAYLOAD PORT, in network namespace NETNS on
 * 127.0.0.1:PORT. Prints "connections failed seconds cpu_seconds" (the CPU time of
 * every storm process, clients and servers). */
#define MAX_PROCS 64

static double now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int recv_exactly(int fd, char *buf, int n)
{
    while (n > 0) {
        int got = recv(fd, buf, n, 0);

        if (got <= 0)
            return -1;
        n -= got;
        buf += got;
    }
    return 0;
}

static double reap(pid_t pid)
{
    struct rusage ru;

    wait4(pid, NULL, 0, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    int clients, servers, payload, one = 1, nsfd, lfd[MAX_PROCS], pipes[MAX_PROCS][2];
    pid_t spid[MAX_PROCS], cpid[MAX_PROCS];
    long ok = 0, failed = 0;
    double seconds, start, cpu = 0;
    char path[256], buf[65536];

    if (argc != 7)
        return 2;
    clients = atoi(argv[2]);
    servers = atoi(argv[3]);
    seconds = atof(argv[4]);
    payload = atoi(argv[5]);
    if (clients > MAX_PROCS || servers > MAX_PROCS || payload > (int)sizeof(buf))
        return 2;
    addr.sin_port = htons(atoi(argv[6]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    snprintf(path, sizeof(path), "/run/netns/%s", argv[1]);
    nsfd = open(path, O_RDONLY);
    if (nsfd < 0 || setns(nsfd, CLONE_NEWNET)) {
        perror("setns");
        return 1;
    }
    for (int i = 0; i < servers; i++) {
        lfd[i] = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(lfd[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(lfd[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        if (bind(lfd[i], (void *)&addr, sizeof(addr)) || listen(lfd[i], 4096)) {
            perror("listen");
            return 1;
        }
    }
    for (int i = 0; i < servers; i++) {
        if ((spid[i] = fork()) == 0) {
            prctl(PR_SET_NAME, "stormsrv");
            for (;;) {
                int c = accept(lfd[i], NULL, NULL);

                if (c < 0)
                    continue;
                if (recv_exactly(c, buf, payload) == 0) {
                    send(c, buf, payload, 0);
                    recv(c, buf, 1, 0); /* the client closes first */
                }
                close(c);
            }
        }
    }
    for (int i = 0; i < servers; i++)
        close(lfd[i]);
    start = now() + 0.2; /* every client starts then */
    memset(buf, 'c', payload);
    for (int i = 0; i < clients; i++) {
        if (pipe(pipes[i]))
            return 1;
        if ((cpid[i] = fork()) == 0) {
            double end = start + seconds;

            prctl(PR_SET_NAME, "stormcli");
            while (now() < start)
                ;
            while (now() < end) {
                int s = socket(AF_INET, SOCK_STREAM, 0);

                if (connect(s, (void *)&addr, sizeof(addr)) == 0 &&
                    send(s, buf, payload, 0) == payload && recv_exactly(s, buf, payload) == 0)
                    ok++;
                else
                    failed++;
                close(s);
            }
            dprintf(pipes[i][1], "%ld %ld\n", ok, failed);
            _exit(0);
        }
        close(pipes[i][1]);
    }
    for (int i = 0; i < clients; i++) {
        char line[64] = {0};
        long made = 0, lost = 0;

        if (read(pipes[i][0], line, sizeof(line) - 1) > 0)
            sscanf(line, "%ld %ld", &made, &lost);
        ok += made;
        failed += lost;
        cpu += reap(cpid[i]);
    }
    seconds = now() - start;
    for (int i = 0; i < servers; i++) {
        kill(spid[i], SIGKILL);
        cpu += reap(spid[i]);
    }
    printf("%ld %ld %.6f %.6f\n", ok, failed, seconds, cpu);
    return 0;
}
"""


@contextmanager
def storm_netns() -> Iterator[str]:
    """A network namespace for the storm, with loopback up and the whole ephemeral port
    range (its sysctls, ports and TIME_WAIT sockets are its own)."""
    name = f"bpfloom-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                name,
                "sysctl",
                "-q",
                "net.ipv4.ip_local_port_range=1024 65000",
            ],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def build_storm(tmp: Path) -> Path:
    src, binary = tmp / "storm.c", tmp / "storm"
    src.write_text(STORM_C)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(src)], check=True)
    return binary


def run_storm(storm: Path, netns: str, args: argparse.Namespace) -> dict[str, float]:
    """One storm phase: connections made and failed, seconds, and the storm's CPU."""
    out = subprocess.run(
        [str(storm), netns, str(args.clients), str(args.servers), str(args.seconds),
         str(args.payload), str(STORM_PORT)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {
        "connections": int(out[0]),
        "failed": int(out[1]),
        "seconds": float(out[2]),
        "cpu_s": float(out[3]),
    }


# --- tcplife ------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BPF_ENABLE_STATS, BPF_STATS_RUN_TIME, SYS_BPF = 32, 0, 321  # x86-64


@contextmanager
def bpf_run_time_stats() -> Iterator[None]:
    """Kernel statistics of BPF program run time (run_time_ns, run_cnt in each program's
    fdinfo) while the block runs: BPF_ENABLE_STATS keeps them on as long as the file
    descriptor it returns is open, so they go off again whatever happens."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(BPF_STATS_RUN_TIME.to_bytes(4, "little"), 128)
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    try:
        yield
    finally:
        os.close(fd)


def bpf_prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs process ``pid`` holds."""
    run_time = runs = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        run_time += int(info.get("run_time_ns", "0"))
        runs += int(info.get("run_cnt", "0"))
    return run_time, runs


def _netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def traced_storm(storm: Path, netns: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """A storm phase under ``bpfloom tcplife --json``: the storm's figures, and what the
    tool reported, lost and spent."""
    out_path, err_path = tmp / "tcplife.jsonl", tmp / "tcplife.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        tool = subprocess.Popen(
            [*BPFLOOM, "tcplife", "--json"], stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
    try:
        while "tcplife: tracing" not in err_path.read_text():
            if tool.poll() is not None:
                raise RuntimeError(f"tcplife exited: {err_path.read_text()}")
            time.sleep(0.05)
        cpu0, bpf0 = _proc_cpu(tool.pid), bpf_prog_stats(tool.pid)
        phase = run_storm(storm, netns, args)
        expected = 2 * phase["connections"] + phase["failed"]
        inode = _netns_inode(netns)
        # Let it drain what the storm left in the ring and the queue (bounded wait).
        seen, deadline, last_size = 0, time.monotonic() + 60, -1
        while time.monotonic() < deadline:
            size = out_path.stat().st_size
            if size == last_size:
                break
            last_size = size
            time.sleep(0.5)
        tool_cpu = _proc_cpu(tool.pid) - cpu0
        bpf1 = bpf_prog_stats(tool.pid)
    finally:
        tool.send_signal(signal.SIGINT)
        tool.wait(timeout=60)
    for line in out_path.read_text().splitlines():
        if line and json.loads(line)["netns"] == inode:
            seen += 1
    found = [m for m in map(LOST.match, err_path.read_text().splitlines()) if m]
    if not found:
        raise RuntimeError(f"no exit line from tcplife: {err_path.read_text()}")
    events, kernel, user = (int(x) for x in found[0].groups())
    return {**phase, "expected": expected, "seen": seen, "events": events,
            "lost_kernel": kernel, "lost_user": user, "tool_cpu_s": tool_cpu,
            "bpf_ns": bpf1[0] - bpf0[0], "bpf_runs": bpf1[1] - bpf0[1]}  # fmt: skip


def tcplife_section(args: argparse.Namespace) -> dict[str, Any]:
    baseline: list[dict[str, float]] = []
    traced: list[dict[str, Any]] = []
    with storm_netns() as netns, tempfile.TemporaryDirectory(prefix="bpfloom-net-") as tmp:
        storm = build_storm(Path(tmp))
        for _ in range(args.rounds):
            baseline.append(run_storm(storm, netns, args))
            with bpf_run_time_stats():
                traced.append(traced_storm(storm, netns, args, Path(tmp)))

    def rate(phases: list[dict[str, Any]]) -> float:
        return sum(p["connections"] for p in phases) / sum(p["seconds"] for p in phases)

    def cpu_per_conn(phases: list[dict[str, Any]]) -> float:
        return sum(p["cpu_s"] for p in phases) / sum(p["connections"] for p in phases)

    seconds = sum(p["seconds"] for p in traced)
    sessions_per_s = sum(p["seen"] for p in traced) / seconds
    lost = sum(
        p["lost_kernel"] + p["lost_user"] + max(0, p["expected"] - p["seen"]) for p in traced
    )
    tool_cores = sum(p["tool_cpu_s"] for p in traced) / seconds
    bpf_ns, bpf_runs = sum(p["bpf_ns"] for p in traced), sum(p["bpf_runs"] for p in traced)
    bpf_cores = bpf_ns / 1e9 / seconds
    per_10k = sessions_per_s / 10_000
    return {
        "section": "tcplife",
        "tcplife_storm_clients": args.clients,
        "tcplife_storm_servers": args.servers,
        "tcplife_payload_bytes": args.payload,
        "tcplife_seconds_per_phase": args.seconds,
        "tcplife_rounds": args.rounds,
        "tcplife_baseline_connections_per_s": round(rate(baseline)),
        "tcplife_traced_connections_per_s": round(rate(traced)),
        "tcplife_storm_rate_vs_baseline": round(rate(traced) / rate(baseline), 3),
        "tcplife_sessions_per_s": round(sessions_per_s),
        "tcplife_sessions_expected": sum(p["expected"] for p in traced),
        "tcplife_sessions_seen": sum(p["seen"] for p in traced),
        "tcplife_lost": lost,
        "tcplife_lost_kernel": sum(p["lost_kernel"] for p in traced),
        "tcplife_lost_user": sum(p["lost_user"] for p in traced),
        "tcplife_tool_cpu_cores": round(tool_cores, 3),
        "tcplife_bpf_cpu_cores": round(bpf_cores, 3),
        "tcplife_bpf_ns_per_run": round(bpf_ns / bpf_runs) if bpf_runs else None,
        "tcplife_bpf_runs_per_connection": round(
            bpf_runs / sum(p["connections"] for p in traced), 2
        ),
        "tcplife_storm_cpu_us_per_connection_baseline": round(cpu_per_conn(baseline) * 1e6, 1),
        "tcplife_storm_cpu_us_per_connection_traced": round(cpu_per_conn(traced) * 1e6, 1),
        "tcplife_tool_cpu_per_10k_sessions_per_s": round(tool_cores / per_10k, 3),
        "tcplife_cpu_per_10k_sessions_per_s": round((tool_cores + bpf_cores) / per_10k, 3),
    }
