"""JSON lines: one object per record, on standard output or appended to a file.

Each line is ``bpfloom._terminal.json_line``: exact bytes kept (a string that is not
UTF-8 gains ``<field>_b64``) and the characters that could rewrite a terminal written
as ``\\uXXXX`` escapes. A file is opened for appending and created if missing: lines a
previous run wrote stay. It is written in chunks and flushed per batch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import IO

from .._exceptions import BpfloomError
from .._terminal import json_line, quiet_stdout
from . import Record, Sink


class JsonLinesSink(Sink):
    """Records as JSON lines on stdout (``path`` None) or appended to ``path``.

    Raises ``BpfloomError`` at construction when the file cannot be opened for writing
    (a directory, no permission). Writing failures are fatal for the run.
    """

    def __init__(self, path: str | None = None, on_stop: Callable[[], None] | None = None):
        super().__init__(on_stop)
        self.path = path
        self._file: IO[str] | None = None
        if path is None:
            self.name = "standard output"
            return
        self.name = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BpfloomError(f"cannot write {path}: {exc.strerror}", errno=exc.errno) from exc
        self._file = os.fdopen(fd, "w", encoding="utf-8", errors="strict")

    def _out(self) -> IO[str]:
        out = self._file if self._file is not None else sys.stdout
        if out is None:
            raise OSError(9, "standard output is closed")  # EBADF
        return out

    def _write(self, records: Sequence[Record]) -> None:
        out = self._out()
        out.write("".join(json_line(r) + "\n" for r in records))
        out.flush()

    def summary(self, text: str, records: Sequence[Record] = ()) -> None:
        """Write ``records`` (JSON output carries no free text)."""
        self.write(records)

    def _flush(self) -> None:
        self._out().flush()

    def _close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def _reader_gone(self) -> None:
        if self._file is None:
            quiet_stdout()
        super()._reader_gone()

    def _failed(self, exc: BaseException, lost: int) -> None:
        if self._file is None:
            quiet_stdout()
        super()._failed(exc, lost)
