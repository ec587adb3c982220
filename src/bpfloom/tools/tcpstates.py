"""tcpstates: every TCP state change, with the time spent in the state it leaves.

Columns and options as libbpf-tools' tcpstates: ``[TIME] SKADDR PID COMM [IP] LADDR
LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS`` (``-w`` adds IP and widens the addresses).
States have the kernel's names (``SYN_SENT``, ``ESTABLISHED``, ``FIN_WAIT1``, …:
``include/net/tcp_states.h``). MS is the time in OLDSTATE; it is unknown (``-``, JSON
``null``) for a socket's first change seen, whose start libbpf-tools takes from a kprobe
on ``tcp_v4_init_sock`` this kernel cannot place (libbpf-tools prints 0 then).

PID and COMM are the socket's owner (``tools/tcpstate.py``), where libbpf-tools shows
the task that ran the change — in a softirq, whoever was interrupted. So ``-p PID``
shows a process's sockets from connect() or listen() to CLOSE; the handshake of a
connection it accepts carries its listener's owner when that listen() was seen.

Addresses and ports are the socket's as they stand at the change: the local port of
an active open is 0 at CLOSE -> SYN_SENT, and a passive open's first change (LISTEN ->
SYN_RECV, as the child is cloned from its listener) may still show the listener's.
The JSON record: ``skaddr`` (the socket's kernel address, hex), ``pid``, ``comm``,
``laddr``, ``lport``, ``raddr``, ``rport``, ``oldstate``, ``newstate``, ``ms``, and
``family``, ``time``, ``netns``.
"""

from __future__ import annotations

from typing import Any

from .tcpstate import (
    EV_STATE,
    IP_VERSIONS,
    TcpStateTool,
    address_columns,
    comm_cell,
    ms_cell,
    span_ms,
    state_names,
)
from .tool import Column, Record


class TcpStates(TcpStateTool):
    """Traces TCP state changes. Filters and table options: ``TcpStateTool`` (``pid``
    is the owner); ``wide`` also adds the IP column."""

    name = "tcpstates"
    emit = EV_STATE

    def table(self, wide: bool) -> tuple[Column, ...]:
        return (
            Column("SKADDR", 16),
            Column("PID", 7),
            Column("COMM", 16 if wide else 10, text=comm_cell),
            *((Column("IP", 2),) if wide else ()),
            *address_columns(wide, ("laddr", "lport", "raddr", "rport")),
            Column("OLDSTATE", 11),
            Column("->", 2, text=lambda r: "->"),
            Column("NEWSTATE", 11),
            Column("MS", 0, text=ms_cell),
        )

    def record(self, event: Any) -> Record:
        rec = self.endpoints(event)
        old, new = state_names(event)
        rec.update(
            skaddr=f"{event.skaddr:x}",
            ip=IP_VERSIONS[event.family],
            oldstate=old,
            newstate=new,
            ms=span_ms(event),
        )
        return rec
