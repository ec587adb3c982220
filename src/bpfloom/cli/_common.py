"""What every command shares: errors as one line, option types, output options.

Exit status: 0 done (Ctrl-C and SIGTERM included), 1 the run failed (``EXIT_ERROR``),
2 the command line is wrong (``EXIT_USAGE``). Messages may quote names chosen by an
object file or a traced process, so they go out escaped (``bpfloom._terminal``).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NoReturn, TypeVar

import click

from .._terminal import escape_lines

EXIT_ERROR = 1  # the run failed: a missing file, a refused load, an I/O error
EXIT_USAGE = 2  # the command line is wrong: an unknown option, a bad value

F = TypeVar("F", bound=Callable[..., Any])


def stderr(message: str) -> None:
    """A message on stderr, escaped: it may quote names an object file chose."""
    click.echo(escape_lines(message), err=True)


def fail(message: str, status: int = EXIT_ERROR) -> NoReturn:
    """One ``bpfloom: error:`` line on stderr, then exit with ``status``."""
    stderr(f"bpfloom: error: {message}")
    sys.exit(status)


def usage_fail(exc: click.ClickException) -> NoReturn:
    """click's error as one line with where to look for help (click itself prints Usage
    and Try lines around it); status 2 for a wrong command line, 1 otherwise."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    fail(message, EXIT_USAGE if isinstance(exc, click.UsageError) else EXIT_ERROR)


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


class Listen(click.ParamType):  # type: ignore[type-arg]
    """A click type for an address to listen on: ``HOST:PORT``, ``[::1]:PORT``, or a
    bare ``PORT`` for 127.0.0.1 (only the address given is bound)."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        from ..export.server import parse_listen

        text = f"127.0.0.1:{value}" if value.isdigit() else value
        try:
            return parse_listen(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


LISTEN = Listen()


def _output_specs(record_word: str, nats: bool = True) -> list[tuple[list[str], dict[str, Any]]]:
    from ._nats import nats_option_specs  # it uses this module's types

    return [
        (
            ["--json", "as_json"],
            {"is_flag": True, "help": f"Print one JSON object per {record_word}."},
        ),
        (
            ["--duration"],
            {
                "type": SECONDS,
                "default": None,
                "metavar": "SECONDS",
                "help": "Stop after this many seconds (default: run until Ctrl-C).",
            },
        ),
        (
            ["-o", "--output"],
            {
                "default": None,
                "metavar": "PATH",
                "help": f"Write the {record_word}s to PATH instead of stdout: PATH.jsonl "
                "gets JSON lines (appended), PATH.parquet the raw records (a new file; "
                "needs pyarrow).",
            },
        ),
        (
            ["--stats"],
            {
                "is_flag": True,
                "help": 'At exit, print {"stats": {...}}: counts, drops, latencies (stdout '
                "with --json, else stderr).",
            },
        ),
        (
            ["--metrics-addr", "metrics_addr"],
            {
                "type": LISTEN,
                "default": None,
                "metavar": "HOST:PORT",
                "help": "Serve this run's counters (events received, handled and lost by "
                "where, latencies, alerts, interval aggregates) to Prometheus at "
                "http://HOST:PORT/metrics; a bare PORT means 127.0.0.1:PORT.",
            },
        ),
        *(nats_option_specs() if nats else []),
    ]


def output_params(record_word: str = "record") -> list[click.Option]:
    """``--json``, ``--duration``, ``-o/--output``, ``--stats``, ``--metrics-addr`` and
    the NATS sink's (``_nats``): every command's."""
    return [click.Option(decls, **attrs) for decls, attrs in _output_specs(record_word)]


@dataclass(frozen=True)
class Output:
    """What a command's output options say (``--json``, ``-o``, ``--duration``,
    ``--stats``, ``--metrics-addr``): one value a command hands to the run loop."""

    as_json: bool = False
    output: str | None = None
    duration: float | None = None
    stats: bool = False
    metrics_addr: tuple[str, int] | None = None

    @classmethod
    def take(cls, options: dict[str, Any]) -> Output:
        """The output options removed from a command's ``options``."""
        return cls(**{f.name: options.pop(f.name) for f in fields(cls)})


def output_options(record_word: str = "record", nats: bool = True) -> Callable[[F], F]:
    """A decorator adding ``output_params`` to a command (``nats=False``: without the
    NATS sink's); the command receives them as one ``out: Output`` keyword."""

    def add(func: F) -> F:
        @functools.wraps(func)
        def command(**options: Any) -> Any:
            return func(out=Output.take(options), **options)

        for decls, attrs in reversed(_output_specs(record_word, nats)):
            command = click.option(*decls, **attrs)(command)
        return command  # type: ignore[return-value]

    return add


def exit_output_blocked(exit_line: str) -> NoReturn:
    """Exit at once, status 1: a printing handler was still stuck at the shutdown
    deadline (stdout is a full pipe nobody reads) and holds the output, so whatever
    the way out still prints on stdout (a summary, histograms, ``--stats``) would wait
    for good."""
    click.echo(exit_line, err=True)
    click.echo(
        "bpfloom: error: stdout is blocked (a full pipe nobody reads?); "
        "the events being printed at the deadline were dropped",
        err=True,
    )
    sys.stderr.flush()
    os._exit(1)
