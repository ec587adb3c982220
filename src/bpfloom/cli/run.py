"""``bpfloom run OBJECT``: any precompiled object, as eunomia-bpf's ``ecli run`` runs it.

The object's globals become options named exactly like the variables (parsed by a
second click command built from the object's BTF once the object is open), every
program is attached by its ``SEC()`` name (or to the interface, binary or process the
options and the source's attach comments give), events of every ring/perf buffer are
printed as a table or JSON lines, and the object's maps and globals every interval and
at exit (``bpfloom.mapdump``). ``bpfloom demo`` runs the built-in exec tracer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import click

from .. import attach_comments, decode
from .._exceptions import AttachError, BpfloomError, TypeInfoError
from .._poller import DEFAULT_POLL_INTERVAL
from .._terminal import escape_control
from ..batch import Batch
from ..mapdump import DEFAULT_MAX_ROWS, MapDump
from ..object import XDP_MODES, BpfObject, GlobalVar, Link, Program
from ..sinks import Record
from ..sinks.table import Column
from ..targets import AttachTargets, plan
from ..tracepipe import TraceLine, TracePipe, trace_pipe_path
from ..types import Array, Enum, Float, Int, Type, strip
from ._app import main
from ._common import (
    EXIT_ERROR,
    EXIT_USAGE,
    SECONDS,
    Output,
    fail,
    output_params,
    stderr,
    usage_fail,
)
from ._session import Interval, Session, run_session


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
    """run's own options (every other option is a global of the object)."""
    return [
        *output_params("event"),
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
        click.Option(
            ["--interface"],
            default=None,
            metavar="IF",
            help="Network interface XDP and tc programs attach to (default: the source's "
            "/// @ifindex or @tchook comment).",
        ),
        click.Option(
            ["--tc-hook", "tc_hook"],
            type=click.Choice(["ingress", "egress"]),
            default=None,
            metavar="HOOK",
            help="tc hook of tc programs: ingress or egress (default: the source's "
            "@tchook, else ingress).",
        ),
        click.Option(
            ["--xdp-mode", "xdp_mode"],
            type=click.Choice(list(XDP_MODES)),
            default=None,
            metavar="MODE",
            help="XDP mode: auto, skb (generic), native (driver) or offload (NIC); "
            "default: the source's @flags, else auto (native when the driver has it).",
        ),
        click.Option(
            ["--binary"],
            default=None,
            metavar="PATH",
            help="Attach every uprobe, uretprobe and USDT program to this binary instead "
            "of the one its SEC names.",
        ),
        click.Option(
            ["--pid"],
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Limit uprobe, uretprobe and USDT programs to process N.",
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

Programs attach by their SEC() names. XDP and tc programs attach to --interface, or to
the interface their source's ecli attach comments name (/// @ifindex, /// @tchook;
options win over comments). --binary moves every uprobe, uretprobe and USDT program to
another binary (same function or probe), --pid limits them to one process. Everything
is detached at exit, on Ctrl-C and on errors.
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
            fail(
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
        fail("missing OBJECT: bpfloom run OBJECT [OPTIONS] (see bpfloom run --help)", EXIT_USAGE)
    try:
        obj = BpfObject(obj_path, strings="surrogateescape")
    except BpfloomError as exc:
        fail(str(exc))
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
            fail(f"{exc.format_message()} Globals of {obj_path}: {names}", EXIT_USAGE)
        except click.ClickException as exc:
            usage_fail(exc)
        except click.exceptions.Abort:
            sys.exit(EXIT_ERROR)
    except BpfloomError as exc:
        fail(str(exc))
    finally:
        obj.close()


def _field_width(name: str, t: Type | None) -> int:
    """A column's starting width: its header, or what the type usually needs."""
    s = strip(t)
    if isinstance(s, Array) and isinstance(strip(s.element), Int):
        return max(len(name) + 1, min(s.length, 32) + 1)
    if isinstance(s, Enum):
        return max(len(name) + 1, max((len(n) for n in s.values), default=6) + 1)
    return max(len(name) + 1, 8)


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
            stderr(
                f"bpfloom: warning: no program reads global {var.name!r}, so setting it "
                "changes nothing (a plain `const` is folded into the code by the compiler; "
                "declare it `const volatile`)"
            )


class RunSession(Session):
    """``bpfloom run``: any object's event buffers, maps, bpf_printk lines.

    ``prepare`` (before load) takes the attach targets and the polled-wakeup choice,
    ``load`` loads and opens the readers; the loop then attaches every program by its
    SEC() name (or the targets), prints the maps every interval (or only at exit when
    there are events: scratch maps would interleave with them) and at exit.
    """

    name = "run"

    def __init__(self, obj: BpfObject, opts: dict[str, Any], periodic_maps: bool) -> None:
        self.obj = obj
        self.opts = opts
        self.fleet_name = os.path.basename(obj.path).split(".", 1)[0] or "run"
        self.trace_pipe: TracePipe | None = None
        self._trace_lines: list[Record] = []
        self.columns = self._columns_of
        self._columns: dict[int, list[Column]] = {}
        if opts["no_maps"] and opts["map"]:
            fail("--map and --no-maps exclude each other")
        dump = None if opts["no_maps"] else MapDump(obj, opts["map"] or None, opts["map_entries"])
        self.dump = dump if dump is not None and dump.sources else None
        poll_interval = DEFAULT_POLL_INTERVAL
        if opts["max_latency"] is not None:
            poll_interval = opts["max_latency"]
            obj.use_polled_wakeups()
        self.targets = _attach_targets(obj, opts)
        self.printk = [p.name for p in obj.programs.values() if p.autoload and p.uses_trace_printk]
        obj.load()
        self.readers = [
            obj.open_reader(m.name, opts["event_type"], poll_interval=poll_interval)
            for m in obj.event_buffers()
        ]
        # With events, scratch maps (a pid -> timestamp hash) would interleave with the
        # event stream: their maps print at exit, unless --interval asks.
        self.interval = (
            float(opts["interval"])
            if self.dump is not None and (not self.readers or periodic_maps)
            else None
        )
        if self.printk and not opts["trace_pipe"]:
            who = (
                f"program {self.printk[0]} prints"
                if len(self.printk) == 1
                else f"programs {', '.join(self.printk)} print"
            )
            stderr(
                f"bpfloom: note: {who} with bpf_printk; the lines go to "
                f"{trace_pipe_path()} (add --trace-pipe to print them here)"
            )

    def _columns_of(self, batch: Batch) -> list[Column]:
        """TIME, then the record's fields upper-cased, at the widths their types need."""
        decoder = batch.decoder
        columns = self._columns.get(id(decoder))
        if columns is None:
            pairs = zip(decoder.c_fields, decoder.field_types, strict=True)
            columns = [Column("TIME", 8, text=_now)] + [
                Column(name.upper(), _field_width(name, t) - 1, key=name) for name, t in pairs
            ]
            self._columns[id(decoder)] = columns
        return columns

    def records(self, batch: Batch) -> list[Record]:
        records: list[Record] = [decode.to_jsonable(ev) for ev in batch]
        return records

    def attach(self) -> None:
        if self.opts["trace_pipe"]:
            self.trace_pipe = TracePipe(self._trace_line).start()
        links = _attach(self.obj, self.targets)
        skipped: list[Program] = getattr(self.obj, "skipped_programs", [])
        # Maps do not count as something to read here: with no program attached,
        # nothing can change them.
        if not links and not self.readers and self.trace_pipe is None:
            raise AttachError(_nothing_to_run(self.obj, skipped))
        for prog in skipped:
            stderr(f"bpfloom: note: {_skip_reason(prog)}")
        if not self.readers and self.dump is None and self.trace_pipe is None and not self.printk:
            stderr(
                "bpfloom: note: the object has no ring/perf buffer or map to print; "
                "programs stay attached until the end"
            )

    def _trace_line(self, line: TraceLine) -> None:
        assert self.outputs is not None
        self.outputs.summary(trace_interval(line))

    def detach(self) -> None:
        for link in self.obj.links:
            link.close()
        if self.trace_pipe is not None:
            self.trace_pipe.close()  # reads what is already there first

    def tick(self, final: bool) -> Interval | None:
        if self.dump is None:
            return None
        return Interval("\n".join(self.dump.text_lines()), self.dump.json_rows())

    def exit_line(self, stats: dict[str, Any]) -> str:
        line = (
            f"bpfloom: {stats['received']} events received; lost: {stats['dropped_kernel']} "
            f"in the kernel, {stats['dropped_queue']} in user space"
        )
        if self.trace_pipe is not None:
            line = f"bpfloom: {self.trace_pipe.lines} bpf_printk lines from trace_pipe\n" + line
        return line

    def dropped_kernel(self) -> int:
        return self.obj.dropped_kernel()

    def close(self) -> None:
        if self.trace_pipe is not None:
            self.trace_pipe.close()
        self.obj.close()


def trace_interval(line: TraceLine) -> Interval:
    """A bpf_printk line as printed: ``TIME TRACE comm-pid [cpu] message`` (escaped:
    the comm and the message may carry what a traced process chose), or JSON."""
    stamp = time.strftime("%H:%M:%S")
    where = escape_control(f"{line.comm}-{line.pid} [{line.cpu:03d}]")
    text = f"{stamp} TRACE {where} {escape_control(line.message)}"
    return Interval(text, [{"trace_pipe": line.as_dict()}])


def _now(record: Record) -> str:
    return time.strftime("%H:%M:%S")


def _run(obj: BpfObject, opts: dict[str, Any]) -> None:
    _set_globals(obj, opts)
    ctx = click.get_current_context()
    periodic = ctx.get_parameter_source("interval") == click.core.ParameterSource.COMMANDLINE
    run_session(
        lambda: RunSession(obj, opts, periodic),
        Output.take(opts),
    )


def _is_probe(prog: Program) -> bool:
    """A uprobe, uretprobe or USDT program (``--binary``/``--pid`` retarget these)."""
    return prog.section.split("/", 1)[0] in (
        "uprobe",
        "uretprobe",
        "uprobe.s",
        "uretprobe.s",
        "usdt",
    )


def _attach_targets(obj: BpfObject, opts: dict[str, Any]) -> AttachTargets:
    """The attach targets of the command line and the source's attach comments,
    checked before anything is loaded: an option that applies to no program (a usage
    error), an interface or binary that does not exist, or a malformed comment (an
    ``AttachError``) ends the run with one line of error."""
    progs = [p for p in obj.programs.values() if p.autoload]
    net = {p.name: "xdp" if p.is_xdp else "tc" for p in progs if p.is_xdp or p.is_tc}
    kinds = set(net.values())
    needs = [
        ("--interface", opts["interface"] is not None, bool(kinds), "XDP or tc"),
        ("--xdp-mode", opts["xdp_mode"] is not None, "xdp" in kinds, "XDP"),
        ("--tc-hook", opts["tc_hook"] is not None, "tc" in kinds, "tc"),
        ("--binary", opts["binary"] is not None, any(map(_is_probe, progs)), "uprobe or USDT"),
        ("--pid", opts["pid"] is not None, any(map(_is_probe, progs)), "uprobe or USDT"),
    ]
    for option, given, applies, what in needs:
        if given and not applies:  # a wrong command line for this object: status 2
            raise click.UsageError(
                f"{option}: {obj.path} has no {what} program to apply it to",
                ctx=click.get_current_context(),
            )
    comments = {}
    if net:
        comments = dict(attach_comments.source_comments(obj.path, net, obj.image).programs)
    targets = AttachTargets(
        interface=opts["interface"],
        tc_hook=opts["tc_hook"],
        xdp_mode=opts["xdp_mode"],
        binary=opts["binary"],
        pid=opts["pid"],
        comments=comments,
    )
    plan(obj, targets)
    return targets


def _attach(obj: BpfObject, targets: AttachTargets) -> list[Link]:
    """``attach_all``; a uprobe/USDT whose SEC names a missing file gets a hint."""
    try:
        return obj.attach_all(targets)
    except AttachError as exc:
        probe = exc.hook.startswith(("uprobe", "uretprobe", "usdt"))
        if exc.errno == 2 and probe and targets.binary is None:
            raise AttachError(
                f"{exc}; pass --binary PATH to attach it to another binary",
                errno=exc.errno,
                program=exc.program,
                hook=exc.hook,
            ) from exc
        raise


_HOW_TO_NAME_AN_INTERFACE = (
    "pass --interface IF, or put ecli's /// @ifindex (XDP) or /// @tchook (tc) comment "
    "before the program in the source"
)


def _skip_reason(prog: Program) -> str:
    """Why ``prog`` was not attached, and what to do about it."""
    what = f"program {prog.name!r} (SEC {prog.section!r})"
    if prog.is_xdp or prog.is_tc:
        kind = "an XDP" if prog.is_xdp else "a tc"
        return (
            f"{what} was not attached: {kind} program needs a network interface; "
            + _HOW_TO_NAME_AN_INTERFACE
        )
    return f"{what} names no attach target and was not attached"


def _nothing_to_run(obj: BpfObject, skipped: list[Program]) -> str:
    """The one-line error for an object of which nothing was attached or can be read."""
    net = [p for p in skipped if p.is_xdp or p.is_tc]
    other = [p for p in skipped if p not in net]
    parts = []
    if net:
        names = ", ".join(f"{p.name!r} (SEC {p.section!r})" for p in net)
        parts.append(f"{names} need a network interface: {_HOW_TO_NAME_AN_INTERFACE}")
    if other:
        names = ", ".join(f"{p.name!r} (SEC {p.section!r})" for p in other)
        parts.append(f"{names} name no attach target")
    return (
        f"nothing to run: no program of {obj.path} was attached and it has no ring/perf "
        f"buffer to read; " + "; ".join(parts)
    )


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
    from ..bpf import object_path

    try:
        path = str(object_path("exec"))
    except BpfloomError as exc:
        fail(str(exc))
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
