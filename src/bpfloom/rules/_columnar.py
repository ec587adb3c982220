"""Column-wise evaluation of rule conditions over a batch of events of one kind.

``RuleSet.evaluate`` runs each rule's closures on one event dict at a time; this module
runs a rule's condition tree once per *batch*, on columns: numpy arrays of numbers,
and C strings kept as the rows of a byte matrix (``CStrings``), straight from the
records the BPF programs wrote. A comparison becomes one numpy operation over the
batch (``==`` and ``in`` as a binary search of the values' first bytes in the literals,
``startswith``/``endswith``/``contains`` on the bytes, ``<``... on numbers), ``and``/
``or``/``not`` become boolean arrays, and only the rows a rule matches ever become
Python records (``RuleSet.evaluate_table`` does the rest: thresholds, rate limits,
alerts, in row order).

Exactness. The result for every row is what the row-wise matcher would answer on the
row's record. Byte-level tests stand for the tests on decoded strings only where they
are provably the same (``literal_bytes``); everything else is answered per row in
Python by the row-wise matcher itself, on the decoded value of that one field: rows a
table gives as Python values (``StrColumn.special``: a path cut and marked ``...``, a
``norm_path`` that needs lexical work), fields a table has no vector form for
(``PyColumn``: argv lists, ``age``, cgroup paths), literals whose bytes are ambiguous
(a surrogate-escaped byte inside ``startswith``, U+FFFD under the ``replace`` policy),
``glob`` patterns that are not a plain prefix, suffix or substring (their literal
prefix and suffix narrow the rows first), and numbers that numpy would round (an int
literal beyond 2**53 against a float field).

Evaluation order. Conditions are pure and, on typed columns, cannot raise, so ``and``
and ``or`` items run cheapest first, each only on the rows still undecided
(``Evaluator.eval``'s ``need`` mask), so per-row work is spent on few rows. A rule the
columns cannot answer (``Unsupported``, or a condition deeper than ``SHALLOW``, which the
row-wise engine runs as a branching program) is matched row-wise on the batch's records.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Sequence
from operator import methodcaller
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from ._expr import SHALLOW, And, Compare, Compiler, InSet, Matcher, Node, Not, Or, Value

Mask = npt.NDArray[np.bool_]
Rows = npt.NDArray[np.intp]

_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_GLOB_SPECIAL = re.compile(r"[*?\[]")
_HEAD = 64  # C strings: where lengths() looks for the NUL first
_FEW_ROWS = 8  # up to this many rows, decode() reads each row's bytes on its own


def nonzero(values: npt.NDArray[Any]) -> Rows:
    """The positions of the non-zero items of a 1-D array: ``np.flatnonzero`` without
    its Python wrappers, which cost more than the work on a batch's rows."""
    rows: Rows = values.nonzero()[0]
    return rows


def any_true(mask: Mask) -> bool:
    """``mask.any()`` without its Python wrappers."""
    return bool(np.count_nonzero(mask))


@functools.lru_cache(maxsize=256)
def _fitting_keys(literals: tuple[bytes, ...], width: int) -> tuple[npt.NDArray[Any], int] | None:
    """Of ``literals``, those a C string of ``width`` bytes can hold, as a sorted
    ``S<k>`` array and ``k``: one more than the longest of them, at most ``width``
    (None: none fits)."""
    fitting = sorted({b for b in literals if len(b) <= width})
    if not fitting:
        return None
    k = min(max(map(len, fitting)) + 1, width)
    return np.array(fitting, dtype=f"S{max(k, 1)}"), k


def _zeroed_from_nul(head: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A contiguous copy of ``head`` (rows of bytes) with each row's bytes from its
    first NUL on set to 0. (Numpy's accumulate along rows is several times slower on
    short rows than this argmax.)"""
    return nul_split(head)[0]


def _first_nul(head: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Where each row's first NUL is (the row's width if it has none)."""
    if head.shape[1] == 0:
        return np.zeros(head.shape[0], dtype=np.intp)
    nul = head == 0
    first: npt.NDArray[np.intp] = nul.argmax(axis=1)  # 0 for a row without NUL too
    first[(first == 0) & ~nul[:, 0]] = head.shape[1]
    return first


def nul_split(
    head: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp]]:
    """``_zeroed_from_nul(head)`` and where each row's first NUL is (the row's width
    if it has none)."""
    out = np.array(head, dtype=np.uint8, order="C")  # a copy: records stay as they are
    k = out.shape[1]
    first = _first_nul(out)
    if k <= _KEEP_TABLE_MAX:
        # A row of a precomputed table per row: several times faster on short rows
        # than comparing a broadcast range with ``first``.
        np.bitwise_and(out, _keep_table(k).take(first, axis=0), out=out)
    else:
        out *= np.arange(k) < first[:, None]
    return out, first


_KEEP_TABLE_MAX = 256


@functools.lru_cache(maxsize=32)
def _keep_table(k: int) -> npt.NDArray[np.uint8]:
    """Row ``j`` (0..k): 0xFF in the first ``j`` of ``k`` columns, 0 after."""
    table: npt.NDArray[np.uint8] = np.where(np.arange(k) < np.arange(k + 1)[:, None], 0xFF, 0)
    return table.astype(np.uint8)


class Unsupported(Exception):
    """The columns cannot answer a condition: the rule is matched row-wise instead."""


class Table(Protocol):
    """A batch of events of one kind, as columns (``bpfloom.tools.detect_columns``).

    ``column(field)`` is the field's values for all ``n`` rows (None: no row has the
    field); ``times()`` the event time per row as ``RuleSet`` takes it (the ``time``
    field, a float); ``records(rows)`` the records of those rows, exactly as the
    row-wise path would have built them (what alerts carry and outputs render).
    """

    kind: str
    n: int
    strings: str  # how C strings were decoded: "surrogateescape" or "replace"

    def column(self, field: str) -> Column | None: ...

    def times(self) -> npt.NDArray[np.float64]: ...

    def records(self, rows: Sequence[int]) -> list[dict[str, Any]]: ...


# Literals as bytes.


def literal_bytes(text: str, strings: str, *, whole: bool) -> bytes | Literal[False] | None:
    """The bytes of a literal for byte-level tests on C strings decoded with policy
    ``strings`` ("surrogateescape" or "replace").

    Returns ``bytes`` when a test on the bytes is the same as the test on decoded text,
    ``False`` when no decoded value can pass (the literal holds a NUL, which C strings
    end at, or a character decoding never yields), ``None`` when only the decoded text
    can tell (test per row). ``whole``: for equality (the literal against the whole
    value), else for prefix, suffix and substring tests.

    Why this is exact: the literal's UTF-8 bytes are complete characters, and UTF-8 is
    self-synchronizing, so a byte string starts with, ends with, contains or equals
    them exactly when its decoding does with the literal, whatever invalid bytes are
    around them (each decodes on its own, to U+DC80-U+DCFF or to U+FFFD). A lone
    surrogate in the literal is a byte that "surrogateescape" escaped: equality stays
    exact (the policy is a bijection) but a prefix test is not (b"\\xc3\\xa9" starts
    with b"\\xc3", "é" does not start with "\\udcc3").
    """
    if "\0" in text:
        return False
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        if strings != "surrogateescape":
            return False  # "replace" never yields a surrogate
        if not whole:
            return None
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False  # only U+DC80..U+DCFF stand for bytes
    if strings == "replace" and "\ufffd" in text:
        return None  # many byte strings decode to U+FFFD
    return data


class CStrings:
    """C strings as the rows of an ``(n, width)`` uint8 matrix (a view into records):
    each value is the row's bytes up to its first NUL (all of them if none), as the
    decoder reads ``char[width]``; bytes after the NUL are ignored, whatever they are.
    Lengths are computed once, when a test needs them."""

    def __init__(self, mat: npt.NDArray[np.uint8], strings: str) -> None:
        self.mat = mat
        self.strings = strings
        self.width = int(mat.shape[1])
        self._lengths: npt.NDArray[np.intp] | None = None

    @property
    def n(self) -> int:
        return int(self.mat.shape[0])

    def lengths(self) -> npt.NDArray[np.intp]:
        if self._lengths is None:
            if self.width == 0:
                self._lengths = np.zeros(self.n, dtype=np.intp)
            else:
                # Most values are short: look in the first bytes first.
                k = min(self.width, _HEAD)
                found = _first_nul(self.mat[:, :k])
                if k < self.width:
                    longer = nonzero(found == k)
                    if longer.size:
                        found[longer] = _first_nul(self.mat[longer])
                self._lengths = found
        return self._lengths

    def subset(self, rows: Rows) -> CStrings:
        sub = CStrings(self.mat[rows], self.strings)
        if self._lengths is not None:
            sub._lengths = self._lengths[rows]
        return sub

    def decode(self, rows: Rows | None = None) -> list[str]:
        """The decoded values of ``rows`` (all if None), as the decoder makes them."""
        if rows is not None and self._lengths is None:
            if len(rows) <= _FEW_ROWS:  # fewer numpy calls, row by row
                mat, errors = self.mat, self.strings
                return [
                    mat[r].tobytes().partition(b"\0")[0].decode("utf-8", errors)
                    for r in rows.tolist()
                ]
            return self.subset(rows).decode()  # lengths of those rows only
        mat = self.mat if rows is None else self.mat[rows]
        lengths = self.lengths() if rows is None else self.lengths()[rows]
        width = self.width
        raw = np.ascontiguousarray(mat).tobytes()
        errors = self.strings
        return [
            raw[i * width : i * width + m].decode("utf-8", errors)
            for i, m in enumerate(lengths.tolist())
        ]

    def equals_any(self, literals: Sequence[bytes]) -> Mask:
        """Rows whose value is one of ``literals`` (bytes without NUL).

        One binary search over the first ``k`` bytes of each value (``k``: one more
        than the longest literal that fits), zeroed from the first NUL on: a value
        longer than every literal keeps a byte at ``k - 1`` and equals none of them,
        any other is exactly its bytes, and numpy's ``S<k>`` comparison ignores the
        trailing NULs, which neither values nor literals hold. No lengths needed."""
        n = self.n
        found = _fitting_keys(tuple(literals), self.width)
        if found is None or n == 0:
            return np.zeros(n, dtype=np.bool_)
        keys, k = found
        if k == 0:  # every value is empty
            return np.full(n, keys[0] == b"", dtype=np.bool_)
        values = _zeroed_from_nul(self.mat[:, :k]).view(f"S{k}").ravel()
        at = keys.searchsorted(values)
        np.minimum(at, keys.size - 1, out=at)
        return keys[at] == values  # type: ignore[no-any-return]

    def startswith(self, b: bytes) -> Mask:
        m = len(b)
        if m == 0:
            return np.ones(self.n, dtype=np.bool_)
        if m > self.width:
            return np.zeros(self.n, dtype=np.bool_)
        # b has no NUL, so equal first m bytes also mean the value is that long.
        return (self.mat[:, :m] == np.frombuffer(b, dtype=np.uint8)).all(axis=1)  # type: ignore[no-any-return]

    def _at_least(self, m: int) -> tuple[Mask, npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """For a test of an ``m``-byte literal: the result so far (every row if ``m``
        is 0, else none), the rows at least ``m`` long (none if ``m`` is 0), lengths."""
        out = np.zeros(self.n, dtype=np.bool_)
        if m == 0:
            out[:] = True
            return out, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
        lengths = self.lengths()
        return out, nonzero(lengths >= m), lengths

    def endswith(self, b: bytes) -> Mask:
        m = len(b)
        out, rows, lengths = self._at_least(m)
        if rows.size:
            at = lengths[rows][:, None] - m + np.arange(m)
            tail = self.mat[rows[:, None], at]
            out[rows] = (tail == np.frombuffer(b, dtype=np.uint8)).all(axis=1)
        return out

    def contains(self, b: bytes) -> Mask:
        m = len(b)
        out, rows, lengths = self._at_least(m)
        if rows.size:
            longest = int(lengths[rows].max())
            sub = self.mat[rows, :longest] * (np.arange(longest) < lengths[rows][:, None])
            # Zeroed past each value's end: numpy's S<k> ignores the trailing NULs.
            values = np.ascontiguousarray(sub, dtype=np.uint8).view(f"S{longest}").ravel()
            out[rows] = np.char.find(values, b) >= 0
        return out


class HeadStrings(CStrings):
    """The first ``k`` bytes of C strings, ready for tests: a contiguous matrix whose
    rows are zeroed from their first NUL on and padded with zeros to a multiple of 8
    bytes (at least one), with the lengths (``k`` where no NUL came within ``k``
    bytes). Exact for every value of at most ``k`` bytes; ``Heads`` tests the longer
    ones on their whole bytes."""

    def __init__(self, mat: npt.NDArray[np.uint8], lengths: npt.NDArray[np.intp], strings: str):
        super().__init__(mat, strings)
        self._lengths = lengths

    def equals_any(self, literals: Sequence[bytes]) -> Mask:
        """As ``CStrings.equals_any`` for values of at most ``k`` bytes: one binary
        search of the rows as fixed-width ``S`` strings (the row's width), whose zero
        bytes after the value numpy ignores, as it does the literals' padding."""
        keys = _head_keys(tuple(literals), self.width)
        if keys is None:
            return np.zeros(self.n, dtype=np.bool_)
        values = self.mat.view(f"S{self.width}").ravel()
        at = keys.searchsorted(values)
        np.minimum(at, keys.size - 1, out=at)
        return keys[at] == values  # type: ignore[no-any-return]

    def startswith(self, b: bytes) -> Mask:
        """As ``CStrings.startswith``, eight bytes at a time: the rows as little-endian
        64-bit words, each compared under a mask of the prefix's bytes in it. A value
        shorter than the prefix has zeros where the prefix (no NUL in it) has not."""
        if len(b) > self.width:
            return np.zeros(self.n, dtype=np.bool_)
        words = self.mat.view("<u8")
        out: Mask | None = None
        for i, (value, mask) in enumerate(_prefix_words(b)):
            column = words[:, i]
            hit = (column if mask == _ALL_BYTES else column & mask) == value
            out = hit if out is None else out & hit
        return np.ones(self.n, dtype=np.bool_) if out is None else out


_ALL_BYTES = np.uint64((1 << 64) - 1)


@functools.lru_cache(maxsize=256)
def _prefix_words(b: bytes) -> tuple[tuple[np.uint64, np.uint64], ...]:
    """``b`` cut in 8-byte pieces, each as (its value, the mask of its bytes) in a
    little-endian 64-bit word."""
    out = []
    for i in range(0, len(b), 8):
        piece = b[i : i + 8]
        value = int.from_bytes(piece.ljust(8, b"\0"), "little")
        mask = int.from_bytes(b"\xff" * len(piece) + b"\0" * (8 - len(piece)), "little")
        out.append((np.uint64(value), np.uint64(mask)))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _head_keys(literals: tuple[bytes, ...], width: int) -> npt.NDArray[Any] | None:
    """Of ``literals``, those shorter than a head's ``width`` (the others equal no
    head), sorted, as ``S<width>`` (None: none)."""
    fitting = sorted({b for b in literals if len(b) < width})
    return np.array(fitting, dtype=f"S{width}") if fitting else None


class Heads:
    """C strings of a batch as tests take them: every row's first ``_HEAD`` bytes
    (``head``), and the rows that may be longer (``long``) with their whole bytes
    (``full``, in the order of ``long``). Most values are short, so most tests run once
    on the small head matrix."""

    def __init__(self, head: HeadStrings, long: Rows, full: CStrings | None) -> None:
        self.head = head
        self.long = long
        self.full = full

    @classmethod
    def of(cls, cs: CStrings, other: CStrings | None = None, mask: Mask | None = None) -> Heads:
        """The heads of ``cs``'s strings; with ``other`` and ``mask``, of ``cs``'s
        where ``mask`` holds and ``other``'s elsewhere (two fields of one width), made
        in one pass."""
        n, width = cs.n, cs.width
        k = min(width, _HEAD)
        padded = (k + 8) // 8 * 8  # at least one NUL, whole 64-bit words
        buf = np.empty((n, padded), dtype=np.uint8)
        if other is None or mask is None or np.count_nonzero(mask) == mask.size:
            buf[:, :k] = cs.mat[:, :k]
            other = mask = None
        elif not any_true(mask):
            buf[:, :k] = other.mat[:, :k]
            cs, other, mask = other, None, None
        else:
            if other.width != width:
                raise ValueError("Heads.of: two C string fields of different widths")
            # The field of most rows copied whole (a strided copy), the others' rows
            # over it (a gather: costlier per row).
            most, rest, few = (
                (cs, other, ~mask) if 2 * np.count_nonzero(mask) >= n else (other, cs, mask)
            )
            buf[:, :k] = most.mat[:, :k]
            rows = nonzero(few)
            buf[rows, :k] = rest.mat[rows, :k]
        buf[:, k:] = 0  # every row has a NUL: argmax finds the first one
        first: npt.NDArray[np.intp] = (buf == 0).argmax(axis=1)
        np.bitwise_and(buf, _keep_table(padded).take(first, axis=0), out=buf)
        long = nonzero(first == k) if k < width else np.zeros(0, dtype=np.intp)
        full = None
        if long.size:
            if other is None or mask is None:
                full = cs.subset(long)
            else:
                whole = np.where(mask[long][:, None], cs.mat[long], other.mat[long])
                full = CStrings(whole, cs.strings)
        return cls(HeadStrings(buf, first, cs.strings), long, full)

    def test(self, op: Callable[[CStrings], Mask]) -> Mask:
        """``op`` (a byte test of ``CStrings``) on every row."""
        out = op(self.head)
        if self.full is not None:
            out[self.long] = op(self.full)
        return out

    def decode(self, rows: Rows) -> list[str]:
        """The decoded values of ``rows``."""
        out = self.head.decode(rows)
        if self.full is not None:
            at = {r: i for i, r in enumerate(self.long.tolist())}
            for i, r in enumerate(rows.tolist()):
                j = at.get(r)
                if j is not None:
                    out[i] = self.full.decode(np.array([j], dtype=np.intp))[0]
        return out


class Column:
    """One field of a table; ``test`` answers a comparison for the rows in ``need``
    (all if None) and leaves the others False."""

    n: int

    def test(self, node: Compare | InSet, plan: Plan, need: Mask | None) -> Mask:
        raise NotImplementedError

    def values(self, rows: Rows) -> list[Any]:
        """The Python values of ``rows``, as the records hold them."""
        raise NotImplementedError

    cost = 1


def _rows_of(need: Mask | None, n: int) -> Rows:
    return np.arange(n, dtype=np.intp) if need is None else nonzero(need)


def _per_row(test: Matcher, field: str, values: Sequence[Any], rows: Rows, n: int) -> Mask:
    """The row-wise matcher on each value, as if on a record holding only that field."""
    out = np.zeros(n, dtype=np.bool_)
    if rows.size:
        out[rows] = [bool(test({field: v})) for v in values]
    return out


class ConstColumn(Column):
    """The same value on every row (the ``event`` kind of a table)."""

    cost = 0

    def __init__(self, value: Any, n: int) -> None:
        self.value = value
        self.n = n

    def test(self, node: Compare | InSet, plan: Plan, need: Mask | None) -> Mask:
        return np.full(self.n, plan.holds(node, self.value), dtype=np.bool_)

    def values(self, rows: Rows) -> list[Any]:
        return [self.value] * len(rows)


class PyColumn(Column):
    """Python values (None: the field is missing on that row), fetched only for the rows
    a test needs (``fetch(rows)``) and tested per row with the row-wise matcher: exact
    for any value, and the slow path."""

    cost = 4

    def __init__(self, n: int, fetch: Callable[[Rows], list[Any]]) -> None:
        self.n = n
        self.fetch = fetch

    @classmethod
    def of(cls, items: Sequence[Any]) -> PyColumn:
        """A column of values known up front."""
        return cls(len(items), lambda rows: [items[i] for i in rows.tolist()])

    def test(self, node: Compare | InSet, plan: Plan, need: Mask | None) -> Mask:
        rows = _rows_of(need, self.n)
        return _per_row(plan.matcher(node), node.field, self.fetch(rows), rows, self.n)

    def values(self, rows: Rows) -> list[Any]:
        return self.fetch(rows)


class NumColumn(Column):
    """Ints or floats of every row as one numpy array (int64, uint64 or float64)."""

    def __init__(self, array: npt.NDArray[Any]) -> None:
        self.array = array
        self.n = int(array.shape[0])

    def values(self, rows: Rows) -> list[Any]:
        return self.array[rows].tolist()  # type: ignore[no-any-return]

    def _slow(self, node: Compare | InSet, plan: Plan, need: Mask | None) -> Mask:
        rows = _rows_of(need, self.n)
        return _per_row(plan.matcher(node), node.field, self.values(rows), rows, self.n)

    def test(self, node: Compare | InSet, plan: Plan, need: Mask | None) -> Mask:
        array = self.array
        if isinstance(node, InSet):
            wanted = [self._exact(v) for v in plan.members(node)]
            if any(w is None for w in wanted):
                return self._slow(node, plan, need)
            fit = [w for w in wanted if w is not _OUT_OF_RANGE]
            return np.isin(array, np.array(fit, dtype=array.dtype))
        v = self._exact(node.value)
        if v is None:
            return self._slow(node, plan, need)
        if v is _OUT_OF_RANGE:
            # An int literal beyond the column's integer type: every value is below
            # it, or every value above it.
            above = isinstance(node.value, int) and node.value > 0
            hit = {"==": False, "!=": True, "<": above, "<=": above}.get(node.op, not above)
            return np.full(self.n, hit, dtype=np.bool_)
        return _ORDER[node.op](array, v)  # type: ignore[no-any-return]

    def _exact(self, value: Value) -> Any:
        """``value`` as a numpy scalar that compares with the column exactly as Python
        compares it with each value; ``_OUT_OF_RANGE`` for an int beyond an integer
        column's range; None when numpy would round (test per row)."""
        kind = self.array.dtype.kind
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if kind in "iu":
            if not isinstance(value, int):
                return None  # int64 against float rounds in numpy, not in Python
            low, high = _int_range(self.array.dtype)
            if value < low or value > high:
                return _OUT_OF_RANGE
            return self.array.dtype.type(value)
        if isinstance(value, int):
            try:
                as_float = float(value)
            except OverflowError:
                return None
            return as_float if as_float == value else None
        return value


_OUT_OF_RANGE = object()


@functools.lru_cache(maxsize=16)
def _int_range(dtype: np.dtype[Any]) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


class StrColumn(Column):
    """A str field: C strings for every row but the ``special`` ones, given as Python
    values (a path cut and marked ``...``, a ``norm_path`` computed per row). Given as
    ``CStrings``, the heads are made when a test first needs every row; a test of a
    few rows (``sparse``) reads only theirs."""

    cost = 2

    def __init__(
        self, n: int, strings: Heads | CStrings, special: dict[int, str] | None = None
    ) -> None:
        self.n = n
        self._heads = strings if isinstance(strings, Heads) else None
        self._source = strings if isinstance(strings, CStrings) else None
        self.special = special or {}

    @property
    def heads(self) -> Heads:
        if self._heads is None:
            assert self._source is not None
            self._heads = Heads.of(self._source)
        return self._heads

    def sparse(self, need: Mask | None) -> bool:
        """Whether a test on ``need`` reads only those rows (few, heads not made)."""
        if self._heads is not None or need is None:
            return False
        return int(np.count_nonzero(need)) * 4 < self.n

    def values(self, rows: Rows) -> list[Any]:
        if self._source is not None and self._heads is None:
            out: list[Any] = self._source.decode(rows)
        else:
            out = self.heads.decode(rows)
        if self.special:
            for i, r in enumerate(rows.tolist()):
                if r in self.special:
                    out[i] = self.special[r]
        return out

    def _bytes_test(self, need: Mask | None, op: Callable[[CStrings], Mask]) -> Mask:
        """``op`` on every row's bytes (cheap: the heads), then only ``need`` kept; the
        special rows are the caller's (``_special_test``)."""
        if self._source is not None and self.sparse(need):
            assert need is not None
            out = np.zeros(self.n, dtype=np.bool_)
            rows = nonzero(need)
            if rows.size:
                out[rows] = Heads.of(self._source.subset(rows)).test(op)
            return out
        out = self.heads.test(op)
        if need is not None:
            out &= need
        return out

    def _special_test(
        self, node: Compare | InSet, plan: Plan, need: Mask | None, out: Mask
    ) -> None:
        if not self.special:
            return
        test, field = plan.matcher(node), node.field
        for r, v in self.special.items():
            if need is None or need[r]:
                out[r] = bool(test({field: v}))

    def _decoded_test(self, node: Compare | InSet, plan: Plan, need: Mask | None) -> Mask:
        """Per row, on decoded values (for what bytes cannot answer)."""
        rows = _rows_of(need, self.n)
        return _per_row(plan.matcher(node), node.field, self.values(rows), rows, self.n)

    def test(self, node: Compare | InSet, plan: Plan, need: Mask | None) -> Mask:
        how = plan.str_test(node)
        if how.kind == "decoded":
            return self._decoded_test(node, plan, need)
        if how.kind == "narrow":
            candidates = np.ones(self.n, dtype=np.bool_) if need is None else need.copy()
            for op in how.ops:
                narrowed = self._bytes_test(candidates, op)
                for r in self.special:  # special rows are decided below
                    narrowed[r] = candidates[r]
                candidates = narrowed
            return self._decoded_test(node, plan, candidates)
        if how.kind == "none":
            out = np.zeros(self.n, dtype=np.bool_)
        else:
            out = self._bytes_test(need, how.ops[0])
            if how.negate:
                out = ~out if need is None else ~out & need
        self._special_test(node, plan, need, out)
        return out


class StrTest(NamedTuple):
    """How a str comparison runs on C strings (``Plan.str_test``): ``kind`` "bytes"
    (``ops[0]``, a byte test, answers it; ``negate``: its opposite), "none" (no value
    passes), "decoded" (only decoded values tell: per row) or "narrow" (``ops`` narrow
    the rows, then decoded values tell). Special rows are always tested per row."""

    kind: Literal["bytes", "none", "decoded", "narrow"]
    ops: tuple[Callable[[CStrings], Mask], ...] = ()
    negate: bool = False


def _str_test(node: Compare | InSet, plan: Plan) -> StrTest:
    """``Plan.str_test`` worked out."""
    op = node.op if isinstance(node, Compare) else "in"
    strings = plan.strings
    if op in ("==", "!=", "in"):
        wanted = plan.whole_bytes(node)
        if wanted is None:
            return StrTest("decoded")
        return StrTest("bytes", (methodcaller("equals_any", wanted),), op == "!=")
    assert isinstance(node, Compare)
    text = str(node.value)
    if op != "glob":
        b = literal_bytes(text, strings, whole=False)
        if b is None:
            return StrTest("decoded")
        return StrTest("none") if b is False else StrTest("bytes", (methodcaller(op, b),))
    stripped = text.strip("*")
    lead, trail = text.startswith("*"), text.endswith("*")
    if not _GLOB_SPECIAL.search(stripped):
        # A plain pattern: a literal, a prefix, a suffix or a substring ('*' runs
        # match anything, '/' included, as fnmatch's).
        plain = literal_bytes(stripped, strings, whole=not (lead or trail))
        if plain is False:
            return StrTest("none")
        if plain is not None:
            assert isinstance(plain, bytes)
            if lead and trail:
                return StrTest("bytes", (methodcaller("contains", plain),))
            if lead:
                return StrTest("bytes", (methodcaller("endswith", plain),))
            if trail:
                return StrTest("bytes", (methodcaller("startswith", plain),))
            return StrTest("bytes", (methodcaller("equals_any", [plain]),))
    # Any other pattern: its literal prefix and suffix narrow the rows, then the
    # row-wise matcher decides on the decoded values of those that are left.
    first = _GLOB_SPECIAL.search(text)
    prefix = text[: first.start()] if first else text
    suffix = re.split(r"[*?\]]", text)[-1]
    ops: list[Callable[[CStrings], Mask]] = []
    for part, method in ((prefix, "startswith"), (suffix, "endswith")):
        b = literal_bytes(part, strings, whole=False)
        if isinstance(b, bytes) and b:
            ops.append(methodcaller(method, b))
    return StrTest("narrow", tuple(ops))


class Plan:
    """What evaluating the rules of one set needs besides the table: the set's compiler
    (lists, row-wise matchers) and the string policy of the decoded values."""

    def __init__(self, compiler: Compiler, strings: str) -> None:
        self.compiler = compiler
        self.strings = strings
        self._members: dict[int, tuple[Node, list[Value]]] = {}
        self._costs: dict[int, tuple[Node, int]] = {}
        self._bytes: dict[int, tuple[Node, list[bytes] | None]] = {}
        self._str_tests: dict[int, tuple[Node, StrTest]] = {}
        self._ordered: dict[int, tuple[Node, list[Node]]] = {}
        self._holds: dict[tuple[int, Any], tuple[Node, bool]] = {}

    def matcher(self, node: Compare | InSet) -> Matcher:
        return self.compiler.test(node)

    def members(self, node: InSet) -> list[Value]:
        """Every value ``node`` tests for: written ones and its lists', typed."""

        def make() -> list[Value]:
            values: set[Value] = set(node.values)
            for name in node.lists:
                values |= self.compiler.members(name, node.field)
            return list(values)

        return _kept(self._members, node, make)

    def whole_bytes(self, node: Compare | InSet) -> list[bytes] | None:
        """The values an ``==``, ``!=`` or ``in`` test compares with, as the bytes of
        whole C strings (``literal_bytes``; those no C string can hold left out); None
        if one needs the decoded values."""

        def make() -> list[bytes] | None:
            texts = [str(node.value)] if isinstance(node, Compare) else self.members(node)
            encoded = [literal_bytes(str(t), self.strings, whole=True) for t in texts]
            if any(b is None for b in encoded):
                return None
            return [b for b in encoded if isinstance(b, bytes)]

        return _kept(self._bytes, node, make)

    def holds(self, node: Compare | InSet, value: Any) -> bool:
        """The row-wise matcher on a record whose ``node.field`` is ``value`` (kept
        per node and value: for a column of one value, like the event kind)."""
        key = (id(node), value)
        try:
            found = self._holds.get(key)
        except TypeError:  # an unhashable value: not kept
            return bool(self.matcher(node)({node.field: value}))
        if found is None:
            found = self._holds[key] = (node, bool(self.matcher(node)({node.field: value})))
        return found[1]

    def str_test(self, node: Compare | InSet) -> StrTest:
        """How ``node`` runs on C strings (worked out once per set and policy)."""
        return _kept(self._str_tests, node, lambda: _str_test(node, self))

    def ordered(self, node: And | Or) -> list[Node]:
        """``node``'s items, cheapest first (see ``cost``)."""
        return _kept(self._ordered, node, lambda: sorted(node.items, key=self.cost))

    def supported(self, node: Node) -> bool:
        """Whether the columns evaluate this tree (else its rule runs row-wise)."""
        return self.compiler.depth(node) <= SHALLOW

    def cost(self, node: Node) -> int:
        """A rough rank of how much a tree costs on columns, to run cheap tests first."""

        def make() -> int:
            if isinstance(node, Compare | InSet):
                ftype = self.compiler.fields.get(node.field)
                op = node.op if isinstance(node, Compare) else "in"
                if node.field == "event":
                    return 0
                if ftype is str:
                    return 3 if op in ("endswith", "contains", "glob") else 2
                return 5 if ftype is list else 1
            if isinstance(node, Not):
                return self.cost(node.item)
            return max(self.cost(item) for item in node.items)

        return _kept(self._costs, node, make)


_T = TypeVar("_T")


def _kept(table: dict[int, tuple[Node, _T]], node: Node, make: Callable[[], _T]) -> _T:
    """``make()`` once per node: kept by the node's id, with the node itself, so the
    id stays the node's while it is kept."""
    found = table.get(id(node))
    if found is None:
        found = table[id(node)] = (node, make())
    return found[1]


_MISSING = object()


class Evaluator:
    """Evaluates condition trees on one table; results of whole-batch tests are kept,
    so a macro shared by several rules is tested once per batch."""

    def __init__(self, table: Table, plan: Plan) -> None:
        self.table = table
        self.plan = plan
        self.n = table.n
        self._columns: dict[str, Column | None] = {}
        self._done: dict[int, tuple[Node, Mask]] = {}

    def column(self, field: str) -> Column | None:
        found = self._columns.get(field, _MISSING)
        if found is _MISSING:
            found = self._columns[field] = self.table.column(field)
        return found  # type: ignore[return-value]

    def matches(self, node: Node) -> Rows:
        """The rows the tree holds on, in order; ``Unsupported`` if the columns cannot
        say (the caller then matches the rule row-wise)."""
        if not self.plan.supported(node):
            raise Unsupported("condition nested deeper than the columns evaluate")
        return nonzero(self.eval(node, None))

    def eval(self, node: Node, need: Mask | None) -> Mask:
        """The tree's truth on the rows in ``need`` (every row if None); False elsewhere."""
        if isinstance(node, Compare | InSet):
            return self._leaf(node, need)
        if isinstance(node, Not):
            inner = self.eval(node.item, need)
            return ~inner if need is None else need & ~inner
        items = self.plan.ordered(node)
        if isinstance(node, And):
            # Each item is False outside the rows it is asked about, so the rows
            # still holding are just the last item's result (never changed in place:
            # it may be a kept whole-batch result).
            held = need
            for item in items:
                if held is not None and not any_true(held):
                    break
                held = self.eval(item, held)
            return np.ones(self.n, dtype=np.bool_) if held is None else held
        assert isinstance(node, Or)
        result: Mask | None = None
        pending = need
        for item in items:
            if pending is not None and not any_true(pending):
                break
            hit = self.eval(item, pending)
            result = hit if result is None else result | hit
            pending = ~hit if pending is None else pending & ~hit
        return np.zeros(self.n, dtype=np.bool_) if result is None else result

    def _leaf(self, node: Compare | InSet, need: Mask | None) -> Mask:
        found = self._done.get(id(node))
        if found is not None:
            return found[1] if need is None else found[1] & need
        column = self.column(node.field)
        if column is None:
            return np.zeros(self.n, dtype=np.bool_)  # a missing field never compares
        if column.cost >= 4 or (
            isinstance(column, StrColumn) and self._per_row(node, column, need)
        ):
            return column.test(node, self.plan, need)  # per row: only on rows needed
        result = column.test(node, self.plan, None)
        self._done[id(node)] = (node, result)
        return result if need is None else result & need

    def _per_row(self, node: Compare | InSet, column: StrColumn, need: Mask | None) -> bool:
        """Whether a str test does per-row work or reads only a few rows (then only
        needed rows are tested, and the result is not kept)."""
        return (
            bool(column.special)
            or (isinstance(node, Compare) and node.op == "glob")
            or column.sparse(need)
        )
