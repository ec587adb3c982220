"""A per-user cache of what an object's DWARF says, keyed by the object's content.

Reading the DWARF of an object that includes the kernel's headers (any program that
reads ``task_struct`` through CO-RE) takes most of a second: pyelftools walks tens of
thousands of entries to find the one struct the program defines. What ``TypeInfo``
needs of it is small: the named types in order (kind, name, whether an aggregate has
members, where a struct was declared) and the full type of every struct and union the
program itself declares (``DwarfSummary``). That summary is kept in
``$XDG_CACHE_HOME/bpfloom/dwarf/<sha256 of the object>.json`` (``~/.cache`` without
XDG_CACHE_HOME; no cache at all without either), and the next run of the same object
reads it instead of the DWARF.

The file is a plain, versioned JSON document, never pickle, and it is distrusted:

- only a regular file (opened with ``O_NOFOLLOW``) of at most ``MAX_BYTES``, owned by
  the effective user and writable by nobody else, in directories that are the same
  (not symlinks), is read; the directories are created ``0700``, files ``0600``;
- its format version, the id of the code that wrote it (a hash of this module and of
  ``dwarf.py`` and ``types.py``: another bpfloom's cache is stale) and the object's
  hash must match; every field is checked for its type and range, every reference
  for its bounds, and counts are bounded;
- anything else (unreadable, malformed, stale) is ignored and replaced by a fresh
  parse; writes go to a temporary file renamed into place, so a reader never sees half
  a file. A cache directory that cannot be created or written only costs the parse.

Types from the cache feed the same decoders as types from the file itself, which
treat them as untrusted input anyway (``bpfloom.decode``'s size limits).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .types import (
    Array,
    Const,
    Enum,
    Float,
    FuncProto,
    Fwd,
    Int,
    Member,
    Pointer,
    Restrict,
    Struct,
    Type,
    Typedef,
    Union,
    Void,
    Volatile,
)

FORMAT = "bpfloom-dwarf-summary"
VERSION = 1
MAX_BYTES = 16 << 20  # a cache file larger than this is not read (nor written)
MAX_ENTRIES = 1 << 20  # named types, and types in the table, at most
MAX_TEXT = 4096  # characters of a name or a path
MAX_INT = 1 << 64  # sizes, offsets, lengths and enum values stay below in magnitude

Declared = Callable[[str | None], bool]  # does this decl_file belong to the program?


@dataclass
class Named:
    """One named type of the DWARF, in order: ``kind`` is struct, union, enum or
    typedef; ``type`` is set for the aggregates the program declares (always, from a
    full parse: every type)."""

    kind: str
    name: str
    has_members: bool
    decl_file: str | None
    type: Type | None


@dataclass
class DwarfSummary:
    """What ``TypeInfo`` needs of an object's DWARF (see the module docstring)."""

    named: list[Named]


def _kind(t: Type) -> str:
    if isinstance(t, Struct):
        return "struct"
    if isinstance(t, Union):
        return "union"
    if isinstance(t, Enum):
        return "enum"
    return "typedef"


def summarize(types: list[Type], declared: Declared, *, full: bool = True) -> DwarfSummary:
    """The summary of ``dwarf_types``' result; ``full`` keeps every type (for this
    process), else only the aggregates ``declared`` says the program declares."""
    named = []
    for t in types:
        aggregate = isinstance(t, (Struct, Union))
        decl = t.decl_file if isinstance(t, (Struct, Union)) else None
        has_members = bool(t.members) if isinstance(t, (Struct, Union)) else False
        keep = full or (aggregate and has_members and declared(decl))
        named.append(Named(_kind(t), t.name, has_members, decl, t if keep else None))
    return DwarfSummary(named)


# --- where ----------------------------------------------------------------------------


def cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/bpfloom/dwarf`` (``$HOME/.cache/...`` without it), or None
    when neither is set to an absolute path."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.environ.get("HOME", "")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "bpfloom" / "dwarf"


def _safe_dir(path: Path) -> bool:
    """A real directory (not a symlink) of ours that nobody else may write to."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _ensure_dir(path: Path) -> bool:
    """Create ``path`` (and its ``bpfloom`` parent) 0700 if missing; True if usable."""
    try:
        os.makedirs(path.parent.parent, 0o700, exist_ok=True)  # the XDG base directory
    except OSError:
        return False
    for d in (path.parent, path):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return False
        if not _safe_dir(d):
            return False
    return True


def _writer_id() -> str:
    """A hash of the code that builds and reads summaries: a cache written by another
    version of it is stale."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"{FORMAT}/{VERSION}".encode())
    for name in ("typecache.py", "dwarf.py", "types.py"):
        try:
            digest.update((here / name).read_bytes())
        except OSError:
            digest.update(name.encode())
    return digest.hexdigest()


def object_key(image: bytes) -> str:
    """The cache key of an object: the SHA-256 of its bytes."""
    return hashlib.sha256(image).hexdigest()


# --- reading --------------------------------------------------------------------------


class _Bad(Exception):
    """The cache file is not what this module writes."""


def load(key: str, declared: Declared) -> DwarfSummary | None:
    """The cached summary of the object whose ``object_key`` is ``key``, or None (no
    cache, or one that is unsafe, malformed or stale: see the module docstring)."""
    directory = cache_dir()
    if directory is None or not _safe_dir(directory.parent) or not _safe_dir(directory):
        return None
    try:
        fd = os.open(directory / f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_mode & 0o022
            or st.st_size > MAX_BYTES
        ):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        return None
    try:
        doc = json.loads(data)
        return _decode(doc, key, declared)
    except (_Bad, ValueError, TypeError, RecursionError):
        return None


def _text(value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _Bad
    return value


def _int(value: Any, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < MAX_INT:
        raise _Bad
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad
    return value


def _list(value: Any, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise _Bad
    if length is not None and len(value) != length:
        raise _Bad
    return value


_SHELLS: dict[str, Callable[[list[Any]], Type]] = {
    "void": lambda e: Void(_text(e[1]) or ""),
    "int": lambda e: Int(_text(e[1]) or "", _int(e[2]), _flag(e[3]), _flag(e[4]), _flag(e[5])),
    "float": lambda e: Float(_text(e[1]) or "", _int(e[2])),
    "ptr": lambda e: Pointer(name=_text(e[1]) or ""),
    "array": lambda e: Array(name=_text(e[1]) or "", length=_int(e[3])),
    "struct": lambda e: Struct(_text(e[1]) or "", _int(e[2]), decl_file=_text(e[3], optional=True)),
    "union": lambda e: Union(_text(e[1]) or "", _int(e[2]), decl_file=_text(e[3], optional=True)),
    "enum": lambda e: Enum(_text(e[1]) or "", _int(e[2]), _flag(e[3])),
    "fwd": lambda e: Fwd(_text(e[1]) or "", _flag(e[2])),
    "typedef": lambda e: Typedef(_text(e[1]) or ""),
    "const": lambda e: Const(name=_text(e[1]) or ""),
    "volatile": lambda e: Volatile(name=_text(e[1]) or ""),
    "restrict": lambda e: Restrict(name=_text(e[1]) or ""),
    "funcproto": lambda e: FuncProto(name=_text(e[1]) or ""),
}
_LENGTHS = {
    "void": 2,
    "int": 6,
    "float": 3,
    "ptr": 3,
    "array": 4,
    "struct": 5,
    "union": 5,
    "enum": 5,
    "fwd": 3,
    "typedef": 3,
    "const": 3,
    "volatile": 3,
    "restrict": 3,
    "funcproto": 4,
}
_KINDS = ("struct", "union", "enum", "typedef")


def _decode(doc: Any, key: str, declared: Declared) -> DwarfSummary:
    if not isinstance(doc, dict) or set(doc) != {
        "format",
        "version",
        "writer",
        "object",
        "named",
        "types",
    }:
        raise _Bad
    if (
        doc["format"] != FORMAT
        or doc["version"] != VERSION
        or doc["writer"] != _writer_id()
        or doc["object"] != key
    ):
        raise _Bad
    entries = _list(doc["types"])
    # Two passes, as the type graph may be cyclic: every object first, then references.
    types: list[Type] = []
    for entry in entries:
        entry = _list(entry)
        kind = entry[0] if entry else None
        if not isinstance(kind, str) or kind not in _SHELLS or len(entry) != _LENGTHS[kind]:
            raise _Bad
        types.append(_SHELLS[kind](entry))

    def ref(value: Any) -> Type | None:
        index = value if isinstance(value, int) and not isinstance(value, bool) else -2
        if index == -1:
            return None
        if not 0 <= index < len(types):
            raise _Bad
        return types[index]

    for t, entry in zip(types, entries, strict=True):
        if isinstance(t, (Pointer, Typedef, Const, Volatile, Restrict)):
            t.target = ref(entry[2])
        elif isinstance(t, Array):
            t.element = ref(entry[2])
        elif isinstance(t, (Struct, Union)):
            for m in _list(entry[4]):
                m = _list(m, 4)
                t.members.append(Member(_text(m[0]) or "", ref(m[1]), _int(m[2]), _int(m[3])))
        elif isinstance(t, Enum):
            for v in _list(entry[4]):
                v = _list(v, 2)
                value = v[1]
                if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= MAX_INT:
                    raise _Bad
                t.values[_text(v[0]) or ""] = value
        elif isinstance(t, FuncProto):
            t.return_type = ref(entry[2])
            for param in _list(entry[3]):
                param = _list(param, 2)
                t.params.append((_text(param[0]) or "", ref(param[1])))
    named: list[Named] = []
    for item in _list(doc["named"]):
        item = _list(item, 5)
        kind, name = item[0], _text(item[1]) or ""
        if kind not in _KINDS:
            raise _Bad
        has_members, decl = _flag(item[2]), _text(item[3], optional=True)
        kept = ref(item[4])
        if kept is not None and (
            _kind(kept) != kind or kept.name != name or kind not in ("struct", "union")
        ):
            raise _Bad
        if kept is None and has_members and kind in ("struct", "union") and declared(decl):
            raise _Bad  # the program's own aggregates are always kept
        named.append(Named(kind, name, has_members, decl, kept))
    return DwarfSummary(named)


# --- writing --------------------------------------------------------------------------


def _walk(roots: list[Type]) -> Iterator[Type]:
    """Every type reachable from ``roots``, each once (a work list: types are cyclic)."""
    seen: set[int] = set()
    work = list(reversed(roots))
    while work:
        t = work.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        yield t
        refs: list[Type | None] = []
        if isinstance(t, (Pointer, Typedef, Const, Volatile, Restrict)):
            refs = [t.target]
        elif isinstance(t, Array):
            refs = [t.element]
        elif isinstance(t, (Struct, Union)):
            refs = [m.type for m in t.members]
        elif isinstance(t, FuncProto):
            refs = [t.return_type, *(p for _, p in t.params)]
        work.extend(r for r in reversed(refs) if r is not None)


def _encode(summary: DwarfSummary, key: str, declared: Declared) -> dict[str, Any] | None:
    """The document for ``summary``, keeping only the program's own aggregates (and
    what they reference); None if a type cannot be written (a kind DWARF does not
    make) or there are too many."""
    roots = [
        n.type
        for n in summary.named
        if n.type is not None
        and n.has_members
        and n.kind in ("struct", "union")
        and declared(n.decl_file)
    ]
    order: list[Type] = []
    index: dict[int, int] = {}
    for t in _walk(roots):
        index[id(t)] = len(order)
        order.append(t)
        if len(order) > MAX_ENTRIES:
            return None

    def ref(t: Type | None) -> int:
        return -1 if t is None else index[id(t)]

    table: list[list[Any]] = []
    for t in order:
        if isinstance(t, Void):
            table.append(["void", t.name])
        elif isinstance(t, Int):
            table.append(["int", t.name, t.size, t.signed, t.is_bool, t.is_char])
        elif isinstance(t, Float):
            table.append(["float", t.name, t.size])
        elif isinstance(t, Pointer):
            table.append(["ptr", t.name, ref(t.target)])
        elif isinstance(t, Array):
            table.append(["array", t.name, ref(t.element), t.length])
        elif isinstance(t, (Struct, Union)):
            members = [[m.name, ref(m.type), m.offset_bits, m.bitfield_size] for m in t.members]
            table.append([_kind(t), t.name, t.size, t.decl_file, members])
        elif isinstance(t, Enum):
            table.append(["enum", t.name, t.size, t.signed, [[k, v] for k, v in t.values.items()]])
        elif isinstance(t, Fwd):
            table.append(["fwd", t.name, t.is_union])
        elif isinstance(t, (Typedef, Const, Volatile, Restrict)):
            kind = {Typedef: "typedef", Const: "const", Volatile: "volatile", Restrict: "restrict"}
            table.append([kind[type(t)], t.name, ref(t.target)])
        elif isinstance(t, FuncProto):
            params = [[name, ref(p)] for name, p in t.params]
            table.append(["funcproto", t.name, ref(t.return_type), params])
        else:
            return None
    kept = {id(t) for t in roots}
    named = [
        [n.kind, n.name, n.has_members, n.decl_file, ref(n.type) if id(n.type) in kept else -1]
        for n in summary.named
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "writer": _writer_id(),
        "object": key,
        "named": named,
        "types": table,
    }


def store(key: str, summary: DwarfSummary, declared: Declared) -> bool:
    """Write ``summary`` for the object ``key`` (atomically); False if it was not
    (no cache directory, not writable, too large): the cache is only an optimisation."""
    directory = cache_dir()
    if directory is None or not _ensure_dir(directory):
        return False
    try:
        doc = _encode(summary, key, declared)
        if doc is None:
            return False
        data = json.dumps(doc, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError):
        return False
    if len(data) > MAX_BYTES:
        return False
    import tempfile  # only when writing: start-up

    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp: mode 0600, owned by us
            f.write(data)
        os.replace(tmp, directory / f"{key}.json")
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True
