"""The TCP life-cycle commands: tcplife, tcpstates, tcpconnect, tcpconnlat, tcpaccept.

Each builds its library class (``bpfloom.tools.tcp*``, one BPF object behind all five:
``tools/tcpstate.py``) from the options libbpf-tools and BCC users know, and runs it
through the one run loop (``_session.run_session``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..tools.tcpaccept import TcpAccept
from ..tools.tcpconnect import TcpConnect
from ..tools.tcpconnlat import TcpConnLat
from ..tools.tcplife import TcpLife
from ..tools.tcpstate import TcpStateTool, parse_ports
from ..tools.tcpstates import TcpStates
from ._app import main
from ._common import output_options
from ._session import ToolSession, run_session

F = TypeVar("F", bound=Callable[..., Any])


def _ports(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        return parse_ports(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def ports_option(*decls: str, what: str) -> Callable[[F], F]:
    """A comma-separated port list option (``-P 80,443``), parsed to a tuple."""
    return click.option(
        *decls, default=None, metavar="PORTS", callback=_ports, help=f"Only these {what} (80,443)."
    )


def common_options(func: F) -> F:
    """``-p PID``, ``-4``, ``-6``, ``-T`` and ``-w``: every TCP command's."""
    func = click.option(
        "-w", "--wide", is_flag=True, help="Wide address columns (fit IPv6 addresses)."
    )(func)
    func = click.option("-T", "--time", "timestamps", is_flag=True, help="Print a TIME column.")(
        func
    )
    func = click.option("-6", "--ipv6", is_flag=True, help="Only IPv6.")(func)
    func = click.option("-4", "--ipv4", is_flag=True, help="Only IPv4.")(func)
    func = click.option(
        "-p",
        "--pid",
        type=click.IntRange(min=1),
        default=None,
        help="Only sockets this process owns (connected, listened on, accepted).",
    )(func)
    return func


def elapsed_option(func: F) -> F:
    """``-t``: libbpf-tools' TIME(s) column."""
    return click.option(
        "-t",
        "--timestamp",
        "elapsed",
        is_flag=True,
        help="Print a TIME(s) column: seconds since the first record.",
    )(func)


def family(ipv4: bool, ipv6: bool) -> int | None:
    """4, 6 or None (both) from ``-4``/``-6``; both at once is a usage error."""
    if ipv4 and ipv6:
        raise click.UsageError("-4 and -6 cannot be used together")
    return 4 if ipv4 else 6 if ipv6 else None


def run_tool(
    tool: Callable[..., TcpStateTool], ipv4: bool, ipv6: bool, options: dict[str, Any]
) -> None:
    """Run ``tool`` built from a command's options (each option's name is the tool's
    keyword), but for ``out``, the output options, which go to the run loop."""
    out = options.pop("out")
    fam = family(ipv4, ipv6)
    run_session(lambda: ToolSession(tool(family=fam, **options)), out)


@main.command("tcplife")
@common_options
@ports_option("-L", "--localport", "lports", what="local ports")
@ports_option("-D", "--remoteport", "rports", what="remote ports")
@output_options()
def tcplife_command(ipv4: bool, ipv6: bool, **options: Any) -> None:
    """Trace TCP sessions when they close: PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS.

    A session is reported when it reaches CLOSE if its birth (SYN_SENT, SYN_RECV or
    ESTABLISHED) was seen. PID and COMM are the socket's owner: the process that
    connected or accepted it (or listened, or first closed it), not the task that ran
    at the close. MS is its life from birth, handshake included. With --json, tx_bytes
    and rx_bytes are the exact data bytes (bytes_acked and bytes_received less SYN and
    FIN).
    """
    run_tool(TcpLife, ipv4, ipv6, options)


@main.command("tcpstates")
@common_options
@ports_option("-L", "--localport", "lports", what="local ports")
@ports_option("-D", "--remoteport", "rports", what="remote ports")
@output_options()
def tcpstates_command(ipv4: bool, ipv6: bool, **options: Any) -> None:
    """Trace TCP state changes: SKADDR PID COMM LADDR LPORT RADDR RPORT OLDSTATE ->
    NEWSTATE MS.

    MS is the time spent in OLDSTATE ('-' for a socket's first change seen). PID and
    COMM are the socket's owner (the process that connected, listened, accepted or
    first closed it; a handshake before accept() carries its listener's owner when
    that listen() was seen), '?' until it is known. -w adds an IP column.
    """
    run_tool(TcpStates, ipv4, ipv6, options)


@main.command("tcpconnect")
@common_options
@elapsed_option
@ports_option("-P", "--port", "rports", what="destination ports")
@click.option(
    "-u",
    "--uid",
    type=click.IntRange(min=0, max=0xFFFFFFFE),
    default=None,
    help="Only connects by this user id.",
)
@click.option("-U", "--print-uid", is_flag=True, help="Print a UID column.")
@click.option("-s", "--source-port", is_flag=True, help="Print an SPORT column.")
@click.option(
    "-x",
    "--failed",
    "failed_only",
    is_flag=True,
    help="Only failed attempts (refused, timed out, ...).",
)
@output_options()
def tcpconnect_command(ipv4: bool, ipv6: bool, **options: Any) -> None:
    """Trace active TCP opens to their outcome: PID COMM IP SADDR DADDR DPORT RESULT.

    Each connect() is reported once, when it ends: RESULT 'ok' (established), or why it
    failed — ECONNREFUSED (an RST), ETIMEDOUT (no answer), EHOSTUNREACH... (an ICMP
    error), 'aborted' (closed before it completed). PID and COMM are the process that
    called connect(); --json adds lat_ms (the time in SYN_SENT) and err.
    """
    run_tool(TcpConnect, ipv4, ipv6, options)


@main.command("tcpconnlat")
@common_options
@elapsed_option
@ports_option("-P", "--port", "rports", what="destination ports")
@click.option("-L", "--lport", "local_port", is_flag=True, help="Print an LPORT column.")
@click.argument(
    "min_ms", type=click.FloatRange(min=0), default=0.0, required=False, callback=_finite
)
@output_options()
def tcpconnlat_command(ipv4: bool, ipv6: bool, **options: Any) -> None:
    """Trace TCP connect latency: PID COMM IP SADDR DADDR DPORT LAT(ms).

    LAT is the time from connect() to the answer (the socket's time in SYN_SENT).
    Connects answered by an RST (refused) are shown too, as in libbpf-tools; those
    with no answer are not (see tcpconnect). MIN_MS: only connects slower than this
    many milliseconds.
    """
    run_tool(TcpConnLat, ipv4, ipv6, options)


@main.command("tcpaccept")
@common_options
@elapsed_option
@ports_option("-P", "--port", "lports", what="local ports")
@output_options()
def tcpaccept_command(ipv4: bool, ipv6: bool, **options: Any) -> None:
    """Trace accepted TCP connections: PID COMM IP RADDR RPORT LADDR LPORT.

    One record per accept()/accept4() that returns a TCP connection, in the process
    that accepted it (as BCC's tcpaccept). --json adds queue_ms: how long the
    connection waited in the accept queue after its handshake.
    """
    run_tool(TcpAccept, ipv4, ipv6, options)
