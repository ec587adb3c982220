"""What a rule set lets the kernel leave out: the prefilter of each event kind.

A prefilter is a condition the BPF program checks before it emits an event: the event
is emitted when at least one *clause* holds, and a clause is a conjunction of facts
the program knows cheaply (``KernelFilter``): whether the call failed, and whether
the comm, the parent's comm, the path as given or ``norm_path`` is in some set of
strings (an exact set, or a prefix). The program looks the comms up in one hash map
and the paths in one longest-prefix-match trie (``bpf/bpfloom_prefilter.h``); each
set is one bit of the value it finds.

The prefilter must be exact in one direction only: it may let through an event no rule
matches, never drop one a rule could match — a threshold must count every match, so
"could match" is about the condition alone. It is derived as an *over-approximation*
of the rules: each condition in negation normal form, every comparison the kernel
cannot check replaced by true (in either polarity), then the disjunctive normal form,
OR-ed over the enabled rules that apply to the kind. A fact the program does not know
for an event (a path it cut, a ``norm_path`` it did not resolve) leaves the
comparisons on it unchecked: true again. So every event some rule matches passes; the
property test in ``tests/test_detect_prefilter.py`` checks it against the row-wise
engine on random rules and events.

What the kernel checks, per kind (anything else is true):

- ``event``: the kind itself;
- ``err``, ``fd`` (open) and ``ret`` (exec): whether the call failed (``ret < 0``),
  from the values each field can take on failed and successful calls;
- ``comm``, ``parent_comm``: ``==``, ``!=``, ``in`` (exact comms, at most 15 bytes);
- ``path``, ``norm_path`` (open, exec): ``==``, ``!=``, ``in``, ``startswith`` and
  ``glob`` patterns that are a literal or a literal then ``*`` (exact), and for other
  globs their literal prefix (when the comparison is not negated).

The clauses are bounded (``MAX_CLAUSES``, the BPF array; 64 sets of each map, their
entries by the map sizes); a rule set beyond those bounds gets no prefilter for that
kind (``KernelFilter.clauses`` None): every event is emitted, as without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._columnar import literal_bytes
from ._expr import And, Compare, Compiler, InSet, Node, Not, Value
from ._loader import CompiledRule

MAX_CLAUSES = 16  # BPFLOOM_MAX_CLAUSES in bpf/bpfloom_prefilter.h
MAX_SETS = 64  # bits of a map value
MAX_COMMS = 4096  # max_entries of bpfloom_comms
MAX_PATHS = 4096  # max_entries of bpfloom_paths
COMM_LEN = 16  # char comm[16]: at most 15 bytes and a NUL
PATH_LEN = 256  # the path buffers and the trie's key data

RET_FAILED = 1
RET_OK = 2
RET_ANY = RET_FAILED | RET_OK

# Facts (bpfloom_facts.known in the BPF header): which string field each clause field is.
COMM, PCOMM, PATH, NPATH = "comm", "pcomm", "path", "npath"
KNOW_BITS = {COMM: 1, PCOMM: 2, PATH: 4, NPATH: 8}

#: Per kind: the rule fields the kernel knows, as facts.
STRING_FACTS: dict[str, dict[str, str]] = {
    "open": {"comm": COMM, "path": PATH, "norm_path": NPATH},
    "exec": {"comm": COMM, "parent_comm": PCOMM, "path": PATH, "norm_path": NPATH},
    "exit": {"comm": COMM},
}

_I64 = (-(1 << 63), (1 << 63) - 1)
#: Per kind and int field: the values it can take on failed calls and on successful
#: ones (``OpenSnoop.record``: fd and err from the s64 ret; execsnoop's ret is an s32).
RET_RANGES: dict[str, dict[str, tuple[tuple[int, int], tuple[int, int]]]] = {
    "open": {"err": ((1, 1 << 63), (0, 0)), "fd": ((-1, -1), (0, _I64[1]))},
    "exec": {"ret": ((-(1 << 31), -1), (0, (1 << 31) - 1))},
    "exit": {},
}


@dataclass(frozen=True)
class Clause:
    """A conjunction of facts: the call's result among ``ret`` (``RET_*`` bits), and
    per string fact the sets its value must be in (``ins``) and not in (``outs``), as
    bit masks. A fact the program does not know for an event is not checked."""

    ret: int = RET_ANY
    ins: tuple[tuple[str, int], ...] = ()
    outs: tuple[tuple[str, int], ...] = ()

    def mask(self, fact: str, outs: bool = False) -> int:
        return dict(self.outs if outs else self.ins).get(fact, 0)

    def both(self, other: Clause) -> Clause | None:
        """This clause and ``other``; None if they cannot hold together."""
        ret = self.ret & other.ret
        if not ret:
            return None
        ins, outs = dict(self.ins), dict(self.outs)
        for fact, bits in other.ins:
            ins[fact] = ins.get(fact, 0) | bits
        for fact, bits in other.outs:
            outs[fact] = outs.get(fact, 0) | bits
        if any(ins.get(fact, 0) & bits for fact, bits in outs.items()):
            return None
        return Clause(ret, tuple(sorted(ins.items())), tuple(sorted(outs.items())))

    def implies(self, other: Clause) -> bool:
        """Whether every event this clause holds on, ``other`` holds on too."""
        if self.ret & ~other.ret:
            return False
        return all(self.mask(f) & b == b for f, b in other.ins) and all(
            self.mask(f, True) & b == b for f, b in other.outs
        )


TRUE: tuple[Clause, ...] = (Clause(),)
FALSE: tuple[Clause, ...] = ()


class TooBig(Exception):
    """The prefilter would pass the bounds: the kind gets none."""


@dataclass
class KernelFilter:
    """The prefilter of one kind, ready to be written into a BPF object.

    ``clauses`` None means none (emit everything); an empty list means no rule can match
    any event of the kind (emit nothing). ``comms`` maps a comm (16 bytes, NUL-padded)
    to the bits of the comm sets it is in; ``paths`` maps a trie prefix (a path and its
    NUL for an exact path, the bytes alone for a prefix) to the bits of every path set
    a string starting with it is in (the sets of the shorter prefixes included, since
    the trie finds only the longest).
    """

    clauses: list[Clause] | None
    comms: dict[bytes, int] = field(default_factory=dict)
    paths: dict[bytes, int] = field(default_factory=dict)

    @property
    def needs(self) -> int:
        """The ``KNOW_BITS`` of the facts some clause checks."""
        found = 0
        for clause in self.clauses or ():
            for fact, _ in (*clause.ins, *clause.outs):
                found |= KNOW_BITS[fact]
        return found

    def describe(self) -> str:
        """One line per clause, for messages and tests."""
        if self.clauses is None:
            return "everything"
        if not self.clauses:
            return "nothing"
        rets = {RET_ANY: "", RET_FAILED: "failed", RET_OK: "succeeded"}
        lines = []
        for c in self.clauses:
            parts = [rets[c.ret]] if c.ret != RET_ANY else []
            parts += [f"{f} in {b:#x}" for f, b in c.ins]
            parts += [f"{f} not in {b:#x}" for f, b in c.outs]
            lines.append(" and ".join(parts) or "true")
        return "\n".join(lines)


class _Sets:
    """Bits for the sets comparisons name, and the map entries they need."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bits: dict[tuple[str, frozenset[bytes]], int] = {}
        self.entries: dict[bytes, int] = {}

    def bit(self, how: str, keys: frozenset[bytes]) -> int | None:
        """The bit of the set of ``keys`` (map keys), or None past the bounds."""
        found = self.bits.get((how, keys))
        if found is not None:
            return found
        new = [k for k in keys if k not in self.entries]
        if len(self.bits) >= MAX_SETS or len(self.entries) + len(new) > self.limit:
            return None
        bit = 1 << len(self.bits)
        self.bits[(how, keys)] = bit
        for k in keys:
            self.entries[k] = self.entries.get(k, 0) | bit
        return bit


class _Builder:
    """Derives the clauses of one kind (see the module docstring)."""

    def __init__(self, kind: str, compiler: Compiler | None) -> None:
        self.kind = kind
        self.compiler = compiler
        self.comms = _Sets(MAX_COMMS)
        self.paths = _Sets(MAX_PATHS)
        self.memo: dict[tuple[int, bool], tuple[Node, tuple[Clause, ...]]] = {}

    def over(self, node: Node, positive: bool) -> tuple[Clause, ...]:
        """Clauses that hold on every event where ``node`` is ``positive``."""
        key = (id(node), positive)
        found = self.memo.get(key)
        if found is not None:
            return found[1]
        if isinstance(node, Compare | InSet):
            result = self.leaf(node, positive)
        elif isinstance(node, Not):
            result = self.over(node.item, not positive)
        else:
            parts = [self.over(item, positive) for item in node.items]
            conjunction = isinstance(node, And) == positive
            result = _all(parts) if conjunction else _any(parts)
        self.memo[key] = (node, result)
        return result

    def leaf(self, node: Compare | InSet, positive: bool) -> tuple[Clause, ...]:
        f = node.field
        if f == "event" and self.compiler is not None:
            hit = bool(self.compiler.test(node)({"event": self.kind}))
            return TRUE if hit == positive else FALSE
        ranges = RET_RANGES[self.kind].get(f)
        if ranges is not None and self.compiler is not None:
            return self.ret_leaf(node, ranges, positive)
        fact = STRING_FACTS[self.kind].get(f)
        if fact is None or self.compiler is None:
            return TRUE
        return self.string_leaf(node, fact, positive)

    def ret_leaf(
        self,
        node: Compare | InSet,
        ranges: tuple[tuple[int, int], tuple[int, int]],
        positive: bool,
    ) -> tuple[Clause, ...]:
        assert self.compiler is not None
        ret = 0
        for bit, (lo, hi) in zip((RET_FAILED, RET_OK), ranges, strict=True):
            if _can_be(node, self._values(node), lo, hi, positive):
                ret |= bit
        return (Clause(ret),) if ret else FALSE

    def _values(self, node: Compare | InSet) -> list[Value]:
        assert self.compiler is not None
        if isinstance(node, Compare):
            return [node.value]
        values: set[Value] = set(node.values)
        for name in node.lists:
            values |= self.compiler.members(name, node.field)
        return list(values)

    def string_leaf(self, node: Compare | InSet, fact: str, positive: bool) -> tuple[Clause, ...]:
        op = node.op if isinstance(node, Compare) else "in"
        longest = COMM_LEN - 1 if fact in (COMM, PCOMM) else PATH_LEN - 1
        if op == "glob":
            assert isinstance(node, Compare)
            pattern = str(node.value)
            cut = _first_special(pattern)
            if cut < 0:
                op = "=="  # no wildcard: the literal itself
            elif pattern[cut:] == "*" * (len(pattern) - cut) or positive:
                op, node = "startswith", Compare(node.field, "startswith", pattern[:cut])
            else:
                return TRUE
        if op in ("==", "!=", "in"):
            keys: set[bytes] = set()
            for value in self._values(node):
                data = literal_bytes(str(value), "surrogateescape", whole=True)
                if data is None:
                    return TRUE  # (not with this policy; kept for safety)
                if data is not False and len(data) <= longest:
                    keys.add(data)  # (else no value the kernel reads can be it)
            inside = positive != (op == "!=")
            if not keys:
                return FALSE if inside else TRUE
            if fact in (COMM, PCOMM):
                bit = self.comms.bit("=", frozenset(k.ljust(COMM_LEN, b"\0") for k in keys))
            else:
                bit = self.paths.bit("=", frozenset(k + b"\0" for k in keys))
            if bit is None:
                return TRUE
            return (Clause(ins=((fact, bit),)),) if inside else (Clause(outs=((fact, bit),)),)
        if op == "startswith" and fact in (PATH, NPATH):
            assert isinstance(node, Compare)
            data = literal_bytes(str(node.value), "surrogateescape", whole=False)
            if data is None:
                return TRUE
            if data is False or len(data) > longest:
                return FALSE if positive else TRUE
            if not data:
                return TRUE if positive else FALSE
            bit = self.paths.bit("^", frozenset({data}))
            if bit is None:
                return TRUE
            return (Clause(ins=((fact, bit),)),) if positive else (Clause(outs=((fact, bit),)),)
        return TRUE  # comm prefixes, suffixes, substrings: not in the kernel


def _first_special(pattern: str) -> int:
    found = [i for i in (pattern.find(c) for c in "*?[") if i >= 0]
    return min(found) if found else -1


def _can_be(node: Compare | InSet, values: Sequence[Value], lo: int, hi: int, truth: bool) -> bool:
    """Whether the comparison can come out ``truth`` for some int x in [lo, hi]."""
    if isinstance(node, InSet):
        ints = {v for v in values if isinstance(v, int) and lo <= v <= hi}
        return bool(ints) if truth else hi - lo + 1 > len(ints)
    v = node.value
    op = node.op
    if not truth:
        op = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}[op]
    if not isinstance(v, int | float):
        return True
    if op == "==":
        return lo <= v <= hi and float(v).is_integer()
    if op == "!=":
        return not (lo == hi == v)
    if op == "<":
        return lo < v
    if op == "<=":
        return lo <= v
    if op == ">":
        return hi > v
    return hi >= v


def _all(parts: Iterable[tuple[Clause, ...]]) -> tuple[Clause, ...]:
    result = TRUE
    for part in parts:
        combined = [c for a in result for b in part if (c := a.both(b)) is not None]
        result = _simplify(combined)
        if not result:
            return FALSE
        if len(result) > MAX_CLAUSES * 4:
            raise TooBig
    return result


def _any(parts: Iterable[tuple[Clause, ...]]) -> tuple[Clause, ...]:
    found: list[Clause] = []
    for part in parts:
        found.extend(part)
        if len(found) > MAX_CLAUSES * 16:
            raise TooBig
    return _simplify(found)


def _simplify(clauses: list[Clause]) -> tuple[Clause, ...]:
    """Without duplicates and clauses another one implies; clauses that differ only in
    ``ret`` merged."""
    merged: dict[tuple[Any, Any], int] = {}
    for c in clauses:
        merged[(c.ins, c.outs)] = merged.get((c.ins, c.outs), 0) | c.ret
    unique = [Clause(ret, ins, outs) for (ins, outs), ret in merged.items()]
    if any(c == TRUE[0] for c in unique):
        return TRUE
    kept = [
        c
        for i, c in enumerate(unique)
        if not any(j != i and c.implies(o) and not (o.implies(c) and j > i)
                   for j, o in enumerate(unique))
    ]  # fmt: skip
    return tuple(kept)


def kernel_filter(compiled: Sequence[CompiledRule], kind: str) -> KernelFilter:
    """The prefilter for events of ``kind`` under the enabled rules of ``compiled``
    that apply to it (see the module docstring)."""
    if kind not in STRING_FACTS:
        return KernelFilter(None)
    rules = [c for c in compiled if c.rule.enabled and kind in c.rule.applies_to]
    builders: dict[int, _Builder] = {}
    clauses: list[Clause] = []
    comms = _Sets(MAX_COMMS)
    paths = _Sets(MAX_PATHS)
    try:
        for c in rules:
            if c.tree is None or c.compiler is None:
                return KernelFilter(None)
            builder = builders.get(id(c.compiler))
            if builder is None:
                builder = builders[id(c.compiler)] = _Builder(kind, c.compiler)
                builder.comms, builder.paths = comms, paths  # one bit space per map
            clauses.extend(builder.over(c.tree, True))
        result = _simplify(clauses)
    except TooBig:
        return KernelFilter(None)
    if len(result) > MAX_CLAUSES or result == TRUE:
        return KernelFilter(None)
    used_comm = {b for c in result for f, b in (*c.ins, *c.outs) if f in (COMM, PCOMM)}
    used_path = {b for c in result for f, b in (*c.ins, *c.outs) if f in (PATH, NPATH)}
    comm_bits = _or(used_comm)
    path_bits = _or(used_path)
    comm_entries = {k: v & comm_bits for k, v in comms.entries.items() if v & comm_bits}
    path_entries = {k: v & path_bits for k, v in paths.entries.items() if v & path_bits}
    return KernelFilter(list(result), comm_entries, _propagate(path_entries))


def _or(masks: Iterable[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def _propagate(entries: dict[bytes, int]) -> dict[bytes, int]:
    """Each trie entry with the bits of every entry that is a prefix of it: a lookup
    finds the longest prefix only, and a string that starts with it starts with those
    too."""
    out: dict[bytes, int] = {}
    for key, bits in entries.items():
        for end in range(len(key)):
            bits |= entries.get(key[:end], 0)
        out[key] = bits
    return out


def without_bits(f: KernelFilter, fact: str) -> KernelFilter:
    """``f`` with every comparison on ``fact`` left unchecked (for tests)."""
    if f.clauses is None:
        return f
    clauses = [
        replace(
            c,
            ins=tuple((g, b) for g, b in c.ins if g != fact),
            outs=tuple((g, b) for g, b in c.outs if g != fact),
        )
        for c in f.clauses
    ]
    return replace(f, clauses=clauses)
