"""The ``bpfloom`` command line: a thin layer over the public API.

``bpfloom run OBJECT [OPTIONS] [--<global> VALUE ...]`` is a drop-in for eunomia-bpf's
``ecli run`` on plain objects: the object's globals become options named exactly like
the variables (parsed by a second click command built from the object's BTF once the
object is open), every program is attached by its ``SEC()`` name, events of every
ring/perf buffer are printed as a table or JSON lines, and log2 histogram maps are
printed every interval. Errors are one line on stderr and exit status 1 — never a
traceback (set ``BPFLOOM_DEBUG=1`` to see one).
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

from . import attach_comments, decode
from ._exceptions import AttachError, BpfloomError, TypeInfoError
from .batch import Batch
from .decode import Decoder
from .histogram import format_log2_hist, is_log2_hist
from .object import XDP_MODES, BpfObject, GlobalVar, Link, Program
from .perfbuf import PerfBuffer
from .pipeline import Pipeline, StopSignals
from .ringbuf import DEFAULT_POLL_INTERVAL, RingBuffer
from .targets import AttachTargets, plan
from .tools.tool import quiet_stdout, wait_for_stop
from .types import Array, Enum, Int, Pointer, Type, strip

EXIT_ERROR = 1
RUN_OPTIONS = (
    "json",
    "duration",
    "event_type",
    "interval",
    "max_latency",
    "stats",
    "help",
    "interface",
    "tc_hook",
    "xdp_mode",
    "binary",
    "pid",
)
# Options of `run` that take a value: the word after one is never OBJECT.
_VALUE_OPTIONS = frozenset(
    (
        "--duration",
        "--event-type",
        "--interval",
        "--max-latency",
        "--interface",
        "--tc-hook",
        "--xdp-mode",
        "--binary",
        "--pid",
    )
)


# Error messages quote SEC names, paths and libbpf's log, which come from object files:
# their control characters (a terminal escape sequence, say) are shown as escapes. Line
# breaks and tabs stay: a verifier log tail is several lines.
_ERROR_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), *range(0x7F, 0xA0)) if c not in (9, 10)}


def _fail(message: str) -> NoReturn:
    click.echo(f"bpfloom: error: {message.translate(_ERROR_ESCAPES)}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpfloom")
def main() -> None:
    """bpfloom: run precompiled CO-RE eBPF objects and read their events from Python."""


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
            self.fail(f"{value!r} is not a valid {self.var.c_type}: {exc}", param, ctx)


def _is_bool(t: Type | None) -> bool:
    s = strip(t)
    return isinstance(s, Int) and s.is_bool


def _global_options(obj: BpfObject) -> list[click.Parameter]:
    options: list[click.Parameter] = []
    for var in settable_globals(obj):
        try:
            default = obj.globals[var.name]
        except BpfloomError:
            default = None
        flag = f"--{var.name}" if var.name not in RUN_OPTIONS else f"--global-{var.name}"
        section = var.section.lstrip(".")
        help_text = f"global {var.c_type} in {section}"
        if _is_bool(var.type):
            options.append(
                click.Option(
                    [flag, var.name],
                    is_flag=True,
                    default=bool(default),
                    show_default=True,
                    help=help_text,
                )
            )
        else:
            options.append(
                click.Option(
                    [flag, var.name],
                    type=_GlobalType(var),
                    default=default,
                    show_default=True,
                    metavar=var.c_type.upper().replace(" ", ""),
                    help=help_text,
                )
            )
    return options


def settable_globals(obj: BpfObject) -> list[GlobalVar]:
    """Globals that make sense as options: everything but pointers (and functions)."""
    return [v for v in obj.globals.info() if not isinstance(strip(v.type), Pointer)]


def _run_options() -> list[click.Parameter]:
    return [
        click.Option(["--json", "as_json"], is_flag=True, help="Print one JSON object per event."),
        click.Option(
            ["--duration"],
            type=click.FloatRange(min=0, min_open=True),
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
            type=click.FloatRange(min=0, min_open=True),
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
            ["--interval"],
            type=click.FloatRange(min=0, min_open=True),
            default=5.0,
            show_default=True,
            help="Seconds between histogram prints (histogram maps only).",
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
(const volatile, .data, .bss) become options named exactly like the variables, e.g.
--pid_target 618; bool globals are flags. Run `bpfloom run OBJECT --help` to list
them with their types and defaults.

Events of every ring buffer and perf buffer map are printed one per line: a table
(TIME, then the record's fields) or, with --json, one JSON object per line. Maps whose
values hold a log2 histogram (a struct with a `slots` array) are printed every
--interval seconds and at exit. At exit, a summary of events received and lost goes to
stderr.

Programs attach by their SEC() names. XDP and tc programs attach to --interface, or to
the interface their source's ecli attach comments name (/// @ifindex, /// @tchook;
options win over comments). --binary moves every uprobe, uretprobe and USDT program to
another binary (same function or probe), --pid limits them to one process. Everything
is detached at exit, on Ctrl-C and on errors.
"""


def _split_object(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take OBJECT out of ``run``'s arguments (it may stand before or after options)."""
    rest = list(args)
    for i, arg in enumerate(rest):
        if arg == "--":
            break
        if arg.startswith("-"):
            continue
        prev = rest[i - 1] if i else ""
        if prev in _VALUE_OPTIONS:
            continue
        takes_value = prev.startswith("--") and "=" not in prev and prev not in ("--json",)
        if takes_value and not (arg.endswith(".o") or os.path.isfile(arg)):
            continue
        return arg, rest[:i] + rest[i + 1 :]
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
        _fail("missing OBJECT: bpfloom run OBJECT [OPTIONS] (see bpfloom run --help)")
    try:
        obj = BpfObject(obj_path)
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
            names = ", ".join(f"--{v.name}" for v in settable_globals(obj)) or "none"
            _fail(f"{exc.format_message()} Globals of {obj_path}: {names}")
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_ERROR)
        except click.exceptions.Abort:
            sys.exit(EXIT_ERROR)
    except BpfloomError as exc:
        _fail(str(exc))
    finally:
        obj.close()


def _field_width(name: str, t: Type | None) -> int:
    s = strip(t)
    if isinstance(s, Array) and isinstance(strip(s.element), Int):
        return max(len(name) + 1, min(s.length, 32) + 1)
    if isinstance(s, Enum):
        return max(len(name) + 1, max((len(n) for n in s.values), default=6) + 1)
    return max(len(name) + 1, 8)


class _Printer:
    """Prints events as a table or JSON lines; output is flushed per batch.

    Safe to call from several reader threads. When stdout's reader goes away (``| head``)
    it stops printing and calls ``on_broken_pipe``.
    """

    def __init__(self, as_json: bool, on_broken_pipe: Callable[[], None] | None = None) -> None:
        self.as_json = as_json
        self.header_for: set[int] = set()
        self.broken_pipe = False
        self._on_broken_pipe = on_broken_pipe
        self._lock = threading.Lock()

    def print_batch(self, batch: Batch) -> None:
        with self._lock:
            if self.broken_pipe:
                return
            try:
                self.batch(batch.decoder, batch)
            except BrokenPipeError:
                self.broken_pipe = True
                if self._on_broken_pipe is not None:
                    self._on_broken_pipe()

    def batch(self, decoder: Decoder, events: Iterable[Any]) -> None:
        out: list[str] = []
        if self.as_json:
            for ev in events:
                out.append(json.dumps(decode.to_jsonable(ev), ensure_ascii=False))
        else:
            pairs = zip(decoder.c_fields, decoder.field_types, strict=True)
            widths = [_field_width(n, t) for n, t in pairs]
            if id(decoder) not in self.header_for:
                self.header_for.add(id(decoder))
                names = [n.upper() for n in decoder.c_fields]
                header = "".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
                out.append("TIME     " + header)
            now = time.strftime("%H:%M:%S")
            for ev in events:
                cells = [_cell(v).ljust(w - 1) + " " for v, w in zip(ev, widths, strict=True)]
                out.append(f"{now} " + "".join(cells).rstrip())
        if out:
            sys.stdout.write("\n".join(out) + "\n")
            sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)) and not isinstance(value, str):
        return json.dumps(decode.to_jsonable(value), ensure_ascii=False)
    return str(value)


def _hist_unit(obj: BpfObject) -> str:
    names = set(obj.globals)
    if "targ_ms" in names:
        return "msecs" if obj.globals["targ_ms"] else "usecs"
    return "value"


def _print_histograms(obj: BpfObject, as_json: bool) -> None:
    unit = _hist_unit(obj)
    for m in obj.maps.values():
        if not is_log2_hist(m.value_type):
            continue
        for key, value in sorted(m.items(), key=lambda kv: str(kv[0])):
            fields = value._asdict()
            slots = list(fields["slots"])
            if as_json:
                row = {"map": m.name, "key": decode.to_jsonable(key), **decode.to_jsonable(value)}
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
                continue
            label = f"{m.name} key = {key}"
            if fields.get("comm"):
                label += f" comm = {fields['comm']}"
            text = format_log2_hist(slots, unit)
            if text:
                sys.stdout.write(f"\n{label}\n{text}\n")
    sys.stdout.flush()


def _run(obj: BpfObject, opts: dict[str, Any]) -> None:
    ctx = click.get_current_context()
    for var in settable_globals(obj):
        if ctx.get_parameter_source(var.name) == click.core.ParameterSource.COMMANDLINE:
            obj.globals[var.name] = opts[var.name]
    has_hist = any(is_log2_hist(m.value_type) for m in obj.maps.values())
    as_json = bool(opts["as_json"])
    # Take SIGINT/SIGTERM over before anything is attached: from then on the programs
    # trace, and Ctrl-C must be the clean stop with a summary. A signal during set-up
    # only sets `stop`; wait_for_stop() then returns at once.
    poll_interval = DEFAULT_POLL_INTERVAL
    if opts["max_latency"] is not None:
        poll_interval = opts["max_latency"]
        obj.use_polled_wakeups()
    targets = _attach_targets(obj, opts)
    with StopSignals() as signals:
        obj.load()
        readers: list[RingBuffer | PerfBuffer] = [
            obj.open_reader(m.name, opts["event_type"], poll_interval=poll_interval)
            for m in obj.event_buffers()
        ]
        printer = _Printer(as_json, on_broken_pipe=signals.stop.set)
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
            links = _attach(obj, targets)
            skipped: list[Program] = getattr(obj, "skipped_programs", [])
            if not links and not readers and not has_hist:
                raise AttachError(_nothing_to_run(obj, skipped))
            for prog in skipped:
                click.echo(f"bpfloom: note: {_skip_reason(prog)}", err=True)
            if not readers and not has_hist:
                click.echo(
                    "bpfloom: note: the object has no ring/perf buffer or histogram map; "
                    "programs stay attached until the end",
                    err=True,
                )
            wait_for_stop(
                signals.stop,
                pipeline,
                opts["duration"],
                (lambda: _print_histograms(obj, as_json)) if has_hist else None,
                float(opts["interval"]),
            )
        finally:
            stats = pipeline.stop() if pipeline is not None else None
    if printer.broken_pipe:
        quiet_stdout()
    elif has_hist:
        _print_histograms(obj, as_json)
    _summary(obj, stats, bool(opts["stats"]), as_json)


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
    checked before anything is loaded: an option that applies to no program, an
    interface or binary that does not exist, or a malformed comment is an error."""
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
        if given and not applies:
            raise AttachError(f"{option}: {obj.path} has no {what} program to apply it to")
    comments = attach_comments.source_comments(obj.path, net).programs if net else {}
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
        f"buffer or histogram map to read; " + "; ".join(parts)
    )


def _summary(obj: BpfObject, stats: dict[str, Any] | None, show_stats: bool, as_json: bool) -> None:
    if stats is None:
        stats = {"received": 0, "dropped_kernel": obj.dropped_kernel(), "dropped_queue": 0}
    click.echo(
        f"bpfloom: {stats['received']} events received; lost: {stats['dropped_kernel']} in "
        f"the kernel, {stats['dropped_queue']} in user space",
        err=True,
    )
    if show_stats:
        click.echo(json.dumps({"stats": stats}), err=not as_json)


# --- bpfloom demo -----------------------------------------------------------------------


@main.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
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


def _add_tool_commands() -> None:
    from .tools import commands

    for command in commands():
        main.add_command(command)


_add_tool_commands()


def entry() -> None:
    """Console entry point: turns any unexpected exception into one line, exit 1."""
    try:
        main.main(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except BpfloomError as exc:
        _fail(str(exc))
    except Exception as exc:
        if os.environ.get("BPFLOOM_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (BPFLOOM_DEBUG=1 shows a traceback)")
