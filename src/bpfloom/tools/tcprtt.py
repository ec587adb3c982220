"""tcprtt: TCP smoothed round-trip times as log2 histograms.

Options and output as libbpf-tools' tcprtt: one histogram of every socket's srtt in
usecs (``-m``: msecs), or one per local address (``-b``, headed ``Local Address =
ADDR``) or per remote address (``-B``, ``Remote Address = ADDR``); the one histogram is
headed ``All Address = ******`` (libbpf-tools' words). ``-e`` adds ``[AVG n]`` to the
header, the mean of the samples in the histogram's unit. Filters run in the kernel:
``-p``/``-P`` the local/remote port, ``-a``/``-A`` the local/remote address (IPv4 or IPv6; an IPv4
address also matches a dual-stack socket talking to it), ``-4``/``-6`` the family.
``tcprtt [interval] [count]`` (or libbpf-tools' ``-i INTERVAL``), ``-T``, ``--json``
and ``--duration`` (or ``-d``) as every metric tool (``bpfloom.tools.aggregates``).

A sample is a segment received by an established socket, valued at that socket's
smoothed RTT (the tracepoint tcp/tcp_probe, fired by ``tcp_rcv_established``, where
libbpf-tools' fentry hooks). So a socket counts once per segment it receives, and both
ends of a connection between two sockets of this host give samples, each its own.
Before its first RTT measurement a socket's srtt is 0 (slot 0).

``--json``: ``{"interval", "time", ["laddr"|"raddr",] "unit", "slots", "count"}`` per
histogram per interval, plus ``"avg"`` (a float in ``unit``) with ``-e``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .aggregates import UNITS, AggregateTool, Growing, hist_lines, hist_record
from .inet import AF_INET, AF_INET6, inet_addr, mapped_addr
from .tool import Record

KEYS = {None: 0, "laddr": 1, "raddr": 2}  # KEY_* of bpf/tcprtt.bpf.c
HEADERS = {None: "All Address = ******", "laddr": "Local Address =", "raddr": "Remote Address ="}


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not between 1 and 65535")


class TcpRtt(AggregateTool):
    """Histograms of TCP sockets' smoothed RTT, aggregated in the kernel.

    ``by`` keys them by ``"laddr"`` or ``"raddr"`` (None: one histogram); ``lport``,
    ``rport`` (0: any), ``laddr``, ``raddr`` (text; None: any) and ``family`` (4 or 6)
    filter in the kernel; ``milliseconds`` counts in msecs instead of usecs;
    ``extended`` adds each histogram's average. Read them with ``histograms()``.
    Raises ``ValueError`` for arguments that do not fit (and load errors, as any tool).
    """

    name = "tcprtt"
    object_name = "tcprtt"
    noun = "RTT samples"

    def __init__(
        self,
        *,
        by: str | None = None,
        lport: int = 0,
        rport: int = 0,
        laddr: str | None = None,
        raddr: str | None = None,
        family: int | None = None,
        milliseconds: bool = False,
        extended: bool = False,
    ) -> None:
        if by not in KEYS:
            raise ValueError(f"by must be 'laddr' or 'raddr', not {by!r}")
        if family not in (None, 4, 6):
            raise ValueError(f"family must be 4 or 6, not {family}")
        for port in (lport, rport):
            if port:
                check_port(port)
        self.laddr = None if laddr is None else mapped_addr(laddr)
        self.raddr = None if raddr is None else mapped_addr(raddr)
        self.by, self.lport, self.rport, self.family = by, lport, rport, family
        self.extended = extended
        self.unit = "msecs" if milliseconds else "usecs"
        self._growing = Growing()
        super().__init__()

    def configure(self) -> None:
        g = self.obj.globals
        g["targ_family"] = {None: 0, 4: AF_INET, 6: AF_INET6}[self.family]
        g["targ_lport"] = self.lport
        g["targ_rport"] = self.rport
        g["targ_laddr_set"] = self.laddr is not None
        g["targ_raddr_set"] = self.raddr is not None
        g["targ_laddr"] = list(self.laddr or bytes(16))
        g["targ_raddr"] = list(self.raddr or bytes(16))
        g["targ_key"] = KEYS[self.by]
        g["targ_unit"] = UNITS[self.unit]

    def histograms(self, reset: bool = True) -> list[Record]:
        """The histograms grown since the last reset: ``{"time", ["laddr"|"raddr",]
        "unit", "slots", "count"[, "avg"]}``, by address; ``reset`` makes the next read
        count from now."""
        now = time.time()
        current: dict[bytes, list[int]] = {}
        for key, value in self.obj.maps["hists"].items():
            current[bytes(key.addr)] = [value.total_us, *value.slots]
        rows = []
        for addr, (total_us, *slots) in sorted(self._growing.since(current, reset).items()):
            row: Record = {"time": now}
            if self.by is not None:
                row[self.by] = inet_addr(AF_INET6, addr)
            row |= hist_record(slots, self.unit)
            if self.extended and row["count"]:
                scale = 1000 if self.unit == "msecs" else 1
                row["avg"] = round(total_us / scale / row["count"], 3)
            rows.append(row)
        if reset:
            self.counted += sum(row["count"] for row in rows)
        return rows

    def interval_rows(self) -> list[Record]:
        return self.histograms()

    def text_lines(self, rows: Sequence[Record]) -> list[str]:
        """libbpf-tools' layout: per histogram a header line (the address, ``[AVG n]``),
        the bars, a blank line."""
        lines: list[str] = []
        for row in rows:
            header = HEADERS[self.by]
            if self.by is not None:
                header += f" {row[self.by]}"
            if "avg" in row:
                header += f" [AVG {int(row['avg'])}]"
            lines += [header, *hist_lines(row), ""]
        return lines
