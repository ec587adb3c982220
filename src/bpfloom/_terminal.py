"""Text bound for a terminal: strings from traced processes and object files are hostile.

A comm, a file name or a map key may hold any byte; printed as is, a newline breaks a
table row in two and an escape sequence (``\\x1b[...``) rewrites the user's terminal.
``escape_control`` turns every control character into a visible escape.
"""

from __future__ import annotations

_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in range(32)} | {
    ord("\n"): "\\n",
    ord("\t"): "\\t",
    ord("\r"): "\\r",
    0x7F: "\\x7f",
}


def escape_control(text: str) -> str:
    """``text`` with its control characters as escapes (``\\n``, ``\\x1b``), for a table."""
    return text.translate(_CONTROL_ESCAPES)
