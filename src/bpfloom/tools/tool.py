"""What every ready tool shares: one of bpfloom's own BPF objects, kernel-side filters
set as globals, events turned into output records, and a CLI run loop.

A tool is a library class first (``ExecSnoop(uid=0)``), the CLI only wires it to a
printer. Life cycle, as for any ``BpfObject`` (open → globals → load → attach)::

    with ExecSnoop(include_failed=True) as tool:   # opens, sets globals, loads
        tool.attach()
        for record in tool.read(timeout=1.0):      # dicts keyed like the JSON output
            print(record["pcomm"], record["args"])

or hand ``tool.readers`` to a ``Pipeline`` with ``tool.record`` in the handler. Records
are plain dicts whose keys are the lower-case column names (plus a few extra keys a
table has no room for); the table printer and ``--json`` print the same dicts.

Kernel timestamps (``bpf_ktime_get_ns``, CLOCK_MONOTONIC) become wall-clock seconds
with one offset taken when the tool starts (``wall_time``).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeVar

import click

from .. import decode
from .._terminal import StdoutLines, escape_control, escape_lines, json_line
from ..batch import Batch
from ..bpf import object_path
from ..object import BpfObject
from ..perfbuf import PerfBuffer
from ..pipeline import Pipeline, StopSignals
from ..ringbuf import RingBuffer

Record = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
_MONO_TO_WALL_NS = time.time_ns() - time.monotonic_ns()


def wall_time(ktime_ns: int) -> float:
    """Unix time in seconds of a kernel CLOCK_MONOTONIC timestamp in ns."""
    return (ktime_ns + _MONO_TO_WALL_NS) / 1e9


@dataclass(frozen=True)
class Column:
    """One table column: its header, width, and the record key it shows (the
    lower-case header unless given). ``text``, when given, makes the cell's text from
    the whole record instead (a table-only rendering the JSON record does not carry)."""

    header: str
    width: int
    key: str = ""
    right: bool = False
    text: Callable[[Record], str] | None = None

    @property
    def field(self) -> str:
        return self.key or self.header.lower()


class Tool:
    """Base of the ready tools. Subclasses set ``object_name`` (a program in
    ``bpfloom/bpf``), ``event_type`` and ``columns``, and override ``configure()``
    (globals, before load) and ``record()`` (one raw event → one output record, or
    None to skip it).

    The constructor opens and loads the object (``LoadError`` and friends propagate)
    and opens its readers; ``attach()`` starts tracing; ``close()`` releases every
    kernel object (idempotent).
    """

    name: ClassVar[str]
    object_name: ClassVar[str]
    #: The struct the object's buffers hold, named so it is found in BTF (declare it
    #: with BPFLOOM_RECORD in the BPF source) rather than searched for in DWARF.
    event_type: ClassVar[str | None] = None
    columns: tuple[Column, ...] = ()

    def __init__(self) -> None:
        # Lossless strings: records keep the exact bytes a process gave (a path that is
        # not UTF-8); the printer escapes them on a terminal and keeps them in JSON.
        self.obj = BpfObject(object_path(self.object_name), strings="surrogateescape")
        self.readers: list[RingBuffer | PerfBuffer] = []
        try:
            self.configure()
            self.obj.load()
            self.readers = [
                self.obj.open_reader(m.name, self.event_type) for m in self.obj.event_buffers()
            ]
        except BaseException:
            self.obj.close()
            raise

    def configure(self) -> None:
        """Set the object's globals (kernel-side filters) before it is loaded."""

    def attach(self) -> None:
        """Start tracing: attach the tool's programs."""
        self.obj.attach_all()

    def record(self, event: Any) -> Record | None:
        """The output record of one raw event (default: its fields by C name)."""
        rec: Record = decode.to_jsonable(event)
        return rec

    def records(self, batch: Batch) -> list[Record]:
        """The output records of a batch, in order, skipping events ``record`` drops."""
        return [r for r in map(self.record, batch) if r is not None]

    def read(self, timeout: float | None = None) -> list[Record]:
        """Records read once from every reader (waiting up to ``timeout`` each)."""
        out: list[Record] = []
        for reader in self.readers:
            out.extend(self.records(reader.read(timeout)))
        return out

    def summary(self) -> str | None:
        """Text printed at exit after the events (per-tool aggregates), if any."""
        return None

    def dropped_kernel(self) -> int:
        return self.obj.dropped_kernel()

    def exit_line(self, stats: dict[str, Any]) -> str:
        """The line ``run_tool`` prints on stderr at exit, from the pipeline's stats
        (``unwritten``: records the output could not take)."""
        line = (
            f"bpfloom {self.name}: {stats['received']} events; lost "
            f"{stats['dropped_kernel']} in the kernel, {stats['dropped_queue']} in user space"
        )
        if stats.get("unwritten"):
            line += f", {stats['unwritten']} not written"
        return line

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.obj.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


T = TypeVar("T", bound=Tool)


# --- output -------------------------------------------------------------------------


def format_cell(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class Printer:
    """Prints records as a table (``columns``) or JSON lines; thread-safe.

    Output goes through ``out`` (a ``StdoutLines``): when stdout's reader goes away
    (``| head``) printing stops quietly, when writing fails otherwise the error is
    kept (``out.error``, a fatal error for the run) and lost records are counted;
    either way ``on_stop`` runs.
    """

    def __init__(
        self,
        columns: Sequence[Column],
        as_json: bool,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.columns = list(columns)
        self.as_json = as_json
        self.out = StdoutLines(on_stop)
        self._header_done = False

    @property
    def broken_pipe(self) -> bool:
        return self.out.broken_pipe

    def _line(self, cells: Sequence[tuple[str, Column]]) -> str:
        parts = []
        for i, (text, col) in enumerate(cells):
            last = i == len(cells) - 1
            if col.right:
                parts.append(text.rjust(col.width))
            else:
                parts.append(text if last else text.ljust(col.width))
        return " ".join(parts).rstrip()

    def lines(self, records: Sequence[Record]) -> list[str]:
        """The output lines of ``records``: JSON (exact bytes kept, see ``json_line``)
        or table rows whose every cell is escaped (``escape_control``): strings come
        from traced processes."""
        if self.as_json:
            return [json_line(r) for r in records]
        out = []
        if not self._header_done and self.columns:
            self._header_done = True
            out.append(self._line([(c.header, c) for c in self.columns]))
        for r in records:
            cells = []
            for c in self.columns:
                if c.text is not None:
                    cells.append((escape_control(c.text(r)), c))
                    continue
                value = r.get(c.field, "")
                if c.field == "time" and isinstance(value, float):
                    value = time.strftime("%H:%M:%S", time.localtime(value))
                cells.append((escape_control(format_cell(value)), c))
            out.append(self._line(cells))
        return out

    def print(self, records: Sequence[Record]) -> None:
        with self.out.lock:
            if self.out.stopped:
                self.out.write([], len(records))  # counted if writing failed
            else:
                self.out.write(self.lines(records), len(records))

    def text(self, text: str) -> None:
        """Free text (a summary, an alert) on stdout, unless the pipe is gone; each of
        its lines escaped, so what it quotes cannot add lines or controls."""
        if text:
            lines = [escape_control(line) for line in text.rstrip("\n").split("\n")]
            self.out.write(lines, 1)


def exit_output_blocked() -> NoReturn:
    """Exit at once, status 1: a printing handler was still stuck at the shutdown
    deadline (stdout is a full pipe nobody reads) and holds the printer, so whatever
    the way out still prints on stdout (a summary, histograms, ``--stats``) would wait
    for good."""
    click.echo(
        "bpfloom: error: stdout is blocked (a full pipe nobody reads?); "
        "the events being printed at the deadline were dropped",
        err=True,
    )
    sys.stderr.flush()
    os._exit(1)


# --- the CLI run loop ---------------------------------------------------------------


class Seconds(click.FloatRange):
    """A click type for a positive, finite number of seconds: ``nan`` and ``inf``, which
    a float range lets through, would make a run that never ends or ticks forever."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


SECONDS = Seconds()


def common_options(func: F) -> F:
    """``--json`` and ``--duration``, shared by every tool command."""
    func = click.option(
        "--duration",
        type=SECONDS,
        default=None,
        metavar="SECONDS",
        help="Stop after this many seconds (default: run until Ctrl-C).",
    )(func)
    func = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON object per line; keys are the lower-case column names.",
    )(func)
    return func


def fail(message: str) -> None:
    """Print a one-line error for the tool's user and exit 1."""
    click.echo(escape_lines(f"bpfloom: error: {message}"), err=True)
    sys.exit(1)


def run_tool(
    make_tool: Callable[[], Tool],
    *,
    as_json: bool,
    duration: float | None,
    columns: Sequence[Column] | None = None,
    tick: Callable[[Tool, Printer], bool | None] | None = None,
    interval: float | None = None,
) -> dict[str, Any]:
    """Run a tool from the command line until ``duration``, Ctrl-C or SIGTERM.

    Events are printed by an inline pipeline (batches straight from the reader
    thread). ``tick`` runs every ``interval`` seconds (tools that aggregate in the
    kernel print from maps there) and once more at exit; a tick that returns True ends
    the run (libbpf-tools' ``[count]``). Lost events are reported on stderr at exit.
    Returns the pipeline's final stats.
    """
    from .._exceptions import BpfloomError

    with StopSignals() as signals:
        try:
            tool = make_tool()
        except BpfloomError as exc:
            fail(str(exc))
            raise  # unreachable; fail() exits
        try:
            printer = Printer(
                tool.columns if columns is None else columns, as_json, signals.stop.set
            )

            def handle(batch: Batch) -> None:
                printer.print(tool.records(batch))

            pipeline = (
                Pipeline(tool.readers, handle, executor="inline", batch=True)
                if tool.readers
                else None
            )
            # Read before attaching, so that drops of the first events count too.
            if pipeline is not None:
                pipeline.start()
            try:
                tool.attach()
                # Tells people (and scripts, tests) that tracing has begun.
                click.echo(f"bpfloom {tool.name}: tracing; Ctrl-C to stop", err=True)
                on_tick = lambda: _tick(tick, tool, printer)  # noqa: E731
                wait_for_stop(signals.stop, pipeline, duration, on_tick, interval)
            finally:
                stats = pipeline.stop() if pipeline is not None else _no_stats(tool)
            if pipeline is not None and pipeline.abandoned:
                click.echo(tool.exit_line(stats), err=True)
                exit_output_blocked()
            if tick is not None:
                tick(tool, printer)
            summary = tool.summary()
            if summary:
                printer.text(summary)
            stats["unwritten"] = printer.out.unwritten
            click.echo(tool.exit_line(stats), err=True)
            if printer.out.error is not None:
                fail(printer.out.error_message())
            return stats
        except BpfloomError as exc:
            fail(str(exc))
            raise
        finally:
            tool.close()


def _tick(
    tick: Callable[[Tool, Printer], bool | None] | None, tool: Tool, printer: Printer
) -> bool:
    return tick is not None and tick(tool, printer) is True


def _no_stats(tool: Tool) -> dict[str, Any]:
    return {"received": 0, "dropped_kernel": tool.dropped_kernel(), "dropped_queue": 0}


def wait_for_stop(
    stop: threading.Event,
    pipeline: Pipeline | None,
    duration: float | None,
    tick: Callable[[], object] | None = None,
    interval: float | None = None,
) -> None:
    """Sleep until ``stop`` is set, ``duration`` passes or the pipeline stops running;
    call ``tick`` every ``interval`` seconds meanwhile (a tick returning True stops)."""
    deadline = None if duration is None else time.monotonic() + duration
    # Without a tick there is nothing to wake up for: waking at a past next_tick would
    # spin the loop at 100% CPU.
    next_tick = None if interval is None or tick is None else time.monotonic() + interval
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if pipeline is not None and not pipeline.running:
            return
        if tick is not None and next_tick is not None and interval is not None and now >= next_tick:
            if tick() is True:
                return
            next_tick = now + interval
        wait = 0.2
        for until in (deadline, next_tick):
            if until is not None:
                wait = min(wait, until - now)
        stop.wait(max(wait, 0.0))
