"""What the TCP life-cycle tools share: one BPF object on ``sock:inet_sock_set_state``.

``tcplife``, ``tcpstates``, ``tcpconnect``, ``tcpconnlat`` and ``tcpaccept`` are five
views of the same kernel events, so they share one program
(``src/bpfloom/bpf/tcpstate.bpf.c``) whose global ``emit`` selects the records it
sends: every state change, one record per closed session, the outcome of each active
open, or each accepted connection. One program means one place that decides what a
socket's owner is, when a session was born and how the filters apply.

**Owner.** PID and COMM are the process that owns the socket, learned where the kernel
runs in that process's context — never in a softirq, where the current task is whoever
was interrupted: connect() (CLOSE → SYN_SENT), listen() (CLOSE → LISTEN), accept()
returning the socket (the exit tracepoints of accept(2) and accept4(2), which find the
socket through the new file descriptor), and else its first close (ESTABLISHED →
FIN_WAIT1 and CLOSE_WAIT → LAST_ACK happen only in close()/shutdown()). Before
accept(), a passive connection's owner is its listener's, when that listen() was seen
(matched by network namespace and local port). An owner never learned is pid 0 with
an empty comm (shown as ``?``). io_uring's accept does not go through accept(2): such
sockets get their owner at their close.

**Filters** run in the kernel and apply to what is emitted, not to what is tracked:
``pid`` and ``uid`` are the owner's, ``lports``/``rports`` the local and remote ports
(bitmaps, so a list of any length costs one lookup), ``family`` IPv4 or IPv6. Every
TCP socket's owner and times are kept in a hash map from its first state change to
CLOSE (65 536 sockets at a time; sockets that find it full are counted and named in
the exit line, and only those lose their owner and times).

Records carry ``time`` (unix seconds of the event), ``netns`` (the inode number of the
socket's network namespace, as ``stat -L /proc/PID/ns/net`` shows it) and the tool's
own keys; addresses are text (``inet.inet_addr``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Any, ClassVar

from .inet import AF_INET, AF_INET6, inet_addr, tcp_state
from .tool import Column, Record, Tool, wall_time

# The kinds of record of tcpstate.bpf.c (its TCP_EV_* bits).
EV_STATE, EV_LIFE, EV_CONNECT, EV_ACCEPT = 1, 2, 4, 8
# Which connect outcomes TCP_EV_CONNECT emits (its CONNECT_* bits).
CONNECT_ESTABLISHED, CONNECT_REFUSED, CONNECT_FAILED = 1, 2, 4

ACCEPT_PROGRAMS = ("sys_exit_accept", "sys_exit_accept4")
FAMILY_NUMBERS = {4: AF_INET, 6: AF_INET6}
IP_VERSIONS = {AF_INET: 4, AF_INET6: 6}
MAX_PORT = 65535


def parse_ports(text: str) -> tuple[int, ...]:
    """The ports of a comma-separated list (``"80,443"``), as libbpf-tools' ``-P``,
    ``-L`` and ``-D`` take them. Raises ``ValueError`` naming what is wrong."""
    ports = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) > MAX_PORT:
            raise ValueError(f"{part!r} is not a port number (0-{MAX_PORT})")
        ports.append(int(part))
    return tuple(ports)


def port_bitmap(ports: Iterable[int]) -> list[int]:
    """The 1024 64-bit words of a port set, as the object's ``lports``/``rports``
    globals hold it (bit ``p % 64`` of word ``p // 64`` stands for port ``p``)."""
    words = [0] * 1024
    for port in ports:
        if not 0 <= port <= MAX_PORT:
            raise ValueError(f"{port} is not a port number (0-{MAX_PORT})")
        words[port >> 6] |= 1 << (port & 63)
    return words


def connect_result(established: bool, err: int) -> str:
    """The RESULT of an active open: ``ok`` (it got to ESTABLISHED), else why it went
    from SYN_SENT to CLOSE — ``sk_err``'s errno name (``ECONNREFUSED``: an RST;
    ``ETIMEDOUT``: no answer), or ``aborted`` with no error (its owner closed it
    before it completed)."""
    if established:
        return "ok"
    return errno.errorcode.get(err, f"errno {err}") if err else "aborted"


def comm_cell(record: Record) -> str:
    """A COMM cell: the owner's name, or ``?`` when no owner was learned."""
    return str(record["comm"]) or "?"


def ms_cell(record: Record, key: str = "ms") -> str:
    """A time in milliseconds with libbpf-tools' three decimals, ``-`` when unknown."""
    value = record[key]
    return "-" if value is None else f"{value:.3f}"


def elapsed_column() -> Column:
    """libbpf-tools' ``TIME(s)`` column (``-t``): seconds since the first record
    printed, with three decimals."""
    first: list[float] = []

    def text(record: Record) -> str:
        if not first:
            first.append(record["time"])
        return f"{record['time'] - first[0]:.3f}"

    return Column("TIME(s)", 9, text=text)


class TcpStateTool(Tool):
    """Base of the TCP life-cycle tools (see the module docstring). Subclasses set
    ``emit`` (the ``EV_*`` bits their records come from) and ``accept_hooks``
    (whether the accept(2)/accept4(2) exits are traced to learn owners), and write
    ``table()`` (their columns) and ``record()``.

    Filters (in the kernel): ``pid`` and ``uid`` (the owner's; None: any), ``family``
    (4 or 6; None: both), ``lports`` and ``rports`` (local and remote ports to report;
    empty: any). Table: ``timestamps`` puts TIME (HH:MM:SS) first, ``elapsed``
    libbpf-tools' TIME(s) (seconds since the first record), ``wide`` makes address
    columns fit IPv6 addresses. Raises ``ValueError`` for an out-of-range filter.
    """

    object_name = "tcpstate"
    event_type = "tcp_event"
    emit: ClassVar[int] = 0
    accept_hooks: ClassVar[bool] = True

    def __init__(
        self,
        *,
        pid: int | None = None,
        uid: int | None = None,
        family: int | None = None,
        lports: Iterable[int] = (),
        rports: Iterable[int] = (),
        timestamps: bool = False,
        elapsed: bool = False,
        wide: bool = False,
    ) -> None:
        if pid is not None and pid < 1:
            raise ValueError(f"pid {pid} is not a process id")
        if uid is not None and not 0 <= uid < 0xFFFFFFFF:
            raise ValueError(f"uid {uid} is not a user id")
        if family is not None and family not in FAMILY_NUMBERS:
            raise ValueError(f"family {family}: expected 4 or 6")
        self.pid, self.uid, self.family = pid, uid, family
        self.lports, self.rports = tuple(lports), tuple(rports)
        self._lport_bits, self._rport_bits = port_bitmap(self.lports), port_bitmap(self.rports)
        self.columns = (
            *((elapsed_column(),) if elapsed else ()),
            *((Column("TIME", 8),) if timestamps else ()),
            *self.table(wide),
        )
        super().__init__()

    def table(self, wide: bool) -> tuple[Column, ...]:
        """The tool's columns after the time columns."""
        raise NotImplementedError

    def configure(self) -> None:
        for name in ACCEPT_PROGRAMS:
            self.obj.programs[name].autoload = self.accept_hooks
        g = self.obj.globals
        g["emit"] = self.emit
        g["targ_pid"] = self.pid or 0
        g["filter_uid"] = self.uid is not None
        g["targ_uid"] = self.uid or 0
        g["targ_family"] = FAMILY_NUMBERS[self.family] if self.family else 0
        g["filter_lports"] = bool(self.lports)
        g["filter_rports"] = bool(self.rports)
        if self.lports:
            g["lports"] = self._lport_bits
        if self.rports:
            g["rports"] = self._rport_bits

    def endpoints(self, event: Any) -> Record:
        """The keys every record has: time, owner, family, addresses, ports, netns."""
        family = event.family
        return {
            "time": wall_time(event.ts_ns),
            "pid": event.pid,
            "comm": event.comm,
            "family": "IPv4" if family == AF_INET else "IPv6",
            "laddr": inet_addr(family, bytes(event.laddr)),
            "lport": event.lport,
            "raddr": inet_addr(family, bytes(event.raddr)),
            "rport": event.rport,
            "netns": event.netns,
        }

    def untracked(self) -> int:
        """Sockets that found the object's socket table full (their owner and times
        are unknown)."""
        return int(self.obj.globals["untracked"])

    def exit_line(self, stats: dict[str, Any]) -> str:
        line = super().exit_line(stats)
        untracked = self.untracked()
        if untracked:
            line += (
                f"\nbpfloom {self.name}: {untracked} sockets not tracked (socket table "
                "full): their owner and times are unknown"
            )
        return line


def span_ms(event: Any) -> float | None:
    """The record's measured time in milliseconds, None when it was not measured."""
    return event.span_ns / 1e6 if event.span_known else None


def address_columns(wide: bool, order: tuple[str, ...]) -> tuple[Column, ...]:
    """Address and port columns in ``order`` (record keys such as ``"laddr"``,
    ``"lport"``): addresses 15 characters wide, or 39 (a full IPv6 address) with
    ``wide``; ports 5."""
    width = 39 if wide else 15
    return tuple(
        Column(key.upper(), width if key.endswith("addr") else 5, key=key) for key in order
    )


def state_names(event: Any) -> tuple[str, str]:
    """The old and new state of a record by their kernel names."""
    return tcp_state(event.oldstate), tcp_state(event.newstate)
