"""tcplife: one record per TCP session when it closes, with its owner, bytes and life.

Columns and options as libbpf-tools' tcplife: ``[TIME] PID COMM LADDR LPORT RADDR RPORT
TX_KB RX_KB MS``. A session is a socket whose birth was seen (its first of SYN_SENT,
SYN_RECV or ESTABLISHED while tracing); it is reported when it reaches CLOSE. MS is its
life from that birth (the handshake included; libbpf-tools restarts the clock at
ESTABLISHED) to CLOSE. PID and COMM are the socket's owner (``tools/tcpstate.py``):
for the client the process that called connect(), for the server the one that
accepted it — not the task that happened to run when the socket closed, which is
usually a softirq's victim (libbpf-tools records the task at SYN_SENT and LAST_ACK only,
so a server that closes first is shown as whoever ran then).

The JSON record: ``pid``, ``comm``, ``laddr``, ``lport``, ``raddr``, ``rport``,
``tx_kb``, ``rx_kb`` (KiB, unrounded), ``ms`` (float), and the exact ``tx_bytes`` and
``rx_bytes``, plus ``family`` (``IPv4``/``IPv6``), ``time`` and ``netns``.

Bytes are the tcp_sock's ``bytes_acked`` (sent and acknowledged by the peer) and
``bytes_received``, read with CO-RE from the socket the tracepoint gives, less the
sequence numbers that are not data: our SYN (counted in ``bytes_acked`` on an active
open), our FIN once acknowledged, and the peer's FIN. A client that wrote N bytes and
read M shows N and M; libbpf-tools' KB include those one or two extra bytes.
"""

from __future__ import annotations

from typing import Any

from .tcpstate import EV_LIFE, TcpStateTool, address_columns, comm_cell
from .tool import Column, Record


class TcpLife(TcpStateTool):
    """Traces TCP sessions to their close. Filters and table options: ``TcpStateTool``
    (``pid`` is the owner, ``lports``/``rports`` libbpf-tools' ``-L``/``-D``)."""

    name = "tcplife"
    emit = EV_LIFE

    def table(self, wide: bool) -> tuple[Column, ...]:
        return (
            Column("PID", 7),
            Column("COMM", 16, text=comm_cell),
            *address_columns(wide, ("laddr", "lport", "raddr", "rport")),
            Column("TX_KB", 6, text=lambda r: f"{r['tx_kb']:.2f}"),
            Column("RX_KB", 6, text=lambda r: f"{r['rx_kb']:.2f}"),
            Column("MS", 0, text=lambda r: f"{r['ms']:.2f}"),
        )

    def record(self, event: Any) -> Record:
        rec = self.endpoints(event)
        rec.update(
            tx_kb=event.tx_bytes / 1024,
            rx_kb=event.rx_bytes / 1024,
            ms=event.span_ns / 1e6,
            tx_bytes=event.tx_bytes,
            rx_bytes=event.rx_bytes,
        )
        return rec
