"""Type information of one BPF object: its BTF first, its DWARF as the fallback.

clang emits BTF only for types that globals, maps or CO-RE relocations reference, so
the event struct of a program that only fills a reserved ring buffer slot is usually
absent from BTF but present in DWARF (when built with ``-g``). ``TypeInfo.find`` looks
in BTF, then DWARF (parsed lazily, once).

``record_type_candidates`` implements the rule that picks a buffer's record type when
the user names none: the named structs the program's own source defines — present in
the object but not in the running kernel's BTF, and not declared in ``vmlinux.h`` or a
system header.

Only a summary of the DWARF is needed for that (``typecache.DwarfSummary``): it is
cached per user and per object content, so that the next run of the same object does
not parse DWARF again (``bpfloom.typecache``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from . import _libbpf, typecache
from ._elf import object_image
from ._exceptions import TypeInfoError
from .btf import Btf
from .types import Array, Func, FuncProto, Pointer, Struct, Type, Union, Var, strip

BTF_KIND_STRUCT = 4
_SYSTEM_HEADER_DIRS = ("/usr/include/", "/usr/local/include/", "/usr/lib/")


@functools.cache
def _kernel_btf() -> int | None:
    """libbpf's parsed vmlinux BTF, loaded once per process (kept for its lifetime)."""
    return _libbpf.load_vmlinux_btf()


def kernel_has_struct(name: str) -> bool:
    """Whether the running kernel's BTF defines ``struct name``."""
    btf = _kernel_btf()
    if btf is None:
        return False
    return int(_libbpf.btf_find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)) > 0


def _declared_by_program(decl_file: str | None) -> bool:
    """Whether a type declared in ``decl_file`` (None: unknown) may be the program's
    own: not in ``vmlinux.h``, a system header or one of libbpf's headers."""
    if decl_file:
        base = os.path.basename(decl_file)
        if base == "vmlinux.h" or decl_file.startswith(_SYSTEM_HEADER_DIRS):
            return False
        if base.startswith("bpf_") and base.endswith(".h"):  # libbpf's own headers
            return False
    return True


def _is_program_defined(name: str, decl_file: str | None) -> bool:
    if not name or not _declared_by_program(decl_file):
        return False
    return not kernel_has_struct(name)


class TypeInfo:
    """Types of one object file: BTF (may be None) plus lazily parsed DWARF."""

    def __init__(self, path: str, btf: Btf | None, image: bytes | None = None) -> None:
        self.path = path
        self.image = image
        self.btf = btf
        self._dwarf: list[Type] | None = None
        self._summary: typecache.DwarfSummary | None = None

    @property
    def dwarf(self) -> list[Type]:
        """All named types from the object's DWARF (empty without ``-g``)."""
        if self._dwarf is None:
            from .dwarf import dwarf_types  # pyelftools: imported when DWARF is read

            source = self.image if self.image is not None else self.path
            self._dwarf = dwarf_types(source, self.path) or []
        return self._dwarf

    def dwarf_summary(self) -> typecache.DwarfSummary:
        """What ``find`` and ``program_structs`` need of the DWARF: from the per-user
        cache when this object's content was seen before, else parsed (and cached)."""
        if self._summary is None:
            image = self.image if self.image is not None else object_image(self.path)[0]
            key = typecache.object_key(image)
            summary = typecache.load(key, _declared_by_program)
            if summary is None:
                summary = typecache.summarize(self.dwarf, _declared_by_program)
                typecache.store(key, summary, _declared_by_program)
            self._summary = summary
        return self._summary

    def find(self, name: str) -> Type:
        """The struct/union/enum/typedef called ``name`` (``struct `` prefix allowed)."""
        bare = name.removeprefix("struct ").removeprefix("union ").strip()
        if self.btf is not None:
            aggregates = self.btf.by_name(bare, Struct) + self.btf.by_name(bare, Union)
            found = [t for t in aggregates if t.members]
            if found:
                return found[0]
            found_any = self.btf.by_name(bare)
            if found_any:
                return found_any[0]
        for entry in self.dwarf_summary().named:
            if entry.name == bare and (entry.kind not in ("struct", "union") or entry.has_members):
                if entry.type is not None:
                    return entry.type
                break  # not in the cached summary: read the DWARF itself
        else:
            return self._not_found(bare)
        for t in self.dwarf:
            if t.name == bare and (not isinstance(t, (Struct, Union)) or t.members):
                return t
        return self._not_found(bare)

    def _not_found(self, bare: str) -> Type:
        known = ", ".join(sorted(s.name for s in self.program_structs())) or "none"
        raise TypeInfoError(
            f"type {bare!r} is not in {os.path.basename(self.path)}'s BTF or DWARF "
            f"(structs the program defines: {known})"
        )

    def program_structs(self) -> list[Struct]:
        """Named structs defined by the program itself (not the kernel), BTF then DWARF."""
        seen: dict[str, Struct] = {}
        dwarf_structs = [e for e in self.dwarf_summary().named if e.kind == "struct"]
        dwarf_structs = [e for e in dwarf_structs if e.has_members]
        decl_files = {e.name: e.decl_file for e in dwarf_structs}
        btf_structs = list(self.btf.structs()) if self.btf is not None else []
        for t in btf_structs:
            if not t.members or t.name in seen:
                continue
            # DWARF knows where the struct was declared; BTF does not.
            decl_file = decl_files.get(t.name, t.decl_file)
            if _is_program_defined(t.name, decl_file):
                seen[t.name] = t
        for e in dwarf_structs:
            if e.name not in seen and _is_program_defined(e.name, e.decl_file):
                assert isinstance(e.type, Struct)  # kept: the summary keeps the program's own
                seen[e.name] = e.type
        return list(seen.values())

    def _btf_struct_names(self, kind: str) -> set[str]:
        """Names of structs that BTF functions take as parameters (``"params"``) or
        that global variables hold or point to (``"globals"``)."""
        names: set[str] = set()
        if self.btf is None:
            return names
        for t in self.btf.types:
            refs: list[Type | None] = []
            if kind == "params" and isinstance(t, Func) and isinstance(t.proto, FuncProto):
                refs = [p for _, p in t.proto.params]
            elif kind == "globals" and isinstance(t, Var):
                refs = [t.type]
            for ref in refs:
                target = strip(ref)
                if isinstance(target, Pointer):
                    target = strip(target.target)
                if isinstance(target, Struct) and target.name:
                    names.add(target.name)
        return names

    def record_type(self, map_name: str, map_types: set[str] | None = None) -> Struct:
        """Pick the record type of buffer ``map_name`` when it is unambiguous.

        From the structs the program defines, narrowing step by step while more than
        one is left (a step that would leave none is skipped): drop program context
        types (parameters of BTF functions); drop structs nested in another; keep
        those a global holds or points to
        (the ``const struct event *unused`` idiom); drop map key/value types
        (``map_types``); keep one named ``event``.
        """
        candidates = self.program_structs()
        params = self._btf_struct_names("params")
        held = self._btf_struct_names("globals")
        nested = {name for c in candidates for name in _member_struct_names(c)}
        steps: list[Callable[[Struct], bool]] = [
            lambda c: c.name not in params,
            lambda c: c.name not in nested,
            lambda c: c.name in held,
            lambda c: c.name not in (map_types or set()),
            lambda c: c.name == "event",
        ]
        for keep in steps:
            if len(candidates) <= 1:
                break
            narrowed = [c for c in candidates if keep(c)]
            if narrowed:
                candidates = narrowed
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise TypeInfoError(
                f"cannot find the record type of {map_name!r}: the object defines no struct "
                "of its own in BTF or DWARF (build it with -g, or name the type)"
            )
        names = ", ".join(sorted(c.name for c in candidates))
        raise TypeInfoError(
            f"the record type of {map_name!r} is ambiguous (candidates: {names}); name one "
            "explicitly (--event-type NAME)"
        )


def _member_struct_names(t: Struct, depth: int = 0) -> set[str]:
    """Names of the structs/unions nested (at any depth, through arrays) in ``t``."""
    out: set[str] = set()
    if depth > 16:
        return out
    for m in t.members:
        inner = strip(m.type)
        for _ in range(64):  # bounded: a hostile file's array may contain itself
            if not isinstance(inner, Array):
                break
            inner = strip(inner.element)
        if isinstance(inner, (Struct, Union)):
            if inner.name:
                out.add(inner.name)
            if isinstance(inner, Struct):
                out |= _member_struct_names(inner, depth + 1)
    return out
