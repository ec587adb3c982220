"""ecli's attach comments: where an XDP or tc program attaches, written in its C source.

eunomia-bpf's ``ecli`` reads ``///`` annotations placed before a program in its source::

    /// @ifindex 2                      XDP: the interface index
    /// @flags 2                        XDP: XDP_FLAGS_* (a mode bit: 2 skb, 4 native, 8 offload)
    /// @xdpopts {"old_prog_fd": 0}     XDP: options (only old_prog_fd 0 means anything here)
    SEC("xdp")
    int xdp_prog(struct xdp_md *ctx) ...

    /// @tchook {"ifindex": 2, "attach_point": "BPF_TC_INGRESS"}   (or "BPF_TC_EGRESS")
    /// @tcopts {"handle": 1, "priority": 1}
    SEC("tc")
    int tc_prog(struct __sk_buff *skb) ...

Each XDP or tc program takes, for each kind of annotation, the nearest one of that kind
that precedes its ``SEC(...)`` line in the file, so annotations at the top of the file
apply to every program below them. Other ``/// @...`` annotations are ignored.

The comments are in the source, not in the object: the object's DWARF compile unit
names its source file (``DW_AT_name`` relative to ``DW_AT_comp_dir``), and
``<stem>.bpf.c`` / ``<stem>.c`` beside the object are tried next. Both names come from
files we did not write, so a source is read only when it is a regular file of at most
1 MiB (a device or FIFO is never opened for reading), and its contents are never
printed: errors name the file and the line. A malformed annotation raises
``AttachError`` naming both.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._exceptions import AttachError

__all__ = [
    "MAX_SOURCE_BYTES",
    "ProgramComments",
    "SourceComments",
    "parse",
    "read_source",
    "source_candidates",
    "source_comments",
]

MAX_SOURCE_BYTES = 1 << 20
MAX_ANNOTATION_CHARS = 4096  # longer values are an error: JSON objects of a few keys
_PROGRAM_NAME_WINDOW = 1024  # chars after SEC("...") searched for the function's name

# XDP_FLAGS_* (include/uapi/linux/if_link.h)
_XDP_UPDATE_IF_NOEXIST = 1 << 0  # a BPF link never replaces a program: implied
_XDP_MODE_FLAGS = {1 << 1: "skb", 1 << 2: "native", 1 << 3: "offload"}
_XDP_REPLACE = 1 << 4
_TC_POINTS = {"BPF_TC_INGRESS": "ingress", "BPF_TC_EGRESS": "egress"}

_ANNOTATION = re.compile(r"^[ \t]*///[ \t]*@(ifindex|flags|xdpopts|tchook|tcopts)\b(.*)$", re.M)
_SEC = re.compile(r'\bSEC[ \t]*\([ \t]*"([^"\\\n]{0,256})"[ \t]*\)')
_IDENT = re.compile(r"[A-Za-z_]\w*")
_XDP_KINDS = ("ifindex", "flags", "xdpopts")
_TC_KINDS = ("tchook", "tcopts")


@dataclass(frozen=True)
class ProgramComments:
    """What the annotations before one program say; ``None`` where they say nothing.

    ``ifindex`` comes from ``@ifindex`` (XDP) or ``@tchook``'s ``ifindex`` (tc), and
    ``where`` is ``file:line`` of that annotation, for errors about it.
    """

    ifindex: int | None = None
    where: str = ""
    xdp_mode: str | None = None
    tc_direction: str | None = None
    tc_handle: int = 0
    tc_priority: int = 0


@dataclass(frozen=True)
class SourceComments:
    """The attach comments of an object's programs, by program name, and the source
    file they were read from (``None`` when no source was found)."""

    source: str | None
    programs: Mapping[str, ProgramComments]


def source_candidates(object_path: str, image: bytes | None = None) -> list[str]:
    """Where the object's C source may be: the file its DWARF names, then
    ``<stem>.bpf.c`` and ``<stem>.c`` beside the object (duplicates removed).
    ``image`` is the object file's contents when the caller has read them already
    (``BpfObject.image``); else the file is read."""
    out: list[str] = []
    named = _dwarf_source(object_path, image)
    if named:
        out.append(named)
    folder, base = os.path.split(object_path)
    stem = base.removesuffix(".o").removesuffix(".bpf")
    for name in (f"{stem}.bpf.c", f"{stem}.c"):
        out.append(os.path.join(folder, name))
    unique: dict[str, str] = {}
    for path in out:
        unique.setdefault(os.path.normpath(path), path)
    return list(unique.values())


def read_source(path: str) -> str | None:
    """The text of ``path`` if it is a regular file of at most 1 MiB, else ``None``.

    The name is resolved once, with ``O_PATH`` (which opens nothing: a device's driver
    never sees it), and the inode it found is checked with ``fstat`` and then opened
    for reading through ``/proc/self/fd``: no other file can be swapped in between the
    check and the read.
    """
    try:
        pin = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(pin)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SOURCE_BYTES:
            return None
        fd = os.open(f"/proc/self/fd/{pin}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    finally:
        os.close(pin)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SOURCE_BYTES:
            chunk = os.read(fd, MAX_SOURCE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    if size > MAX_SOURCE_BYTES:  # it grew after fstat
        return None
    return b"".join(chunks).decode("utf-8", "replace")


def source_comments(
    object_path: str, programs: Mapping[str, str], image: bytes | None = None
) -> SourceComments:
    """Read the attach comments of ``programs`` (name -> ``"xdp"`` or ``"tc"``) from the
    first readable source of ``object_path`` (``image``: its contents, if read already).
    Raises ``AttachError`` for a malformed annotation."""
    for path in source_candidates(object_path, image):
        text = read_source(path)
        if text is not None:
            return SourceComments(path, parse(text, path, programs))
    return SourceComments(None, {})


def parse(text: str, path: str, programs: Mapping[str, str]) -> dict[str, ProgramComments]:
    """The comments that apply to each of ``programs`` (name -> ``"xdp"``/``"tc"``)
    found after a ``SEC("...")`` in ``text``; ``path`` is only used in errors.

    One pass over the annotations and ``SEC`` lines in file order; the work is linear
    in the size of ``text``.
    """
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(line_starts, pos)

    events: list[tuple[int, str, re.Match[str]]] = [
        (m.start(), "annotation", m) for m in _ANNOTATION.finditer(text)
    ]
    events += [(m.start(), "sec", m) for m in _SEC.finditer(text)]
    events.sort(key=lambda e: e[0])
    latest: dict[str, tuple[int, Any]] = {}  # kind -> (line, parsed value)
    found: dict[str, ProgramComments] = {}
    for pos, what, m in events:
        line = line_of(pos)
        if what == "annotation":
            kind, value = m.group(1), m.group(2).strip()
            latest[kind] = (line, _parse_value(kind, value, f"{path}:{line}"))
            continue
        name = _program_after(text, m.end(), programs)
        if name is None or name in found:
            continue
        kinds = _XDP_KINDS if programs[name] == "xdp" else _TC_KINDS
        if not any(k in latest for k in kinds):
            continue
        found[name] = _program_comments(programs[name], latest, path)
    return found


def _program_after(text: str, start: int, programs: Mapping[str, str]) -> str | None:
    """The first identifier naming one of ``programs`` between ``start`` and the next
    ``{`` or ``;`` (the function's name; return types and macros are skipped)."""
    window = text[start : start + _PROGRAM_NAME_WINDOW]
    cut = min((i for i in (window.find("{"), window.find(";")) if i >= 0), default=len(window))
    for m in _IDENT.finditer(window, 0, cut):
        if m.group() in programs:
            return m.group()
    return None


def _program_comments(
    kind: str, latest: Mapping[str, tuple[int, Any]], path: str
) -> ProgramComments:
    if kind == "xdp":
        ifindex = latest.get("ifindex")
        flags = latest.get("flags")
        return ProgramComments(
            ifindex=ifindex[1] if ifindex else None,
            where=f"{path}:{ifindex[0]}" if ifindex else "",
            xdp_mode=flags[1] if flags else None,
        )
    hook_line, hook = latest.get("tchook", (0, {}))
    _, opts = latest.get("tcopts", (0, {}))
    return ProgramComments(
        ifindex=hook.get("ifindex"),
        where=f"{path}:{hook_line}" if "ifindex" in hook else "",
        tc_direction=hook.get("attach_point"),
        tc_handle=opts.get("handle", 0),
        tc_priority=opts.get("priority", 0),
    )


# --- values -------------------------------------------------------------------------


def _fail(where: str, kind: str, why: str) -> AttachError:
    return AttachError(f"{where}: malformed @{kind} attach comment: {why}", hook=f"@{kind}")


def _parse_value(kind: str, value: str, where: str) -> Any:
    if len(value) > MAX_ANNOTATION_CHARS:
        raise _fail(where, kind, f"longer than {MAX_ANNOTATION_CHARS} characters")
    if kind == "ifindex":
        index = _integer(value)
        if index is None or index <= 0:
            raise _fail(where, kind, "expected a positive interface index, e.g. /// @ifindex 2")
        return index
    if kind == "flags":
        return _xdp_mode(_integer(value), where)
    obj = _json_object(value, kind, where)
    if kind == "xdpopts":
        _only_keys(obj, {"old_prog_fd": (0, 0)}, kind, where)
        return obj
    if kind == "tchook":
        _only_keys(obj, {"ifindex": (1, 2**31 - 1)}, kind, where, strings={"attach_point"})
        if "attach_point" in obj:
            point = obj["attach_point"]
            if point not in _TC_POINTS:
                raise _fail(where, kind, 'attach_point must be "BPF_TC_INGRESS" or "BPF_TC_EGRESS"')
            obj["attach_point"] = _TC_POINTS[point]
        return obj
    limits = {
        "handle": (0, 0xFFFFFFFF),
        "priority": (0, 0xFFFF),
        "flags": (0, 0),
        "prog_fd": (0, 0),
        "prog_id": (0, 0),
    }
    _only_keys(obj, limits, kind, where)
    return obj


def _integer(value: str) -> int | None:
    """A decimal or 0x-hexadecimal integer, as ecli writes them."""
    text = value.strip()
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}", text):
            return int(text, 16)
        if re.fullmatch(r"[0-9]{1,20}", text):
            return int(text)
    except ValueError:
        return None
    return None


def _xdp_mode(flags: int | None, where: str) -> str | None:
    """The XDP mode an ``@flags`` value asks for (``None``: let the kernel pick)."""
    if flags is None:
        raise _fail(where, "flags", "expected XDP_FLAGS_* as a number, e.g. /// @flags 2")
    if flags & _XDP_REPLACE:
        raise _fail(where, "flags", "XDP_FLAGS_REPLACE (16) is not supported")
    known = _XDP_UPDATE_IF_NOEXIST | sum(_XDP_MODE_FLAGS)
    if flags & ~known:
        raise _fail(where, "flags", f"unknown XDP flag bits 0x{flags & ~known:x}")
    modes = [name for bit, name in _XDP_MODE_FLAGS.items() if flags & bit]
    if len(modes) > 1:
        raise _fail(where, "flags", "more than one mode bit (2 skb, 4 native, 8 offload)")
    return modes[0] if modes else None


def _json_object(value: str, kind: str, where: str) -> dict[str, Any]:
    try:
        obj = json.load(io.StringIO(value))
    except (ValueError, RecursionError):
        raise _fail(where, kind, 'expected a JSON object, e.g. {"handle": 1}') from None
    if not isinstance(obj, dict):
        raise _fail(where, kind, 'expected a JSON object, e.g. {"handle": 1}')
    return obj


def _only_keys(
    obj: dict[str, Any],
    ints: Mapping[str, tuple[int, int]],
    kind: str,
    where: str,
    strings: Iterable[str] = (),
) -> None:
    """Check that ``obj`` has only the known keys, integers within their bounds.

    Keys and values come from the file and are not quoted in errors.
    """
    allowed = sorted([*ints, *strings])
    for key, value in obj.items():
        if key in strings:
            continue
        if key not in ints:
            raise _fail(where, kind, f"unknown key (known: {', '.join(allowed)})")
        low, high = ints[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            bound = f"{low}" if low == high else f"an integer {low}..{high}"
            raise _fail(where, kind, f"{key} must be {bound}")


def _dwarf_source(object_path: str, image: bytes | None) -> str | None:
    """The source file the object's first DWARF compile unit names, or ``None``.

    Only the compile unit's top entry is read (a few attributes); anything malformed
    means "no name".
    """
    try:
        from elftools.elf.elffile import ELFFile

        if image is None:
            from .object import read_object_file  # bounded; refuses FIFOs and devices

            image = read_object_file(object_path)
        with io.BytesIO(image) as f:
            elf = ELFFile(f)
            if not elf.has_section(".debug_info"):
                return None
            info = elf.get_dwarf_info(relocate_dwarf_sections=False)
            for cu in info.iter_CUs():
                top = cu.get_top_DIE()
                name = top.attributes.get("DW_AT_name")
                comp_dir = top.attributes.get("DW_AT_comp_dir")
                if name is None or not isinstance(name.value, bytes):
                    return None
                path = os.fsdecode(name.value)
                if comp_dir is not None and isinstance(comp_dir.value, bytes):
                    path = os.path.join(os.fsdecode(comp_dir.value), path)
                return path if "\0" not in path else None
    except Exception:  # pyelftools signals bad input with many exception types
        return None
    return None
