"""An ELF object given as a path or as its bytes, for the readers that parse it.

``BpfObject`` reads its file once and hands the bytes to every parser (libbpf, DWARF,
relocations), so that all of them see the same file; standalone calls may still pass a
path.
"""

from __future__ import annotations

import os

ObjectSource = str | os.PathLike[str] | bytes


def object_image(source: ObjectSource, name: str | None = None) -> tuple[bytes, str]:
    """The object's bytes and what to call it in messages (its path, or ``name``).

    Raises ``OSError`` when a path cannot be read.
    """
    if isinstance(source, bytes):
        return source, name or "the object"
    with open(source, "rb") as f:
        return f.read(), os.fspath(source)
