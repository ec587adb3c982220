"""The ``bpfloom`` command line: a thin layer over the public API.

``bpfloom run OBJECT [OPTIONS] [--<global> VALUE ...]`` is a drop-in for eunomia-bpf's
``ecli run`` on plain objects: the object's globals become options named exactly like
the variables (parsed by a second click command built from the object's BTF once the
object is open), every program is attached by its ``SEC()`` name, events of every
ring/perf buffer are printed as a table or JSON lines, and the object's maps and
globals are printed every interval and at exit (``bpfloom.mapdump``). Errors are one
line on stderr and exit status 1 — never a traceback (set ``BPFLOOM_DEBUG=1`` to see one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import click

from . import decode
from ._exceptions import BpfloomError, TypeInfoError
from ._terminal import StdoutLines, escape_control, escape_lines, json_line
from .batch import Batch
from .decode import Decoder
from .mapdump import DEFAULT_MAX_ROWS, MapDump
from .object import BpfObject, GlobalVar
from .perfbuf import PerfBuffer
from .pipeline import Pipeline, StopSignals
from .ringbuf import DEFAULT_POLL_INTERVAL, RingBuffer
from .tools.tool import SECONDS, wait_for_stop
from .tracepipe import TraceLine, TracePipe, trace_pipe_path
from .types import Array, Enum, Float, Int, Type, strip

EXIT_ERROR = 1  # the run failed: a missing file, a refused load, an I/O error
EXIT_USAGE = 2  # the command line is wrong: an unknown option, a bad value


def _fail(message: str, status: int = EXIT_ERROR) -> NoReturn:
    _stderr(f"bpfloom: error: {message}")
    sys.exit(status)


def _stderr(message: str) -> None:
    """A message on stderr, escaped: it may quote names an object file chose."""
    click.echo(escape_lines(message), err=True)


def _usage_fail(exc: click.ClickException) -> NoReturn:
    """click's error as one line with where to look for help (click itself prints Usage
    and Try lines around it); status 2 for a wrong command line, 1 otherwise."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    _fail(message, EXIT_USAGE if isinstance(exc, click.UsageError) else EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpfloom")
def main() -> None:
    """bpfloom: run precompiled CO-RE eBPF objects and read their events from Python.

    Errors are one line on stderr. Exit status: 0 done (Ctrl-C and SIGTERM included),
    1 the run failed, 2 the command line is wrong.
    """


# --- bpfloom run ------------------------------------------------------------------------


class _GlobalType(click.ParamType):  # type: ignore[type-arg]
    """A click type that parses command-line text for one global, from its BTF type."""

    def __init__(self, var: GlobalVar) -> None:
        self.var = var
        self.name = var.c_type

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return decode.parse_text(self.var.type, value)
        except TypeInfoError as exc:
            self.fail(str(exc), param, ctx)


def _is_bool(t: Type | None) -> bool:
    s = strip(t)
    return isinstance(s, Int) and s.is_bool


def _global_dest(var: GlobalVar) -> str:
    """The click parameter name of a global's option: apart from run's own options'
    names, so a global called ``duration`` or ``json`` cannot take their place."""
    return f"global__{var.name}"


def _global_options(obj: BpfObject) -> list[click.Parameter]:
    """One option per global in ``option_globals``: ``--NAME``, or ``--global-NAME``
    when run has an option of that name (``--json``, ``--duration``, ``-h``)."""
    taken = {"-h", "--help"}
    for option in _run_options():
        taken.update(option.opts)
    options: list[click.Parameter] = []
    for var in option_globals(obj):
        try:
            default = obj.globals[var.name]
        except BpfloomError:
            default = None
        flag = f"--{var.name}" if f"--{var.name}" not in taken else f"--global-{var.name}"
        section = var.section.lstrip(".")
        help_text = f"global {var.c_type} in {section}"
        if _is_bool(var.type):
            options.append(
                click.Option(
                    [flag, _global_dest(var)],
                    is_flag=True,
                    default=bool(default),
                    show_default=True,
                    help=help_text,
                )
            )
        else:
            options.append(
                click.Option(
                    [flag, _global_dest(var)],
                    type=_GlobalType(var),
                    default=default,
                    show_default=True,
                    metavar=var.c_type.upper().replace(" ", ""),
                    help=help_text,
                )
            )
    return options


def option_globals(obj: BpfObject) -> list[GlobalVar]:
    """The globals offered as options: those named like C identifiers whose type text
    can give (numbers, bools, enums, strings, arrays of those).

    Function-local statics are not options: clang names them ``func.var`` (bpf_printk's
    format strings are ``func.____fmt``), and they are the program's scratch space.
    Pointers and structs are not either. The library reaches every global by its full
    name (``obj.globals["func.var"]``).
    """
    return [v for v in obj.globals.info() if v.name.isidentifier() and _text_settable(v.type)]


def _text_settable(t: Type | None) -> bool:
    s = strip(t)
    if isinstance(s, Array):
        s = strip(s.element)
    return isinstance(s, (Int, Enum, Float))


def _run_options() -> list[click.Parameter]:
    return [
        click.Option(["--json", "as_json"], is_flag=True, help="Print one JSON object per event."),
        click.Option(
            ["--duration"],
            type=SECONDS,
            default=None,
            help="Stop after this many seconds (default: run until Ctrl-C).",
        ),
        click.Option(
            ["--event-type", "event_type"],
            default=None,
            metavar="NAME",
            help="Struct the ring/perf buffer records hold (default: found automatically).",
        ),
        click.Option(
            ["--max-latency", "max_latency"],
            type=SECONDS,
            default=None,
            metavar="SECONDS",
            help="Trade latency for overhead: programs built on bpfloom.h stop waking the "
            "reader, which polls every SECONDS instead (default: adaptive wakeups, the "
            "kernel wakes the reader only when it had caught up).",
        ),
        click.Option(
            ["--stats"],
            is_flag=True,
            help='At exit, print {"stats": {...}}: counts, drops, latencies (stdout with '
            "--json, else stderr).",
        ),
        click.Option(
            ["--trace-pipe", "trace_pipe"],
            is_flag=True,
            help="Also print what programs write with bpf_printk, read from tracefs' "
            "trace_pipe. It is system-wide: lines other BPF programs print while this "
            "runs show up too, a line read here is not seen by another reader, and lines "
            "left there before the run are thrown away.",
        ),
        click.Option(
            ["--interval"],
            type=SECONDS,
            default=5.0,
            show_default=True,
            help="Seconds between prints of the maps. An object with ring/perf buffers "
            "prints its maps only at exit unless --interval is given.",
        ),
        click.Option(
            ["--map", "map"],
            multiple=True,
            metavar="NAME",
            help="Print only this map (or .data/.bss variable); repeatable.",
        ),
        click.Option(
            ["--no-maps", "no_maps"], is_flag=True, help="Print no maps (nor .data/.bss variables)."
        ),
        click.Option(
            ["--map-entries", "map_entries"],
            type=click.IntRange(min=0),
            default=DEFAULT_MAX_ROWS,
            show_default=True,
            metavar="N",
            help="Rows (or histograms) printed per map in text output; 0: all.",
        ),
    ]


RUN_HELP = """Load OBJECT, attach its programs, and print its events.

OBJECT is a compiled eBPF object (clang -g -O2 -target bpf). Its global variables
(const volatile, .data, .bss) of number, bool, enum or string types become options
named exactly like the variables, e.g. --pid_target 618; bool globals are flags.
Function-local statics (bpf_printk's format strings among them) are not options.
Setting a global that no program reads (a plain `const`, which the compiler folds into
the code) prints a warning. Run `bpfloom run OBJECT --help` to list them with their
types and defaults.

Events of every ring buffer and perf buffer map are printed one per line: a table
(TIME, then the record's fields) or, with --json, one JSON object per line. Hash and
array maps, and .data/.bss globals holding counts, are printed every --interval seconds
and at exit (at exit only for an object with ring/perf buffers, unless --interval is
given): log2 histograms (a struct with a `slots` array) as bars, other maps as a key ->
value table, and the names of empty maps. At exit, a summary of events received and
lost goes to stderr.
"""


def _split_object(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take OBJECT out of ``run``'s arguments: the first argument that is neither one of
    ``run``'s own options nor the value such an option takes (or the one after ``--``).

    This is the grammar alone, never what the file system holds: a file in the current
    directory named like an option's value cannot become the object. The object's
    globals are options only it defines, so they must come after OBJECT.
    """
    takes_value: set[str] = set()
    flags = {"-h", "--help"}
    for option in _run_options():
        assert isinstance(option, click.Option)
        (flags if option.is_flag else takes_value).update(option.opts)
    rest = list(args)
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            if i + 1 == len(rest):
                return None, rest[:i]
            return rest[i + 1], rest[:i] + rest[i + 2 :]
        if arg == "-" or not arg.startswith("-"):
            return arg, rest[:i] + rest[i + 1 :]
        name, has_value = arg.split("=", 1)[0], "=" in arg
        if name in takes_value:
            i += 1 if has_value else 2
        elif name in flags:
            i += 1
        else:
            _fail(
                f"option {name!r} before OBJECT is not an option of run; the object's "
                f"globals go after it: bpfloom run OBJECT {name} ...",
                EXIT_USAGE,
            )
    return None, rest


@main.command(
    "run",
    help=RUN_HELP,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run_command(args: tuple[str, ...]) -> None:
    obj_path, rest = _split_object(args)
    if obj_path is None:
        inner = click.Command("run", params=_run_options(), help=RUN_HELP)
        if any(a in ("-h", "--help") for a in rest):
            click.echo(inner.get_help(click.Context(inner, info_name="bpfloom run")))
            click.echo("\nUsage: bpfloom run OBJECT [OPTIONS] [--GLOBAL VALUE ...]")
            return
        _fail("missing OBJECT: bpfloom run OBJECT [OPTIONS] (see bpfloom run --help)", EXIT_USAGE)
    try:
        obj = BpfObject(obj_path, strings="surrogateescape")
    except BpfloomError as exc:
        _fail(str(exc))
    try:
        inner = click.Command(
            "run",
            params=_run_options() + _global_options(obj),
            help=RUN_HELP,
            context_settings={"help_option_names": ["-h", "--help"]},
            callback=lambda **kw: _run(obj, kw),
        )
        try:
            inner.main(args=rest, prog_name=f"bpfloom run {obj_path}", standalone_mode=False)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.NoSuchOption as exc:
            names = ", ".join(f"--{v.name}" for v in option_globals(obj)) or "none"
            _fail(f"{exc.format_message()} Globals of {obj_path}: {names}", EXIT_USAGE)
        except click.ClickException as exc:
            _usage_fail(exc)
        except click.exceptions.Abort:
            sys.exit(EXIT_ERROR)
    except BpfloomError as exc:
        _fail(str(exc))
    finally:
        obj.close()


MAX_COLUMN_WIDTH = 64  # a wider value overflows its cell rather than widen the column


def _field_width(name: str, t: Type | None) -> int:
    """A column's starting width: its header, or what the type usually needs."""
    s = strip(t)
    if isinstance(s, Array) and isinstance(strip(s.element), Int):
        return max(len(name) + 1, min(s.length, 32) + 1)
    if isinstance(s, Enum):
        return max(len(name) + 1, max((len(n) for n in s.values), default=6) + 1)
    return max(len(name) + 1, 8)


class _Printer:
    """Prints events as a table or JSON lines; output is flushed per batch.

    Table columns start at the width their type usually needs and widen to the widest
    value seen so far (up to ``MAX_COLUMN_WIDTH``), so later rows stay aligned. Cells
    are escaped: strings come from traced processes. Safe to call from several reader
    threads. Output goes through ``out`` (a ``StdoutLines``): EPIPE stops it quietly,
    another write error stops it and is fatal for the run; ``on_stop`` runs either way.
    """

    def __init__(self, as_json: bool, on_stop: Callable[[], None] | None = None) -> None:
        self.as_json = as_json
        self.widths: dict[int, list[int]] = {}  # id(decoder) -> column widths
        self.out = StdoutLines(on_stop)

    def print_batch(self, batch: Batch) -> None:
        with self.out.lock:
            lines = [] if self.out.stopped else self.batch(batch.decoder, batch)
            self.out.write(lines, len(batch))

    def print_trace_line(self, line: TraceLine) -> None:
        """One bpf_printk line from trace_pipe."""
        if self.as_json:
            text = json_line({"trace_pipe": line.as_dict()})
        else:
            stamp = time.strftime("%H:%M:%S")
            where = escape_control(f"{line.comm}-{line.pid} [{line.cpu:03d}]")
            text = f"{stamp} TRACE {where} {escape_control(line.message)}"
        self.out.write([text])

    def lines(self, lines: Sequence[str]) -> None:
        """Print whole lines (a map dump), never in the middle of a batch."""
        self.out.write(lines)

    def batch(self, decoder: Decoder, events: Iterable[Any]) -> list[str]:
        """The output lines of a batch of events (a header first, once per decoder)."""
        if self.as_json:
            return [json_line(decode.to_jsonable(ev)) for ev in events]
        out: list[str] = []
        widths = self.widths.get(id(decoder))
        if widths is None:
            pairs = zip(decoder.c_fields, decoder.field_types, strict=True)
            widths = self.widths[id(decoder)] = [_field_width(n, t) for n, t in pairs]
            names = [n.upper() for n in decoder.c_fields]
            header = "".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
            out.append(("TIME     " + header).rstrip())
        now = time.strftime("%H:%M:%S")
        last = len(widths) - 1
        for ev in events:
            cells = [escape_control(_cell(v)) for v in ev]
            for i, cell in enumerate(cells[:last]):
                if len(cell) >= widths[i]:
                    widths[i] = max(widths[i], min(len(cell) + 1, MAX_COLUMN_WIDTH))
                cells[i] = cell.ljust(widths[i] - 1) + " "
            out.append(f"{now} " + "".join(cells).rstrip())
        return out


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return json.dumps(decode.to_jsonable(value), ensure_ascii=False)
    return str(value)


def _print_maps(dump: MapDump, printer: _Printer) -> None:
    if printer.as_json:
        rows = dump.json_rows()
        printer.lines([json_line(row) for row in rows])
    else:
        printer.lines(dump.text_lines())


def _set_globals(obj: BpfObject, opts: dict[str, Any]) -> None:
    """Set the globals given on the command line; warn (once each) about those that
    no program reads, since setting them changes nothing."""
    ctx = click.get_current_context()
    for var in option_globals(obj):
        dest = _global_dest(var)
        if ctx.get_parameter_source(dest) != click.core.ParameterSource.COMMANDLINE:
            continue
        obj.globals[var.name] = opts[dest]
        if not obj.globals.referenced(var.name):
            _stderr(
                f"bpfloom: warning: no program reads global {var.name!r}, so setting it "
                "changes nothing (a plain `const` is folded into the code by the compiler; "
                "declare it `const volatile`)"
            )


def _run(obj: BpfObject, opts: dict[str, Any]) -> None:
    _set_globals(obj, opts)
    ctx = click.get_current_context()
    as_json = bool(opts["as_json"])
    if opts["no_maps"] and opts["map"]:
        _fail("--map and --no-maps exclude each other")
    dump = None if opts["no_maps"] else MapDump(obj, opts["map"] or None, opts["map_entries"])
    if dump is not None and not dump.sources:
        dump = None
    # Take SIGINT/SIGTERM over before anything is attached: from then on the programs
    # trace, and Ctrl-C must be the clean stop with a summary. A signal during set-up
    # only sets `stop`; wait_for_stop() then returns at once.
    poll_interval = DEFAULT_POLL_INTERVAL
    if opts["max_latency"] is not None:
        poll_interval = opts["max_latency"]
        obj.use_polled_wakeups()
    printk = [p.name for p in obj.programs.values() if p.autoload and p.uses_trace_printk]
    with StopSignals() as signals:
        obj.load()
        readers: list[RingBuffer | PerfBuffer] = [
            obj.open_reader(m.name, opts["event_type"], poll_interval=poll_interval)
            for m in obj.event_buffers()
        ]
        if printk and not opts["trace_pipe"]:
            who = (
                f"program {printk[0]} prints"
                if len(printk) == 1
                else (f"programs {', '.join(printk)} print")
            )
            _stderr(
                f"bpfloom: note: {who} with bpf_printk; the lines go to "
                f"{trace_pipe_path()} (add --trace-pipe to print them here)"
            )
        elif not readers and dump is None and not opts["trace_pipe"]:
            click.echo(
                "bpfloom: note: the object has no ring/perf buffer or map to print; "
                "programs stay attached until the end",
                err=True,
            )
        printer = _Printer(as_json, on_stop=signals.stop.set)
        trace_pipe = TracePipe(printer.print_trace_line) if opts["trace_pipe"] else None
        pipeline = (
            Pipeline(readers, printer.print_batch, executor="inline", batch=True)
            if readers
            else None
        )
        # Start reading before attaching: the pipeline takes its baseline of kernel
        # drops when it starts, so drops of the very first events count too.
        if pipeline is not None:
            pipeline.start()
        try:
            if trace_pipe is not None:
                trace_pipe.start()
            obj.attach_all()
            for prog in getattr(obj, "skipped_programs", []):
                _stderr(
                    f"bpfloom: note: program {prog.name!r} (SEC {prog.section!r}) names no "
                    "attach target and was not attached"
                )
            # As every tool does: people (and scripts, tests) know tracing has begun.
            click.echo("bpfloom run: tracing; Ctrl-C to stop", err=True)
            # With events, scratch maps (a pid -> timestamp hash) would interleave with
            # the event stream: their maps print at exit, unless --interval asks.
            periodic = dump is not None and (
                not readers
                or ctx.get_parameter_source("interval") == click.core.ParameterSource.COMMANDLINE
            )
            wait_for_stop(
                signals.stop,
                pipeline,
                opts["duration"],
                (lambda: _print_maps(dump, printer)) if periodic and dump is not None else None,
                float(opts["interval"]),
            )
        finally:
            stats = pipeline.stop() if pipeline is not None else None
            if trace_pipe is not None:
                trace_pipe.close()
    if trace_pipe is not None:
        click.echo(f"bpfloom: {trace_pipe.lines} bpf_printk lines from trace_pipe", err=True)
    if dump is not None and not printer.out.stopped:
        _print_maps(dump, printer)
    _summary(obj, stats, printer.out, bool(opts["stats"]), as_json)
    if printer.out.error is not None:
        _fail(printer.out.error_message())


def _summary(
    obj: BpfObject,
    stats: dict[str, Any] | None,
    out: StdoutLines,
    show_stats: bool,
    as_json: bool,
) -> None:
    """The exit summary on stderr (and ``--stats``); records the output could not take
    count as lost too (``unwritten``)."""
    if stats is None:
        stats = {"received": 0, "dropped_kernel": obj.dropped_kernel(), "dropped_queue": 0}
    stats["unwritten"] = out.unwritten
    line = (
        f"bpfloom: {stats['received']} events received; lost: {stats['dropped_kernel']} in "
        f"the kernel, {stats['dropped_queue']} in user space"
    )
    if out.unwritten:
        line += f", {out.unwritten} not written"
    click.echo(line, err=True)
    if show_stats and not (as_json and out.stopped):
        click.echo(json.dumps({"stats": stats}), err=not as_json)


# --- bpfloom demo -----------------------------------------------------------------------


@main.command("demo")
@click.option(
    "--duration",
    type=SECONDS,
    default=5.0,
    show_default=True,
    help="Seconds to trace.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def demo_command(duration: float, as_json: bool) -> None:
    """Trace exec() system-wide for a few seconds with the built-in exec.bpf.o.

    While it runs, the demo starts a few short commands itself so there is something
    to see even on an idle machine.
    """
    from .bpf import object_path

    try:
        path = str(object_path("exec"))
    except BpfloomError as exc:
        _fail(str(exc))
    stop = threading.Event()

    def activity() -> None:
        commands = (["uname", "-r"], ["ls", "/"], ["date"], ["id", "-u"], ["true"])
        i = 0
        while not stop.wait(0.5):
            subprocess.run(commands[i % len(commands)], stdout=subprocess.DEVNULL, check=False)
            i += 1

    worker = threading.Thread(target=activity, daemon=True)
    worker.start()
    args = [path, "--duration", str(duration)] + (["--json"] if as_json else [])
    try:
        run_command.main(args=args, prog_name="bpfloom run", standalone_mode=False)
    finally:
        stop.set()
        worker.join(timeout=2)


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
def export_command(
    configs: tuple[str, ...], listen: str, max_series: int | None, duration: float | None
) -> None:
    """Serve Prometheus metrics read from BPF maps at scrape time.

    Each CONFIG.yaml is in cloudflare/ebpf_exporter's format, beside the object
    CONFIG.bpf.o it describes: every metric reads the map named like it and prefixes
    its name with ebpf_exporter_. Ctrl-C or SIGTERM detaches everything and exits 0.
    """
    from .export import parse_listen, serving

    try:
        address = parse_listen(listen)
    except ValueError as exc:
        _fail(f"--listen: {exc} (see 'bpfloom export --help')", EXIT_USAGE)
    with StopSignals() as signals:
        try:
            with serving(configs, address, max_series=max_series) as server:
                _stderr(f"bpfloom export: tracing; metrics at {server.url}; Ctrl-C to stop")
                wait_for_stop(signals.stop, None, duration)
        except BpfloomError as exc:
            _fail(str(exc))


def _add_tool_commands() -> None:
    from .tools import commands

    for command in commands():
        main.add_command(command)


_add_tool_commands()


def entry() -> None:
    """Console entry point: every error is one line on stderr (``bpfloom: error: ...``)
    with status 2 for a wrong command line and 1 for a failed run; an unexpected
    exception too (status 1), unless BPFLOOM_DEBUG is set."""
    try:
        status = main.main(prog_name="bpfloom", standalone_mode=False)
        sys.exit(status if isinstance(status, int) else 0)
    except SystemExit:
        raise
    except click.exceptions.Abort:  # Ctrl-C or end of input at a prompt
        sys.exit(130)
    except click.ClickException as exc:
        _usage_fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    except BpfloomError as exc:
        _fail(str(exc))
    except Exception as exc:
        if os.environ.get("BPFLOOM_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (BPFLOOM_DEBUG=1 shows a traceback)")
