"""The one run loop of every command: sources → Pipeline → sinks.

A command describes what it runs as a ``Session`` (readers, how a batch becomes
records, how to attach and detach, what to print every interval and at exit) and
``run_session`` does the rest the same way for all of them:

1. take SIGINT/SIGTERM over (``StopSignals``: the first is a clean stop, the second
   exits at once), build the session (open, set globals, load) and its sinks;
2. start the pipeline (its baseline of kernel drops is taken then, so drops of the
   very first events count), attach, say ``bpfloom NAME: tracing; Ctrl-C to stop``;
3. wait for ``--duration``, a signal, or the pipeline ending, ticking every interval;
4. detach first — everything the programs emitted is in the buffers then — and stop
   the pipeline, which drains them (the pipeline never detaches: whoever attached
   does, as in cilium/ebpf);
5. the last tick and the summary, close the sinks, the exit line on stderr (and
   ``--stats``); a fatal sink failure (stdout or the ``-o`` file) is an error, status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from .._exceptions import BpfloomError
from ..batch import Batch
from ..perfbuf import PerfBuffer
from ..pipeline import Pipeline, StopSignals, wait_for_stop
from ..ringbuf import RingBuffer
from ..sinks import Record, Sink, sink_errors
from ..sinks.jsonl import JsonLinesSink
from ..sinks.table import Column, TableSink
from ..tools.tool import Tool
from ._common import EXIT_USAGE, Output, exit_output_blocked, fail, stderr
from ._nats import nats_sink

if TYPE_CHECKING:
    from ..sinks.prometheus import PrometheusSink


@dataclass
class Interval:
    """What a tick prints: ``text`` for a table, ``records`` for JSON and files;
    ``done`` ends the run (libbpf-tools' ``[count]`` intervals printed)."""

    text: str = ""
    records: list[Record] = field(default_factory=list)
    done: bool = False
    #: Rows for Prometheus in place of ``records`` (None: the records themselves): a
    #: tool whose records are one per flow sends aggregates there, not a series each.
    metrics: list[Record] | None = None


class Session:
    """What one command runs. Subclasses set the attributes and override what applies.

    ``readers`` are the event buffers read (none for tools that aggregate in the
    kernel); ``records(batch)`` turns a batch into output records; ``columns`` lays
    out the table (a list, or a function of the batch); ``executor``/``workers`` run
    ``records`` (inline in the reader thread unless a command needs workers).
    """

    name = "session"
    readers: Sequence[RingBuffer | PerfBuffer] = ()
    columns: Sequence[Column] | Callable[[Batch], Sequence[Column]] = ()
    header = True
    executor = "inline"
    workers = 1
    interval: float | None = None
    #: For ``--sink nats://``: the tool token of subjects (``bpfloom.<host>.<tool>``;
    #: default ``name``) and what the records are (``events``, or ``alerts``).
    fleet_name: str | None = None
    record_kind = "events"
    #: The sink ``--metrics-addr`` makes (``collect`` serves fleet metrics); None:
    #: ``PrometheusSink`` (imported when used).
    metrics_sink: type[PrometheusSink] | None = None
    #: The run's outputs, set by ``run_session`` before ``attach``: for what a session
    #: prints beside its records from a thread of its own (trace_pipe lines).
    outputs: Outputs | None = None

    def records(self, batch: Batch) -> list[Record]:
        return []

    def attach(self) -> None:
        """Start tracing."""

    def detach(self) -> None:
        """Stop tracing: nothing new reaches the buffers after this."""

    def tracing_line(self) -> str:
        return f"bpfloom {self.name}: tracing; Ctrl-C to stop"

    def tick(self, final: bool) -> Interval | None:
        """Every ``interval`` seconds and once at exit (``final``): what to print."""
        return None

    def summary(self) -> Interval | None:
        """What to print at exit, after the last tick."""
        return None

    def exit_line(self, stats: dict[str, Any]) -> str:
        return (
            f"bpfloom {self.name}: {stats['received']} events; lost "
            f"{stats['dropped_kernel']} in the kernel, {stats['dropped_queue']} in user space"
        )

    def dropped_kernel(self) -> int:
        return 0

    def extra_stats(self) -> dict[str, Any]:
        """The session's own counters, added to the final stats (``--stats``)."""
        return {}

    def close(self) -> None:
        """Release every kernel object (idempotent)."""


class ToolSession(Session):
    """A ready tool (``bpfloom.tools``) as a session; ``tick`` makes its intervals."""

    def __init__(
        self,
        tool: Tool,
        *,
        tick: Callable[[bool], Interval | None] | None = None,
        interval: float | None = None,
        columns: Sequence[Column] | None = None,
    ) -> None:
        self.tool = tool
        self.name = tool.name
        self.readers = tool.readers
        self.columns = tool.columns if columns is None else columns
        self.interval = interval
        self._tick = tick

    def records(self, batch: Batch) -> list[Record]:
        return self.tool.records(batch)

    def attach(self) -> None:
        self.tool.attach()

    def detach(self) -> None:
        self.tool.detach()

    def tick(self, final: bool) -> Interval | None:
        return None if self._tick is None else self._tick(final)

    def summary(self) -> Interval | None:
        text = self.tool.summary()
        records = self.tool.summary_records()
        if not text and not records:
            return None
        return Interval(text or "", records)

    def exit_line(self, stats: dict[str, Any]) -> str:
        return self.tool.exit_line(stats)

    def dropped_kernel(self) -> int:
        return self.tool.dropped_kernel()

    def close(self) -> None:
        self.tool.close()


class Outputs:
    """The sinks of one run: a batch's records go to each; their failures add up."""

    def __init__(self, sinks: Sequence[Sink], prometheus: PrometheusSink | None = None) -> None:
        self.sinks = list(sinks)
        #: The Prometheus sink among ``sinks``, if any.
        self.prometheus = prometheus

    @classmethod
    def for_command(
        cls,
        session: Session,
        *,
        as_json: bool,
        output: str | None,
        metrics_addr: tuple[str, int] | None,
        on_stop: Callable[[], None],
    ) -> Outputs:
        """stdout as a table (or JSON lines with ``as_json``), or the ``-o`` file; NATS
        with ``--sink``; and Prometheus with ``metrics_addr``."""
        sinks: list[Sink]
        if output is None:
            if as_json:
                sinks = [JsonLinesSink(on_stop=on_stop)]
            else:
                sinks = [TableSink(session.columns, on_stop, header=session.header)]
        elif output.endswith(".jsonl"):
            sinks = [JsonLinesSink(output, on_stop=on_stop)]
        elif output.endswith(".parquet"):
            if not session.readers:
                fail(
                    f"-o {output}: {session.name} prints aggregates, not events, and "
                    "Parquet takes raw events; write them as JSON lines (.jsonl)",
                    EXIT_USAGE,
                )
            from ..sinks.parquet import ParquetSink  # imported when used: start-up

            decoder = session.readers[0].decoder
            sinks = [ParquetSink(output, on_stop=on_stop, decoder=decoder)]
        else:
            fail(f"-o {output}: name the format by its ending, .jsonl or .parquet", EXIT_USAGE)
        try:
            fleet = nats_sink(session)
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
        if fleet is not None:
            sinks.append(fleet)
        prometheus = None
        if metrics_addr is not None:
            # Prometheus is imported when used: start-up.
            from ..sinks.prometheus import PrometheusSink

            try:
                prometheus = (session.metrics_sink or PrometheusSink)(metrics_addr, session.name)
                sinks.append(prometheus)
            except OSError as exc:
                for sink in sinks:
                    sink.close()
                host, port = metrics_addr
                raise BpfloomError(
                    f"--metrics-addr {host}:{port}: {exc.strerror or exc}", errno=exc.errno
                ) from exc
        return cls(sinks, prometheus)

    def write_batch(self, batch: Batch, records: Sequence[Record]) -> None:
        for sink in self.sinks:
            sink.write_batch(batch, records)

    def write(self, records: Sequence[Record]) -> None:
        for sink in self.sinks:
            sink.write(records)

    def summary(self, part: Interval | None) -> None:
        if part is None:
            return
        for sink in self.sinks:
            if part.metrics is not None and sink is self.prometheus:
                sink.summary(part.text, part.metrics)
            else:
                sink.summary(part.text, part.records)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    @property
    def errors(self) -> int:
        return sink_errors(self.sinks)

    def counters(self) -> dict[str, int]:
        """The sinks' own numbers (``published``, ``spooled``, ``dropped_sink``)."""
        out: dict[str, int] = {}
        for sink in self.sinks:
            for key, n in sink.counters().items():
                out[key] = out.get(key, 0) + n
        return out

    def reports(self) -> list[str]:
        return [line for line in (s.report() for s in self.sinks) if line]

    @property
    def stdout_stopped(self) -> bool:
        """stdout failed or its reader went away: nothing more goes there."""
        return any(s.stopped for s in self.sinks if _on_stdout(s))

    def fatal_error(self) -> str | None:
        """The message of the first fatal sink that failed, if any."""
        for sink in self.sinks:
            if sink.fatal and sink.error is not None:
                return sink.error_message()
        return None


def run_session(make: Callable[[], Session], out: Output) -> dict[str, Any]:
    """Run a command's session from start to exit (see the module docstring), its
    outputs as ``out`` says; returns the pipeline's final stats. Errors end it with one
    line (``fail``)."""
    with StopSignals() as signals:
        try:
            session = make()
        except BpfloomError as exc:
            fail(str(exc))
        outputs: Outputs | None = None
        try:
            outputs = Outputs.for_command(
                session,
                as_json=out.as_json,
                output=out.output,
                metrics_addr=out.metrics_addr,
                on_stop=signals.stop.set,
            )
            session.outputs = outputs

            def handle(batch: Batch) -> None:
                outputs.write_batch(batch, session.records(batch))

            pipeline = (
                Pipeline(
                    list(session.readers),
                    handle,
                    executor=session.executor,
                    workers=session.workers,
                    batch=True,
                )
                if session.readers
                else None
            )
            prometheus = outputs.prometheus
            if prometheus is not None:
                if pipeline is not None:
                    live = pipeline
                    prometheus.bind(
                        lambda: {
                            **live.stats.snapshot(),
                            "sink_errors": outputs.errors,
                            **outputs.counters(),
                        },
                        lambda: list(live.stats.handler_latency.buckets),
                    )
                else:
                    prometheus.bind(
                        lambda: {
                            **_no_stats(session),
                            "sink_errors": outputs.errors,
                            **outputs.counters(),
                        }
                    )
                stderr(f"bpfloom {session.name}: metrics at {prometheus.url}")
            if pipeline is not None:
                pipeline.start()
            try:
                try:
                    session.attach()
                    click.echo(session.tracing_line(), err=True)

                    def tick() -> bool:
                        part = session.tick(final=False)
                        outputs.summary(part)
                        return part is not None and part.done

                    wait_for_stop(signals.stop, pipeline, out.duration, tick, session.interval)
                finally:
                    session.detach()
            finally:
                stats = pipeline.stop() if pipeline is not None else _no_stats(session)
            if pipeline is not None and pipeline.abandoned:
                exit_output_blocked(session.exit_line(stats))
            outputs.summary(session.tick(final=True))
            outputs.summary(session.summary())
            outputs.close()
            stats["sink_errors"] = outputs.errors
            stats.update(session.extra_stats())
            stats.update(outputs.counters())
            stderr(session.exit_line(stats) + _unwritten(outputs.errors))
            for line in outputs.reports():
                stderr(f"bpfloom {session.name}: {line}")
            if out.stats:
                _print_stats(stats, to_stdout=out.as_json and out.output is None, outputs=outputs)
            message = outputs.fatal_error()
            if message is not None:
                fail(message)
            return stats
        except BpfloomError as exc:
            fail(str(exc))
        finally:
            if outputs is not None:
                outputs.close()  # idempotent: stops the metrics server on every way out
            session.close()


def _on_stdout(sink: Sink) -> bool:
    return isinstance(sink, TableSink) or (isinstance(sink, JsonLinesSink) and sink.path is None)


def _unwritten(errors: int) -> str:
    return f", {errors} not written" if errors else ""


def _print_stats(stats: dict[str, Any], *, to_stdout: bool, outputs: Outputs) -> None:
    line = json.dumps({"stats": stats})
    if to_stdout and not outputs.stdout_stopped:
        try:
            click.echo(line)
            return
        except OSError:
            pass
    click.echo(line, err=True)


def _no_stats(session: Session) -> dict[str, Any]:
    return {"received": 0, "dropped_kernel": session.dropped_kernel(), "dropped_queue": 0}
