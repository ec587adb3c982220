"""A pure-Python reader of raw BTF (BPF Type Format) into bpfloom's type model.

BTF is how a BPF object (and the kernel, at ``/sys/kernel/btf/vmlinux``) describes its
C types. The layout follows the kernel's Documentation/bpf/btf.rst: a header, then a
type section of variable-length ``struct btf_type`` records (type id = position, 1-based;
id 0 is ``void``), then a string section of NUL-terminated names.

Why our own parser instead of asking libbpf: decoders are built in Python from
``bpfloom.types`` objects, and walking libbpf's ``struct btf`` through ctypes one field
at a time is slower than unpacking the raw bytes here. The loader passes libbpf's
``btf__raw_data`` (whose DATASEC sizes and offsets libbpf has already fixed up) to
:func:`parse_btf`; :func:`btf_from_elf` reads an object's ``.BTF`` section as the
compiler wrote it (DATASEC sizes and offsets are still 0 there).

BTF comes from files we did not write, so the input is untrusted: every length, count,
string offset and type id is checked against the data before use, and anything
malformed raises :class:`~bpfloom._exceptions.TypeInfoError` (never ``IndexError``,
``struct.error`` or an unbounded loop). Parsing is two-phase, because types refer to
each other by id and may be cyclic: first every type object is created, then references
are resolved by id.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from typing import Any, TypeVar, overload

from ._exceptions import TypeInfoError
from .types import (
    Array,
    Const,
    Datasec,
    DeclTag,
    Enum,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Member,
    Pointer,
    Restrict,
    Struct,
    Type,
    Typedef,
    TypeTag,
    Union,
    Var,
    VarSecinfo,
    Void,
    Volatile,
)

__all__ = ["Btf", "btf_from_elf", "parse_btf"]

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
_HEADER_SIZE = 24  # struct btf_header: magic, version, flags, hdr_len, 4 x u32
_TYPE_SIZE = 12  # struct btf_type: name_off, info, size/type

# BTF_KIND_* (include/uapi/linux/btf.h)
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# BTF_INT_* encoding bits
INT_SIGNED = 1 << 0
INT_CHAR = 1 << 1
INT_BOOL = 1 << 2

_T = TypeVar("_T", bound=Type)
_INT_SIZES = frozenset((1, 2, 4, 8, 16))
_ENUM_SIZES = frozenset((1, 2, 4, 8))


class Btf:
    """The types of one BTF blob, indexed by BTF type id (``types[0]`` is ``Void``).

    Lookups by name and by object are indexed lazily on first use. Not thread-safe
    while those indexes are being built; read-only afterwards.
    """

    def __init__(self, types: list[Type]) -> None:
        self.types = types
        self._names: dict[str, list[Type]] | None = None
        self._ids: dict[Type, int] | None = None

    def __len__(self) -> int:
        return len(self.types)

    def __repr__(self) -> str:
        return f"<Btf {len(self.types) - 1} types>"

    @overload
    def by_name(self, name: str, kind: None = None) -> list[Type]: ...
    @overload
    def by_name(self, name: str, kind: type[_T]) -> list[_T]: ...

    def by_name(self, name: str, kind: type[Type] | None = None) -> list[Any]:
        """All types called ``name`` (in id order), optionally only of class ``kind``."""
        if self._names is None:
            names: dict[str, list[Type]] = {}
            for t in self.types[1:]:
                if t.name:
                    names.setdefault(t.name, []).append(t)
            self._names = names
        found = self._names.get(name, [])
        if kind is None:
            return list(found)
        return [t for t in found if isinstance(t, kind)]

    def structs(self) -> Iterator[Struct]:
        """Every named struct, in id order (forward declarations are ``Fwd``, not here)."""
        for t in self.types:
            if isinstance(t, Struct) and t.name:
                yield t

    def datasec(self, name: str) -> Datasec | None:
        """The data section called ``name`` (``.rodata``, ``.bss`` …), or None."""
        found = self.by_name(name, Datasec)
        return found[0] if found else None

    def type_id(self, t: Type) -> int:
        """The BTF type id of ``t``; raises ``TypeInfoError`` if ``t`` is not from here."""
        if self._ids is None:
            self._ids = {typ: i for i, typ in enumerate(self.types)}
        try:
            return self._ids[t]
        except KeyError:
            raise TypeInfoError(f"{t!r} is not a type of this BTF") from None


class _Strings:
    """The string section: NUL-terminated names looked up by offset, cached."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cache: dict[int, str] = {0: ""}

    def get(self, offset: int) -> str:
        """The string at ``offset``; raises ``TypeInfoError`` if out of range or not UTF-8."""
        name = self.cache.get(offset)
        if name is not None:
            return name
        if offset >= len(self.data):
            raise TypeInfoError(f"BTF string offset {offset} out of range")
        end = self.data.find(b"\0", offset)  # found: the section ends with NUL
        try:
            name = self.data[offset:end].decode()
        except UnicodeDecodeError:
            raise TypeInfoError(f"BTF string at offset {offset} is not UTF-8") from None
        self.cache[offset] = name
        return name


def parse_btf(raw: bytes | bytearray | memoryview) -> Btf:
    """Parse raw BTF bytes (header, types, strings) into a :class:`Btf`.

    Raises ``TypeInfoError`` with a short reason for any malformed or unsupported input.
    """
    data = bytes(raw)
    if len(data) < _HEADER_SIZE:
        raise TypeInfoError(f"BTF too short ({len(data)} bytes)")
    magic = int.from_bytes(data[:2], "little")
    if magic == BTF_MAGIC:
        order = "<"
    elif magic == 0x9FEB:
        order = ">"
    else:
        raise TypeInfoError(f"not BTF (magic 0x{magic:04x}, expected 0x{BTF_MAGIC:04x})")
    _, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + "HBBIIIII", data
    )
    if version != BTF_VERSION:
        raise TypeInfoError(f"unsupported BTF version {version}")
    if hdr_len < _HEADER_SIZE or hdr_len > len(data):
        raise TypeInfoError(f"bad BTF header length {hdr_len}")
    type_start, type_end = hdr_len + type_off, hdr_len + type_off + type_len
    str_start, str_end = hdr_len + str_off, hdr_len + str_off + str_len
    if type_end > len(data) or str_end > len(data):
        raise TypeInfoError("BTF type or string section runs past the end of the data")
    if type_off % 4 or type_len % 4:
        raise TypeInfoError("BTF type section is not 4-byte aligned")
    if type_start < str_end and str_start < type_end:
        raise TypeInfoError("BTF type and string sections overlap")
    strings = data[str_start:str_end]
    # As libbpf's btf_parse_str_sec: the section starts with "" and ends with a NUL.
    if not strings or strings[0] != 0 or strings[-1] != 0:
        raise TypeInfoError("BTF string section is empty or not NUL-terminated")
    return _Parser(data, order, type_start, type_end, _Strings(strings)).parse()


class _Parser:
    """One parse: phase 1 creates all types, phase 2 resolves references by id."""

    def __init__(self, data: bytes, order: str, start: int, end: int, strings: _Strings) -> None:
        self.data = data
        self.start = start
        self.end = end
        self.strings = strings
        self.u32 = struct.Struct(order + "I")
        self.i32 = struct.Struct(order + "i")
        self.triple = struct.Struct(order + "III")
        self.enum32 = struct.Struct(order + "Ii")
        self.pair = struct.Struct(order + "II")
        self.types: list[Type] = [Void()]
        # Phase 2 work: (object, attribute, referenced id).
        self.refs: list[tuple[object, str, int]] = []
        self.protos: list[tuple[FuncProto, list[tuple[str, int]]]] = []

    def _records(self, pos: int, count: int, size: int, what: str) -> int:
        """Check that ``count`` records of ``size`` bytes fit at ``pos``; return their end."""
        end = pos + count * size
        if end > self.end:
            raise TypeInfoError(f"BTF {what} runs past the end of the type section")
        return end

    def parse(self) -> Btf:
        """Walk the type section record by record, then resolve references."""
        data, pos, end = self.data, self.start, self.end
        triple, types, name_of = self.triple, self.types, self.strings.get
        while pos < end:
            if pos + _TYPE_SIZE > end:
                raise TypeInfoError(f"truncated BTF type #{len(types)}")
            name_off, info, size_or_type = triple.unpack_from(data, pos)
            pos += _TYPE_SIZE
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = bool(info >> 31)
            t, pos = self._one(kind, name_of(name_off), vlen, kflag, size_or_type, pos)
            types.append(t)
        self._resolve()
        return Btf(types)

    def _one(
        self, kind: int, name: str, vlen: int, kflag: bool, size_or_type: int, pos: int
    ) -> tuple[Type, int]:
        """Create the type of one record (references left for phase 2); return the new pos."""
        data, refs = self.data, self.refs
        t: Type
        if kind in (KIND_STRUCT, KIND_UNION):
            end = self._records(pos, vlen, 12, f"members of {name or '(anon)'}")
            members: list[Member] = []
            name_of = self.strings.get
            for m_name, m_type, m_off in self.triple.iter_unpack(data[pos:end]):
                if kflag:
                    m = Member(name_of(m_name), None, m_off & 0xFFFFFF, m_off >> 24)
                else:
                    m = Member(name_of(m_name), None, m_off)
                members.append(m)
                refs.append((m, "type", m_type))
            if kind == KIND_STRUCT:
                t = Struct(name, size_or_type, members)
            else:
                t = Union(name, size_or_type, members)
            return t, end
        if kind in (KIND_PTR, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT):
            t = Typedef(name) if kind == KIND_TYPEDEF else _QUALIFIERS[kind](name=name)
            refs.append((t, "target", size_or_type))
            return t, pos
        if kind == KIND_INT:
            end = self._records(pos, 1, 4, f"INT {name}")
            (enc,) = self.u32.unpack_from(data, pos)
            return self._int(name, size_or_type, enc), end
        if kind == KIND_ARRAY:
            end = self._records(pos, 1, 12, "ARRAY")
            elem, index, nelems = self.triple.unpack_from(data, pos)
            t = Array(None, nelems)
            refs.append((t, "element", elem))
            refs.append((t, "", index))  # only checked to be a valid id
            return t, end
        if kind in (KIND_ENUM, KIND_ENUM64):
            return self._enum(kind, name, vlen, kflag, size_or_type, pos)
        if kind == KIND_FWD:
            return Fwd(name, is_union=kflag), pos
        if kind == KIND_FUNC:
            t = Func(name)
            refs.append((t, "proto", size_or_type))
            return t, pos
        if kind == KIND_FUNC_PROTO:
            end = self._records(pos, vlen, 8, "FUNC_PROTO parameters")
            t = FuncProto(name=name)
            refs.append((t, "return_type", size_or_type))
            params = [(self.strings.get(p), pt) for p, pt in self.pair.iter_unpack(data[pos:end])]
            self.protos.append((t, params))
            return t, end
        if kind == KIND_VAR:
            end = self._records(pos, 1, 4, f"VAR {name}")
            (linkage,) = self.u32.unpack_from(data, pos)
            t = Var(name, linkage=linkage)
            refs.append((t, "type", size_or_type))
            return t, end
        if kind == KIND_DATASEC:
            end = self._records(pos, vlen, 12, f"DATASEC {name}")
            secinfos: list[VarSecinfo] = []
            for v_type, v_off, v_size in self.triple.iter_unpack(data[pos:end]):
                si = VarSecinfo(None, v_off, v_size)
                secinfos.append(si)
                refs.append((si, "var", v_type))
            return Datasec(name, size_or_type, secinfos), end
        if kind == KIND_FLOAT:
            if size_or_type not in (2, 4, 8, 12, 16):
                raise TypeInfoError(f"FLOAT {name} has bad size {size_or_type}")
            return Float(name, size_or_type), pos
        if kind == KIND_DECL_TAG:
            end = self._records(pos, 1, 4, f"DECL_TAG {name}")
            (component_idx,) = self.i32.unpack_from(data, pos)
            t = DeclTag(name, component_idx=component_idx)
            refs.append((t, "target", size_or_type))
            return t, end
        if kind == KIND_TYPE_TAG:
            t = TypeTag(name)
            refs.append((t, "target", size_or_type))
            return t, pos
        raise TypeInfoError(f"unknown BTF kind {kind} (type #{len(self.types)})")

    @staticmethod
    def _int(name: str, size: int, enc: int) -> Int:
        """An INT from its size and encoding word (flags, bit offset, bit count)."""
        encoding, bit_offset, bits = (enc >> 24) & 0x0F, (enc >> 16) & 0xFF, enc & 0xFF
        if size not in _INT_SIZES:
            raise TypeInfoError(f"INT {name} has bad size {size}")
        if bits == 0 or bits > 128 or (bits + 7) // 8 > size:
            raise TypeInfoError(f"INT {name} has bad bit count {bits}")
        if bit_offset:
            # Only old BTF encoded bitfields this way; members' bitfield_size replaced it.
            raise TypeInfoError(f"INT {name} with a bit offset ({bit_offset}) is unsupported")
        return Int(
            name,
            size,
            signed=bool(encoding & INT_SIGNED),
            is_bool=bool(encoding & INT_BOOL),
            is_char=bool(encoding & INT_CHAR),
        )

    def _enum(
        self, kind: int, name: str, vlen: int, signed: bool, size: int, pos: int
    ) -> tuple[Type, int]:
        """An ENUM (s32 values) or ENUM64 (lo32/hi32 values); kind_flag means signed."""
        if size not in _ENUM_SIZES:
            raise TypeInfoError(f"ENUM {name} has bad size {size}")
        values: dict[str, int] = {}
        name_of = self.strings.get
        if kind == KIND_ENUM:
            end = self._records(pos, vlen, 8, f"values of ENUM {name}")
            for v_name, value in self.enum32.iter_unpack(self.data[pos:end]):
                values[name_of(v_name)] = value if signed else value & 0xFFFFFFFF
        else:
            end = self._records(pos, vlen, 12, f"values of ENUM64 {name}")
            for v_name, lo, hi in self.triple.iter_unpack(self.data[pos:end]):
                value = hi << 32 | lo
                if signed and value >= 1 << 63:
                    value -= 1 << 64
                values[name_of(v_name)] = value
        return Enum(name, size, signed=signed, values=values), end

    def _resolve(self) -> None:
        """Phase 2: replace every referenced id by its type object."""
        types = self.types
        count = len(types)
        for obj, attr, type_id in self.refs:
            if type_id >= count:
                raise TypeInfoError(f"BTF type id {type_id} out of range (have {count - 1})")
            if attr:
                setattr(obj, attr, types[type_id])
        for proto, params in self.protos:
            resolved: list[tuple[str, Type | None]] = []
            for p_name, type_id in params:
                if type_id >= count:
                    raise TypeInfoError(f"BTF type id {type_id} out of range (have {count - 1})")
                resolved.append((p_name, types[type_id]))
            proto.params = resolved


_QUALIFIERS: dict[int, type[Pointer | Volatile | Const | Restrict]] = {
    KIND_PTR: Pointer,
    KIND_VOLATILE: Volatile,
    KIND_CONST: Const,
    KIND_RESTRICT: Restrict,
}


def btf_from_elf(path: str | os.PathLike[str]) -> Btf | None:
    """Parse the ``.BTF`` section of the ELF object at ``path``; None if it has none.

    Raises ``OSError`` if the file cannot be read and ``TypeInfoError`` if it is not
    ELF or its BTF is malformed.
    """
    with open(path, "rb") as f:
        image = f.read()
    try:
        from elftools.elf.elffile import ELFFile  # imported when used: start-up

        section = ELFFile(io.BytesIO(image)).get_section_by_name(".BTF")
        if section is None:
            return None
        raw = section.data()
    except Exception as exc:  # pyelftools raises many kinds of errors on a bad ELF
        raise TypeInfoError(
            f"cannot read the .BTF section of {os.fspath(path)} ({type(exc).__name__}: {exc})"
        ) from exc
    return parse_btf(raw)
