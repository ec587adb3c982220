"""tcpaccept: every TCP connection a process accepts.

Columns and options as BCC's tcpaccept: ``[TIME(s)|TIME] PID COMM IP RADDR RPORT LADDR
LPORT``. As there (a kretprobe on ``inet_csk_accept``), a record is an accept() that
returned a TCP connection, in the accepting process, so PID and COMM are exactly the
process that accepted it. The hooks are the exit tracepoints of accept(2) and
accept4(2), which find the socket through the file descriptor returned; the
SYN_RECV -> ESTABLISHED change of ``sock:inet_sock_set_state`` (the end of the
handshake, in a softirq, where the accepting process is not known yet) gives
``queue_ms``: how long the connection waited in the listener's accept queue.

Not reported, as in BCC: connections never accepted, and accepts done without
accept(2)/accept4() (io_uring's IORING_OP_ACCEPT).

The JSON record: ``pid``, ``comm``, ``ip`` (4 or 6), ``raddr``, ``rport``, ``laddr``,
``lport``, ``queue_ms`` (null when the handshake ended before tracing began), and
``family``, ``time``, ``netns``.
"""

from __future__ import annotations

from typing import Any

from .tcpstate import (
    EV_ACCEPT,
    IP_VERSIONS,
    TcpStateTool,
    address_columns,
    comm_cell,
    span_ms,
)
from .tool import Column, Record


class TcpAccept(TcpStateTool):
    """Traces accepted TCP connections. Filters and table options: ``TcpStateTool``
    (``pid`` is the accepting process, ``lports`` BCC's ``-P``)."""

    name = "tcpaccept"
    emit = EV_ACCEPT

    def table(self, wide: bool) -> tuple[Column, ...]:
        return (
            Column("PID", 7),
            Column("COMM", 12, text=comm_cell),
            Column("IP", 2),
            *address_columns(wide, ("raddr", "rport", "laddr")),
            Column("LPORT", 0),
        )

    def record(self, event: Any) -> Record:
        rec = self.endpoints(event)
        rec.update(ip=IP_VERSIONS[event.family], queue_ms=span_ms(event))
        return rec
