"""Which bytes of an object's data sections its programs' instructions refer to.

A global variable is read or written by a program only through a 64-bit load
(``ld_imm64``) that libbpf relocates to the address of the variable's map; in the ELF
file each such load carries an ``R_BPF_64_64`` relocation against either the
variable's own symbol or its section's symbol, with the byte offset in the
instruction's immediate (libbpf resolves them the same way, in ``bpf_program__record_reloc``
and ``bpf_object__relocate_data`` of libbpf.c). A global that no relocation reaches is
never read: typically a plain ``const`` whose value clang folded into the code, so
setting it before load changes nothing.

The object is untrusted: the scan is bounded by the file (one pass over its relocation
records) and any malformed ELF raises :class:`~bpfloom._exceptions.ObjectFileError`.
"""

from __future__ import annotations

import io
import os
from typing import Literal

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from ._exceptions import ObjectFileError

__all__ = ["data_references"]

R_BPF_64_64 = 1  # ld_imm64 of a map or data address
_INSN_SIZE = 8


def data_references(
    source: str | os.PathLike[str] | bytes, name: str | None = None
) -> dict[str, set[int]]:
    """Section name → byte offsets that program instructions load the address of.

    ``source`` is the object file's path or its bytes (``name`` then names it in
    messages).
    """
    if isinstance(source, bytes):
        image, path = source, name or "the object"
    else:
        with open(source, "rb") as f:
            image = f.read()
        path = os.fspath(source)
    try:
        return _scan(ELFFile(io.BytesIO(image)))
    except ObjectFileError:
        raise
    except Exception as exc:  # pyelftools signals bad input with many exception types
        raise ObjectFileError(
            f"cannot read the relocations of {path} ({type(exc).__name__}: {exc})"
        ) from exc


def _scan(elf: ELFFile) -> dict[str, set[int]]:
    order: Literal["little", "big"] = "little" if elf.little_endian else "big"
    names = [s.name for s in elf.iter_sections()]
    found: dict[str, set[int]] = {}
    for section in elf.iter_sections():
        if not isinstance(section, RelocationSection) or section.is_RELA():
            continue
        target_index = section["sh_info"]
        if not 0 < target_index < len(names):
            continue
        target = elf.get_section(target_index)
        if not target["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            continue  # .rel.BTF, .rel.debug_*: types and debug info, not code
        symtab = elf.get_section(section["sh_link"])
        if not isinstance(symtab, SymbolTableSection):
            continue
        code = target.data()
        for reloc in section.iter_relocations():
            if reloc["r_info_type"] != R_BPF_64_64:
                continue
            where = reloc["r_offset"]
            if where < 0 or where + _INSN_SIZE > len(code):
                raise ObjectFileError(f"relocation at {where} is outside section {target.name}")
            symbol = symtab.get_symbol(reloc["r_info_sym"])
            shndx = symbol["st_shndx"]
            if not isinstance(shndx, int) or not 0 < shndx < len(names):
                continue  # undefined or special (externs: .kconfig, .ksyms)
            imm = int.from_bytes(code[where + 4 : where + 8], order, signed=True)
            base = 0 if symbol["st_info"]["type"] == "STT_SECTION" else symbol["st_value"]
            found.setdefault(names[shndx], set()).add(base + imm)
    return found
