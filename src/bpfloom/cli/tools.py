"""The tracing tools' commands: execsnoop, opensnoop, exitsnoop, syscount, goroutines.

Each builds its library class (``bpfloom.tools``) from libbpf-tools' options and runs it
through the one run loop (``_session.run_session``).
"""

from __future__ import annotations

import time

import click

from ..sinks.table import format_table
from ..tools.aggregates import hist_lines
from ..tools.execsnoop import COMM_LEN, DEFAULT_MAX_ARGS, TOTAL_MAX_ARGS, ExecSnoop
from ..tools.exitsnoop import ExitSnoop
from ..tools.goroutines import GoroutineTracer
from ..tools.opensnoop import ANY_UID, OpenSnoop
from ..tools.syscalls import syscall_table
from ..tools.syscount import DEFAULT_TOP, SysCount, parse_errno
from ._app import main
from ._common import SECONDS, Output, output_options
from ._session import Interval, ToolSession, run_session


@main.command("execsnoop")
@click.option("-T", "--time", "timestamps", is_flag=True, help="Print a TIME column (HH:MM:SS).")
@click.option("-U", "--print-uid", is_flag=True, help="Print a UID column.")
@click.option("-x", "--fails", is_flag=True, help="Include failed execs (RET < 0).")
@click.option(
    "-u",
    "--uid",
    type=click.IntRange(min=0, max=ANY_UID - 1),
    default=None,
    metavar="UID",
    help="Only execs by this real user id.",
)
@click.option(
    "-n",
    "--name",
    default="",
    metavar="NAME",
    help="Only processes whose name (comm, after the exec) contains NAME.",
)
@click.option(
    "-c",
    "--cgroup",
    default=None,
    metavar="CGROUP_PATH",
    help="Only tasks in this cgroup v2 directory or below it (a full path, or one "
    "relative to the cgroup2 mount as the JSON 'cgroup' field shows it).",
)
@click.option("-q", "--quote", is_flag=True, help='Put each argument in double quotes (" escaped).')
@click.option(
    "--max-args",
    type=click.IntRange(1, TOTAL_MAX_ARGS),
    default=DEFAULT_MAX_ARGS,
    show_default=True,
    metavar="N",
    help=f"Copy at most this many argv entries (at most {TOTAL_MAX_ARGS}); longer argvs "
    "end with '...' ('args_truncated' in JSON).",
)
@output_options()
def execsnoop_command(
    timestamps: bool,
    print_uid: bool,
    fails: bool,
    uid: int | None,
    name: str,
    cgroup: str | None,
    quote: bool,
    max_args: int,
    out: Output,
) -> None:
    """Trace exec() calls: [TIME] [UID] PCOMM PID PPID RET ARGS.

    PCOMM is the process's name (the new program's after a successful exec), RET 0 or
    -errno, ARGS the argv. In --json records the process's name is 'comm' (and 'pcomm',
    the column), its parent's is 'parent_comm'; they also carry 'path' (the file name
    given to exec), 'args' (a list), 'args_truncated' and 'cgroup'.
    """
    if len(name.encode()) > COMM_LEN:
        raise click.BadParameter(
            f"at most {COMM_LEN} bytes (the kernel's comm length)", param_hint="-n"
        )
    run_session(
        lambda: ToolSession(
            ExecSnoop(
                uid=uid,
                comm=name,
                cgroup=cgroup,
                include_failed=fails,
                max_args=max_args,
                timestamps=timestamps,
                print_uid=print_uid,
                quote=quote,
            )
        ),
        out=out,
    )


@main.command("opensnoop")
@click.option("-T", "--timestamp", is_flag=True, help="Print a TIME column (HH:MM:SS).")
@click.option("-U", "--print-uid", is_flag=True, help="Print a UID column.")
@click.option("-x", "--failed", is_flag=True, help="Only failed opens (FD -1, ERR > 0).")
@click.option(
    "-p", "--pid", type=click.IntRange(min=1), default=None, help="Only this process (tgid)."
)
@click.option(
    "-t", "--tid", type=click.IntRange(min=1), default=None, help="Only this thread (tid)."
)
@click.option(
    "-u",
    "--uid",
    type=click.IntRange(min=0, max=ANY_UID - 1),
    default=None,
    help="Only opens by this real user id.",
)
@click.option(
    "-n",
    "--name",
    default="",
    metavar="NAME",
    help="Only processes whose name (comm, 15 bytes at most) contains NAME.",
)
@click.option(
    "-F",
    "--full-path",
    is_flag=True,
    help="Print each file's full path, as the kernel resolved it for an open that "
    "succeeded (relative paths, symlinks, . and ..), or the normalized path given.",
)
@click.option(
    "-e",
    "--extended-fields",
    is_flag=True,
    help="Print a FLAGS column: the open flags in octal (O_WRONLY|O_CREAT is 00000101).",
)
@output_options()
def opensnoop_command(
    timestamp: bool,
    print_uid: bool,
    failed: bool,
    pid: int | None,
    tid: int | None,
    uid: int | None,
    name: str,
    full_path: bool,
    extended_fields: bool,
    out: Output,
) -> None:
    """Trace open(), openat() and openat2(): [TIME] [UID] PID COMM FD ERR [FLAGS] PATH.

    FD is the new file descriptor (-1 on failure), ERR the errno of a failed open.
    With --json each record also has 'event', 'time', 'tid', 'uid' and 'flags' (an int),
    and with -F 'norm_path' beside 'path' (the path as the program passed it).
    """
    if len(name.encode()) > COMM_LEN:
        raise click.BadParameter(
            f"at most {COMM_LEN} bytes (the kernel's comm length)", param_hint="-n"
        )
    run_session(
        lambda: ToolSession(
            OpenSnoop(
                pid=pid or 0,
                tid=tid or 0,
                uid=uid,
                comm=name,
                failed_only=failed,
                extended=extended_fields,
                timestamps=timestamp,
                print_uid=print_uid,
                full_path=full_path,
            )
        ),
        out=out,
    )


@main.command("exitsnoop")
@click.option("-p", "--pid", type=click.IntRange(min=1), default=None, help="Only this process.")
@click.option("-c", "--comm", default="", metavar="COMM", help="Only processes named COMM.")
@click.option("-x", "--failed", is_flag=True, help="Only exits with a non-zero code or a signal.")
@click.option("-T", "--threads", is_flag=True, help="Report thread exits too.")
@click.option("-t", "--timestamp", is_flag=True, help="Print a TIME column.")
@output_options()
def exitsnoop_command(
    pid: int | None,
    comm: str,
    failed: bool,
    threads: bool,
    timestamp: bool,
    out: Output,
) -> None:
    """Trace process exits: PCOMM PID PPID TID AGE(s) EXIT_CODE.

    EXIT_CODE is the status a process exited with, or the signal that killed it.
    """
    if len(comm.encode()) > 15:
        raise click.BadParameter("at most 15 bytes (the kernel's comm length)", param_hint="-c")
    run_session(
        lambda: ToolSession(
            ExitSnoop(
                pid=pid or 0, comm=comm, failed_only=failed, threads=threads, timestamps=timestamp
            )
        ),
        out=out,
    )


@main.command("goroutines")
@click.option(
    "-b",
    "--binary",
    metavar="PATH",
    default=None,
    help="The Go executable to trace (every process running it, unless --pid). "
    "Needs its symbol table and DWARF (no -ldflags=-s / -w). Default: what --pid runs.",
)
@click.option(
    "-p",
    "--pid",
    type=click.IntRange(min=1),
    default=None,
    help="Only this process (its executable is traced when --binary is not given).",
)
@click.option(
    "--goid-offset",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Byte offset of goid in runtime.g, for a binary built without DWARF "
    "(-ldflags=-w); read it from an identical build that has DWARF.",
)
@output_options()
def goroutines_command(
    binary: str | None,
    pid: int | None,
    goid_offset: int | None,
    out: Output,
) -> None:
    """Trace goroutine state changes of a Go binary: TIME STATE GOID PID TGID.

    STATE is the state a goroutine moves to (RUNNABLE, RUNNING, SYSCALL, WAITING,
    DEAD, ...); PID is the thread that made the change, TGID its process. At exit,
    the time each goroutine spent in each state (--json: one {"summary": ...} line
    per goroutine).
    """
    if binary is None and pid is None:
        raise click.UsageError("give --binary PATH, --pid N, or both")
    run_session(
        lambda: ToolSession(GoroutineTracer(binary, pid=pid or 0, goid_offset=goid_offset)),
        out=out,
    )


def _count_interval(tool: SysCount, top: int | None, first: bool) -> Interval:
    """The counts since the last interval (reset): rows for JSON, a ``[HH:MM:SS]`` line
    and a table for text (after a blank line unless it is the ``first`` table)."""
    rows = tool.rows(top=top)
    stamp = time.strftime("[%H:%M:%S]")
    table = format_table(tool.columns, rows)
    return Interval("\n".join([stamp, *table] if first else ["", stamp, *table]), rows)


def _histogram_interval(tool: SysCount, top: int | None, interval: int, first: bool) -> Interval:
    """The latency histograms since the last interval (reset): rows with their
    ``interval`` number for JSON, or a ``[HH:MM:SS]`` line and a histogram per row,
    each headed by its key (``syscall = read``, ``pid = 12 comm``), count and time."""
    rows = tool.histograms(top=top)
    lines = [] if first else [""]
    lines.append(time.strftime("[%H:%M:%S]"))
    total = f"time_{tool.time_unit}"
    for row in rows:
        key = (
            f"pid = {row['pid']} {row['comm']}"
            if tool.by_process
            else f"syscall = {row['syscall']}"
        )
        lines += [
            "",
            f"{key}  count = {row['count']}, time ({tool.time_unit}) = {row[total]}",
            *hist_lines(row),
        ]
    return Interval("\n".join(lines), [{"interval": interval, **row} for row in rows])


def _errno_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    if value is None:
        return 0
    try:
        return parse_errno(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("syscount")
@click.option("-p", "--pid", type=click.IntRange(min=1), default=None, help="Only this process.")
@click.option(
    "-c",
    "--comm",
    default="",
    metavar="COMM",
    help="Only processes named exactly COMM (15 bytes at most). Unlike libbpf-tools, "
    "where -c takes a cgroup.",
)
@click.option(
    "-P", "--process", "by_process", is_flag=True, help="Count per process, not per syscall."
)
@click.option(
    "-T",
    "--top",
    type=click.IntRange(min=0),
    default=DEFAULT_TOP,
    show_default=True,
    metavar="N",
    help="Print only the N largest rows (0: all).",
)
@click.option(
    "-i",
    "--interval",
    type=SECONDS,
    default=None,
    metavar="SECONDS",
    help="Print and reset the counts every SECONDS (default: print once, at exit).",
)
@click.option("-x", "--failures", is_flag=True, help="Count only failed calls (returning < 0).")
@click.option(
    "-e",
    "--errno",
    "errno",
    default=None,
    callback=_errno_option,
    metavar="ERRNO",
    help="Count only calls failing with this errno (ENOENT, or its number 2).",
)
@click.option(
    "-L",
    "--latency",
    is_flag=True,
    help="Add TIME: the total time spent in the calls (µs), and sort by it.",
)
@click.option("-m", "--milliseconds", is_flag=True, help="Show TIME in milliseconds (implies -L).")
@click.option(
    "--histogram",
    is_flag=True,
    help="A latency histogram per row, instead of the table (implies -L).",
)
@click.option("-l", "--list", "list_only", is_flag=True, help="List the known syscalls; exit.")
@output_options()
def syscount_command(
    pid: int | None,
    comm: str,
    by_process: bool,
    top: int,
    interval: float | None,
    failures: bool,
    errno: int,
    latency: bool,
    milliseconds: bool,
    histogram: bool,
    list_only: bool,
    out: Output,
) -> None:
    """Count system calls in the kernel: SYSCALL COUNT (or PID COMM COUNT with -P).

    Prints the top rows at exit, or every -i SECONDS (then the counts restart). With
    --json, one object per row, whose 'time' is the end of the interval it counts.
    --histogram shows each row's latency histogram instead (-L keeps libbpf-tools'
    meaning: the total time).
    """
    if list_only:
        for nr, name in sorted(syscall_table().items()):
            click.echo(f"{nr:3d}: {name}")
        return
    if len(comm.encode()) > COMM_LEN:
        raise click.BadParameter(
            f"at most {COMM_LEN} bytes (the kernel's comm length)", param_hint="-c"
        )

    printed = 0

    def tick(tool: SysCount, final: bool) -> Interval:
        nonlocal printed
        printed += 1
        if histogram:
            return _histogram_interval(tool, top or None, printed, first=printed == 1)
        return _count_interval(tool, top or None, first=printed == 1)

    def session() -> ToolSession:
        tool = SysCount(
            pid=pid or 0,
            comm=comm,
            by_process=by_process,
            failures_only=failures,
            errno=errno,
            latency=latency or milliseconds or histogram,
            milliseconds=milliseconds,
        )
        return ToolSession(tool, tick=lambda final: tick(tool, final), interval=interval)

    run_session(session, out)
