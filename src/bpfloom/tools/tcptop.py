"""tcptop: the processes and connections moving the most TCP data, counted in the kernel.

Output and options as libbpf-tools' tcptop: every interval (1 s by default; ``tcptop
[interval] [count]``) the screen is cleared (``-C``: not; never when stdout is not a
terminal), a summary line ``HH:MM:SS loadavg: ...`` from /proc/loadavg is printed
(``-S``: not), then ``PID COMM LADDR RADDR RX_KB TX_KB``: the kilobytes (1024 bytes,
rounded down) each process received and sent on each connection during the interval,
IPv4 connections first, then IPv6 ones under ``LADDR6 RADDR6`` headers, each sorted by
``-s all`` (sent + received, the default), ``sent`` or ``received``, at most ``-r ROWS``
(default 20) in all. ``-p PID`` counts one process only, ``-4``/``-6`` one family (in
the kernel). COMM is the process's name when it first moved data on that connection,
escaped like every cell.

``--json``: one object per row per interval: ``{"interval", "time", "pid", "comm",
"ip", "laddr", "lport", "raddr", "rport", "rx_kb", "tx_kb", "rx_bytes",
"tx_bytes"}``, ``rx_bytes``/``tx_bytes`` exact.

What is counted: the bytes each sending or receiving call returned (tracepoints
sock/sock_send_length and sock/sock_recv_length, fired in the calling process; see
``bpf/tcptop.bpf.c`` for the calls this covers and what it does not). A connection's
counters are kept per socket and process in the kernel and only grow; each interval
prints the differences, and the counters of sockets the kernel has destroyed are
deleted once read (tcp/tcp_destroy_sock marks them), so nothing is lost between
intervals and the maps do not fill with old connections.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..sinks.table import format_table
from .aggregates import AggregateTool, Growing
from .inet import AF_INET, AF_INET6, endpoint, inet_addr, ip_version
from .tool import Column, Record

SORTS = {"all": ("rx_bytes", "tx_bytes"), "sent": ("tx_bytes",), "received": ("rx_bytes",)}
DEFAULT_ROWS = 20

FlowKey = tuple[int, str, int, str, int, str, int]  # pid, comm, ip, laddr, lport, raddr, rport


def _columns(six: bool) -> tuple[Column, ...]:
    suffix = "6" if six else ""
    return (
        Column("PID", 7),
        Column("COMM", 12),
        Column(f"LADDR{suffix}", 21, text=lambda r: endpoint(r["laddr"], r["lport"])),
        Column(f"RADDR{suffix}", 21, text=lambda r: endpoint(r["raddr"], r["rport"])),
        Column("RX_KB", 6, right=True),
        Column("TX_KB", 6, right=True),
    )


class TcpTop(AggregateTool):
    """TCP bytes sent and received per process and connection, counted in the kernel.

    ``pid`` (0: any) and ``family`` (4 or 6, None: both) filter in the kernel. Read
    the counts with ``flows()``. Raises ``ValueError`` for arguments that do not fit
    (and load errors, as any tool).
    """

    name = "tcptop"
    object_name = "tcptop"
    noun = "bytes"
    columns = _columns(False)
    columns6 = _columns(True)

    def __init__(self, *, pid: int = 0, family: int | None = None) -> None:
        if pid < 0:
            raise ValueError("pid must be positive (0: any)")
        if family not in (None, 4, 6):
            raise ValueError(f"family must be 4 or 6, not {family}")
        self.pid, self.family = pid, family
        self.sent = self.received = 0  # bytes reported so far
        self._growing = Growing()
        super().__init__()

    def configure(self) -> None:
        g = self.obj.globals
        g["targ_tgid"] = self.pid
        g["targ_family"] = {None: 0, 4: AF_INET, 6: AF_INET6}[self.family]

    def flows(
        self, *, sort: str = "all", top: int | None = None, reset: bool = True
    ) -> list[Record]:
        """The bytes moved since the last reset, one row per process and connection
        (rows that moved nothing are left out): IPv4 first, then IPv6, each sorted by
        ``sort`` (``all``, ``sent``, ``received``), at most ``top`` rows in all.
        ``reset`` makes the next call count from now and deletes the counters of
        sockets destroyed before this read."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
        sockets = self.obj.maps["sockets"]
        flows = self.obj.maps["flows"]
        # Before the counters: a socket destroyed by now moved its last byte before.
        closed = {cookie for cookie, is_closed in sockets.items() if is_closed}
        now = time.time()
        current: dict[tuple[int, int], list[int]] = {}
        values: dict[tuple[int, int], Any] = {}
        map_keys: dict[tuple[int, int], Any] = {}
        for key, value in flows.items():
            k = (key.cookie, key.pid)
            current[k] = [value.sent, value.received]
            values[k], map_keys[k] = value, key
        summed: dict[FlowKey, list[int]] = {}
        for k, (sent, received) in self._growing.since(current, reset).items():
            v = values[k]
            flow = (
                k[1],
                v.comm,
                ip_version(v.family),
                inet_addr(v.family, bytes(v.laddr)),
                v.lport,
                inet_addr(v.family, bytes(v.raddr)),
                v.rport,
            )
            totals = summed.setdefault(flow, [0, 0])
            totals[0] += sent
            totals[1] += received
        rows = [_row(now, flow, sent, received) for flow, (sent, received) in summed.items()]
        if reset:
            self.sent += sum(r["tx_bytes"] for r in rows)
            self.received += sum(r["rx_bytes"] for r in rows)
            self.counted = self.sent + self.received
            gone = [k for k in current if k[0] in closed]
            for k in gone:
                flows.delete(map_keys[k])
            self._growing.forget(gone)
            for cookie in closed:
                sockets.delete(cookie)
        fields = SORTS[sort]
        rows.sort(key=lambda r: (r["ip"], -sum(r[f] for f in fields), r["pid"], r["lport"]))
        return rows[:top]

    def interval_rows(self) -> list[Record]:
        return self.flows()

    def text_lines(self, rows: Sequence[Record]) -> list[str]:
        """The IPv4 table, then the IPv6 one after a blank line (each only if it has
        rows; the IPv4 header always)."""
        four = [r for r in rows if r["ip"] == 4]
        six = [r for r in rows if r["ip"] == 6]
        lines = format_table(self.columns, four)
        if six:
            lines += ["", *format_table(self.columns6, six)]
        return lines

    def exit_line(self, stats: dict[str, Any]) -> str:
        return (
            f"bpfloom {self.name}: {self.sent} bytes sent and {self.received} received "
            f"counted in the kernel; {self.dropped_kernel()} calls not counted (map full)"
        )


def _row(now: float, flow: FlowKey, sent: int, received: int) -> Record:
    pid, comm, ip, laddr, lport, raddr, rport = flow
    return {
        "time": now,
        "pid": pid,
        "comm": comm,
        "ip": ip,
        "laddr": laddr,
        "lport": lport,
        "raddr": raddr,
        "rport": rport,
        "rx_kb": received // 1024,
        "tx_kb": sent // 1024,
        "rx_bytes": received,
        "tx_bytes": sent,
    }
