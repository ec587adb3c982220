"""Text and JSON for outputs: strings from traced processes and object files are hostile.

A comm, a file name, an argument or a map key may hold any byte. Printed as is, a
newline forges a whole output line, an escape sequence (``\\x1b[2J``, or the one-byte
C1 CSI U+009B) rewrites the user's terminal, and a bidi override (U+202E) makes text
read backwards. Every text output goes through :func:`escape_control`, which makes all
of them visible:

=============================================  ==========================================
C0 controls and DEL                            ``\\x1b``, ``\\x7f`` (``\\n`` ``\\t`` ``\\r``)
C1 controls U+0080-U+009F                      ``\\u009b``
bidi controls (U+061C, U+200E/F, U+202A-E,     ``\\u202e``
U+2066-9) and line/paragraph separators
(U+2028/9)
bytes that are not UTF-8 (lone surrogates      ``\\xff``: the byte itself
U+DC80-U+DCFF, from "surrogateescape")
=============================================  ==========================================

so an output line is always exactly one line. JSON output (:func:`json_line`) is exact
instead: strings decoded with "surrogateescape" (see ``bpfloom.decode.STRING_POLICIES``)
that hold bytes which are not UTF-8 keep their field as text (each bad byte as U+FFFD)
and gain a sibling ``<field>_b64`` with the exact bytes in base64 (for a list of
strings, a list of base64 strings). The characters above are written as ``\\uXXXX``
escapes inside JSON strings, which JSON readers decode to the same text.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_SEPARATORS = (0x2028, 0x2029)

_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in range(32)}
_ESCAPES |= {ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r", 0x7F: "\\x7f"}
_ESCAPES |= {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), *_BIDI, *_SEPARATORS)}
_ESCAPES |= {0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)}  # surrogateescape

# Inside a JSON string (json.dumps already escapes C0 controls and lone surrogates are
# gone by then): C1, bidi and separators as \u escapes, valid JSON for the same text.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), *_BIDI, *_SEPARATORS)}


def escape_control(text: str) -> str:
    """``text`` with every control, C1, bidi and separator character, and every byte
    that was not UTF-8, as a visible escape: safe on a terminal, always one line."""
    return text.translate(_ESCAPES)


def escape_lines(text: str) -> str:
    """``text`` with each of its lines escaped (``escape_control``): for messages of our
    own that span lines and quote hostile names (libbpf's log, a section name)."""
    return "\n".join(escape_control(line) for line in text.split("\n"))


def _has_bad_bytes(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _b64(text: str) -> str:
    return base64.b64encode(_raw(text)).decode("ascii")


def _readable(text: str) -> str:
    return _raw(text).decode("utf-8", "replace")


def lossless(value: Any) -> Any:
    """``value`` (dicts, lists, str, numbers) ready for JSON, keeping exact bytes: a str
    field with bytes that are not UTF-8 becomes readable text plus ``<field>_b64``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, str):
                if _has_bad_bytes(item):
                    out[key] = _readable(item)
                    out[f"{key}_b64"] = _b64(item)
                    continue
                out[key] = item
            elif isinstance(item, list) and any(
                isinstance(x, str) and _has_bad_bytes(x) for x in item
            ):
                out[key] = [_readable(x) if isinstance(x, str) else lossless(x) for x in item]
                out[f"{key}_b64"] = [_b64(x) if isinstance(x, str) else None for x in item]
            elif isinstance(item, (dict, list)):
                out[key] = lossless(item)
            else:  # numbers, None: a call per field was a third of a JSON line's cost
                out[key] = item
        return out
    if isinstance(value, list):
        return [lossless(x) for x in value]
    if isinstance(value, str) and _has_bad_bytes(value):
        return _readable(value)  # a bare string has no field to put the bytes beside
    return value


def json_line(value: Any) -> str:
    """One JSON text for ``value``: exact bytes kept (``lossless``), UTF-8 written as
    is, and the characters that could rewrite a terminal as ``\\uXXXX`` escapes."""
    return json.dumps(lossless(value), ensure_ascii=False).translate(_JSON_ESCAPES)


class StdoutLines:
    """Writes whole lines to standard output, flushed at once; thread-safe.

    When stdout's reader goes away (``| head``: EPIPE) writing stops quietly
    (``broken_pipe``). Any other failure (a full disk, a closed stdout, an I/O error)
    stops it too, is kept in ``error`` for the caller to report as fatal, and every
    record that could not be written from then on is counted in ``unwritten``. Either
    way ``on_stop`` runs once, and stdout is pointed at /dev/null so that Python's own
    flush at exit does not fail again.
    """

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.broken_pipe = False
        self.error: OSError | None = None
        self.unwritten = 0
        self._on_stop = on_stop
        self.lock = threading.RLock()

    @property
    def stopped(self) -> bool:
        return self.broken_pipe or self.error is not None

    def write(self, lines: Sequence[str], records: int | None = None) -> None:
        """Write ``lines``, which carry ``records`` records (default: one a line)."""
        with self.lock:
            count = len(lines) if records is None else records
            if self.stopped:
                if self.error is not None:
                    self.unwritten += count
                return
            if not lines:
                return
            try:
                out = sys.stdout
                if out is None:
                    raise OSError(errno.EBADF, "standard output is closed")
                out.write("\n".join(lines) + "\n")
                out.flush()
            except BrokenPipeError:
                self.broken_pipe = True
                self._stopped()
            except (OSError, ValueError) as exc:  # ValueError: a closed file object
                self.error = exc if isinstance(exc, OSError) else OSError(errno.EBADF, str(exc))
                self.unwritten += count
                self._stopped()

    def error_message(self) -> str:
        """What to tell the user when ``error`` is set."""
        assert self.error is not None
        reason = self.error.strerror or str(self.error)
        return (
            f"cannot write to standard output ({reason}); {self.unwritten} records were not written"
        )

    def _stopped(self) -> None:
        quiet_stdout()
        if self._on_stop is not None:
            self._on_stop()


def quiet_stdout() -> None:
    """Point stdout's file descriptor at /dev/null: its reader went away or it failed;
    the program exits without another error when Python flushes stdout.

    Nothing to do when the program started with stdout closed (``sys.stdout`` is None):
    descriptor 1 may then belong to something else of ours (a pipe, an eventfd).
    """
    out = sys.stdout
    if out is None:
        return
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
