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

from collections.abc import Iterable
from typing import Any

from .tcpconnect import connect_record
from .tcpstate import (
    CONNECT_ESTABLISHED,
    CONNECT_REFUSED,
    EV_CONNECT,
    TcpStateTool,
    address_columns,
    comm_cell,
    elapsed_column,
)
from .tool import Column, Record


class TcpConnLat(TcpStateTool):
    """Traces the latency of active TCP opens that got an answer. Filters (kernel):
    ``pid`` (the caller of connect()), ``family`` (4 or 6), ``ports`` (destination
    ports), ``min_ms`` (only slower ones). Table options: ``timestamps`` (TIME),
    ``elapsed`` (``TIME(s)``), ``local_port`` (LPORT), ``wide``."""

    name = "tcpconnlat"
    emit = EV_CONNECT
    accept_hooks = False

    def __init__(
        self,
        *,
        pid: int | None = None,
        family: int | None = None,
        ports: Iterable[int] = (),
        min_ms: float = 0.0,
        timestamps: bool = False,
        elapsed: bool = False,
        local_port: bool = False,
        wide: bool = False,
    ) -> None:
        if not min_ms >= 0:
            raise ValueError(f"min_ms {min_ms} is not a positive number of milliseconds")
        self.min_ns = int(min_ms * 1e6)
        self.columns = (
            *((elapsed_column(),) if elapsed else ()),
            *((Column("TIME", 8),) if timestamps else ()),
            Column("PID", 6),
            Column("COMM", 12, text=comm_cell),
            Column("IP", 2),
            *address_columns(wide, ("saddr",)),
            *((Column("LPORT", 5, key="sport"),) if local_port else ()),
            *address_columns(wide, ("daddr", "dport")),
            Column("LAT(ms)", 0, text=lambda r: f"{r['lat_ms']:.2f}"),
        )
        super().__init__(pid=pid, family=family, rports=ports)

    def configure(self) -> None:
        super().configure()
        g = self.obj.globals
        g["connect_results"] = CONNECT_ESTABLISHED | CONNECT_REFUSED
        g["min_connect_ns"] = self.min_ns

    def record(self, event: Any) -> Record:
        return connect_record(self, event)
