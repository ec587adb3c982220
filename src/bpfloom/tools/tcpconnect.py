"""tcpconnect: every active TCP open (connect()) with its outcome.

Columns and options as libbpf-tools' tcpconnect: ``[TIME(s)|TIME] [UID] PID COMM IP
SADDR DADDR [SPORT] DPORT``, plus RESULT at the end. libbpf-tools reports a connect when
it is called (a kprobe on ``tcp_v4_connect``) and never learns how it ended; here each
attempt is reported once, when it ends: SYN_SENT -> ESTABLISHED (RESULT ``ok``) or
SYN_SENT -> CLOSE, whose ``sk_err`` gives the reason — ``ECONNREFUSED`` (an RST),
``ETIMEDOUT`` (no answer after the SYN retries), ``EHOSTUNREACH`` and friends (an ICMP
error), or ``aborted`` (closed by its owner before it completed). ``-x`` shows only the
failures. An attempt still in SYN_SENT when tracing stops is not shown, and neither is
one that started before tracing did (its owner and start are not known).

PID, COMM and UID are the process that called connect() (the CLOSE -> SYN_SENT change
runs in its context). SADDR is the local address the kernel chose, SPORT the local port
(chosen after CLOSE -> SYN_SENT, so only known at the end).

The JSON record: ``pid``, ``comm``, ``uid``, ``ip`` (4 or 6), ``saddr``, ``sport``,
``daddr``, ``dport``, ``result``, ``err`` (the errno, 0 for ``ok`` and ``aborted``),
``lat_ms`` (the time in SYN_SENT: the connect latency, or how long a failure took),
and ``family``, ``time``, ``netns``.
"""

from __future__ import annotations

from typing import Any

from .inet import TCP_STATE_NUMBERS
from .tcpstate import (
    CONNECT_ESTABLISHED,
    CONNECT_FAILED,
    CONNECT_REFUSED,
    EV_CONNECT,
    IP_VERSIONS,
    TcpStateTool,
    address_columns,
    comm_cell,
    connect_result,
)
from .tool import Column, Record

TCP_ESTABLISHED = TCP_STATE_NUMBERS["ESTABLISHED"]


class TcpConnect(TcpStateTool):
    """Traces active TCP opens to their outcome. Filters and table options:
    ``TcpStateTool`` (``pid`` and ``uid`` are the caller of connect(), ``rports``
    libbpf-tools' ``-P``), and ``failed_only``; ``print_uid`` adds UID, ``source_port``
    SPORT."""

    name = "tcpconnect"
    emit = EV_CONNECT
    accept_hooks = False

    def __init__(
        self,
        *,
        failed_only: bool = False,
        print_uid: bool = False,
        source_port: bool = False,
        **options: Any,
    ) -> None:
        self.failed_only, self.print_uid, self.source_port = failed_only, print_uid, source_port
        super().__init__(**options)

    def table(self, wide: bool) -> tuple[Column, ...]:
        return (
            *((Column("UID", 6),) if self.print_uid else ()),
            Column("PID", 6),
            Column("COMM", 12, text=comm_cell),
            Column("IP", 2),
            *address_columns(wide, ("saddr", "daddr")),
            *((Column("SPORT", 5),) if self.source_port else ()),
            Column("DPORT", 5),
            Column("RESULT", 0),
        )

    def configure(self) -> None:
        super().configure()
        failures = CONNECT_REFUSED | CONNECT_FAILED
        self.obj.globals["connect_results"] = (
            failures if self.failed_only else failures | CONNECT_ESTABLISHED
        )

    def record(self, event: Any) -> Record:
        return connect_record(self, event)


def connect_record(tool: TcpStateTool, event: Any) -> Record:
    """The record of an active open's outcome, in tcpconnect's and tcpconnlat's keys."""
    rec = tool.endpoints(event)
    return {
        "time": rec["time"],
        "pid": rec["pid"],
        "comm": rec["comm"],
        "uid": event.uid,
        "ip": IP_VERSIONS[event.family],
        "saddr": rec["laddr"],
        "sport": rec["lport"],
        "daddr": rec["raddr"],
        "dport": rec["rport"],
        "result": connect_result(event.newstate == TCP_ESTABLISHED, event.err),
        "err": event.err,
        "lat_ms": event.span_ns / 1e6,
        "family": rec["family"],
        "netns": rec["netns"],
    }
