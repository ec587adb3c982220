"""tcpconnlat: the latency of active TCP opens, from the SYN to the answer.

Columns and options as libbpf-tools' tcpconnlat: ``[TIME(s)|TIME] PID COMM IP SADDR
[LPORT] DADDR DPORT LAT(ms)``, and ``min_ms`` (only slower connects). LAT is the time the
socket spent in SYN_SENT: from connect() (CLOSE -> SYN_SENT) to the answer. As in
libbpf-tools, attempts answered by an RST (refused) are reported too, with the time to
the RST; attempts with no answer (timed out, or closed before it came) have no latency
and are not (``bpfloom tcpconnect`` shows them).

PID and COMM are the process that called connect(). The JSON record has tcpconnect's
keys (``pid``, ``comm``, ``uid``, ``ip``, ``saddr``, ``sport`` — the LPORT column —,
``daddr``, ``dport``, ``result``, ``err``, ``lat_ms``, ``family``, ``time``,
``netns``).
"""

from __future__ import annotations

from typing import Any

from .tcpconnect import connect_record
from .tcpstate import (
    CONNECT_ESTABLISHED,
    CONNECT_REFUSED,
    EV_CONNECT,
    TcpStateTool,
    address_columns,
    comm_cell,
)
from .tool import Column, Record


class TcpConnLat(TcpStateTool):
    """Traces the latency of active TCP opens that got an answer. Filters and table
    options: ``TcpStateTool`` (``pid`` is the caller of connect(), ``rports``
    destination ports), and ``min_ms`` (only slower ones); ``local_port`` adds
    LPORT."""

    name = "tcpconnlat"
    emit = EV_CONNECT
    accept_hooks = False

    def __init__(self, *, min_ms: float = 0.0, local_port: bool = False, **options: Any) -> None:
        if not 0 <= min_ms < 1e9:
            raise ValueError(f"min_ms {min_ms} is not a number of milliseconds")
        self.min_ns, self.local_port = int(min_ms * 1e6), local_port
        super().__init__(**options)

    def table(self, wide: bool) -> tuple[Column, ...]:
        return (
            Column("PID", 6),
            Column("COMM", 12, text=comm_cell),
            Column("IP", 2),
            *address_columns(wide, ("saddr",)),
            *((Column("LPORT", 5, key="sport"),) if self.local_port else ()),
            *address_columns(wide, ("daddr", "dport")),
            Column("LAT(ms)", 0, text=lambda r: f"{r['lat_ms']:.2f}"),
        )

    def configure(self) -> None:
        super().configure()
        g = self.obj.globals
        g["connect_results"] = CONNECT_ESTABLISHED | CONNECT_REFUSED
        g["min_connect_ns"] = self.min_ns

    def record(self, event: Any) -> Record:
        return connect_record(self, event)
