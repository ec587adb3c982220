"""The metric tools' commands: runqlat, biolatency, hardirqs, softirqs.

The kernel aggregates; every INTERVAL seconds (COUNT times, as libbpf-tools' positional
``[interval] [count]``) and at exit the command prints what was counted since the last
print.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..tools.aggregates import AggregateTool, check_cpu
from ..tools.biolatency import BioLatency, disk_dev
from ..tools.hardirqs import HardIrqs
from ..tools.runqlat import RunQLat
from ..tools.softirqs import SoftIrqs
from ._app import main
from ._common import SECONDS, Output, output_options
from ._session import Interval, ToolSession, run_session

F = TypeVar("F", bound=Callable[..., Any])


def interval_options(func: F) -> F:
    """``[interval] [count]`` positional arguments and ``-T``, as libbpf-tools'."""
    func = click.argument("count", type=click.IntRange(min=1), required=False)(func)
    func = click.argument("interval", type=SECONDS, required=False)(func)
    func = click.option(
        "-T", "--timestamp", is_flag=True, help="Print the time (HH:MM:SS) before each interval."
    )(func)
    return func


def cpu_callback(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """A click callback that checks a CPU number (``check_cpu``)."""
    if value is not None:
        try:
            check_cpu(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def run_intervals(
    make_tool: Callable[[], AggregateTool],
    *,
    out: Output,
    interval: float | None,
    count: int | None,
    timestamp: bool,
) -> None:
    """Run a metric tool: print its rows every ``interval`` seconds, ``count`` times
    (then stop), and what is left at exit unless ``count`` intervals were printed."""
    if count is not None and interval is None:
        raise click.UsageError("a count needs an interval before it")
    printed = 0

    def tick(tool: AggregateTool, final: bool) -> Interval | None:
        nonlocal printed
        if count is not None and printed >= count:
            return None
        rows = tool.interval_rows()
        printed += 1
        head = [""] + ([time.strftime("%H:%M:%S")] if timestamp else [])
        return Interval(
            "\n".join(head + tool.text_lines(rows)),
            [{"interval": printed, **row} for row in rows],
            done=count is not None and printed >= count,
        )

    def session() -> ToolSession:
        tool = make_tool()
        return ToolSession(tool, tick=lambda final: tick(tool, final), interval=interval)

    run_session(
        session,
        out=out,
    )


@main.command("runqlat")
@click.option("-m", "--milliseconds", is_flag=True, help="Millisecond histograms.")
@click.option("-P", "--pids", "per_process", is_flag=True, help="A histogram per process.")
@click.option("-L", "--tids", "per_thread", is_flag=True, help="A histogram per thread.")
@click.option("-p", "--pid", type=click.IntRange(min=1), default=None, help="Only this process.")
@interval_options
@output_options()
def runqlat_command(
    milliseconds: bool,
    per_process: bool,
    per_thread: bool,
    pid: int | None,
    timestamp: bool,
    interval: float | None,
    count: int | None,
    out: Output,
) -> None:
    """Summarize run-queue (scheduler) latency as histograms.

    Prints at exit, or every INTERVAL seconds (COUNT times). With --json, one object
    per histogram per interval.
    """
    if per_process and per_thread:
        raise click.UsageError("-P and -L cannot be used together")
    run_intervals(
        lambda: RunQLat(
            per_process=per_process,
            per_thread=per_thread,
            pid=pid or 0,
            milliseconds=milliseconds,
        ),
        out=out,
        interval=interval,
        count=count,
        timestamp=timestamp,
    )


def _disk_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            disk_dev(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@main.command("biolatency")
@click.option("-m", "--milliseconds", is_flag=True, help="Millisecond histograms.")
@click.option("-Q", "--queued", is_flag=True, help="Include the time queued in the OS.")
@click.option("-D", "--disk", "per_disk", is_flag=True, help="A histogram per disk.")
@click.option("-F", "--flag", "per_flags", is_flag=True, help="A histogram per set of flags.")
@click.option(
    "-d",
    "--disk-name",
    "disk",
    default=None,
    callback=_disk_option,
    metavar="DISK",
    help="Only this disk (a name in /sys/block).",
)
@interval_options
@output_options()
def biolatency_command(
    milliseconds: bool,
    queued: bool,
    per_disk: bool,
    per_flags: bool,
    disk: str | None,
    timestamp: bool,
    interval: float | None,
    count: int | None,
    out: Output,
) -> None:
    """Summarize block device I/O latency as histograms.

    Prints at exit, or every INTERVAL seconds (COUNT times). With --json, one object
    per histogram per interval.
    """
    run_intervals(
        lambda: BioLatency(
            per_disk=per_disk,
            per_flags=per_flags,
            queued=queued,
            disk=disk,
            milliseconds=milliseconds,
        ),
        out=out,
        interval=interval,
        count=count,
        timestamp=timestamp,
    )


@main.command("hardirqs")
@click.option("-C", "--count", "counts_only", is_flag=True, help="Counts instead of times.")
@click.option("-d", "--distributed", is_flag=True, help="Histograms of the handlers' times.")
@click.option("-N", "--nanoseconds", is_flag=True, help="Times in nanoseconds.")
@click.option("-s", "--cpu", type=int, default=None, callback=cpu_callback, help="Only this CPU.")
@interval_options
@output_options()
def hardirqs_command(
    counts_only: bool,
    distributed: bool,
    nanoseconds: bool,
    cpu: int | None,
    timestamp: bool,
    interval: float | None,
    count: int | None,
    out: Output,
) -> None:
    """Summarize hard interrupt handler time (or counts, or histograms).

    Prints at exit, or every INTERVAL seconds (COUNT times). With --json, one object
    per handler per interval.
    """
    if counts_only and distributed:
        raise click.UsageError("-C and -d cannot be used together")
    run_intervals(
        lambda: HardIrqs(
            cpu=cpu,
            nanoseconds=nanoseconds,
            distributions=distributed,
            counts_only=counts_only,
        ),
        out=out,
        interval=interval,
        count=count,
        timestamp=timestamp,
    )


@main.command("softirqs")
@click.option("-C", "--count", "with_counts", is_flag=True, help="Add the event counts.")
@click.option("-d", "--distributed", is_flag=True, help="Histograms of the vectors' times.")
@click.option("-N", "--nanoseconds", is_flag=True, help="Times in nanoseconds.")
@click.option("-c", "--cpu", type=int, default=None, callback=cpu_callback, help="Only this CPU.")
@interval_options
@output_options()
def softirqs_command(
    with_counts: bool,
    distributed: bool,
    nanoseconds: bool,
    cpu: int | None,
    timestamp: bool,
    interval: float | None,
    count: int | None,
    out: Output,
) -> None:
    """Summarize soft interrupt time per vector (or histograms).

    Prints at exit, or every INTERVAL seconds (COUNT times). With --json, one object
    per vector per interval.
    """
    run_intervals(
        lambda: SoftIrqs(
            cpu=cpu,
            nanoseconds=nanoseconds,
            distributions=distributed,
            with_counts=with_counts,
        ),
        out=out,
        interval=interval,
        count=count,
        timestamp=timestamp,
    )
