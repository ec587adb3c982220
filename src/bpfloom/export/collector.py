"""Metrics read at scrape time: map rows → label sets → exposition lines.

A ``Collector`` writes one metric family each scrape from the rows its source gives
now (a map read in bulk, ``mapread``; or the counts of a ring/perf buffer's events,
``EventCounts``). Labels are decoded column by column (``KeyLabels``): each label's
distinct raw values go through its decoders once and stay cached, as ebpf_exporter's
decoder set caches them; the ``a="x",b="y"`` text of every row is joined with numpy
object arrays. Nothing else is kept between scrapes but the label sets a cardinality
cap has admitted. There is no client-library object per series: the lines are
formatted straight from the rows, which is what makes a 100 000-series scrape cheap
(bench/export.py).

Semantics follow cloudflare/ebpf_exporter: label sets that decode alike are summed; a
per-CPU map is summed over CPUs unless its last label is ``cpu``, which splits it (the
CPU number, as 2 bytes, goes through that label's decoders); a histogram's last label
is its bucket, and buckets are back-filled and made cumulative over the configured
range (``exp2``: le = 2^k·multiplier, ``exp2zero``: le = 0 for key 0 and
2^(k-1)·multiplier above, ``linear``: k·multiplier, ``fixed``: the listed keys), with
the entry just past the last bucket taken as the sum.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..maps import Map
from ..types import Array, Enum, Int, Pointer, Struct, Type, describe, sizeof, strip
from . import exposition
from .config import LabelConfig, MetricConfig
from .decoders import DecodeError, DecoderChain
from .mapread import MapRows, read_u64_map

OVERFLOW_VALUE = "__overflow__"
CPU_LABEL = "cpu"
CPU_LABEL_SIZE = 2  # ebpf_exporter appends the CPU number as a u16
EVENT_KEYS_MAX = 1 << 20  # distinct keys an event counter keeps; the rest overflow


@dataclass(frozen=True)
class LabelSlot:
    """Where one label's bytes are in the key, and its decoders."""

    name: str
    offset: int
    size: int
    chain: DecoderChain


def plan_labels(
    labels: tuple[LabelConfig, ...], key_size: int, key_type: Type | None, what: str
) -> list[LabelSlot]:
    """Cut the key into labels: explicit ``size``/``padding``/``reuse`` as ebpf_exporter
    does, or, when a size is left out, the members of the key's BTF struct in order (a
    scalar key is one label of the key's size)."""
    if not labels:
        return []
    if all(label.size is not None for label in labels):
        slots = []
        offset = 0
        for label in labels:
            assert label.size is not None
            if offset + label.size > key_size:
                raise label.where.error(
                    f"label {label.name!r} reads bytes {offset}..{offset + label.size - 1}, "
                    f"past the end of the {key_size}-byte {what}"
                )
            slots.append(LabelSlot(label.name, offset, label.size, DecoderChain(label, label.size)))
            if not label.reuse:
                offset += label.size + label.padding
        return slots
    return _plan_from_btf(labels, key_size, key_type, what)


def _plan_from_btf(
    labels: tuple[LabelConfig, ...], key_size: int, key_type: Type | None, what: str
) -> list[LabelSlot]:
    first = next(label for label in labels if label.size is None)
    t = strip(key_type)
    if t is None:
        raise first.where.error(
            f"label {first.name!r} has no size, and the {what} has no BTF type to take it "
            "from: give size (and padding) for every label"
        )
    if isinstance(t, Struct):
        members = t.members
        if len(members) != len(labels):
            raise first.where.error(
                f"label {first.name!r} has no size: sizes come from the members of "
                f"{describe(t)} ({len(members)} members), but there are {len(labels)} "
                "labels; give size for every label instead"
            )
        slots = []
        for label, member in zip(labels, members, strict=True):
            if member.bitfield_size or member.offset_bits % 8:
                raise label.where.error(
                    f"member {member.name!r} of {describe(t)} is a bitfield; give sizes"
                )
            if label.reuse:
                raise label.where.error("reuse needs explicit sizes for every label")
            offset = member.offset_bits // 8
            try:
                size = label.size if label.size is not None else sizeof(member.type)
            except ValueError as exc:
                raise label.where.error(f"member {member.name!r}: {exc}") from None
            if size <= 0 or offset + size > key_size:
                raise label.where.error(
                    f"label {label.name!r}: member {member.name!r} does not fit the "
                    f"{key_size}-byte {what}"
                )
            slots.append(LabelSlot(label.name, offset, size, DecoderChain(label, size)))
        return slots
    if isinstance(t, (Int, Enum, Pointer, Array)):
        if len(labels) != 1:
            raise first.where.error(
                f"label {first.name!r} has no size and the {what} is a single "
                f"{describe(key_type)}: only one label can take its size"
            )
        return [LabelSlot(first.name, 0, key_size, DecoderChain(first, key_size))]
    raise first.where.error(
        f"label {first.name!r} has no size, and the {what} ({describe(key_type)}) "
        "gives none: give size for every label"
    )


class KeyLabels:
    """Label values decoded column by column.

    Each label's distinct raw values in a scrape (``np.unique`` of its column) go
    through its decoders once, and stay cached across scrapes, so 100 000 keys that
    share 25 000 ids and 4 kinds cost 25 004 decodes the first time and none after.
    Caches are per label and dropped when they grow past ``limit`` (keys that churn
    cannot grow them without bound). A decoder that fails drops the label sets with
    that value and counts in ``errors``.
    """

    def __init__(self, slots: list[LabelSlot], limit: int) -> None:
        self.slots = slots
        self.limit = limit
        self._cache: list[dict[bytes, tuple[str, str] | None]] = [{} for _ in slots]
        self.errors = 0
        self.last_error = ""

    def _decode(self, i: int, raw: bytes) -> tuple[str, str] | None:
        """(value, ``name="value"`` fragment) of label ``i`` for ``raw``, or None."""
        slot = self.slots[i]
        found: tuple[str, str] | None = None
        try:
            value = slot.chain.decode(raw)
            if value is not None:
                found = (value, f'{slot.name}="{exposition.escape_value(value)}"')
        except (DecodeError, ValueError) as exc:
            self.errors += 1
            self.last_error = f"label {slot.name!r}: {exc}"
        cache = self._cache[i]
        if len(cache) >= self.limit:
            cache.clear()
        cache[raw] = found
        return found

    def column(self, keys: np.ndarray, i: int) -> tuple[list[tuple[str, str] | None], np.ndarray]:
        """Label ``i`` of every row: its decoded distinct values and, per row, the index
        of its value among them."""
        slot = self.slots[i]
        col = np.ascontiguousarray(keys[:, slot.offset : slot.offset + slot.size])
        if slot.size in (1, 2, 4, 8):  # sorts as integers: several times faster than bytes
            found, inverse = np.unique(col.view(f"=u{slot.size}").ravel(), return_inverse=True)
            raws = [int(x).to_bytes(slot.size, sys.byteorder) for x in found.tolist()]
        else:
            found, inverse = np.unique(col.view(f"V{slot.size}").ravel(), return_inverse=True)
            raws = found.tolist()
        cache = self._cache[i]
        decoded = [cache[raw] if raw in cache else self._decode(i, raw) for raw in raws]
        return decoded, inverse.ravel()

    def blocks(self, keys: np.ndarray, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``a="x",b="y"`` for every row (an object array) over the first ``count``
        labels (all by default), and which rows no decoder dropped."""
        n = keys.shape[0]
        out = np.full(n, "", dtype=object)
        keep = np.ones(n, dtype=bool)
        for i in range(len(self.slots) if count is None else count):
            decoded, inverse = self.column(keys, i)
            sep = "," if i else ""  # on the distinct values: one concatenation per row
            fragments = np.array(["" if d is None else sep + d[1] for d in decoded], dtype=object)
            dropped = np.array([d is None for d in decoded], dtype=bool)
            if dropped.any():
                keep &= ~dropped[inverse]
            part = fragments[inverse]
            out = part if i == 0 else out + part
        return out, keep

    def values(self, key: bytes) -> tuple[str, ...] | None:
        """The label values of one key (None when a decoder dropped it)."""
        values = []
        for i, slot in enumerate(self.slots):
            raw = key[slot.offset : slot.offset + slot.size]
            cache = self._cache[i]
            found = cache[raw] if raw in cache else self._decode(i, raw)
            if found is None:
                return None
            values.append(found[0])
        return tuple(values)


def keys_as_bytes(keys: np.ndarray) -> list[bytes]:
    """Each row of an ``(n, size)`` uint8 array as one ``bytes`` (one pass, in C)."""
    n, size = keys.shape
    if n == 0:
        return []
    if size == 0:
        return [b""] * n
    rows: list[bytes] = np.ascontiguousarray(keys).view(f"V{size}").ravel().tolist()
    return rows


class Source:
    """Where a metric's rows come from."""

    def read(self) -> MapRows:
        raise NotImplementedError


class MapSource(Source):
    """A map of u64 values, read whole at each scrape."""

    def __init__(self, m: Map, possible_cpus: int) -> None:
        self.map = m
        self.possible_cpus = possible_cpus

    def read(self) -> MapRows:
        return read_u64_map(self.map, self.possible_cpus)


class EventCounts(Source):
    """Counts of events by key, fed by a ring or perf buffer reader (``add``, from the
    reader's thread) and read by scrapes; thread-safe. With ``flush_interval`` the
    counts restart from zero that often (ebpf_exporter's perf_event_array counters)."""

    def __init__(self, key_size: int, flush_interval: float | None = None) -> None:
        self.key_size = key_size
        self.flush_interval = flush_interval
        self.counts: dict[bytes, int] = {}
        self.overflow = 0
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def add(self, records: np.ndarray) -> None:
        """Count ``(n, size)`` uint8 records by their first ``key_size`` bytes."""
        if records.shape[0] == 0:
            return
        keys = np.ascontiguousarray(records[:, : self.key_size])
        if self.key_size == 0:
            unique, counts = [b""], [int(records.shape[0])]
        else:
            found, counts_arr = np.unique(
                keys.view(f"V{self.key_size}").ravel(), return_counts=True
            )
            unique, counts = found.tolist(), counts_arr.tolist()
        with self._lock:
            table = self.counts
            for key, count in zip(unique, counts, strict=True):
                if key in table:
                    table[key] += count
                elif len(table) < EVENT_KEYS_MAX:
                    table[key] = count
                else:
                    self.overflow += count

    def read(self) -> MapRows:
        with self._lock:
            if (
                self.flush_interval is not None
                and time.monotonic() - self._flushed >= self.flush_interval
            ):
                self.counts.clear()
                self.overflow = 0
                self._flushed = time.monotonic()
            keys = b"".join(self.counts)
            values = list(self.counts.values())
        n = len(values)
        return MapRows(
            np.frombuffer(keys, dtype=np.uint8).reshape(n, self.key_size),
            np.array(values, dtype=np.uint64),
        )


class Collector:
    """One metric family: reads its source, writes its lines. Not thread-safe (the
    exporter serialises scrapes).

    ``max_series`` caps the label sets: those seen first (and still present) keep
    their series; the others are summed into one series whose every label is
    ``__overflow__``, and ``overflowed`` says how many were folded at the last scrape.
    """

    kind = ""

    def __init__(
        self,
        config_name: str,
        metric: MetricConfig,
        source: Source,
        slots: list[LabelSlot],
        *,
        cpu_slot: LabelSlot | None = None,
        max_series: int | None = None,
        cache_limit: int = 1 << 18,
    ) -> None:
        self.config_name = config_name
        self.metric = metric
        self.name = metric.full_name
        self.source = source
        self.labels = KeyLabels(slots, cache_limit)
        self.cpu_slot = cpu_slot
        self.max_series = max_series
        self.overflowed = 0
        self.read_errors = 0
        self.last_error = ""
        self._admitted: set[str] = set()

    @property
    def decode_errors(self) -> int:
        return self.labels.errors + self.read_errors

    def _cap(self, table: dict[str, int | float], overflow_block: str) -> None:
        """Fold the label sets past ``max_series`` into the overflow series, in place."""
        cap = self.max_series
        if cap is None or (len(table) <= cap and not self.overflowed):
            self.overflowed = 0
            self._admitted = set(table) if cap is not None else set()
            return
        admitted = {block for block in self._admitted if block in table}
        for block in table:
            if len(admitted) >= cap:
                break
            admitted.add(block)
        folded = [block for block in table if block not in admitted]
        total: int | float = 0
        for block in folded:
            total += table.pop(block)
        if folded:
            table[overflow_block] = table.get(overflow_block, 0) + total
        self._admitted = admitted
        self.overflowed = len(folded)

    def collect(self, out: list[str]) -> None:
        raise NotImplementedError


class CounterCollector(Collector):
    """A counter (or, with ``kind = "gauge"``, a gauge): one series per label set."""

    def __init__(self, *args: object, kind: str = "counter", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.kind = kind
        slots = self.labels.slots + ([self.cpu_slot] if self.cpu_slot is not None else [])
        self.label_names = tuple(slot.name for slot in slots)
        self._cpu_blocks: list[str | None] = []
        self.overflow_block = exposition.label_block(
            self.label_names, (OVERFLOW_VALUE,) * len(self.label_names)
        )

    def _cpu_block(self, cpu: int) -> str | None:
        while len(self._cpu_blocks) <= cpu:
            i = len(self._cpu_blocks)
            assert self.cpu_slot is not None
            try:
                value = self.cpu_slot.chain.decode(i.to_bytes(CPU_LABEL_SIZE, sys.byteorder))
            except (DecodeError, ValueError):
                self.labels.errors += 1
                value = None
            self._cpu_blocks.append(
                None if value is None else exposition.label_block((self.cpu_slot.name,), (value,))
            )
        return self._cpu_blocks[cpu]

    def table(self, rows: MapRows) -> dict[str, int]:
        """Label block → value, summed over keys (and CPUs) that decode alike."""
        blocks, keep = self.labels.blocks(rows.keys)
        values = rows.values
        if not keep.all():
            blocks, values = blocks[keep], values[keep]
        block_list: list[str] = blocks.tolist()
        if values.ndim == 2 and self.cpu_slot is not None:
            return self._table_per_cpu(block_list, values)
        if values.ndim == 2:
            values = values.sum(axis=1, dtype=np.uint64)
        numbers: list[int] = values.tolist()
        table = dict(zip(block_list, numbers, strict=True))
        if len(table) != len(block_list):
            table = {}
            for block, number in zip(block_list, numbers, strict=True):
                table[block] = table.get(block, 0) + number
        return table

    def _table_per_cpu(self, blocks: list[str], values: np.ndarray) -> dict[str, int]:
        cpus = values.shape[1]
        cpu_blocks = [self._cpu_block(c) for c in range(cpus)]
        table: dict[str, int] = {}
        for block, per_cpu in zip(blocks, values.tolist(), strict=True):
            for cpu_block, number in zip(cpu_blocks, per_cpu, strict=True):
                if cpu_block is None:
                    continue
                full = f"{block},{cpu_block}" if block else cpu_block
                table[full] = table.get(full, 0) + number
        return table

    def collect(self, out: list[str]) -> None:
        table: dict[str, int | float] = dict(self.table(self.source.read()))
        if isinstance(self.source, EventCounts) and self.source.overflow:
            table[self.overflow_block] = table.get(self.overflow_block, 0) + self.source.overflow
        self._cap(table, self.overflow_block)
        if not table:
            return
        out.append(exposition.header(self.name, self.kind, self.metric.help))
        name = self.name
        open_ = name + "{"
        out.extend(
            f"{open_}{block}}} {number}\n" if block else f"{name} {number}\n"
            for block, number in table.items()
        )


class HistogramCollector(Collector):
    """A histogram: the last label of the key is the bucket; the others group."""

    kind = "histogram"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        m = self.metric
        self.label_names = tuple(slot.name for slot in self.labels.slots[:-1])
        if m.bucket_type == "fixed":
            self.bucket_keys: list[float] = list(m.bucket_keys)
            self.sum_key: float = m.bucket_keys[-1] + 1
        else:
            self.bucket_keys = [float(k) for k in range(m.bucket_min, m.bucket_max + 1)]
            self.sum_key = m.bucket_max + 1
        self.bounds = [exposition.go_float(self._bound(k)) for k in self.bucket_keys]
        self.overflow_block = exposition.label_block(
            self.label_names, (OVERFLOW_VALUE,) * len(self.label_names)
        )
        self._parsed: dict[str, float] = {}

    def _bound(self, key: float) -> float:
        m = self.metric
        if m.bucket_type == "exp2":
            return float(2.0**key * m.bucket_multiplier)
        if m.bucket_type == "exp2zero":
            return 0.0 if key == 0 else float(2.0 ** (key - 1) * m.bucket_multiplier)
        return key * m.bucket_multiplier

    def _bucket(self, decoded: tuple[str, str] | None) -> float:
        """The bucket key a decoded last label names (NaN: none, or not an integer)."""
        if decoded is None:
            return math.nan
        text = decoded[0]
        found = self._parsed.get(text)
        if found is None:
            try:
                found = float(int(text, 0))
            except ValueError:
                self.labels.errors += 1
                self.labels.last_error = f"bucket {text[:32]!r} is not an integer"
                found = math.nan
            if len(self._parsed) >= self.labels.limit:
                self._parsed.clear()
            self._parsed[text] = found
        return found

    def collect(self, out: list[str]) -> None:
        rows = self.source.read()
        values = rows.values
        if values.ndim == 2:
            values = values.sum(axis=1, dtype=np.uint64)
        last = len(self.labels.slots) - 1
        blocks, keep = self.labels.blocks(rows.keys, last)
        decoded, inverse = self.labels.column(rows.keys, last)
        per_row = np.array([self._bucket(d) for d in decoded], dtype=float)[inverse]
        keep &= ~np.isnan(per_row)
        groups: dict[str, dict[float, int]] = {}
        for group, slot, number in zip(
            blocks[keep].tolist(), per_row[keep].tolist(), values[keep].tolist(), strict=True
        ):
            buckets = groups.setdefault(group, {})
            buckets[slot] = buckets.get(slot, 0) + number
        sizes = {block: sum(b.values()) for block, b in groups.items()}
        self._cap(sizes, self.overflow_block)  # type: ignore[arg-type]
        if self.overflowed:
            merged: dict[float, int] = {}
            for folded in [b for b in groups if b not in sizes]:
                for slot, count in groups.pop(folded).items():
                    merged[slot] = merged.get(slot, 0) + count
            groups[self.overflow_block] = merged
        if not groups:
            return
        out.append(exposition.header(self.name, "histogram", self.metric.help))
        multiplier = self.metric.bucket_multiplier
        bucket_name, sum_name, count_name = (
            f"{self.name}_bucket",
            f"{self.name}_sum",
            f"{self.name}_count",
        )
        for block, buckets in groups.items():
            sep = "," if block else ""
            count = 0
            for bucket_key, bound in zip(self.bucket_keys, self.bounds, strict=True):
                count += buckets.get(bucket_key, 0)
                out.append(f'{bucket_name}{{{block}{sep}le="{bound}"}} {count}\n')
            out.append(f'{bucket_name}{{{block}{sep}le="+Inf"}} {count}\n')
            total = exposition.number(buckets.get(self.sum_key, 0) * multiplier)
            out.append(f"{exposition.series(sum_name, block)} {total}\n")
            out.append(f"{exposition.series(count_name, block)} {count}\n")
