"""The TCP statistics commands: tcpretrans, tcprtt, tcptop.

Each builds its library class (``bpfloom.tools.tcpretrans``, ``tcprtt``, ``tcptop``)
from the options BCC's and libbpf-tools' users know and runs it through the one run
loop (``_session.run_session``). Where a command aggregates (``tcpretrans -c``,
``tcprtt``, ``tcptop``) it prints every INTERVAL seconds, COUNT times, as the metric
tools' ``[interval] [count]`` (``cli/metrics.py``), and once more at exit with what
the last interval had.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import click

from ..sinks.table import TableSink
from ..tools.inet import mapped_addr
from ..tools.tcpretrans import TcpRetrans, TcpRetransCounts
from ..tools.tcprtt import TcpRtt, check_port
from ..tools.tcptop import DEFAULT_ROWS, SORTS, TcpTop
from ._app import main
from ._common import SECONDS, Output, output_options
from ._session import Interval, ToolSession, run_session
from .metrics import interval_options, run_intervals


def _family(ipv4: bool, ipv6: bool) -> int | None:
    if ipv4 and ipv6:
        raise click.UsageError("-4 and -6 cannot be used together")
    return 4 if ipv4 else 6 if ipv6 else None


def _checked_by(check: Callable[[Any], object]) -> Callable[..., Any]:
    """A click callback that passes a given value to ``check``, whose ``ValueError``
    becomes the option's error (status 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            try:
                check(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        return value

    return callback


_address = _checked_by(mapped_addr)
_port = _checked_by(check_port)


def _family_options(func: Any) -> Any:
    func = click.option("-6", "--ipv6", is_flag=True, help="IPv6 only.")(func)
    return click.option("-4", "--ipv4", is_flag=True, help="IPv4 only.")(func)


@main.command("tcpretrans")
@click.option(
    "-c", "--count", "count_flows", is_flag=True, help="Count per flow instead of tracing."
)
@click.option("-s", "--sequence", is_flag=True, help="Print a SEQ column (retransmits).")
@click.option("--no-resets", is_flag=True, help="Retransmits only, as BCC's tcpretrans.")
@_family_options
@interval_options
@output_options()
def tcpretrans_command(
    count_flows: bool,
    sequence: bool,
    no_resets: bool,
    ipv4: bool,
    ipv6: bool,
    timestamp: bool,
    interval: float | None,
    count: int | None,
    out: Output,
) -> None:
    """Trace TCP retransmits and resets: TIME PID IP LADDR:LPORT T> RADDR:RPORT STATE.

    T> is R> for a retransmitted segment, S> for a reset sent, r< for a reset received.
    PID is the process that held the socket, 0 when none did (timers and arriving
    segments run in softirq context). With -c, counts per flow, printed at exit or every
    INTERVAL seconds (COUNT times); -T prints the time before each.
    """
    family = _family(ipv4, ipv6)
    if not count_flows and (interval is not None or timestamp):
        raise click.UsageError("an interval and -T go with -c (events print as they happen)")
    if count_flows and out.output is not None and out.output.endswith(".parquet"):
        raise click.UsageError(
            f"-o {out.output}: -c prints counts, not events, and Parquet takes raw events; "
            "write them as JSON lines (.jsonl)"
        )
    if count_flows:
        run_intervals(
            lambda: TcpRetransCounts(family=family, resets=not no_resets),
            out=out,
            interval=interval,
            count=count,
            timestamp=timestamp,
        )
        return
    run_session(
        lambda: ToolSession(TcpRetrans(family=family, resets=not no_resets, sequence=sequence)),
        out=out,
    )


@main.command("tcprtt")
@click.option("-m", "--milliseconds", is_flag=True, help="Millisecond histograms.")
@click.option("-p", "--lport", type=int, default=None, callback=_port, help="Only this local port.")
@click.option(
    "-P", "--rport", type=int, default=None, callback=_port, help="Only this remote port."
)
@click.option("-a", "--laddr", default=None, callback=_address, help="Only this local address.")
@click.option("-A", "--raddr", default=None, callback=_address, help="Only this remote address.")
@click.option("-b", "--byladdr", is_flag=True, help="A histogram per local address.")
@click.option("-B", "--byraddr", is_flag=True, help="A histogram per remote address.")
@click.option("-e", "--extension", is_flag=True, help="Show each histogram's average.")
@click.option(
    "-i",
    "--interval",
    "interval_option",
    type=SECONDS,
    default=None,
    metavar="INTERVAL",
    help="Print every INTERVAL seconds (libbpf-tools' spelling of the INTERVAL argument).",
)
@click.option(
    "-d",
    "total_duration",
    type=SECONDS,
    default=None,
    metavar="DURATION",
    help="Stop after DURATION seconds (libbpf-tools' spelling of --duration).",
)
@_family_options
@interval_options
@output_options()
def tcprtt_command(
    milliseconds: bool,
    lport: int | None,
    rport: int | None,
    laddr: str | None,
    raddr: str | None,
    byladdr: bool,
    byraddr: bool,
    extension: bool,
    interval_option: float | None,
    total_duration: float | None,
    ipv4: bool,
    ipv6: bool,
    timestamp: bool,
    interval: float | None,
    count: int | None,
    out: Output,
) -> None:
    """Summarize TCP sockets' smoothed round-trip time as histograms.

    A sample is a segment received by an established socket, at that socket's srtt.
    Prints at exit, or every INTERVAL seconds (COUNT times). With --json, one object
    per histogram per interval.
    """
    family = _family(ipv4, ipv6)
    if byladdr and byraddr:
        raise click.UsageError("-b and -B cannot be used together")
    if interval_option is not None:
        if interval is not None:
            raise click.UsageError("give the interval once: -i INTERVAL or INTERVAL")
        interval = interval_option
    if total_duration is not None:
        if out.duration is not None:
            raise click.UsageError("give the duration once: -d or --duration")
        out = dataclasses.replace(out, duration=total_duration)
    run_intervals(
        lambda: TcpRtt(
            by="laddr" if byladdr else "raddr" if byraddr else None,
            lport=lport or 0,
            rport=rport or 0,
            laddr=laddr,
            raddr=raddr,
            family=family,
            milliseconds=milliseconds,
            extended=extension,
        ),
        out=out,
        interval=interval,
        count=count,
        timestamp=timestamp,
    )


def _loadavg_line() -> str:
    """libbpf-tools' summary line: ``HH:MM:SS loadavg: <the text of /proc/loadavg>``."""
    try:
        with open("/proc/loadavg") as f:
            loadavg = f.read(256).strip()
    except OSError:
        loadavg = "?"
    return f"{time.strftime('%H:%M:%S'):>8} loadavg: {loadavg}"


@main.command("tcptop")
@click.option("-C", "--noclear", is_flag=True, help="Don't clear the screen.")
@click.option("-S", "--nosummary", is_flag=True, help="Skip the system summary line.")
@click.option(
    "-s",
    "--sort",
    type=click.Choice(list(SORTS)),
    default="all",
    show_default=True,
    help="Sort rows by sent + received bytes, sent or received.",
)
@click.option(
    "-r",
    "--rows",
    type=click.IntRange(min=1),
    default=DEFAULT_ROWS,
    show_default=True,
    help="Print at most this many rows.",
)
@click.option("-p", "--pid", type=click.IntRange(min=1), default=None, help="Only this process.")
@_family_options
@click.argument("interval", type=SECONDS, default=1.0, required=False)
@click.argument("count", type=click.IntRange(min=1), required=False)
@output_options()
def tcptop_command(
    noclear: bool,
    nosummary: bool,
    sort: str,
    rows: int,
    pid: int | None,
    ipv4: bool,
    ipv6: bool,
    interval: float,
    count: int | None,
    out: Output,
) -> None:
    """TCP top: PID COMM LADDR RADDR RX_KB TX_KB, the kilobytes each process received
    and sent on each connection, refreshed every INTERVAL seconds (default 1), COUNT
    times.

    Each refresh clears the screen when stdout is a terminal (-C: never) and starts
    with a summary line from /proc/loadavg (-S: none). With --json, one object per row
    per interval, with the exact rx_bytes and tx_bytes.
    """
    family = _family(ipv4, ipv6)
    printed = 0

    def tick(tool: TcpTop, session: ToolSession, final: bool) -> Interval | None:
        nonlocal printed
        if count is not None and printed >= count:
            return None
        printed += 1
        flows = tool.flows(sort=sort, top=rows)
        cleared = False
        if not noclear and session.outputs is not None:
            for sink in session.outputs.sinks:
                if isinstance(sink, TableSink):
                    cleared = sink.clear_screen() or cleared
        lines = [] if cleared or printed == 1 else [""]
        if not nosummary:
            lines += [_loadavg_line(), ""]
        return Interval(
            "\n".join(lines + tool.text_lines(flows)),
            [{"interval": printed, **row} for row in flows],
            done=count is not None and printed >= count,
        )

    def make() -> ToolSession:
        tool = TcpTop(pid=pid or 0, family=family)

        def on_tick(final: bool) -> Interval | None:
            return tick(tool, session, final)

        session = ToolSession(tool, tick=on_tick, interval=interval)
        return session

    run_session(
        make,
        out=out,
    )
