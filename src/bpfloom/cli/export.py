"""``bpfloom export``: Prometheus metrics from BPF maps, in ebpf_exporter's format.

The work is in ``bpfloom.export`` (configs checked against their objects, maps read at
scrape time into exposition text); this is the command around it.
"""

from __future__ import annotations

import click

from .._exceptions import BpfloomError
from ..pipeline import StopSignals, wait_for_stop
from ._app import main
from ._common import EXIT_USAGE, LISTEN, SECONDS, fail, stderr


@main.command("export")
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG.yaml...")
@click.option(
    "--listen",
    default="127.0.0.1:9435",
    show_default=True,
    metavar="HOST:PORT",
    help="Serve /metrics on this address only ([::1]:9435 for IPv6; port 0: any free one).",
)
@click.option(
    "--max-series",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Cap every metric without its own max_series at N label sets; the rest are "
    "summed into one __overflow__ series (default: no cap).",
)
@click.option("--duration", type=SECONDS, default=None, help="Stop after this many seconds.")
@click.option(
    "--metrics-addr",
    "metrics_addr",
    type=LISTEN,
    default=None,
    metavar="HOST:PORT",
    help="Also serve the exporter's own series (scrapes, their durations, read errors) "
    "at http://HOST:PORT/metrics; a bare PORT means 127.0.0.1:PORT.",
)
def export_command(
    configs: tuple[str, ...],
    listen: str,
    max_series: int | None,
    duration: float | None,
    metrics_addr: tuple[str, int] | None,
) -> None:
    """Serve Prometheus metrics read from BPF maps at scrape time.

    Each CONFIG.yaml is in cloudflare/ebpf_exporter's format, beside the object
    CONFIG.bpf.o it describes: every metric reads the map named like it and prefixes
    its name with ebpf_exporter_. Ctrl-C or SIGTERM detaches everything and exits 0.
    """
    from ..export import parse_listen, serving

    try:
        address = parse_listen(listen)
    except ValueError as exc:
        fail(f"--listen: {exc} (see 'bpfloom export --help')", EXIT_USAGE)
    with StopSignals() as signals:
        try:
            with serving(
                configs, address, max_series=max_series, metrics_addr=metrics_addr
            ) as server:
                stderr(f"bpfloom export: tracing; metrics at {server.url}; Ctrl-C to stop")
                wait_for_stop(signals.stop, None, duration)
        except BpfloomError as exc:
            fail(str(exc))
