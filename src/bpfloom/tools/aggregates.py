"""What the metric tools share (runqlat, biolatency, hardirqs, softirqs): numbers
aggregated in the kernel, read per interval, printed as log2 histograms or tables.

Their BPF programs keep counters that only grow (``bpf/bpfloom_hist.h``); user space
remembers what it read last and reports the differences (``Growing``). libbpf-tools
reads a map and then deletes its keys, losing whatever the kernel added between the
two; differences lose nothing at an interval's end.

The command line follows libbpf-tools: ``TOOL [interval] [count]`` prints every
``interval`` seconds, ``count`` times (without ``interval``: once, at exit — Ctrl-C,
SIGTERM or ``--duration``), each interval after a blank line, with ``-T`` an
``HH:MM:SS`` line first. ``--json`` prints one object per histogram (or table row) per
interval: ``{"interval": N, "time": T, ...}``, ``N`` counting from 1 and ``T`` the
wall-clock time of the read (unix seconds); an interval with nothing to report prints
nothing. A histogram row has ``unit`` (``usecs``, ``msecs``, ``nsecs``), ``slots``
(slot ``i`` counts values in ``[2**i, 2**(i+1))``, slot 0 also 0) and ``count`` (the sum
of the slots), after its key's fields.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from ..histogram import format_log2_hist
from .tool import Record, Tool

F = TypeVar("F", bound=Callable[..., Any])
K = TypeVar("K", bound=Hashable)

# enum bpfloom_hist_unit of bpf/bpfloom_hist.h, by the name libbpf-tools prints.
UNITS = {"nsecs": 0, "usecs": 1, "msecs": 2}
NS_PER = {"nsecs": 1, "usecs": 1_000, "msecs": 1_000_000}


class Growing:
    """Differences between reads of counters that only grow.

    Each key's value is a vector of counters (``[count, total_ns, *slots]``);
    ``since(current)`` gives, per key, what grew since the last ``since`` with
    ``reset`` (keys that did not grow are left out). Not thread-safe.
    """

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[int, ...]] = {}

    def since(self, current: Mapping[K, Sequence[int]], reset: bool = True) -> dict[K, list[int]]:
        out: dict[K, list[int]] = {}
        for key, values in current.items():
            before = self._last.get(key)
            grown = (
                list(values)
                if before is None
                else [now - then for now, then in zip(values, before, strict=True)]
            )
            if any(grown):
                out[key] = grown
        if reset:
            self._last.update((key, tuple(values)) for key, values in current.items())
        return out

    def forget(self, keys: Iterable[Hashable]) -> None:
        """Drop what was remembered of ``keys`` (deleted from the kernel's map)."""
        for key in keys:
            self._last.pop(key, None)

    def remembered(self) -> set[Hashable]:
        """The keys read so far (and not forgotten)."""
        return set(self._last)


def hist_record(slots: Sequence[int], unit: str) -> Record:
    """The histogram fields of a row: unit, slots and their sum."""
    return {"unit": unit, "slots": list(slots), "count": sum(slots)}


def hist_lines(row: Record) -> list[str]:
    """A histogram row's bars, libbpf-tools' ``print_log2_hist`` layout."""
    text = format_log2_hist(row["slots"], row["unit"])
    return text.split("\n") if text else []


class AggregateTool(Tool):
    """A tool whose figures the kernel aggregates in maps: no events, no readers.

    Subclasses give ``noun`` (what one counted thing is, for the exit line) and
    ``interval_rows()`` (the rows of one interval, read and reset) with
    ``text_lines(rows)`` (their text), and add to ``counted`` what they report.
    """

    noun: ClassVar[str] = "samples"

    def __init__(self) -> None:
        self.counted = 0  # things reported (and reset) so far
        super().__init__()

    def interval_rows(self) -> list[Record]:
        """What the kernel counted since the last call, as output rows; resets."""
        raise NotImplementedError

    def text_lines(self, rows: Sequence[Record]) -> list[str]:
        """The text of one interval's rows (unescaped: the printer escapes lines)."""
        raise NotImplementedError

    def exit_line(self, stats: dict[str, Any]) -> str:
        """What was counted (no events: the kernel aggregates), and what the kernel
        could not count because a map was full."""
        return (
            f"bpfloom {self.name}: {self.counted} {self.noun} counted in the kernel; "
            f"{self.dropped_kernel()} not counted (map full)"
        )


def check_cpu(cpu: int) -> None:
    """Raise ``ValueError`` unless ``cpu`` is a CPU of this machine."""
    count = os.cpu_count() or 1
    if not 0 <= cpu < count:
        raise ValueError(f"CPU {cpu} does not exist (this machine has CPUs 0-{count - 1})")
