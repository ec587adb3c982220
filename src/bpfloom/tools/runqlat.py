"""runqlat: run-queue (scheduler) latency as log2 histograms.

How long runnable tasks waited for a CPU: from a wakeup (``sched_wakeup``,
``sched_wakeup_new``) or a switch-out that left the task runnable (preemption) to the
``sched_switch`` that runs it. Options and output as libbpf-tools' runqlat: one
histogram of every task in usecs (``-m``: msecs), or one per process (``-P``, headed
``pid = PID COMM``) or per thread (``-L``, ``tid = TID COMM``); ``-p PID`` traces that
process only (in the kernel). ``runqlat [interval] [count]``, ``-T``, ``--json`` and
``--duration`` as every metric tool (``bpfloom.tools.aggregates``).

``--json``: ``{"interval", "time", ["pid"|"tid", "comm",] "unit", "slots", "count"}``
per histogram per interval.

Exactly one sample per switch-in of a task that tracing saw become runnable (see
``bpf/runqlat.bpf.c``; unlike libbpf-tools, a task preempted while it was about to
sleep counts as runnable too, which it is). Differences between reads, not
read-then-delete: nothing is lost at an interval's end. With ``-P``/``-L`` the
histograms of processes/threads that /proc shows have exited are deleted once read.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .aggregates import (
    UNITS,
    AggregateTool,
    Growing,
    hist_lines,
    hist_record,
)
from .tool import Record

ALL_TASKS = 0xFFFFFFFF  # the key of the one histogram of everything


class RunQLat(AggregateTool):
    """Run-queue latency histograms, aggregated in the kernel.

    ``per_process`` / ``per_thread`` key them by process / thread id (not both);
    ``pid`` traces one process (thread group) only; ``milliseconds`` counts in msecs
    instead of usecs. Read them with ``histograms()``. Raises ``ValueError`` for
    arguments that do not fit (and load errors, as any tool).
    """

    name = "runqlat"
    object_name = "runqlat"
    noun = "run-queue waits"

    def __init__(
        self,
        *,
        per_process: bool = False,
        per_thread: bool = False,
        pid: int = 0,
        milliseconds: bool = False,
    ) -> None:
        if per_process and per_thread:
            raise ValueError("per process and per thread cannot be used together")
        if pid < 0:
            raise ValueError("pid must be positive (0: any)")
        self.per_process, self.per_thread, self.pid = per_process, per_thread, pid
        self.unit = "msecs" if milliseconds else "usecs"
        self._growing = Growing()
        super().__init__()

    def configure(self) -> None:
        g = self.obj.globals
        g["targ_per_process"] = self.per_process
        g["targ_per_thread"] = self.per_thread
        g["targ_tgid"] = self.pid
        g["targ_unit"] = UNITS[self.unit]

    @property
    def key_field(self) -> str | None:
        """The key of each histogram: ``pid``, ``tid``, or None (one histogram)."""
        return "pid" if self.per_process else "tid" if self.per_thread else None

    def histograms(self, reset: bool = True) -> list[Record]:
        """The histograms grown since the last reset, by key: ``{"time", ["pid"|"tid",
        "comm",] "unit", "slots", "count"}``; ``reset`` makes the next read count from
        now. Keys of exited processes/threads are deleted from the kernel's map once
        read with ``reset`` (checked in /proc before the read: a task gone by then
        cannot be switched in after)."""
        hists = self.obj.maps["hists"]
        key_field = self.key_field
        exited = (
            {key for key in self._growing.remembered() if not os.path.exists(f"/proc/{key}")}
            if key_field is not None
            else set()
        )
        now = time.time()
        current: dict[int, list[int]] = {}
        comms: dict[int, str] = {}
        for key, value in hists.items():
            current[key] = list(value.slots)
            comms[key] = value.comm
        rows = []
        for key, slots in sorted(self._growing.since(current, reset).items()):
            row: Record = {"time": now}
            if key_field is not None:
                row |= {key_field: key, "comm": comms[key]}
            row |= hist_record(slots, self.unit)
            rows.append(row)
        if reset:
            self.counted += sum(row["count"] for row in rows)
            gone = exited & current.keys()
            for key in gone:
                hists.delete(key)
            self._growing.forget(gone)
        return rows

    def interval_rows(self) -> list[Record]:
        return self.histograms()

    def text_lines(self, rows: Any) -> list[str]:
        lines: list[str] = []
        for row in rows:
            if self.key_field is not None:
                lines += ["", f"{self.key_field} = {row[self.key_field]} {row['comm']}"]
            lines += hist_lines(row)
        return lines
