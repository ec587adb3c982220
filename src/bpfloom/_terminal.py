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
import json
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
            elif isinstance(item, list) and any(
                isinstance(x, str) and _has_bad_bytes(x) for x in item
            ):
                out[key] = [_readable(x) if isinstance(x, str) else lossless(x) for x in item]
                out[f"{key}_b64"] = [_b64(x) if isinstance(x, str) else None for x in item]
                continue
            out[key] = lossless(item)
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
