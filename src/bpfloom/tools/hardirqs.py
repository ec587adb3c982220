"""hardirqs: hard interrupt handlers counted and timed, per handler name.

On ``irq:irq_handler_entry``/``irq_handler_exit`` (tp_btf). Options and output as
libbpf-tools' hardirqs: a table ``HARDIRQ TOTAL_usecs`` (the time spent in each
handler; ``-N``: ``TOTAL_nsecs``), ``-C`` ``HARDIRQ TOTAL_count`` instead, ``-d`` a
histogram of handler times per handler (``hardirq = NAME``); ``-s CPU`` (``--cpu``)
counts on that CPU only (in the kernel). ``hardirqs [interval] [count]``, ``-T``,
``--json`` and ``--duration`` as every metric tool (``bpfloom.tools.aggregates``).

``--json``: ``{"interval", "time", "hardirq", "total_count", "total_usecs"}`` per
handler per interval (both figures whatever the table shows; ``total_nsecs`` with
``-N``), or with ``-d`` ``{"interval", "time", "hardirq", "unit", "slots", "count"}``.
Handler names are the kernel's (as /proc/interrupts shows them; at most 31 bytes) and
are escaped on a terminal. The kernel always keeps the count, the total and the
histogram; the total is summed in nanoseconds and only then converted (libbpf-tools
truncates each handler's time to usecs first). Differences between reads: no
interrupt is lost at an interval's end.
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


class HardIrqs(AggregateTool):
    """Hard interrupt counts, total times and time histograms per handler, aggregated
    in the kernel.

    ``cpu`` counts on that CPU only; ``nanoseconds`` gives totals and histograms in
    nsecs instead of usecs. ``counts()`` and ``histograms()`` read them (each read
    with ``reset`` resets both); ``distributions`` makes ``interval_rows()`` the
    histograms. Raises ``ValueError`` for a CPU that does not exist.
    """

    name = "hardirqs"
    object_name = "hardirqs"
    noun = "interrupts"

    def __init__(
        self,
        *,
        cpu: int | None = None,
        nanoseconds: bool = False,
        distributions: bool = False,
        counts_only: bool = False,
    ) -> None:
        if cpu is not None:
            check_cpu(cpu)
        self.cpu = cpu
        self.unit = "nsecs" if nanoseconds else "usecs"
        self.distributions, self.counts_only = distributions, counts_only
        self._growing = Growing()
        total = Column(f"TOTAL_{self.unit}", 11, key=f"total_{self.unit}", right=True)
        self.columns = (
            Column("HARDIRQ", 26),
            Column("TOTAL_count", 11, right=True) if counts_only else total,
        )
        super().__init__()

    def configure(self) -> None:
        g = self.obj.globals
        g["targ_cpu"] = -1 if self.cpu is None else self.cpu
        g["targ_unit"] = UNITS[self.unit]

    def _read(self, reset: bool) -> tuple[float, dict[str, list[int]]]:
        current = {
            key.name: [value.count, value.total_ns, *value.slots]
            for key, value in self.obj.maps["infos"].items()
        }
        grown = self._growing.since(current, reset)
        if reset:
            self.counted += sum(values[0] for values in grown.values())
        return time.time(), grown

    def counts(self, reset: bool = True) -> list[Record]:
        """Per handler, since the last reset: ``{"time", "hardirq", "total_count",
        "total_usecs"}`` (``total_nsecs``), largest first (by time, or count with
        ``counts_only``)."""
        now, grown = self._read(reset)
        rows: list[Record] = [
            {
                "time": now,
                "hardirq": name,
                "total_count": values[0],
                f"total_{self.unit}": values[1] // NS_PER[self.unit],
            }
            for name, values in grown.items()
        ]
        order = "total_count" if self.counts_only else f"total_{self.unit}"
        rows.sort(key=lambda r: (-r[order], r["hardirq"]))
        return rows

    def histograms(self, reset: bool = True) -> list[Record]:
        """Per handler, since the last reset: ``{"time", "hardirq", "unit", "slots",
        "count"}``, by name."""
        now, grown = self._read(reset)
        return [
            {"time": now, "hardirq": name, **hist_record(values[2:], self.unit)}
            for name, values in sorted(grown.items())
        ]

    def interval_rows(self) -> list[Record]:
        return self.histograms() if self.distributions else self.counts()

    def text_lines(self, rows: Any) -> list[str]:
        if not self.distributions:
            return format_table(self.columns, rows)
        lines: list[str] = []
        for row in rows:
            lines += [f"hardirq = {row['hardirq']}", *hist_lines(row)]
        return lines
