"""softirqs: soft interrupts counted and timed, per vector (net_rx, timer...).

On ``irq:softirq_entry``/``softirq_exit`` (tp_btf). Options and output as
libbpf-tools' softirqs: a table ``SOFTIRQ TOTAL_usecs`` (the time spent in each
vector; ``-N``: ``TOTAL_nsecs``), ``-C`` adds ``TOTAL_count``, ``-d`` a histogram of
times per vector (``softirq = net_rx``); ``-c CPU`` (``--cpu``) counts on that CPU
only (in the kernel). ``softirqs [interval] [count]``, ``-T``, ``--json`` and
``--duration`` as every metric tool (``bpfloom.tools.aggregates``).

``--json``: ``{"interval", "time", "softirq", "total_usecs", "total_count"}`` per
vector per interval (both figures always; ``total_nsecs`` with ``-N``), or with
``-d`` ``{"interval", "time", "softirq", "unit", "slots", "count"}``. Vectors in the
kernel's order (``hi``, ``timer``, ``net_tx``, ``net_rx``, ``block``, ``irq_poll``,
``tasklet``, ``sched``, ``hrtimer``, ``rcu``), with what ran in the interval only.
The kernel keeps per-CPU sums (no contention between CPUs) that only grow; user space
adds the CPUs up and reports differences: nothing is lost at an interval's end.
"""

from __future__ import annotations

import time
from typing import Any

from ..sinks.table import format_table
from .aggregates import (
    NS_PER,
    UNITS,
    AggregateTool,
    Growing,
    check_cpu,
    hist_lines,
    hist_record,
)
from .tool import Column, Record

# NR_SOFTIRQS vectors, by number (include/linux/interrupt.h), named as libbpf-tools.
VECTORS = (
    *("hi", "timer", "net_tx", "net_rx", "block"),
    *("irq_poll", "tasklet", "sched", "hrtimer", "rcu"),
)


class SoftIrqs(AggregateTool):
    """Soft interrupt counts, total times and time histograms per vector, aggregated
    in the kernel.

    ``cpu`` counts on that CPU only; ``nanoseconds`` gives totals and histograms in
    nsecs instead of usecs. ``counts()`` and ``histograms()`` read them (each read
    with ``reset`` resets both); ``distributions`` makes ``interval_rows()`` the
    histograms, ``with_counts`` adds the count column to the table. Raises
    ``ValueError`` for a CPU that does not exist.
    """

    name = "softirqs"
    object_name = "softirqs"
    noun = "softirqs"

    def __init__(
        self,
        *,
        cpu: int | None = None,
        nanoseconds: bool = False,
        distributions: bool = False,
        with_counts: bool = False,
    ) -> None:
        if cpu is not None:
            check_cpu(cpu)
        self.cpu = cpu
        self.unit = "nsecs" if nanoseconds else "usecs"
        self.distributions = distributions
        self._growing = Growing()
        self.columns = (
            Column("SOFTIRQ", 16),
            Column(f"TOTAL_{self.unit}", 11, key=f"total_{self.unit}", right=True),
            *((Column("TOTAL_count", 11, right=True),) if with_counts else ()),
        )
        super().__init__()

    def configure(self) -> None:
        g = self.obj.globals
        g["targ_cpu"] = -1 if self.cpu is None else self.cpu
        g["targ_unit"] = UNITS[self.unit]

    def _read(self, reset: bool) -> tuple[float, dict[int, list[int]]]:
        current: dict[int, list[int]] = {}
        for vector, per_cpu in self.obj.maps["infos"].items():
            summed = [0] * (2 + len(per_cpu[0].slots))
            for value in per_cpu:
                for i, n in enumerate([value.count, value.total_ns, *value.slots]):
                    summed[i] += n
            current[vector] = summed
        grown = self._growing.since(current, reset)
        if reset:
            self.counted += sum(values[0] for values in grown.values())
        return time.time(), grown

    @staticmethod
    def _name(vector: int) -> str:
        return VECTORS[vector] if vector < len(VECTORS) else f"vec_{vector}"

    def counts(self, reset: bool = True) -> list[Record]:
        """Per vector, since the last reset: ``{"time", "softirq", "total_usecs"
        (``total_nsecs``), "total_count"}``, in vector order."""
        now, grown = self._read(reset)
        return [
            {
                "time": now,
                "softirq": self._name(vector),
                f"total_{self.unit}": values[1] // NS_PER[self.unit],
                "total_count": values[0],
            }
            for vector, values in sorted(grown.items())
        ]

    def histograms(self, reset: bool = True) -> list[Record]:
        """Per vector, since the last reset: ``{"time", "softirq", "unit", "slots",
        "count"}``, in vector order."""
        now, grown = self._read(reset)
        return [
            {"time": now, "softirq": self._name(vector), **hist_record(values[2:], self.unit)}
            for vector, values in sorted(grown.items())
        ]

    def interval_rows(self) -> list[Record]:
        return self.histograms() if self.distributions else self.counts()

    def text_lines(self, rows: Any) -> list[str]:
        if not self.distributions:
            return format_table(self.columns, rows)
        lines: list[str] = []
        for row in rows:
            lines += [f"softirq = {row['softirq']}", *hist_lines(row), ""]
        return lines
