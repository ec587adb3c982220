"""The C type model that BTF and DWARF are both translated into.

One small class per kind, in the spirit of cilium/ebpf's ``btf`` package. Both
``bpfloom.btf`` (from an object's BTF) and ``bpfloom.dwarf`` (from its DWARF debug
info) produce these objects, so decoders and encoders (``bpfloom.decode``) never
care where a type came from.

Types may be cyclic (``struct node { struct node *next; }``), so references are
plain attributes filled in after all types of a table exist; equality is identity
and ``repr`` never follows references.

Offsets of struct members are in **bits** (``Member.offset_bits``), as in BTF;
``Member.bitfield_size`` is 0 for a member that is not a bitfield.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Type:
    """Base of every type. ``name`` is ``""`` for anonymous types."""

    name: str

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        return f"<{type(self).__name__}{label}>"


@dataclass(repr=False, eq=False)
class Void(Type):
    name: str = "void"


@dataclass(repr=False, eq=False)
class Int(Type):
    """An integer of ``size`` bytes. ``is_bool``/``is_char`` come from BTF encoding or
    DWARF base type encoding (``DW_ATE_boolean``, ``DW_ATE_*char``)."""

    name: str
    size: int
    signed: bool
    is_bool: bool = False
    is_char: bool = False


@dataclass(repr=False, eq=False)
class Float(Type):
    name: str
    size: int


@dataclass(repr=False, eq=False)
class Pointer(Type):
    target: Type | None = None
    name: str = ""


@dataclass(repr=False, eq=False)
class Array(Type):
    element: Type | None = None
    length: int = 0
    name: str = ""


@dataclass(repr=False, eq=False)
class Member:
    """A struct or union member; ``offset_bits`` from the start of the aggregate."""

    name: str
    type: Type | None
    offset_bits: int
    bitfield_size: int = 0

    def __repr__(self) -> str:
        return f"<Member {self.name or '(anon)'} @{self.offset_bits}b {self.type!r}>"


@dataclass(repr=False, eq=False)
class Struct(Type):
    """A struct. ``decl_file`` is the source file that declared it, when DWARF knows."""

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    decl_file: str | None = None


@dataclass(repr=False, eq=False)
class Union(Type):
    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    decl_file: str | None = None


@dataclass(repr=False, eq=False)
class Enum(Type):
    """An enum; ``values`` maps each enumerator's name to its value."""

    name: str
    size: int
    signed: bool = False
    values: dict[str, int] = field(default_factory=dict)


@dataclass(repr=False, eq=False)
class Fwd(Type):
    """A forward declaration (``struct foo;``) whose body is unknown."""

    name: str
    is_union: bool = False


@dataclass(repr=False, eq=False)
class Typedef(Type):
    name: str
    target: Type | None = None


@dataclass(repr=False, eq=False)
class Const(Type):
    target: Type | None = None
    name: str = ""


@dataclass(repr=False, eq=False)
class Volatile(Type):
    target: Type | None = None
    name: str = ""


@dataclass(repr=False, eq=False)
class Restrict(Type):
    target: Type | None = None
    name: str = ""


@dataclass(repr=False, eq=False)
class TypeTag(Type):
    """BTF ``type_tag`` (``__attribute__((btf_type_tag))``): transparent like const."""

    name: str
    target: Type | None = None


@dataclass(repr=False, eq=False)
class FuncProto(Type):
    return_type: Type | None = None
    params: list[tuple[str, Type | None]] = field(default_factory=list)
    name: str = ""


@dataclass(repr=False, eq=False)
class Func(Type):
    name: str
    proto: Type | None = None


@dataclass(repr=False, eq=False)
class Var(Type):
    """A global variable; ``linkage`` 0 static, 1 global, 2 extern (BTF_VAR_*)."""

    name: str
    type: Type | None = None
    linkage: int = 0


@dataclass(repr=False, eq=False)
class VarSecinfo:
    var: Type | None
    offset: int
    size: int

    def __repr__(self) -> str:
        return f"<VarSecinfo {self.var!r} @{self.offset}+{self.size}>"


@dataclass(repr=False, eq=False)
class Datasec(Type):
    """A data section (``.rodata``, ``.data``, ``.bss``, ``.maps`` …) and its variables."""

    name: str
    size: int = 0
    vars: list[VarSecinfo] = field(default_factory=list)


@dataclass(repr=False, eq=False)
class DeclTag(Type):
    name: str
    target: Type | None = None
    component_idx: int = -1


TRANSPARENT = (Typedef, Const, Volatile, Restrict, TypeTag)


def strip(t: Type | None) -> Type | None:
    """Follow typedefs and qualifiers to the underlying type (bounded, for cycles)."""
    for _ in range(64):
        if isinstance(t, TRANSPARENT):
            t = t.target
        else:
            return t
    return None


def sizeof(t: Type | None) -> int:
    """The size in bytes of ``t``; raises ``ValueError`` for types without a size.

    Arrays are walked, not recursed into, and at most 64 links are followed, so a
    cyclic or absurdly deep type from a hostile file is a ``ValueError`` too. A huge
    array length is only multiplied: sizing never allocates.
    """
    count = 1
    for _ in range(64):
        t = strip(t)
        if isinstance(t, Array):
            if t.length == 0:
                return 0
            count *= t.length
            t = t.element
            continue
        if isinstance(t, (Int, Float, Enum, Struct, Union)):
            return count * t.size
        if isinstance(t, Pointer):
            return count * 8
        raise ValueError(f"type {t!r} has no size")
    raise ValueError("type chain too deep")


def describe(t: Type | None, _depth: int = 0) -> str:
    """A short C-like spelling of ``t`` for messages (``struct event``, ``char[16]``)."""
    if t is None:
        return "void"
    if _depth > 16:
        return "..."  # a cyclic or absurdly deep type from a hostile file
    for _ in range(16):
        if isinstance(t, TRANSPARENT) and not isinstance(t, Typedef):
            t = t.target
            if t is None:
                return "void"
        else:
            break
    if isinstance(t, Struct):
        return f"struct {t.name or '(anon)'}"
    if isinstance(t, Union):
        return f"union {t.name or '(anon)'}"
    if isinstance(t, Enum):
        return f"enum {t.name or '(anon)'}"
    if isinstance(t, Array):
        return f"{describe(t.element, _depth + 1)}[{t.length}]"
    if isinstance(t, Pointer):
        return f"{describe(t.target, _depth + 1)} *"
    return t.name or type(t).__name__.lower()
