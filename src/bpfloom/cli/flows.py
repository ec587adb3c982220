"""``bpfloom flows``: per-flow accounting on one interface (``bpfloom.tools.flows``).

The kernel aggregates; every scan (a second, or less with short timeouts) the command
walks the flow map and writes the flow records that are due (``--json``, ``-o``), and
every ``--interval`` seconds prints the top talkers of that interval as a table. At
exit every flow still in the map gets its last record.
"""

from __future__ import annotations

import time

import click

from ..object import XDP_MODES
from ..sinks.table import format_table
from ..tools.flows import DEFAULT_MAX_FLOWS, TC_MODES, Flows
from ..tools.tool import Record
from ._app import main
from ._common import SECONDS, Output, output_options
from ._session import Interval, ToolSession, run_session

DEFAULT_INTERVAL = 2.0
DEFAULT_TOP = 10
MAX_SCAN = 1.0  # seconds between walks of the flow map, at most


def metric_rows(records: list[Record]) -> list[Record]:
    """What Prometheus gets of a scan's records: packets, bytes and records per
    direction and protocol (a series per flow would never end)."""
    totals: dict[tuple[str, str], Record] = {}
    for r in records:
        row = totals.setdefault(
            (r["direction"], r["proto"]),
            {"direction": r["direction"], "proto": r["proto"], "packets": 0, "bytes": 0},
        )
        row["packets"] += r["packets"]
        row["bytes"] += r["bytes"]
        row["records"] = row.get("records", 0) + 1
    return list(totals.values())


class TopTalkers:
    """The table: every ``interval`` seconds (and at exit) the flows with the most
    bytes since the previous table, under a ``[HH:MM:SS]`` line."""

    def __init__(self, tool: Flows, interval: float, top: int | None) -> None:
        self.tool = tool
        self.interval_ns = int(interval * 1e9)
        self.top = top
        self.printed = 0
        self._last = time.monotonic_ns()

    def text(self, final: bool) -> str:
        now = time.monotonic_ns()
        if not final and now - self._last < self.interval_ns:
            return ""
        seconds = (now - self._last) / 1e9
        self._last = now
        rows = self.tool.top(self.top, now_ns=now)
        flows = self.tool.window_flows
        head = (
            f"[{time.strftime('%H:%M:%S')}] {self.tool.interface}: {flows} flows"
            f" in {seconds:.1f} s"
            + (" (at exit)" if final else "")
            + (f", top {len(rows)} by bytes" if len(rows) < flows else "")
        )
        lines = [head, *format_table(Flows.top_columns, rows)] if rows else [head]
        if self.printed:
            lines.insert(0, "")
        self.printed += 1
        return "\n".join(lines)


@main.command("flows")
@click.option(
    "-i",
    "--interface",
    required=True,
    metavar="IF",
    help="The interface to watch (tc ingress and egress; --xdp: ingress only).",
)
@click.option("--xdp", is_flag=True, help="Count ingress only, with XDP at the driver.")
@click.option(
    "--xdp-mode",
    type=click.Choice(list(XDP_MODES)),
    default=None,
    help="With --xdp: auto (native if the driver has it, else generic), skb, native, offload.",
)
@click.option(
    "--tc-mode",
    type=click.Choice(list(TC_MODES)),
    default=None,
    help="How the tc programs attach: tcx links (Linux 6.6+: no qdisc, nothing outlives "
    "the process, less overhead), clsact filters, or auto (tcx if the kernel has it).",
)
@click.option(
    "--active-timeout",
    type=SECONDS,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Report a flow that still has packets this often.",
)
@click.option(
    "--idle-timeout",
    type=SECONDS,
    default=15.0,
    show_default=True,
    metavar="SECONDS",
    help="End a flow after this long without a packet.",
)
@click.option(
    "--interval",
    type=SECONDS,
    default=DEFAULT_INTERVAL,
    show_default=True,
    metavar="SECONDS",
    help="Print the top-talkers table this often.",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=DEFAULT_TOP,
    show_default=True,
    metavar="N",
    help="Rows of the table (0: every flow of the interval).",
)
@click.option(
    "--max-flows",
    type=click.IntRange(1, 1 << 24),
    default=DEFAULT_MAX_FLOWS,
    show_default=True,
    metavar="N",
    help="Size of the kernel's flow map (per-CPU values: N x CPUs x 40 bytes). A "
    "full map evicts its least recently used flow (counted at exit).",
)
@output_options("flow record")
def flows_command(
    interface: str,
    xdp: bool,
    xdp_mode: str | None,
    tc_mode: str | None,
    active_timeout: float,
    idle_timeout: float,
    interval: float,
    top: int,
    max_flows: int,
    out: Output,
) -> None:
    """Per-flow accounting on one interface: packets, bytes and TCP flags per 5-tuple.

    Prints the top talkers every --interval seconds: DIR PROTO SOURCE DESTINATION
    PACKETS BYTES RATE FLAGS. With --json (or -o PATH.jsonl), one record per flow when
    it ends (FIN/RST), idles (--idle-timeout), every --active-timeout while it lasts,
    and at exit: saddr, daddr, sport, dport, proto, direction, packets and bytes (since
    the flow's previous record), tcp_flags, first_seen, last_seen, reason
    (active/end/idle/exit). bytes count the IP header and payload; ICMP flows have the
    echo identifier as sport and type*256+code as dport.
    """
    if xdp_mode is not None and not xdp:
        raise click.UsageError("--xdp-mode needs --xdp")
    if tc_mode is not None and xdp:
        raise click.UsageError("--tc-mode and --xdp cannot be used together")
    scan = min(MAX_SCAN, interval, active_timeout / 2, idle_timeout / 2)

    def session() -> ToolSession:
        tool = Flows(
            interface,
            xdp=xdp,
            xdp_mode=xdp_mode or "auto",
            tc_mode=tc_mode or "auto",
            active_timeout=active_timeout,
            idle_timeout=idle_timeout,
            max_flows=max_flows,
        )
        table = (
            TopTalkers(tool, interval, top or None)
            if not out.as_json and out.output is None
            else None
        )

        def tick(final: bool) -> Interval:
            records = tool.flush() if final else tool.poll()
            text = table.text(final) if table is not None else ""
            return Interval(text, records, metrics=metric_rows(records))

        return ToolSession(tool, tick=tick, interval=scan)

    run_session(
        session,
        out=out,
    )
