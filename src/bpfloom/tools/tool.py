"""What every ready tool shares: one of bpfloom's own BPF objects, kernel-side filters
set as globals, and events turned into output records.

A tool is a library class (``ExecSnoop(uid=0)``); its command (``bpfloom.cli``) only
wires it to sinks. Life cycle, as for any ``BpfObject`` (open → globals → load →
attach)::

    with ExecSnoop(include_failed=True) as tool:   # opens, sets globals, loads
        tool.attach()
        for record in tool.read(timeout=1.0):      # dicts keyed like the JSON output
            print(record["pcomm"], record["args"])

or hand ``tool.readers`` to a ``Pipeline`` with ``tool.record`` in the handler. Records
are plain dicts whose keys are the lower-case column names (plus a few extra keys a
table has no room for); the table and ``--json`` print the same dicts. ``columns``
(``bpfloom.sinks.table.Column``) say how a table shows them.

Kernel timestamps (``bpf_ktime_get_ns``, CLOCK_MONOTONIC) become wall-clock seconds
with one offset taken when the tool starts (``wall_time``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from .. import decode
from ..batch import Batch
from ..bpf import object_path
from ..object import BpfObject
from ..perfbuf import PerfBuffer
from ..ringbuf import RingBuffer
from ..sinks.table import Column

if TYPE_CHECKING:  # the rule engine is imported only by tools given a prefilter
    from ..rules._prefilter import KernelFilter

__all__ = ["Column", "Record", "Tool", "wall_time", "wall_times"]

Record = dict[str, Any]
_MONO_TO_WALL_NS = time.time_ns() - time.monotonic_ns()


def wall_time(ktime_ns: int) -> float:
    """Unix time in seconds of a kernel CLOCK_MONOTONIC timestamp in ns."""
    return (ktime_ns + _MONO_TO_WALL_NS) / 1e9


def wall_times(ktime_ns: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.float64]:
    """``wall_time`` of each timestamp of an array, with the same floats: numpy's int64
    to float64 conversion rounds to nearest as Python's int to float does; timestamps
    whose sum with the offset would leave int64 are converted one by one."""
    if ktime_ns.size and int(np.maximum.reduce(ktime_ns)) > (1 << 62):
        return np.array([wall_time(t) for t in ktime_ns.tolist()], dtype=np.float64)
    return (ktime_ns.astype(np.int64) + _MONO_TO_WALL_NS) / 1e9


class Tool:
    """Base of the ready tools. Subclasses set ``object_name`` (a program in
    ``bpfloom/bpf``), ``event_type`` and ``columns``, and override ``configure()``
    (globals, before load) and ``record()`` (one raw event → one output record, or
    None to skip it).

    The constructor opens and loads the object (``LoadError`` and friends propagate)
    and opens its readers; ``attach()`` starts tracing; ``close()`` releases every
    kernel object (idempotent).
    """

    name: ClassVar[str]
    object_name: ClassVar[str]
    #: The struct the object's buffers hold, named so it is found in BTF (declare it
    #: with BPFLOOM_RECORD in the BPF source) rather than searched for in DWARF.
    event_type: ClassVar[str | None] = None
    columns: tuple[Column, ...] = ()
    #: What the kernel may leave out (``bpfloom detect``'s rules; objects that include
    #: ``bpf/bpfloom_prefilter.h``); None: every event is emitted.
    prefilter: KernelFilter | None = None

    def __init__(self) -> None:
        # Lossless strings: records keep the exact bytes a process gave (a path that is
        # not UTF-8); the printer escapes them on a terminal and keeps them in JSON.
        self.obj = BpfObject(object_path(self.object_name), strings="surrogateescape")
        self.readers: list[RingBuffer | PerfBuffer] = []
        try:
            self.configure()
            if self.prefilter is not None:
                from . import prefilter

                prefilter.set_globals(self.obj, self.prefilter)
                self.obj.load()
                prefilter.fill_maps(self.obj, self.prefilter)
            else:
                self.obj.load()
            self.readers = [
                self.obj.open_reader(m.name, self.event_type) for m in self.obj.event_buffers()
            ]
        except BaseException:
            self.obj.close()
            raise

    def configure(self) -> None:
        """Set the object's globals (kernel-side filters) before it is loaded."""

    def attach(self) -> None:
        """Start tracing: attach the tool's programs."""
        self.obj.attach_all()

    def detach(self) -> None:
        """Stop tracing: detach every program (the readers stay open, so what the
        programs emitted can still be read)."""
        for link in self.obj.links:
            link.close()

    def record(self, event: Any) -> Record | None:
        """The output record of one raw event (default: its fields by C name)."""
        rec: Record = decode.to_jsonable(event)
        return rec

    def records(self, batch: Batch) -> list[Record]:
        """The output records of a batch, in order, skipping events ``record`` drops."""
        return [r for r in map(self.record, batch) if r is not None]

    def read(self, timeout: float | None = None) -> list[Record]:
        """Records read once from every reader (waiting up to ``timeout`` each)."""
        out: list[Record] = []
        for reader in self.readers:
            out.extend(self.records(reader.read(timeout)))
        return out

    def summary(self) -> str | None:
        """Text printed at exit after the events (per-tool aggregates), if any."""
        return None

    def summary_records(self) -> list[Record]:
        """The same summary as records, for JSON output (none by default)."""
        return []

    def dropped_kernel(self) -> int:
        return self.obj.dropped_kernel()

    def filtered_kernel(self) -> int:
        """Events the prefilter left out in the kernel (never emitted: not drops)."""
        if self.prefilter is None:
            return 0
        from . import prefilter

        return prefilter.filtered(self.obj)

    def exit_line(self, stats: dict[str, Any]) -> str:
        """The line the command prints on stderr at exit, from the pipeline's stats."""
        return (
            f"bpfloom {self.name}: {stats['received']} events; lost "
            f"{stats['dropped_kernel']} in the kernel, {stats['dropped_queue']} in user space"
        )

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.obj.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


T = TypeVar("T", bound=Tool)
