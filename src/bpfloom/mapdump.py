"""What ``bpfloom run`` prints of an object's maps and globals, besides its events.

Like ecli, every user map that holds data is printed (every ``--interval`` seconds and
at exit), so counters and histograms kept in the kernel are seen without a line of
Python. This module finds what to print and renders it as text lines or JSON rows; the
command line only calls it. Values are read through the Map API (``bpfloom.maps``) and
``BpfObject.globals``: one decoding path for everything.

What is dumped:

- every user map of an iterable kind: ``hash``, ``array``, ``percpu_hash``,
  ``percpu_array``, ``lru_hash``, ``lru_percpu_hash`` — not libbpf's internal maps, not
  event buffers (ring buffer, perf event array; their records are the events), not
  ``bpfloom_drops`` (the runtime's own drop counter), not the ``__bpf_usdt_*`` maps of
  libbpf's ``<bpf/usdt.bpf.h>`` (its USDT argument specs), not program, stack, map-in-map,
  queue or storage maps;
- ``.data``/``.bss`` globals (``.rodata`` holds settings, not data) whose value is an
  integer, an array of integers, a log2 histogram (a struct with a ``slots`` array,
  ``bpfloom.histogram``) or an array of those — skipping names that are not
  identifiers (function-local statics such as ``handle.____fmt``) and names starting
  with ``bpfloom_`` (our header's own).

Per-CPU values are folded into one: integers summed over CPUs, struct members and
array elements summed member-wise when they are integers; anything else is shown per
CPU, as a list. Array maps and global arrays show their non-zero entries only (an
array always has all its keys); hash maps show every entry; a scalar global is always
shown. A map (or global array) with nothing to show is *empty*.

Text: a histogram per key, ``{map} key = {key}`` then the bars, then the struct's other
members on one line (``count = 5, total = 1234``); a histogram whose slots are all zero
says so in one line. Other maps: a title line (the map's name and kind), then a table
whose columns are the key's fields and the value's fields upper-cased (``KEY`` and
``VALUE`` for plain values), sorted by value descending when the value is a number,
else by key; at most ``max_rows`` rows (histograms, too), then ``... N more
entries``. A scalar global is one line, ``name = value``. Keys print as their fields
(``pid=12 comm=bash``). Every string and name is escaped (control characters become
``\\n``, ``\\x1b``...): keys hold comms and paths of traced processes. The names of the
empty maps end the dump in one line, ``empty maps: a, b``. Every section starts with a
blank line, so the dump is easy to tell from an event table.

JSON rows, one per entry and never cut: a histogram is ``{"map", "key", "unit", **its
fields}`` (the row shape runqlat's users know), another map's entry ``{"map", "key",
"value"}``, a global ``{"global", "value"}`` (an array one row per non-zero element,
with ``"key"``: the index), an empty map ``{"map": NAME, "empty": true}``. Keys and
values go through ``decode.to_jsonable``.

A histogram's unit comes from the object: a true ``targ_ms`` global gives ``msecs``, a
true ``targ_ns`` ``nsecs``; else the map's (or global's) name: ending in ``_ns``/
``_nsecs`` gives ``nsecs``, ``_ms``/``_msecs`` ``msecs``, ``_us``/``_usecs`` or
containing ``lat`` ``usecs`` (a suffix beats ``lat``: ``lat_ns`` is in nsecs); else a
``targ_ms`` global that is false means ``usecs`` (runqlat's convention); else ``value``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._exceptions import MapError
from ._terminal import escape_control
from .decode import to_jsonable
from .histogram import format_log2_hist, is_log2_hist
from .object import DROPS_MAP
from .types import Array, Int, Type, describe, strip

if TYPE_CHECKING:
    from .object import BpfObject, GlobalVar

# The maps of libbpf's <bpf/usdt.bpf.h> (__bpf_usdt_specs, __bpf_usdt_ip_to_spec_id):
# where each USDT call site keeps its arguments, libbpf's bookkeeping, not data.
LIBBPF_USDT_PREFIX = "__bpf_usdt_"
ITERABLE_MAP_TYPES = frozenset(
    {"hash", "array", "percpu_hash", "percpu_array", "lru_hash", "lru_percpu_hash"}
)
ARRAY_MAP_TYPES = frozenset({"array", "percpu_array"})
PERCPU_MAP_TYPES = frozenset({"percpu_hash", "percpu_array", "lru_percpu_hash"})
DEFAULT_MAX_ROWS = 50
OWN_PREFIX = "bpfloom_"
EMPTY_STRING = '""'  # how an empty string shows in ``name=value`` pairs


@dataclass(frozen=True)
class Source:
    """A map or a global the dump reads.

    ``kind`` is the map type (``hash``, ``percpu_array``...) or ``global``; ``section``
    the global's (``.bss``). ``hist``: the values are log2 histograms. ``sparse``: only
    non-zero entries are shown (arrays). ``keyed``: entries have keys (every map, a
    global array); a scalar global has one entry without a key.
    """

    name: str
    kind: str
    value_type: Type | None
    hist: bool
    sparse: bool
    keyed: bool
    section: str = ""

    @property
    def is_global(self) -> bool:
        return self.kind == "global"

    @property
    def percpu(self) -> bool:
        return self.kind in PERCPU_MAP_TYPES

    @property
    def title(self) -> str:
        """The name and kind, for a table's title line (escaped)."""
        kind = self.kind
        if self.is_global:
            kind = f"global {describe(self.value_type)} in {self.section}"
        return escape_control(f"{self.name} ({kind})")


@dataclass(frozen=True)
class Contents:
    """What one source held at one moment: the entries to show, in display order
    (``key`` is None for a scalar global), and the unit of its histograms."""

    source: Source
    entries: list[tuple[Any, Any]]
    unit: str = "value"


# --- what to dump -----------------------------------------------------------------------


def _is_plain_int(t: Type | None) -> bool:
    """An integer that reads as a number: not a bool, not a ``char`` (arrays of plain
    ``char`` decode to strings, see ``decode._is_char``)."""
    s = strip(t)
    return isinstance(s, Int) and not s.is_bool and not (s.size == 1 and s.name == "char")


def _global_source(var: GlobalVar) -> Source | None:
    if var.section.startswith(".rodata") or not var.section.startswith((".data", ".bss")):
        return None
    if not var.name.isidentifier() or var.name.startswith(OWN_PREFIX):
        return None
    t = strip(var.type)
    if _is_plain_int(t) or is_log2_hist(t):
        return Source(var.name, "global", var.type, is_log2_hist(t), False, False, var.section)
    if isinstance(t, Array):
        element = strip(t.element)
        if _is_plain_int(element) or is_log2_hist(element):
            hist = is_log2_hist(element)
            return Source(var.name, "global", var.type, hist, True, True, var.section)
    return None


def dump_sources(obj: BpfObject) -> list[Source]:
    """Every map and global of ``obj`` that the dump prints, maps first, each in the
    object's order. Needs only the opened object (types, not the kernel)."""
    out: list[Source] = []
    for m in obj.maps.values():
        if m.type not in ITERABLE_MAP_TYPES or m.name == DROPS_MAP:
            continue
        if m.name.startswith(LIBBPF_USDT_PREFIX):  # <bpf/usdt.bpf.h>'s, filled by libbpf
            continue
        sparse = m.type in ARRAY_MAP_TYPES
        out.append(Source(m.name, m.type, m.value_type, is_log2_hist(m.value_type), sparse, True))
    for var in obj.globals.info():
        source = _global_source(var)
        if source is not None:
            out.append(source)
    return out


def _flag(globals: Mapping[str, Any], name: str) -> bool:
    return name in globals and bool(globals[name])


def hist_unit(name: str, globals: Mapping[str, Any]) -> str:
    """The unit of histogram ``name`` of an object with these ``globals`` (rules in the
    module docstring)."""
    if _flag(globals, "targ_ms"):
        return "msecs"
    if _flag(globals, "targ_ns"):
        return "nsecs"
    lower = name.lower()
    for suffixes, unit in (
        (("_ns", "_nsecs"), "nsecs"),
        (("_ms", "_msecs"), "msecs"),
        (("_us", "_usecs"), "usecs"),
    ):
        if lower.endswith(suffixes):
            return unit
    if "lat" in lower:
        return "usecs"
    if "targ_ms" in globals:
        return "usecs"
    return "value"


# --- values -----------------------------------------------------------------------------


class _Unsummable:
    """Marks a per-CPU column that cannot be summed."""


_UNSUMMABLE = _Unsummable()


def _fields(value: Any) -> tuple[str, ...] | None:
    """The C member names of a decoded struct (an event of ``bpfloom.decode``)."""
    names = getattr(type(value), "_c_fields", None)
    return names if isinstance(names, tuple) else None


def _sum(values: Sequence[Any]) -> Any:
    if all(type(v) is int for v in values):
        return sum(values)
    first = values[0]
    if all(isinstance(v, list) and len(v) == len(first) for v in values):
        columns = [_sum(column) for column in zip(*values, strict=True)]
        return _UNSUMMABLE if any(c is _UNSUMMABLE for c in columns) else columns
    if _fields(first) is not None and all(type(v) is type(first) for v in values):
        members = [_sum(column) for column in zip(*values, strict=True)]
        if any(m is _UNSUMMABLE for m in members):
            return _UNSUMMABLE
        return type(first)(members)
    return _UNSUMMABLE


def fold_percpu(values: Sequence[Any]) -> Any:
    """One value for a per-CPU map's list of per-CPU values.

    Integers are summed; arrays and structs of integers are summed element- and
    member-wise; a struct with other members (a ``comm``) has its integer members
    summed and the others as per-CPU lists; anything else is the per-CPU list itself.
    """
    if not values:
        return list(values)
    total = _sum(values)
    if total is not _UNSUMMABLE:
        return total
    first = values[0]
    if _fields(first) is not None and all(type(v) is type(first) for v in values):
        members = []
        for column in zip(*values, strict=True):
            summed = _sum(column)
            members.append(list(column) if summed is _UNSUMMABLE else summed)
        return type(first)(members)
    return list(values)


def is_zero(value: Any) -> bool:
    """Whether a decoded value is all zero (0, False, "", zero bytes, or made of those).

    Enumerators decode to their names and count as non-zero.
    """
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str):
        return value == ""
    if isinstance(value, (bytes, bytearray)):
        return not any(value)
    if isinstance(value, (list, tuple)):
        return all(is_zero(v) for v in value)
    return value is None


def _order(value: Any) -> tuple[Any, ...]:
    """A sort key that orders any decoded values (numbers, strings, structs) without
    comparing unlike types."""
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, (bytes, bytearray)):
        return (2, bytes(value))
    if isinstance(value, (list, tuple)):
        return (3, tuple(_order(v) for v in value))
    return (4, repr(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sort_entries(entries: list[tuple[Any, Any]], hist: bool) -> list[tuple[Any, Any]]:
    """Histograms by key; others by value descending when every value is a number
    (ties by key), else by key."""
    if not hist and entries and all(_is_number(v) for _, v in entries):
        return sorted(entries, key=lambda kv: (-kv[1], _order(kv[0])))
    return sorted(entries, key=lambda kv: _order(kv[0]))


# --- reading ----------------------------------------------------------------------------


class MapDump:
    """Reads and renders the maps and globals of a loaded ``BpfObject``.

    ``names`` restricts the dump to those maps and globals, in that order (an unknown
    name raises ``MapError`` listing the valid ones; checked at construction, so before
    ``load()``). ``max_rows`` bounds the rows (or histograms) of each map in the text
    output; 0 means no bound. ``read()`` and the renderers need the object loaded.
    Not thread-safe (map iteration is not).
    """

    def __init__(
        self,
        obj: BpfObject,
        names: Iterable[str] | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self._obj = obj
        self.max_rows = max_rows
        available = dump_sources(obj)
        if names is None:
            self.sources = available
            return
        by_name = {s.name: s for s in available}
        self.sources = []
        for name in dict.fromkeys(names):
            if name not in by_name:
                valid = ", ".join(escape_control(s.name) for s in available) or "none"
                raise MapError(
                    f"no map or global {name!r} to print in {obj.path}; maps and globals "
                    f"that can be printed: {valid}"
                )
            self.sources.append(by_name[name])

    def read(self) -> list[Contents]:
        """What every source holds now, in display order."""
        return [self._read(source) for source in self.sources]

    def _read(self, source: Source) -> Contents:
        unit = hist_unit(source.name, self._obj.globals) if source.hist else "value"
        entries: list[tuple[Any, Any]]
        if source.is_global:
            value = self._obj.globals[source.name]
            if not source.keyed:
                return Contents(source, [(None, value)], unit)
            entries = list(enumerate(value))
        else:
            entries = list(self._obj.maps[source.name].items())
            if source.percpu:
                entries = [(k, fold_percpu(v)) for k, v in entries]
        if source.sparse:
            entries = [(k, v) for k, v in entries if not is_zero(v)]
        return Contents(source, sort_entries(entries, source.hist), unit)

    def text_lines(self) -> list[str]:
        return render_text(self.read(), self.max_rows)

    def json_rows(self) -> list[dict[str, Any]]:
        return render_json(self.read())


# --- text -------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A decoded value as table text: strings escaped, structs as ``{a=1 b=x}``,
    arrays as ``[1, 2]``, bytes in hex."""
    if isinstance(value, str):
        return escape_control(value)
    names = _fields(value)
    if names is not None:
        return "{" + _pairs(names, value, "=", " ") + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return escape_control(str(value))


def format_key(key: Any) -> str:
    """A map key as text: a struct as its fields (``pid=12 comm=bash``), else the value."""
    names = _fields(key)
    if names is not None:
        return _pairs(names, key, "=", " ")
    return format_value(key)


def _pairs(names: Sequence[str], values: Iterable[Any], sep: str, join: str) -> str:
    """``name=value`` pairs; an empty string shows as ``""`` (``comm=""``)."""
    return join.join(
        f"{escape_control(n)}{sep}{format_value(v) or EMPTY_STRING}"
        for n, v in zip(names, values, strict=True)
    )


def _more(count: int) -> list[str]:
    if count <= 0:
        return []
    return [f"... {count} more {'entry' if count == 1 else 'entries'}"]


def _cut(entries: list[tuple[Any, Any]], max_rows: int) -> tuple[list[tuple[Any, Any]], int]:
    if max_rows <= 0 or len(entries) <= max_rows:
        return entries, 0
    return entries[:max_rows], len(entries) - max_rows


def _hist_lines(contents: Contents, max_rows: int) -> list[str]:
    source = contents.source
    shown, more = _cut(contents.entries, max_rows)
    lines: list[str] = []
    for key, value in shown:
        label = escape_control(source.name)
        if key is not None:
            label += f" key = {format_key(key)}"
        names = _fields(value) or ()
        members = dict(zip(names, value, strict=True))
        slots = members.pop("slots", [])
        others = _pairs(list(members), members.values(), " = ", ", ")
        text = format_log2_hist(slots, contents.unit)
        if text:
            lines += ["", label, *text.split("\n"), *([others] if others else [])]
        else:
            lines += ["", f"{label}: all slots are zero" + (f"; {others}" if others else "")]
    return lines + _more(more)


def _columns(items: Sequence[Any], plain: str) -> tuple[list[str], list[list[Any]]]:
    """Column names and per-item cell values: a struct's fields, else one column."""
    names = _fields(items[0]) if items else None
    if names is not None and all(type(i) is type(items[0]) for i in items):
        return [n.upper() for n in names], [list(i) for i in items]
    return [plain], [[i] for i in items]


def _table_lines(contents: Contents, max_rows: int) -> list[str]:
    shown, more = _cut(contents.entries, max_rows)
    key_names, key_cells = _columns([k for k, _ in shown], "KEY")
    value_names, value_cells = _columns([v for _, v in shown], "VALUE")
    header = [escape_control(n) for n in key_names + value_names]
    values = [k + v for k, v in zip(key_cells, value_cells, strict=True)]
    cells = [[format_value(v) for v in row] for row in values]
    numeric = [all(_is_number(row[i]) for row in values) for i in range(len(header))]
    widths = [max(len(x) for x in [h, *(row[i] for row in cells)]) for i, h in enumerate(header)]

    def line(texts: Sequence[str]) -> str:
        parts = [
            t.rjust(w) if right else t.ljust(w)
            for t, w, right in zip(texts, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return ["", contents.source.title, line(header), *map(line, cells), *_more(more)]


def render_text(contents: Iterable[Contents], max_rows: int = DEFAULT_MAX_ROWS) -> list[str]:
    """The dump as text lines (see the module docstring for the layout)."""
    lines: list[str] = []
    empty: list[str] = []
    for c in contents:
        source = c.source
        if not c.entries:
            empty.append(escape_control(source.name))
        elif source.hist:
            lines += _hist_lines(c, max_rows)
        elif not source.keyed:
            lines += ["", f"{escape_control(source.name)} = {format_value(c.entries[0][1])}"]
        else:
            lines += _table_lines(c, max_rows)
    if empty:
        lines += ["", "empty maps: " + ", ".join(empty)]
    return lines


# --- JSON -------------------------------------------------------------------------------


def render_json(contents: Iterable[Contents]) -> list[dict[str, Any]]:
    """The dump as JSON-ready rows, one per entry (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for c in contents:
        source = c.source
        base: dict[str, Any] = {"global" if source.is_global else "map": source.name}
        if not c.entries:
            rows.append({**base, "empty": True})
            continue
        for key, value in c.entries:
            row = dict(base)
            if key is not None:
                row["key"] = to_jsonable(key)
            if source.hist:
                row["unit"] = c.unit
                fields = to_jsonable(value)
                row.update(fields if isinstance(fields, dict) else {"value": fields})
            else:
                row["value"] = to_jsonable(value)
            rows.append(row)
    return rows
