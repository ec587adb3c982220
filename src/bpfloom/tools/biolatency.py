"""biolatency: block I/O latency as log2 histograms.

From a request's issue to the device to its completion (``-Q``: from its insertion
into the I/O scheduler's queue), on the block tracepoints ``block_rq_insert``,
``block_rq_issue`` and ``block_rq_complete`` (tp_btf). Options and output as
libbpf-tools' biolatency: one histogram in usecs (``-m``: msecs), or one per disk
(``-D``, headed ``disk = vda``) and/or per set of request flags (``-F``, ``flags =
Sync-Write``); ``-d DISK`` traces one disk only (in the kernel). ``biolatency
[interval] [count]``, ``-T``, ``--json`` and ``--duration`` as every metric tool
(``bpfloom.tools.aggregates``).

``--json``: ``{"interval", "time", ["disk",] ["flags",] "unit", "slots", "count"}`` per
histogram per interval. A disk is named as in /sys/block (``MAJOR:MINOR`` when the
device is gone); flags are libbpf-tools' names (``NoWait``, ``Background``,
``ReadAhead``, ``PreFlush``, ``FUA``, ``Integrity``, ``Idle``, ``NoMerge``,
``Priority``, ``Metadata``, ``Sync``) joined by ``-``, then the operation (``Read``,
``Write``, ``Flush``, ``Discard``...). The kernel program reads each flag's bit from
this kernel's own ``enum req_flag_bits`` (CO-RE), so the names stay right across
kernel versions. Differences between reads, not read-then-delete: no completion is
lost at an interval's end.
"""

from __future__ import annotations

import os
import re
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

MINOR_BITS = 20  # the kernel's dev_t: major << 20 | minor
REQ_OP_MASK = 0xFF
# bpfloom's flag bits (bpf/biolatency.bpf.c's BIO_*), in libbpf-tools' print order.
FLAG_NAMES = (
    (1 << 8, "NoWait"),
    (1 << 9, "Background"),
    (1 << 10, "ReadAhead"),
    (1 << 11, "PreFlush"),
    (1 << 12, "FUA"),
    (1 << 13, "Integrity"),
    (1 << 14, "Idle"),
    (1 << 15, "NoMerge"),
    (1 << 16, "Priority"),
    (1 << 17, "Metadata"),
    (1 << 18, "Sync"),
)
# enum req_op (include/linux/blk_types.h); stable since 5.19 (WriteSame's 7 went then).
OPERATIONS = {
    0: "Read",
    1: "Write",
    2: "Flush",
    3: "Discard",
    5: "SecureErase",
    7: "ZoneAppend",
    9: "WriteZeroes",
    11: "ZoneOpen",
    13: "ZoneClose",
    15: "ZoneFinish",
    17: "ZoneReset",
    19: "ZoneResetAll",
    34: "DrvIn",
    35: "DrvOut",
}
_DEV = re.compile(r"^(\d+):(\d+)$")


def flags_name(flags: int) -> str:
    """libbpf-tools' text of a request's flags: ``Sync-Write``, ``Read``."""
    names = [name for bit, name in FLAG_NAMES if flags & bit]
    names.append(OPERATIONS.get(flags & REQ_OP_MASK, "Unknown"))
    return "-".join(names)


def disk_dev(name: str) -> int:
    """The kernel dev_t (``major << 20 | minor``) of whole disk ``name`` (as in
    /sys/block). Raises ``ValueError`` when there is no such disk."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a disk name (see /sys/block)")
    try:
        with open(f"/sys/block/{name}/dev") as f:
            text = f.read().strip()
    except OSError:
        raise ValueError(f"no disk {name!r} (the disks are in /sys/block)") from None
    match = _DEV.match(text)
    if match is None:
        raise ValueError(f"cannot read the device number of disk {name!r}")
    return (int(match[1]) << MINOR_BITS) | int(match[2])


def disk_name(dev: int) -> str:
    """The name of the disk whose kernel dev_t is ``dev`` (``MAJOR:MINOR`` if none)."""
    major, minor = dev >> MINOR_BITS, dev & ((1 << MINOR_BITS) - 1)
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
    except OSError:
        return f"{major}:{minor}"


class BioLatency(AggregateTool):
    """Block I/O latency histograms, aggregated in the kernel.

    ``per_disk`` / ``per_flags`` key them by disk and/or request flags; ``queued``
    measures from insertion into the scheduler's queue instead of issue; ``disk``
    traces one disk (a name in /sys/block); ``milliseconds`` counts in msecs instead
    of usecs. Read them with ``histograms()``. Raises ``ValueError`` for a disk that
    does not exist (and load errors, as any tool).
    """

    name = "biolatency"
    object_name = "biolatency"
    noun = "I/O requests"

    def __init__(
        self,
        *,
        per_disk: bool = False,
        per_flags: bool = False,
        queued: bool = False,
        disk: str | None = None,
        milliseconds: bool = False,
    ) -> None:
        self.target_dev = disk_dev(disk) if disk is not None else None
        self.per_disk, self.per_flags, self.queued = per_disk, per_flags, queued
        self.unit = "msecs" if milliseconds else "usecs"
        self._growing = Growing()
        self._names: dict[int, str] = {}
        super().__init__()

    def configure(self) -> None:
        # Insertions matter only from -Q on: no program on block_rq_insert otherwise.
        self.obj.programs["block_rq_insert"].autoload = self.queued
        g = self.obj.globals
        g["targ_per_disk"] = self.per_disk
        g["targ_per_flag"] = self.per_flags
        g["targ_queued"] = self.queued
        g["filter_dev"] = self.target_dev is not None
        g["targ_dev"] = self.target_dev or 0
        g["targ_unit"] = UNITS[self.unit]

    def _disk(self, dev: int) -> str:
        if dev not in self._names:
            self._names[dev] = disk_name(dev)
        return self._names[dev]

    def histograms(self, reset: bool = True) -> list[Record]:
        """The histograms grown since the last reset, by disk and flags:
        ``{"time", ["disk",] ["flags",] "unit", "slots", "count"}``; ``reset`` makes
        the next read count from now."""
        now = time.time()
        current = {
            (key.dev, key.flags): list(value.slots) for key, value in self.obj.maps["hists"].items()
        }
        rows = []
        for (dev, flags), slots in self._growing.since(current, reset).items():
            row: Record = {"time": now}
            if self.per_disk:
                row["disk"] = self._disk(dev)
            if self.per_flags:
                row["flags"] = flags_name(flags)
            row |= hist_record(slots, self.unit)
            rows.append(row)
        rows.sort(key=lambda r: (r.get("disk", ""), r.get("flags", "")))
        if reset:
            self.counted += sum(row["count"] for row in rows)
        return rows

    def interval_rows(self) -> list[Record]:
        return self.histograms()

    def text_lines(self, rows: Any) -> list[str]:
        lines: list[str] = []
        for row in rows:
            label = []
            if self.per_disk:
                label.append(f"disk = {row['disk']}")
            if self.per_flags:
                label.append(f"flags = {row['flags']}")
            if label:
                lines += ["", " ".join(label)]
            lines += hist_lines(row)
        return lines
