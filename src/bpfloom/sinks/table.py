"""A table on standard output: columns, escaped cells, widths that follow the data.

Every cell is escaped (``bpfloom._terminal.escape_control``): strings come from traced
processes. Each column starts at its declared width and widens to the widest value seen
so far (up to ``MAX_COLUMN_WIDTH``; a longer value overflows its cell instead), so later
rows stay aligned; the last column is never padded and no line ends in spaces.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._terminal import escape_control, quiet_stdout
from . import Record, Sink

MAX_COLUMN_WIDTH = 64


@dataclass(frozen=True)
class Column:
    """One table column: its header, starting width, and the record key it shows (the
    lower-case header unless given). ``text``, when given, makes the cell's text from
    the whole record instead (a table-only rendering the JSON record does not carry);
    ``right`` aligns numbers right."""

    header: str
    width: int
    key: str = ""
    right: bool = False
    text: Callable[[Record], str] | None = None

    @property
    def field(self) -> str:
        return self.key or self.header.lower()


def format_cell(value: Any) -> str:
    """A cell's text: lists joined by spaces, floats to 3 decimals, ``time`` values of
    records as HH:MM:SS where the column asks for it (see ``TableSink``)."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class TableLayout:
    """The lines of a table whose columns widen to the widest value seen so far.

    ``header`` prints the column headers before the first row. Not thread-safe: a
    ``TableSink`` serializes its calls.
    """

    def __init__(self, columns: Sequence[Column], header: bool = True) -> None:
        self.columns = list(columns)
        self.widths = [c.width for c in self.columns]
        self._header_done = not header

    def lines(self, records: Sequence[Record]) -> list[str]:
        """The output lines of ``records`` (the header first, once)."""
        out = []
        if not self._header_done and self.columns:
            self._header_done = True
            out.append(self._line([c.header for c in self.columns]))
        for r in records:
            cells = []
            for c in self.columns:
                if c.text is not None:
                    cells.append(escape_control(c.text(r)))
                    continue
                value = r.get(c.field, "")
                if c.field == "time" and isinstance(value, float):
                    value = time.strftime("%H:%M:%S", time.localtime(value))
                cells.append(escape_control(format_cell(value)))
            out.append(self._line(cells))
        return out

    def _line(self, cells: Sequence[str]) -> str:
        parts = []
        last = len(cells) - 1
        for i, (text, col) in enumerate(zip(cells, self.columns, strict=True)):
            if i < last and len(text) > self.widths[i]:
                self.widths[i] = max(self.widths[i], min(len(text), MAX_COLUMN_WIDTH))
            width = self.widths[i]
            if col.right:
                parts.append(text.rjust(width))
            else:
                parts.append(text if i == last else text.ljust(width))
        return " ".join(parts).rstrip()


def format_table(columns: Sequence[Column], records: Sequence[Record]) -> list[str]:
    """A whole table at once (a header and ``records``): for text built in one go."""
    return TableLayout(columns).lines(records)


class TableSink(Sink):
    """Records as table rows on stdout, under a header line.

    ``columns`` is one set of columns, or a function giving each batch's (an object
    with several kinds of records gets a table, and a header, per kind). A ``time``
    field holding Unix seconds prints as the local HH:MM:SS. ``summary()`` prints free
    text (histograms, summaries), each line escaped. When stdout's reader goes away
    (``| head``) printing stops quietly; another write error is fatal.
    """

    name = "standard output"

    def __init__(
        self,
        columns: Sequence[Column] | Callable[[Any], Sequence[Column]],
        on_stop: Callable[[], None] | None = None,
        *,
        header: bool = True,
    ) -> None:
        super().__init__(on_stop)
        self._columns = columns
        self._header = header
        self._layouts: dict[int, TableLayout] = {}
        self._batch: Any = None

    def _layout(self) -> TableLayout:
        columns = self._columns if not callable(self._columns) else self._columns(self._batch)
        layout = self._layouts.get(id(columns))
        if layout is None:
            layout = self._layouts[id(columns)] = TableLayout(columns, self._header)
        return layout

    def lines(self, records: Sequence[Record]) -> list[str]:
        """The output lines of ``records`` (a header first, once per column set)."""
        return self._layout().lines(records)

    def write_batch(self, batch: Any, records: Sequence[Record]) -> None:
        with self.lock:
            self._batch = batch
            self.write(records)

    def _write(self, records: Sequence[Record]) -> None:
        _print(self.lines(records))

    def summary(self, text: str, records: Sequence[Record] = ()) -> None:
        """Print ``text``, each of its lines escaped (the records are for machines)."""
        if not text:
            return
        with self.lock:
            if self.stopped:
                return
            try:
                _print([escape_control(line) for line in text.rstrip("\n").split("\n")])
            except BrokenPipeError:
                self._reader_gone()
            except Exception as exc:
                self._failed(exc, 0)

    def _flush(self) -> None:
        if sys.stdout is not None:
            sys.stdout.flush()

    def _reader_gone(self) -> None:
        quiet_stdout()
        super()._reader_gone()

    def _failed(self, exc: BaseException, lost: int) -> None:
        quiet_stdout()
        super()._failed(exc, lost)

    def clear_screen(self) -> bool:
        """Clear the terminal as clear(1) does, for tools that redraw (tcptop); only
        when stdout is a terminal: a file or a pipe never gets escape sequences.
        Whether it cleared."""
        with self.lock:
            out = sys.stdout
            if self.stopped or out is None or not out.isatty():
                return False
            try:
                out.write(CLEAR_SCREEN)
                out.flush()
            except BrokenPipeError:
                self._reader_gone()
                return False
            except Exception as exc:
                self._failed(exc, 0)
                return False
            return True


CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase the display (clear(1) without E3)


def _print(lines: Sequence[str]) -> None:
    """Whole lines to stdout, flushed: a closed stdout is an error like a full disk."""
    if not lines:
        return
    out = sys.stdout
    if out is None:
        raise OSError(9, "standard output is closed")  # EBADF
    out.write("\n".join(lines) + "\n")
    out.flush()
