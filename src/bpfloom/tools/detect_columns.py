"""The events of ``bpfloom detect`` as columns: a batch of raw records of one tool seen
as the fields of its records, for ``RuleSet.evaluate_table`` (``bpfloom.rules._columnar``).

Each table reads the record bytes the BPF program wrote (a zero-copy view of the
batch) and gives every field of the tool's records (``OpenSnoop.record``,
``ExecSnoop.record``, ``ExitSnoop.record``) as a column with exactly the values those
methods compute: numbers as numpy arrays (``fd`` and ``err`` from ``ret``, ``time``
from ``ts_ns``), strings as C strings in the record bytes, ``norm_path`` from the
record bytes wherever ``tools/paths.py: norm_path`` returns one of its inputs unchanged
(the kernel's resolved path, or an absolute path with nothing to normalize) and per
row otherwise. A field with no column of its own here is read from the decoded records
(``PyColumn``), so a table answers every field its records have. Records themselves
are decoded only for the rows asked for (``records(rows)``): the rows that raise an
alert, normally.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..batch import Batch
from ..rules._columnar import (
    Column,
    ConstColumn,
    CStrings,
    Heads,
    Mask,
    NumColumn,
    PyColumn,
    StrColumn,
    any_true,
    nonzero,
    nul_split,
)
from .paths import FS_PATH_DIR, FS_PATH_FILE, norm_path
from .tool import Record, wall_times

RecordOf = Callable[[Any], Record | None]
_SLASH, _DOT = ord("/"), ord(".")
_INT64_MIN = np.iinfo(np.int64).min


class EventTable:
    """A batch of one tool's raw records as a ``bpfloom.rules._columnar.Table``.

    ``record`` is the tool's ``record`` method (one raw event to its record); subclasses
    give the columns they can read from the bytes (``_make``)."""

    kind = ""

    def __init__(self, batch: Batch, record: RecordOf) -> None:
        self.batch = batch
        self.n = len(batch)
        self.strings = batch.decoder.strings
        self._record = record
        self._rows = batch.records
        self._fields: Mapping[str, Any] = batch.decoder.dtype.fields or {}
        self._columns: dict[str, Column | None] = {}
        self._decoded: list[Record] | None = None

    # Raw fields.

    def number(self, name: str) -> npt.NDArray[Any]:
        """Member ``name`` of every record as a numpy array (a view)."""
        dtype, offset = self._fields[name][:2]
        view: npt.NDArray[Any] = self._rows[:, offset : offset + dtype.itemsize].view(dtype)
        return view[:, 0]

    def chars(self, name: str) -> CStrings:
        """``char[]`` member ``name`` of every record, as C strings."""
        dtype, offset = self._fields[name][:2]
        return CStrings(self._rows[:, offset : offset + dtype.itemsize], self.strings)

    # The Table protocol.

    def column(self, field: str) -> Column | None:
        if field not in self._columns:
            made = self._make(field)
            if made is None:
                made = PyColumn(self.n, lambda rows: self._from_records(field, rows))
            self._columns[field] = made
        return self._columns[field]

    def times(self) -> npt.NDArray[np.float64]:
        return wall_times(self.number("ts_ns"))

    def records(self, rows: Sequence[int]) -> list[Record]:
        """The records of ``rows``, made by the tool's ``record`` from decoded events."""
        if self._decoded is not None:
            return [self._decoded[r] for r in rows]
        if isinstance(rows, range) and len(rows) == self.n:
            self._decoded = self._make_records(self.batch.records)
            return list(self._decoded)
        picked = self.batch.records[np.asarray(rows, dtype=np.intp)]
        return self._make_records(picked)

    def _make_records(self, raw: npt.NDArray[np.uint8]) -> list[Record]:
        out: list[Record] = []
        for event in self.batch.decoder.decode_batch(raw):
            record = self._record(event)
            if record is None:  # the detector's tools keep every event
                raise ValueError(f"{self.kind}: the tool skipped an event")
            out.append(record)
        return out

    def _from_records(self, field: str, rows: npt.NDArray[np.intp]) -> list[Any]:
        return [record.get(field) for record in self.records(rows.tolist())]

    def _make(self, field: str) -> Column | None:
        if field == "event":
            return ConstColumn(self.kind, self.n)
        if field == "time":
            return NumColumn(self.times())
        return None

    def _int(self, name: str) -> NumColumn:
        return NumColumn(np.ascontiguousarray(self.number(name)))

    def _str(self, name: str) -> StrColumn:
        return StrColumn(self.n, self.chars(name))

    def _norm_path(self) -> StrColumn:
        """``norm_path(path, fs_path, fs_path_kind, fs_path_cut)`` of every row.

        Where fs_path holds the opened or executed file and its walk finished (cut 0,
        not empty), the value is fs_path;
        where nothing was resolved and the path given is absolute with no ``//``, no
        ``/.`` and no trailing ``/``, ``lexical`` returns it unchanged; the rest
        (relative paths, dot components, ...) is computed per row by ``norm_path``.
        """
        path, fs = self.chars("path"), self.chars("fs_path")
        kind, cut = self.number("fs_path_kind"), self.number("fs_path_cut")
        walked = (cut == 0) & (fs.mat[:, 0] != 0)
        from_fs = walked & (kind == FS_PATH_FILE)
        from_dir = walked & (kind == FS_PATH_DIR) & (path.mat[:, 0] != _SLASH)
        merged = Heads.of(fs, path, from_fs)
        plain = _plain_absolute(merged, ~from_fs & ~from_dir)  # of the path's rows
        special: dict[int, str] = {}
        odd = nonzero(~(from_fs | plain))
        if odd.size:
            given, found = path.decode(odd), fs.decode(odd)
            kinds, cuts = kind[odd].tolist(), cut[odd].tolist()
            for row, p, f, k, c in zip(odd.tolist(), given, found, kinds, cuts, strict=True):
                special[row] = norm_path(p, f, k, c)
        return StrColumn(self.n, merged, special)


def _plain_absolute(path: Heads, rows: Mask) -> Mask:
    """Of ``rows``, those whose C string ``lexical`` leaves as it is: absolute, without
    an empty, ``.`` or ``..`` component (``//``, ``/./``, ``/..`` at the end...) and
    not ending in ``/`` unless it is ``/``. Exact: ``/`` and ``.`` are bytes no
    invalid UTF-8 decodes to.

    Tested on the heads; the values that may be longer, again on their whole bytes."""
    head = path.head.mat
    wanted = np.count_nonzero(rows)
    if 2 * wanted >= len(head):
        out = rows & _plain(head)
    else:  # few rows: tested on their own (a gather, then less to test)
        out = np.zeros(len(head), dtype=np.bool_)
        if wanted:
            at = nonzero(rows)
            out[at] = _plain(head[at])
    if path.full is not None:
        long = path.long[rows[path.long]]
        if long.size:
            whole = nul_split(path.full.mat[rows[path.long]])[0]
            padded = np.zeros((whole.shape[0], whole.shape[1] + 1), dtype=np.uint8)
            padded[:, :-1] = whole
            out[long] = _plain(padded)
    return out


def _plain(mat: npt.NDArray[np.uint8]) -> Mask:
    """``_plain_absolute`` of C strings whose rows are zeroed after the value and end
    in a zero byte. Tested on the matrix as one run of bytes: a row's last byte is 0,
    so no pair of bytes tested spans two rows."""
    width = mat.shape[1]
    out: Mask = mat[:, 0] == _SLASH
    flat = mat.ravel()
    slash = flat == _SLASH
    after = flat[1:]
    # Each '/' followed by '/', '.' or the end: an empty component, a trailing slash,
    # or a component that starts with a dot (checked further below).
    hits = nonzero(slash[:-1] & (slash[1:] | (after == _DOT) | (after == 0)))
    if hits.size == 0:
        return out
    # A row's last byte is 0, so the two bytes after a "/." are in its row; after a
    # "/" and the row's last byte they are not (they are not used then), and may lie
    # past the matrix: those reads are clamped to it.
    top = flat.size - 1
    nxt = flat[hits + 1]
    then, last = flat[np.minimum(hits + 2, top)], flat[np.minimum(hits + 3, top)]
    ends = (then == _SLASH) | (then == 0)  # "/." is a whole component
    dotdot = (then == _DOT) & ((last == _SLASH) | (last == 0))  # "/.." is
    root = (nxt == 0) & (hits % width == 0)  # the value "/"
    bad = (nxt == _SLASH) | ((nxt == 0) & ~root) | ((nxt == _DOT) & (ends | dotdot))
    out[hits[bad] // width] = False
    return out


class OpenTable(EventTable):
    """opensnoop's records (``OpenSnoop.record`` with ``full_path``)."""

    kind = "open"

    def _make(self, field: str) -> Column | None:
        if field in ("pid", "tid", "uid", "flags"):
            return self._int(field)
        if field in ("fd", "err"):
            ret = self.number("ret").astype(np.int64)
            if field == "fd":
                return NumColumn(np.where(ret >= 0, ret, -1))
            if any_true(ret == _INT64_MIN):
                return None  # -ret leaves int64: from the records
            return NumColumn(np.where(ret < 0, -ret, 0))
        if field == "comm":
            return self._str("comm")
        if field == "path":
            rows = nonzero(self.number("path_truncated"))
            given = self.chars("path").decode(rows)
            special = {r: v + "..." for r, v in zip(rows.tolist(), given, strict=True)}
            return StrColumn(self.n, self.chars("path"), special)
        if field == "norm_path":
            return self._norm_path()
        return super()._make(field)


class ExecTable(EventTable):
    """execsnoop's records (``ExecSnoop.record`` with ``resolve_paths``); ``cgroup_path``
    is the tool's cgroup id to path mapping, asked once per distinct id."""

    kind = "exec"

    def __init__(
        self, batch: Batch, record: RecordOf, cgroup_path: Callable[[int], str] | None = None
    ) -> None:
        super().__init__(batch, record)
        self._cgroup_path = cgroup_path

    def _make(self, field: str) -> Column | None:
        if field in ("pid", "ppid", "uid", "ret"):
            return self._int(field)
        if field in ("comm", "parent_comm", "path"):
            return self._str(field)
        if field == "norm_path":
            return self._norm_path()
        if field == "args":
            return PyColumn(self.n, self._args)
        if field == "cgroup" and self._cgroup_path is not None:
            ids = self.number("cgroup_id")
            name = self._cgroup_path
            return PyColumn(self.n, lambda rows: _mapped(ids[rows], name))
        return super()._make(field)

    def _args(self, rows: npt.NDArray[np.intp]) -> list[Any]:
        dtype, offset = self._fields["args"][:2]
        slots, width = dtype.shape[0], dtype.base.itemsize
        counts = self.number("args_count")[rows].tolist()
        out: list[Any] = []
        for row, count in zip(rows.tolist(), counts, strict=True):
            used = min(count, slots)
            block = self._rows[row, offset : offset + used * width].reshape(used, width)
            out.append(CStrings(block, self.strings).decode())
        return out


class ExitTable(EventTable):
    """exitsnoop's records (``ExitSnoop.record``)."""

    kind = "exit"

    def _make(self, field: str) -> Column | None:
        if field in ("pid", "ppid", "tid"):
            return self._int(field)
        if field == "comm":
            return self._str("comm")
        if field in ("exit_code", "signal"):
            status = self.number("exit_status").astype(np.int64)
            sig = status & 0x7F
            if field == "signal":
                return NumColumn(sig)
            return NumColumn(np.where(sig != 0, 0, (status >> 8) & 0xFF))
        if field == "age":
            ts, start = self.number("ts_ns"), self.number("start_ns")
            return PyColumn(self.n, lambda rows: _ages(ts[rows], start[rows]))
        return super()._make(field)


def _mapped(ids: npt.NDArray[Any], name: Callable[[int], str]) -> list[str]:
    names: dict[int, str] = {}
    out: list[str] = []
    for i in ids.tolist():
        found = names.get(i)
        if found is None:
            found = names[i] = name(i)
        out.append(found)
    return out


def _ages(ts: npt.NDArray[Any], start: npt.NDArray[Any]) -> list[float]:
    # As ExitSnoop.record: Python ints, then round() (numpy's rounding differs).
    return [round((t - s) / 1e9, 3) for t, s in zip(ts.tolist(), start.tolist(), strict=True)]


TABLES: dict[str, type[EventTable]] = {"open": OpenTable, "exec": ExecTable, "exit": ExitTable}
"""The table class of each event kind of ``bpfloom.tools.detect.TOOLS``."""
