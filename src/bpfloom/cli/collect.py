"""``bpfloom collect``: records of the fleet from NATS JetStream, handled here.

A durable pull consumer (``bpfloom.fleet.source``) feeds the one run loop like a ring
buffer: the records are printed (a table with a HOST column, or JSON lines with
``host``), written to files (``-o``), counted into fleet metrics (``--metrics-addr``)
or run through detection rules (``--rules``: alerts name the host they came from).
Each message is acknowledged once its records went through; Ctrl-C gives back what
was not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .._exceptions import BpfloomError
from .._terminal import escape_control
from ..batch import Batch
from ..fleet import FLEET_SCHEMA
from ..fleet.source import FleetBatch, FleetSource
from ..rules import RuleSet, load_rules
from ..sinks import Record
from ..sinks.fleetmetrics import FleetMetricsSink
from ..sinks.table import Column
from ._app import main
from ._common import Output, fail, output_options, stderr
from ._nats import SERVER_URL, TOKEN, connection_options, nats_option_specs
from ._session import Session, run_session

_CONNECTION = {"--nats-creds", "--nats-token", "--nats-tls-ca", "--nats-tls-cert", "--nats-tls-key"}


def format_fleet_alert(record: Record) -> str:
    """``TIME PRIORITY [HOST] RULE: OUTPUT``, escaped (the output quotes what a traced
    process chose, the host what an agent said)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(float(record.get("time") or 0)))
    return escape_control(
        f"{stamp} {record.get('priority', ''):<8} [{record.get('host', '?')}] "
        f"{record.get('rule', '')}: {record.get('output', '')}"
    )


class CollectSession(Session):
    """The fleet consumer as a run-loop session: one ``FleetSource`` in, records (or
    the alerts of ``rules``) out, each with its ``host``."""

    name = "collect"
    executor = "thread"
    metrics_sink = FleetMetricsSink

    def __init__(self, source: FleetSource, rules: RuleSet | None, workers: int) -> None:
        self.source = source
        self.rules = rules
        self.workers = workers
        self.readers = [source]  # type: ignore[list-item]  # an EventSource too
        self.header = rules is None
        self.columns = self._columns_of
        self._columns: dict[tuple[Any, ...], list[Column]] = {}
        self.alerts: dict[str, int] = {}

    def records(self, batch: Batch) -> list[Record]:
        if not isinstance(batch, FleetBatch) or batch.message is None:
            return []
        message = batch.message
        if self.rules is None:
            return [dict(ev) for ev in batch]
        if message.kind == "alerts":  # an agent's detect: passed on as they are
            return [dict(ev) for ev in batch]
        if message.kind != "events":
            return []
        found = []
        for ev in batch:
            for alert in self.rules.evaluate(ev):
                self.alerts[alert.rule] = self.alerts.get(alert.rule, 0) + 1
                found.append({**alert.to_json(), "host": message.host})
        return found

    def _columns_of(self, batch: Batch) -> list[Column]:
        message = batch.message if isinstance(batch, FleetBatch) else None
        if message is None:
            return []
        first = message.events[0] if message.events else {}
        if self.rules is not None or message.kind == "alerts":
            key: tuple[Any, ...] = ("alerts",)
        else:
            key = (message.tool, message.kind, tuple(first))
        columns = self._columns.get(key)
        if columns is None:
            if key == ("alerts",):
                columns = [Column("ALERT", 0, text=format_fleet_alert)]
            else:
                tool = message.tool
                columns = [Column("HOST", 8), Column("TOOL", 10, text=lambda r: tool)]
                columns += [Column(k.upper(), len(k), key=k) for k in first if k != "host"]
            self._columns[key] = columns
        return columns

    def tracing_line(self) -> str:
        s = self.source
        return (
            f"bpfloom collect: consuming {s.subject!r} from {s.options.where} "
            f"(consumer {s.consumer}); Ctrl-C to stop"
        )

    def exit_line(self, stats: dict[str, Any]) -> str:
        s = self.source
        hosts = ", ".join(f"{h} {n}" for h, n in sorted(s.hosts.items())) or "none"
        line = (
            f"bpfloom collect: {s.records} records in {s.messages} messages (by host: "
            f"{hosts}); {s.redelivered} redelivered, {s.duplicates} duplicates skipped, "
            f"{s.bad} could not be decoded; lost {stats['dropped_queue']} in user space"
        )
        if self.rules is not None:
            fired = ", ".join(f"{n} {name!r}" for name, n in sorted(self.alerts.items()))
            line += f"; alerts: {fired or 'none'}"
        return escape_control(line)

    def close(self) -> None:
        self.source.close()


def _connection_options(func: Any) -> Any:
    for decls, attrs in reversed(nats_option_specs()):
        if decls[0] in _CONNECTION:
            func = click.option(*decls, **attrs)(func)
    return func


@main.command("collect")
@click.argument("servers", nargs=-1, required=True, type=SERVER_URL, metavar="URL...")
@click.option(
    "-s",
    "--subject",
    default="bpfloom.>",
    show_default=True,
    help="Subjects to consume: bpfloom.<host>.<tool> with * and > wildcards "
    "(bpfloom.*.execsnoop, bpfloom.web1.>, bpfloom.*.alerts).",
)
@click.option(
    "--durable",
    type=TOKEN,
    default=None,
    metavar="NAME",
    help="A durable consumer: it remembers what was acknowledged across runs, and every "
    "collector naming it shares the work (each message goes to one of them). Without "
    "it, a consumer of this run's own.",
)
@click.option(
    "--deliver",
    type=click.Choice(["all", "new"]),
    default=None,
    help="Where a new consumer starts: all the stream holds (default with --durable) or "
    "new messages only (default without).",
)
@click.option(
    "-r",
    "--rules",
    "rule_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Fleet detection: run these rule files (bpfloom detect's format; fields may "
    "include host) over the records of every host and print the alerts instead.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Pipeline worker threads that handle the records.",
)
@click.option(
    "--stream",
    type=TOKEN,
    default="BPFLOOM",
    show_default=True,
    metavar="NAME",
    help="The JetStream stream (created when missing, as agents do).",
)
@click.option(
    "--ack-wait",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="A message not acknowledged this long after delivery (a collector that died) "
    "is delivered again.",
)
@_connection_options
@output_options(nats=False)
def collect_command(
    servers: Sequence[str],
    subject: str,
    durable: str | None,
    deliver: str | None,
    rule_files: Sequence[Path],
    workers: int,
    stream: str,
    ack_wait: float,
    out: Output,
) -> None:
    """Consume the fleet's records from NATS JetStream (URL: nats://HOST:PORT; several
    for a cluster), published by agents run with --sink.

    Prints them as a table with a HOST column (or --json: each record with 'host'),
    writes them with -o (PATH.parquet takes the raw records agents send with
    --nats-format arrow), serves fleet metrics labelled by host with --metrics-addr,
    or, with --rules, runs detection rules over every host's records and prints the
    alerts, each naming its host. A message is acknowledged once its records went
    through, so a collector that dies loses nothing: JetStream delivers it again.
    """
    rules = None
    if rule_files:
        try:
            rules = load_rules(list(rule_files), schema=FLEET_SCHEMA)
        except BpfloomError as exc:
            fail(str(exc))
    ctx = click.get_current_context()
    values = dict(ctx.meta.get("bpfloom.nats", {}))
    options = connection_options(values, tuple(servers))

    def make() -> CollectSession:
        source = FleetSource(
            options,
            subject,
            durable=durable,
            stream=stream,
            deliver=deliver,
            ack_wait=ack_wait,
            warn=lambda text: stderr(f"bpfloom collect: {text}"),
        )
        return CollectSession(source, rules, workers)

    run_session(
        make,
        out=out,
    )
