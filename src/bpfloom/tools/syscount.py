"""syscount: system calls counted in the kernel, per call or per process, with the time
spent in them.

Output and options as libbpf-tools' syscount: a ``[HH:MM:SS]`` line, then the top
``-T N`` rows (default 10) ``SYSCALL COUNT`` — or ``PID COMM COUNT`` with ``-P`` —
sorted by count; with ``-L`` a ``TIME (us)`` column (``TIME (ms)`` with ``-m``), the
total time spent in the calls, and rows sorted by it. With ``-i SECONDS`` the counts
are printed and reset every interval, otherwise once at exit (Ctrl-C or
``--duration``).

``--histogram`` (implies ``-L``; our addition) prints, for each of the top rows, a log2
histogram of the calls' latencies (``syscall = read`` or ``pid = 12 comm``, then the
bars in usecs, msecs with ``-m``), as runqlat and biolatency do. ``-L`` keeps
libbpf-tools' meaning (the total time, a column): the histogram is a new flag rather
than a new meaning of ``-L``, so scripts written for libbpf-tools' syscount keep
working.

``--json`` prints one object per row: ``{"time": T, "syscall": "read", "count": N}``
(``{"time": T, "pid": P, "comm": "...", "count": N}`` with ``-P``), plus ``time_us``
(or ``time_ms``) with ``-L``. ``time`` is the wall-clock end of the interval the row
counts (unix seconds): all rows of one interval share it, which marks the intervals.
With ``--histogram`` each row also has ``interval`` (counting from 1, first), ``unit``
and ``slots`` (slot ``i`` counts calls of ``[2**i, 2**(i+1))`` units, slot 0 also 0),
as the metric tools' rows (``bpfloom.tools.aggregates``).

Counting happens in the kernel: tracepoint raw_syscalls/sys_exit adds to a hash map
keyed by syscall number (or process id); user space only reads it, so there are no
per-call events. A call is counted when it returns (``exit`` and ``exit_group`` never
do); with ``-L`` raw_syscalls/sys_enter notes the entry time and calls already running
when tracing began are left out, as in libbpf-tools. The kernel's counts only grow and
an interval prints the differences to the previous read, so unlike libbpf-tools'
read-then-delete no call is lost at an interval's end (with ``-P``, the keys of
processes that /proc shows have exited are deleted once their counts are final). Names
come from the x86_64/aarch64 tables of ``bpfloom.tools.syscalls`` (``syscall_<nr>``
when unknown; a 32-bit compat process's calls are numbered by its own ABI and so
misnamed, as in libbpf-tools).

Filters run in the kernel: ``-p`` (process), ``-c`` (exact command name — our
addition: libbpf-tools' ``-c`` takes a cgroup), ``-x`` (failed calls), ``-e`` (calls
failing with that errno).
"""

from __future__ import annotations

import errno as _errno
import os
import time
from typing import Any

from .aggregates import UNITS, Growing
from .syscalls import syscall_name
from .tool import Column, Record, Tool

COMM_LEN = 15  # bytes of a task's comm, without the NUL
DEFAULT_TOP = 10


def parse_errno(text: str) -> int:
    """The errno ``text`` names: a number (``2``) or a name (``ENOENT``, any case).
    Raises ``ValueError`` for anything else."""
    if text.isdigit():
        if int(text) in _errno.errorcode:
            return int(text)
    elif text.upper().startswith("E"):
        named = getattr(_errno, text.upper(), None)
        if isinstance(named, int):
            return named
    raise ValueError(f"{text!r} is not an errno (a name like ENOENT, or its number)")


class SysCount(Tool):
    """Counts system calls in the kernel, per syscall (or per process with
    ``by_process``). Filters run in the kernel: ``pid`` (thread group), ``comm``
    (exact, at most 15 bytes), ``failures_only`` (calls returning < 0), ``errno``
    (only calls failing with it). ``latency`` also sums the time spent in the calls
    and keeps a log2 histogram of it; ``milliseconds`` shows them in ms instead of µs.

    Read the counts with ``rows()``, the histograms with ``histograms()``. Raises
    ``ValueError`` for out-of-range arguments (and load errors, as any tool).
    """

    name = "syscount"
    object_name = "syscount"

    def __init__(
        self,
        *,
        pid: int = 0,
        comm: str = "",
        by_process: bool = False,
        failures_only: bool = False,
        errno: int = 0,
        latency: bool = False,
        milliseconds: bool = False,
    ) -> None:
        if pid < 0:
            raise ValueError("pid must be positive (0: any)")
        if len(comm.encode()) > COMM_LEN:
            raise ValueError(f"comm {comm!r} is longer than {COMM_LEN} bytes")
        if errno < 0:
            raise ValueError(f"errno {errno} is not an errno")
        self.pid, self.comm = pid, comm
        self.by_process, self.failures_only, self.errno = by_process, failures_only, errno
        self.latency = latency
        self.time_unit = "ms" if milliseconds else "us"
        self.hist_unit = "msecs" if milliseconds else "usecs"
        self.counted = 0  # calls reported (and reset) so far
        self._growing = Growing()  # key: [count, total_ns, *slots] at the last reset
        key_columns = (
            (Column("PID", 6), Column("COMM", 15)) if by_process else (Column("SYSCALL", 22),)
        )
        time_column = Column(
            f"TIME ({self.time_unit})", 16, key=f"time_{self.time_unit}", right=True
        )
        self.columns = (
            *key_columns,
            Column("COUNT", 8, right=True),
            *((time_column,) if latency else ()),
        )
        super().__init__()

    def configure(self) -> None:
        # The entry timestamps are needed only for latency: no sys_enter otherwise.
        self.obj.programs["sys_enter"].autoload = self.latency
        g = self.obj.globals
        g["targ_tgid"] = self.pid
        g["targ_comm"] = self.comm
        g["count_by_process"] = self.by_process
        g["measure_latency"] = self.latency
        g["filter_failed"] = self.failures_only
        g["filter_errno"] = self.errno
        g["targ_unit"] = UNITS[self.hist_unit]

    def rows(self, *, top: int | None = None, reset: bool = True) -> list[Record]:
        """The counts since the last reset as records, largest first (by time with
        ``latency``, else by count), at most ``top`` of them; keys without calls since
        then are left out. ``reset`` makes the next call count from now. Every row's
        ``time`` is now (unix seconds).

        The kernel's counts only grow; a reset remembers them and the next call reports
        the differences, so no call is lost at an interval's end (deleting keys instead
        would lose the calls counted between a key's read and its deletion). With
        ``by_process``, a reset deletes the keys of processes that had exited before
        the map was read: their counts are final.
        """
        return [row for row, _ in self._read(top, reset)]

    def histograms(self, *, top: int | None = None, reset: bool = True) -> list[Record]:
        """``rows()`` with each row's latency histogram: ``unit`` (``usecs``, or
        ``msecs`` with ``milliseconds``) and ``slots``. Needs ``latency``."""
        if not self.latency:
            raise ValueError("latency histograms need latency=True")
        return [
            row | {"unit": self.hist_unit, "slots": slots} for row, slots in self._read(top, reset)
        ]

    def _read(self, top: int | None, reset: bool) -> list[tuple[Record, list[int]]]:
        """Rows (as ``rows()``) with their slots, differences since the last reset."""
        counts = self.obj.maps["counts"]
        # Before the read: a process gone by now made no call after it.
        exited = (
            {pid for pid in self._growing.remembered() if not os.path.exists(f"/proc/{pid}")}
            if self.by_process
            else set()
        )
        now = time.time()
        current: dict[int, list[int]] = {}
        comms: dict[int, str] = {}
        for key, value in counts.items():
            current[key] = [value.count, value.total_ns, *value.slots]
            comms[key] = value.comm
        ranked = []
        for key, (count, total_ns, *slots) in self._growing.since(current, reset).items():
            if count <= 0:
                continue
            row: Record = {"time": now}
            if self.by_process:
                row |= {"pid": key, "comm": comms[key]}
            else:
                row["syscall"] = syscall_name(key)
            row["count"] = count
            if self.latency:
                scale = 1e6 if self.time_unit == "ms" else 1e3
                row[f"time_{self.time_unit}"] = round(total_ns / scale, 3)
            ranked.append((total_ns if self.latency else count, row, slots))
        if reset:
            self.counted += sum(row["count"] for _, row, _ in ranked)
            if self.by_process:
                gone = exited & current.keys()
                for pid in gone:
                    counts.delete(pid)
                self._growing.forget(gone)
        ranked.sort(key=lambda item: item[0], reverse=True)
        return [(row, slots) for _, row, slots in ranked[:top]]

    def exit_line(self, stats: dict[str, Any]) -> str:
        """Calls counted (no events: the kernel aggregates), and those the full map
        could not take."""
        return (
            f"bpfloom {self.name}: {self.counted} system calls counted in the kernel; "
            f"{self.dropped_kernel()} not counted (map full)"
        )
