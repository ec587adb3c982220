"""What the goroutine tracer needs to know about a Go binary, read from the binary itself.

A uprobe on ``runtime.casgstatus(gp *g, oldval, newval uint32)`` sees a goroutine change
state. To turn that into ``goid old -> new`` the BPF program needs three facts that
differ between Go versions and builds, so they are read from the ELF file, never
assumed:

- the **Go version** (``go1.19.8``), from the ``.go.buildinfo`` section that Go 1.13+
  writes (as Go's own ``debug/buildinfo`` reads it), else from the string
  ``runtime.buildVersion`` points to;
- the **calling convention** of ``casgstatus``: Go's register ABI (``ABIInternal``:
  arguments in RAX, RBX, RCX on amd64 since Go 1.17; in R0, R1, R2 on arm64 since Go
  1.18; unless the binary's recorded build settings say ``GOEXPERIMENT=noregabi``,
  which the runtime honoured in those first releases only) or the older stack ABI
  (``ABI0``: at SP+8, SP+16, SP+20 at function entry);
- the **offset of** ``goid`` **in** ``runtime.g``, from the binary's DWARF
  (``.debug_info``, compressed as ``SHF_COMPRESSED`` by Go 1.12+ or as ``.zdebug_info``
  by Go 1.11; pyelftools reads both). It is 152 (0x98) in Go 1.17 to 1.19, but nothing
  here relies on that.

The ``runtime.casgstatus`` symbol must be in the ELF symbol table: the uprobe attaches
to it by name. A binary built with ``-ldflags=-s`` has no symbol table, one built with
``-ldflags=-w`` no DWARF; both are refused with a one-line reason (``GoBinaryError``),
and a known goid offset can be given instead of DWARF (``read_go_binary(...,
goid_offset=N)``).

Finding ``runtime.g`` is fast even in big binaries: instead of decoding every DIE of the
``runtime`` unit (about a second in pyelftools), the decompressed ``.debug_info`` is
searched for the inline name string ``runtime.g`` (Go writes names as
``DW_FORM_string``) and the DIE around each hit is decoded and checked. Only if no hit
checks out (a future layout) are the ``runtime`` units walked DIE by DIE.
"""

from __future__ import annotations

import io
import os
import platform
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from elftools.common.exceptions import DWARFError, ELFError
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.elf.elffile import ELFFile

from .._exceptions import ObjectFileError

__all__ = [
    "CASGSTATUS",
    "GoBinary",
    "GoBinaryError",
    "host_goarch",
    "parse_go_version",
    "read_go_binary",
    "uses_register_abi",
]

CASGSTATUS = "runtime.casgstatus"
BUILDINFO_MAGIC = b"\xff Go buildinf:"
_BUILDINFO_HEADER = 32  # magic (14), pointer size (1), flags (1), 16 bytes of padding/pointers
_FLAG_BIG_ENDIAN = 0x1
_FLAG_INLINE_STRINGS = 0x2  # Go 1.18+: version and modinfo follow the header as varint strings
_ELF_GOARCH = {"EM_X86_64": "amd64", "EM_AARCH64": "arm64"}
_MACHINE_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# First Go release whose functions take arguments in registers (the register ABI), per arch.
_REGISTER_ABI_SINCE = {"amd64": (1, 17), "arm64": (1, 18)}
_DW_OP_PLUS_UCONST = 0x23
_VERSION = re.compile(rb"go(\d+)\.(\d+)")
# Errors pyelftools raises on malformed input (it asserts in places).
ByteOrder = Literal["little", "big"]
_PARSE_ERRORS = (ELFError, DWARFError, AssertionError, KeyError, IndexError, ValueError, EOFError)


class GoBinaryError(ObjectFileError):
    """A file that cannot be traced as a Go binary: missing, not ELF, not Go, stripped,
    without DWARF, or built for an architecture the tracer does not support."""


@dataclass(frozen=True)
class GoBinary:
    """Facts about one Go executable that the goroutine tracer needs."""

    path: str
    goarch: str  # Go's name of the architecture: "amd64" or "arm64"
    version: str  # as the toolchain wrote it, e.g. "go1.19.8"
    register_abi: bool  # casgstatus takes its arguments in registers (else on the stack)
    goid_offset: int  # byte offset of goid in runtime.g

    @property
    def version_tuple(self) -> tuple[int, int]:
        return parse_go_version(self.version)


def parse_go_version(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a Go version string: ``"go1.19.8"`` → ``(1, 19)``; also
    ``"go1.21rc2"`` and ``"devel go1.22-abc123 ..."``. Raises ``ValueError`` otherwise."""
    found = _VERSION.search(version.encode())
    if found is None:
        raise ValueError(f"not a Go version: {version!r}")
    return int(found.group(1)), int(found.group(2))


def uses_register_abi(
    goarch: str, version: tuple[int, int], experiments: frozenset[str] = frozenset()
) -> bool:
    """Whether Go ``version`` on ``goarch`` passes function arguments in registers.

    ``experiments`` is the binary's ``GOEXPERIMENT`` setting: the first two releases with
    the register ABI on an architecture could still be built without it
    (``GOEXPERIMENT=noregabi``); from the third on, the runtime ignores that (as Go 1.19
    on amd64 does).
    """
    since = _REGISTER_ABI_SINCE[goarch]
    if version < since:
        return False
    optional_until = (since[0], since[1] + 1)
    return not (version <= optional_until and "noregabi" in experiments)


def host_goarch() -> str | None:
    """Go's name of this machine's architecture, or None if the tracer has no BPF
    register layout for it."""
    return _MACHINE_GOARCH.get(platform.machine().lower())


def read_go_binary(path: str, *, goid_offset: int | None = None) -> GoBinary:
    """Read what the tracer needs from the Go executable at ``path``.

    ``goid_offset`` skips the DWARF lookup (for binaries built without DWARF, when the
    offset is known from an identical build that has it). Raises ``GoBinaryError``
    with a one-line reason; reads the file once, keeps nothing open.
    """
    if not os.path.exists(path):
        raise GoBinaryError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise GoBinaryError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise GoBinaryError(f"{path} is not an ELF file")
            f.seek(0)
            return _read(ELFFile(f), path, goid_offset)
    except OSError as exc:
        raise GoBinaryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except _PARSE_ERRORS as exc:
        raise GoBinaryError(f"{path}: malformed ELF file ({exc or type(exc).__name__})") from exc


def _read(elf: ELFFile, path: str, goid_offset: int | None) -> GoBinary:
    version, modinfo = _build_info(elf)
    if version is None:
        raise GoBinaryError(
            f"{path} is not a Go binary (no .go.buildinfo section, no runtime.buildVersion)"
        )
    machine = elf.header["e_machine"]
    goarch = _ELF_GOARCH.get(machine)
    if goarch is None or elf.elfclass != 64:
        raise GoBinaryError(
            f"{path} is built for {machine} ({elf.elfclass}-bit); the goroutine tracer "
            "supports amd64 and arm64"
        )
    try:
        parsed = parse_go_version(version)
    except ValueError as exc:
        raise GoBinaryError(f"{path}: unrecognised Go version {version!r}") from exc
    if _symbol_address(elf, CASGSTATUS) is None:
        raise GoBinaryError(
            f"{path} has no symbol {CASGSTATUS} (stripped binary? build without -ldflags=-s)"
        )
    if goid_offset is None:
        goid_offset = _goid_offset(elf, path)
    return GoBinary(
        path=path,
        goarch=goarch,
        version=version,
        register_abi=uses_register_abi(goarch, parsed, _experiments(modinfo)),
        goid_offset=goid_offset,
    )


# --- the Go version ---------------------------------------------------------------------


def _build_info(elf: ELFFile) -> tuple[str | None, str]:
    """The toolchain version the binary was built with (None if it is not Go) and its
    module info text (build settings such as ``build\tGOEXPERIMENT=...``; may be "")."""
    section = elf.get_section_by_name(".go.buildinfo")
    if section is not None:
        data = section.data()
        if data.startswith(BUILDINFO_MAGIC) and len(data) >= _BUILDINFO_HEADER:
            ptr_size, flags = data[14], data[15]
            if flags & _FLAG_INLINE_STRINGS:
                version, pos = _varint_string(data, _BUILDINFO_HEADER)
                modinfo, _ = _varint_string(data, pos)
                return version, modinfo or ""
            # Go 1.13-1.17: the header holds the addresses of runtime.buildVersion and
            # runtime.modinfo, two Go strings.
            order: ByteOrder = "big" if flags & _FLAG_BIG_ENDIAN else "little"
            version_at = int.from_bytes(data[16 : 16 + ptr_size], order)
            modinfo_at = int.from_bytes(data[16 + ptr_size : 16 + 2 * ptr_size], order)
            return (
                _go_string_at(elf, version_at, ptr_size, order),
                _go_string_at(elf, modinfo_at, ptr_size, order) or "",
            )
    address = _symbol_address(elf, "runtime.buildVersion")
    if address is None:
        return None, ""
    native: ByteOrder = "little" if elf.little_endian else "big"
    return _go_string_at(elf, address, elf.elfclass // 8, native), ""


def _varint_string(data: bytes, pos: int) -> tuple[str | None, int]:
    """The length-prefixed (unsigned varint) string at ``data[pos:]`` and the position
    after it; ``(None, pos)`` if there is none."""
    length = shift = 0
    at = pos
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            end = at + length
            if end > len(data):
                break
            return data[at:end].decode(errors="replace"), end
    return None, pos


def _experiments(modinfo: str) -> frozenset[str]:
    """The ``GOEXPERIMENT`` build setting (Go 1.18+ records it) as a set of names."""
    for line in modinfo.splitlines():
        if line.startswith("build\tGOEXPERIMENT="):
            return frozenset(filter(None, line.split("=", 1)[1].split(",")))
    return frozenset()


def _go_string_at(elf: ELFFile, address: int, ptr_size: int, order: ByteOrder) -> str | None:
    """The Go string whose header (data pointer, length) is at virtual ``address``."""
    header = _read_virtual(elf, address, 2 * ptr_size)
    if header is None:
        return None
    data = int.from_bytes(header[:ptr_size], order)
    length = int.from_bytes(header[ptr_size:], order)
    if length > 1024:
        return None
    text = _read_virtual(elf, data, length)
    return None if text is None else text.decode(errors="replace")


def _read_virtual(elf: ELFFile, address: int, size: int) -> bytes | None:
    """``size`` bytes at virtual ``address``, from the file's loaded segments."""
    for offset in elf.address_offsets(address, size):
        stream: Any = elf.stream
        stream.seek(offset)
        data: bytes = stream.read(size)
        return data if len(data) == size else None
    return None


def _symbol_address(elf: ELFFile, name: str) -> int | None:
    """``st_value`` of symbol ``name`` in ``.symtab``, or None.

    Read with ``struct`` rather than pyelftools' symbol objects, which take about half a
    second to build for the 14 000 symbols of a mid-sized Go binary: first the offsets
    in the string table where ``name`` is spelled, then the entries that point there.
    """
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None or symtab["sh_entsize"] == 0:
        return None
    strtab = elf.get_section(symtab["sh_link"]).data()
    wanted = name.encode() + b"\x00"
    offsets = set()
    pos = strtab.find(wanted)
    while pos >= 0:
        offsets.add(pos)
        pos = strtab.find(wanted, pos + 1)
    if not offsets:
        return None
    order = "<" if elf.little_endian else ">"
    # Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size;
    # Elf32_Sym: st_name, st_value, st_size, st_info, st_other, st_shndx.
    entry, value_at = ("IBBHQQ", 4) if elf.elfclass == 64 else ("IIIBBH", 1)
    layout = struct.Struct(order + entry)
    data = symtab.data()
    usable = len(data) - len(data) % layout.size
    for fields in layout.iter_unpack(data[:usable]):
        if fields[0] in offsets:
            return int(fields[value_at])
    return None


# --- the goid offset --------------------------------------------------------------------


def _goid_offset(elf: ELFFile, path: str) -> int:
    """``DW_AT_data_member_location`` of member ``goid`` of struct ``runtime.g``."""
    if not (elf.get_section_by_name(".debug_info") or elf.get_section_by_name(".zdebug_info")):
        raise GoBinaryError(
            f"{path} has no DWARF debug info (built with -ldflags=-w?); cannot find the "
            "goid offset of runtime.g"
        )
    try:
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        g = _find_runtime_g(dwarf)
        if g is None:
            raise GoBinaryError(f"{path}: its DWARF has no struct runtime.g")
        for member in g.iter_children():
            if member.tag == "DW_TAG_member" and _name(member) == "goid":
                _require_size(member, 8, path)
                return _member_offset(member, path)
    except _PARSE_ERRORS as exc:
        raise GoBinaryError(f"{path}: cannot read its DWARF ({exc or type(exc).__name__})") from exc
    raise GoBinaryError(f"{path}: struct runtime.g in its DWARF has no member goid")


def _find_runtime_g(dwarf: DWARFInfo) -> DIE | None:
    for die in _runtime_g_candidates(dwarf):
        if _is_runtime_g(die):
            return die
    # No name hit decoded to the struct: walk the runtime units (slow but certain).
    for cu in dwarf.iter_CUs():
        if _name(cu.get_top_DIE()) != "runtime":
            continue
        for die in cu.get_top_DIE().iter_children():
            if _is_runtime_g(die):
                return die
    return None


def _runtime_g_candidates(dwarf: DWARFInfo) -> Iterator[DIE]:
    """DIEs whose first attribute is the inline name ``runtime.g``.

    A DIE is its abbreviation code (a ULEB128, one byte for Go's few abbreviations, at
    most a few) followed by its attributes; Go writes ``DW_AT_name`` first. So for each
    place the string occurs, the DIE starting a few bytes before it whose name attribute
    sits exactly there is the candidate.
    """
    if dwarf.debug_info_sec is None:
        return
    stream: Any = dwarf.debug_info_sec.stream
    data = stream.getvalue() if isinstance(stream, io.BytesIO) else _read_all(stream)
    needle = b"runtime.g\x00"
    pos = data.find(needle)
    while pos >= 0:
        cu = dwarf.get_CU_containing(pos)
        for back in range(1, 4):
            start = pos - back
            if start <= cu.cu_die_offset:
                break
            try:
                die = DIE(cu=cu, stream=stream, offset=start)
            except _PARSE_ERRORS:
                continue
            name = die.attributes.get("DW_AT_name")
            if name is not None and name.offset == pos:
                yield die
                break
        pos = data.find(needle, pos + 1)


def _read_all(stream: Any) -> bytes:
    stream.seek(0)
    data: bytes = stream.read()
    return data


def _is_runtime_g(die: DIE) -> bool:
    return bool(die.tag == "DW_TAG_structure_type" and _name(die) == "runtime.g")


def _name(die: DIE) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    value = attr.value
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _require_size(member: DIE, size: int, path: str) -> None:
    """The BPF program reads goid as 8 bytes: refuse a runtime.g whose goid is not."""
    die = member
    for _ in range(8):  # through typedefs and qualifiers, never endlessly
        if "DW_AT_byte_size" in die.attributes:
            found = die.attributes["DW_AT_byte_size"].value
            if found != size:
                raise GoBinaryError(
                    f"{path}: runtime.g.goid is {found} bytes in its DWARF, not {size}"
                )
            return
        if "DW_AT_type" not in die.attributes:
            break
        die = die.get_DIE_from_attribute("DW_AT_type")


def _member_offset(member: DIE, path: str) -> int:
    """A member's byte offset: a constant (what Go writes) or a ``DW_OP_plus_uconst``
    location expression (what older producers write)."""
    attr = member.attributes.get("DW_AT_data_member_location")
    if attr is not None:
        value = attr.value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, list) and value and value[0] == _DW_OP_PLUS_UCONST:
            offset = shift = 0
            for byte in value[1:]:
                offset |= (int(byte) & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    return offset
    raise GoBinaryError(f"{path}: runtime.g.goid in its DWARF has no usable member location")
