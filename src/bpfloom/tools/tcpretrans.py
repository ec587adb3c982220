"""tcpretrans: TCP retransmits and resets, each as it happens, or counted per flow.

Columns as BCC's tcpretrans: ``TIME PID IP LADDR:LPORT T> RADDR:RPORT STATE``, and
``SEQ`` with ``-s``. IP is 4 or 6; LADDR:LPORT is this host's end. ``T>`` says what
happened, with the arrow showing which way the segment went:

- ``R>`` a segment retransmitted to the remote end (BCC's ``R``);
- ``S>`` a reset this host sent (an abort, a close with unread data or SO_LINGER 0,
  a segment for a port nobody listens on);
- ``r<`` a reset this host received from the remote end.

BCC's ``L`` (tail loss probes, ``-l``) has no tracepoint: a probe that retransmits the
last segment shows as ``R>``, one that sends new data is not a retransmit. ``--no-resets``
shows retransmits only, as BCC does.

STATE is the socket's TCP state (``ESTABLISHED``); for a reset this host sent without a
socket (a closed port) there is none: ``-`` (JSON ``null``).

PID is the process that owned the socket when it happened, and 0 when none did. Most
retransmits and resets happen in softirq context (the retransmit timer, a segment
arriving), where the process that happens to be interrupted has nothing to do with the
connection — BCC prints that one. bpfloom shows a process only when it held the socket
(``lock_sock``: its own system call — a close(), a connect() whose reset arrived while
it still held the socket — or ``release_sock`` running work deferred to it); the kernel
never works on a socket from softirq context while a process holds it, so that process
is exactly the one the event belongs to (``bpf/tcpretrans.bpf.c``).

JSON records: ``{"time", "type": "retransmit"|"reset_sent"|"reset_received", "pid",
"ip", "laddr", "lport", "raddr", "rport", "state", "seq", "reason"}`` — ``seq`` the
retransmitted segment's first sequence number (else null), ``reason`` the kernel's
reason for a reset sent (``NO_SOCKET``, ``TCP_STATE``...; else null).

``-c`` counts per flow instead (``TcpRetransCounts``: ``IP LADDR:LPORT RADDR:RPORT
RETRANSMITS RESETS_SENT RESETS_RECEIVED``), printed at exit or every interval as the
metric tools print (``tcpretrans -c [interval] [count]``, ``-T``): BCC counts in the
kernel; here the events are counted as they are read, so the counts are exact and every
event the kernel could not deliver is reported as lost at exit.

Filters: ``-4``/``-6`` (in the kernel). Hooks: tracepoints tcp/tcp_retransmit_skb,
tcp/tcp_send_reset, tcp/tcp_receive_reset.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ..batch import Batch
from ..sinks.table import format_table
from .aggregates import AggregateTool
from .inet import AF_INET, AF_INET6, endpoint, inet_addr, ip_version, tcp_state
from .tool import Column, Record, Tool, wall_time

# enum tcpretrans_kind of bpf/tcpretrans.bpf.c -> the JSON type; each type's T> cell
# and its count with -c.
KINDS = {1: "retransmit", 2: "reset_sent", 3: "reset_received"}
CELLS = {"retransmit": "R>", "reset_sent": "S>", "reset_received": "r<"}
COUNT_FIELDS = {"retransmit": "retransmits", "reset_sent": "resets_sent"}
COUNT_FIELDS |= {"reset_received": "resets_received"}
RESET_REASON_PREFIX = "SK_RST_REASON_"

FlowKey = tuple[int, str, int, str, int]  # ip, laddr, lport, raddr, rport


def _state_cell(record: Record) -> str:
    state = record["state"]
    return "-" if state is None else str(state)


class TcpRetrans(Tool):
    """Traces TCP retransmits and resets (``resets=False``: retransmits only).
    ``family`` (4 or 6, None: both) filters in the kernel; ``sequence`` adds the SEQ
    column. Raises ``ValueError`` for a family that is not 4 or 6 (and load errors,
    as any tool)."""

    name = "tcpretrans"
    object_name = "tcpretrans"
    event_type = "tcpretrans_event"

    def __init__(
        self, *, family: int | None = None, resets: bool = True, sequence: bool = False
    ) -> None:
        if family not in (None, 4, 6):
            raise ValueError(f"family must be 4 or 6, not {family}")
        self.family, self.resets = family, resets
        self.columns = (
            Column("TIME", 8),
            Column("PID", 7),
            Column("IP", 2),
            Column("LADDR:LPORT", 20, text=lambda r: endpoint(r["laddr"], r["lport"])),
            Column("T>", 2, text=lambda r: CELLS[r["type"]]),
            Column("RADDR:RPORT", 20, text=lambda r: endpoint(r["raddr"], r["rport"])),
            Column("STATE", 11, text=_state_cell),
            *((Column("SEQ", 10, text=lambda r: str(r["seq"] or "")),) if sequence else ()),
        )
        super().__init__()

    def configure(self) -> None:
        self.obj.globals["targ_family"] = {None: 0, 4: AF_INET, 6: AF_INET6}[self.family]
        for prog in ("tcp_send_reset", "tcp_receive_reset"):
            self.obj.programs[prog].autoload = self.resets

    def record(self, event: Any) -> Record:
        kind = KINDS[event.kind]
        family = event.family
        reason = event.reason
        if isinstance(reason, str) and reason.startswith(RESET_REASON_PREFIX):
            reason = reason[len(RESET_REASON_PREFIX) :]
        return {
            "time": wall_time(event.ts_ns),
            "type": kind,
            "pid": event.pid,
            "ip": ip_version(family),
            "laddr": inet_addr(family, bytes(event.laddr)),
            "lport": event.lport,
            "raddr": inet_addr(family, bytes(event.raddr)),
            "rport": event.rport,
            "state": tcp_state(event.state) if event.state else None,
            "seq": event.seq if kind == "retransmit" else None,
            "reason": reason if kind == "reset_sent" else None,
        }


class TcpRetransCounts(TcpRetrans, AggregateTool):
    """``tcpretrans -c``: the same events counted per flow as they are read, instead of
    returned (``records()`` returns nothing). Read the counts with ``flows()``; as an
    aggregate tool, the metric tools' interval loop prints them (``interval_rows``,
    ``text_lines``). Thread-safe: the reader thread counts while another reads."""

    columns = (
        Column("IP", 2),
        Column("LADDR:LPORT", 25, text=lambda r: endpoint(r["laddr"], r["lport"])),
        Column("RADDR:RPORT", 25, text=lambda r: endpoint(r["raddr"], r["rport"])),
        Column("RETRANSMITS", 11, right=True),
        Column("RESETS_SENT", 11, right=True),
        Column("RESETS_RECEIVED", 15, right=True),
    )

    def __init__(self, *, family: int | None = None, resets: bool = True) -> None:
        self._lock = threading.Lock()
        self._counts: dict[FlowKey, dict[str, int]] = {}
        super().__init__(family=family, resets=resets)
        self.columns = TcpRetransCounts.columns

    def records(self, batch: Batch) -> list[Record]:
        records = super().records(batch)
        with self._lock:
            for r in records:
                key = (r["ip"], r["laddr"], r["lport"], r["raddr"], r["rport"])
                counts = self._counts.setdefault(key, dict.fromkeys(COUNT_FIELDS.values(), 0))
                counts[COUNT_FIELDS[r["type"]]] += 1
        return []

    def flows(self, reset: bool = True) -> list[Record]:
        """Events counted per flow since the last reset, most first: ``{"time", "ip",
        "laddr", "lport", "raddr", "rport", "retransmits", "resets_sent",
        "resets_received"}``; ``reset`` starts the next count from zero."""
        with self._lock:
            counts = self._counts
            if reset:
                self._counts = {}
        now = time.time()
        rows: list[Record] = []
        for (ip, laddr, lport, raddr, rport), values in counts.items():
            row: Record = {"time": now, "ip": ip, "laddr": laddr, "lport": lport}
            rows.append(row | {"raddr": raddr, "rport": rport, **values})
        rows.sort(key=lambda r: (-sum(r[f] for f in COUNT_FIELDS.values()), _flow_order(r)))
        return rows

    def interval_rows(self) -> list[Record]:
        return self.flows()

    def text_lines(self, rows: Sequence[Record]) -> list[str]:
        return format_table(self.columns, rows)

    def exit_line(self, stats: dict[str, Any]) -> str:
        """Events, as every tracing tool: they are counted here, not in the kernel."""
        return Tool.exit_line(self, stats)


def _flow_order(row: Record) -> Sequence[Any]:
    return (row["ip"], row["laddr"], row["lport"], row["raddr"], row["rport"])
