"""Conditions and output templates: tokenizer, parser, and compilation to closures.

A condition is parsed once, at load time, by a recursive-descent parser into a small
tree (``Compare``, ``InSet``, ``And``, ``Or``, ``Not``); macros are inlined as the
trees they were parsed into. ``compile_condition`` then turns the tree into nested
closures, one per node, so matching an event costs a few calls and dict lookups. The
text is only ever tokenised: nothing reaches ``eval``, ``exec`` or ``compile``, and
every literal becomes a plain ``str``, ``int`` or ``float``.

Literals are typed by the field they are compared with, at load time: an ``int``
field needs an integer literal, so a typo fails the load instead of silently never
matching. Values from lists are typed when the rules are compiled, after every file
(and every ``append``) has been read.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._exceptions import BpfloomError

Event = Mapping[str, Any]
Matcher = Callable[[Event], bool]
Value = str | int | float

KEYWORDS = frozenset({"and", "or", "not", "in", "startswith", "endswith", "contains", "glob"})
WORD_OPERATORS = frozenset({"in", "startswith", "endswith", "contains", "glob"})
SYMBOL_OPERATORS = frozenset({"==", "=", "!=", "<", "<=", ">", ">="})

# Which operators each field type accepts. List fields (argv) only answer membership
# questions: ``contains`` (one element equals the value) and ``in`` (some element is
# in the set, Falco's ``intersects``); comparing or globbing a whole argv is ambiguous.
_ORDERING = frozenset({"<", "<=", ">", ">="})
OPERATORS: Mapping[type, frozenset[str]] = {
    str: frozenset({"==", "!=", "in", "startswith", "endswith", "contains", "glob"}),
    int: frozenset({"==", "!=", "in"}) | _ORDERING,
    float: frozenset({"==", "!=", "in"}) | _ORDERING,
    list: frozenset({"contains", "in"}),
}
_TYPE_NAMES = {str: "str", int: "int", float: "float", list: "list"}


class RuleError(BpfloomError):
    """A rule file is invalid; the message names the file, the line, and the problem."""


class ConditionError(Exception):
    """A problem in a condition or template; ``column`` (1-based) is where, if known.

    Internal: the loader turns it into a ``RuleError`` that names the file and line.
    """

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        if self.column is None:
            return self.message
        return f"{self.message} at column {self.column}"


class Literal(NamedTuple):
    """A value as written: its text, and whether it was quoted (quoted means string)."""

    text: str
    quoted: bool


class ListItem(NamedTuple):
    """A value of a named list; ``origin`` ("file:line: list 'x'") locates it for errors."""

    text: str
    quoted: bool
    origin: str


@dataclass(frozen=True)
class Scope:
    """What a condition may name: fields (one type each), event kinds, macros, lists.

    ``macros`` and ``lists`` are the loader's live tables, so a condition sees exactly
    the definitions that came before it.
    """

    fields: Mapping[str, type]
    kinds: frozenset[str]
    macros: Mapping[str, Node]
    lists: Collection[str]


# The expression tree.


@dataclass(frozen=True)
class Compare:
    """``field op value``; ``op`` is normalised (``=`` becomes ``==``)."""

    field: str
    op: str
    value: Value


@dataclass(frozen=True)
class InSet:
    """``field in (...)``: inline values (already typed) plus named lists, typed later."""

    field: str
    values: tuple[Value, ...]
    lists: tuple[str, ...]


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Compare | InSet | And | Or | Not


def all_of(items: Sequence[Node]) -> Node:
    """The conjunction of ``items``, flattened (nested ``And`` nodes are merged)."""
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, And) else (item,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def any_of(items: Sequence[Node]) -> Node:
    """The disjunction of ``items``, flattened (nested ``Or`` nodes are merged)."""
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Or) else (item,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


# Tokens.


class Token(NamedTuple):
    kind: str  # "word", "string", "op", "(", ")", ",", "end"
    text: str
    column: int


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<op>==|!=|<=|>=|=|<|>)
  | (?P<punct>[(),])
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[^\s(),"'=<>!]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def tokenize(text: str) -> list[Token]:
    """Split a condition into tokens; a quoted string keeps its unescaped content.

    Bare words run until white space or one of ``( ) , " ' = < > !``, so paths and
    globs such as ``/tmp/*`` need no quotes. Inside quotes, a backslash escapes the
    next character.
    """
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        column = pos + 1
        if m is None:
            if text[pos] in "\"'":
                raise ConditionError("unterminated string", column)
            raise ConditionError(f"unexpected character {text[pos]!r}", column)
        kind = m.lastgroup
        assert kind is not None
        if kind == "string":
            tokens.append(Token("string", _ESCAPE.sub(r"\1", m.group()[1:-1]), column))
        elif kind == "punct":
            tokens.append(Token(m.group(), m.group(), column))
        elif kind != "space":
            tokens.append(Token(kind, m.group(), column))
        pos = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


# Typing literals and building comparisons (shared by conditions and exceptions).


def typed_value(field: str, ftype: type, literal: Literal) -> Value:
    """``literal`` converted to the type of ``field``; ValueError says why it cannot be.

    Integers may be negative and use ``0x``/``0o``/``0b`` prefixes; a quoted literal
    is always a string, so ``pid == "1"`` is an error rather than a silent mismatch.
    """
    if ftype is str or ftype is list:
        return literal.text
    shown = repr(literal.text) if not literal.quoted else f"quoted string {literal.text!r}"
    if not literal.quoted:
        try:
            return int(literal.text, 0)
        except ValueError:
            if ftype is float:
                try:
                    return float(literal.text)
                except ValueError:
                    pass
    kind = "an integer" if ftype is int else "a number"
    raise ValueError(f"field '{field}' is {kind}; {shown} is not")


def check_operator(field: str, op: str, scope: Scope, column: int | None) -> str:
    """The normalised operator (``=`` becomes ``==``), if ``field``'s type accepts it."""
    ftype = scope.fields[field]
    op = "==" if op == "=" else op
    if op not in OPERATORS[ftype]:
        hint = " (use 'contains' or 'in')" if ftype is list else ""
        raise ConditionError(
            f"operator '{op}' cannot be used on {_TYPE_NAMES[ftype]} field '{field}'{hint}",
            column,
        )
    return op


def literal_value(
    field: str, literal: Literal, scope: Scope, column: int | None, *, is_kind: bool
) -> Value:
    """``literal`` typed by ``field``; with ``is_kind`` (``event ==``/``in``) it must
    also name an event kind of the schema, so a typo such as ``event == exce`` fails."""
    try:
        value = typed_value(field, scope.fields[field], literal)
    except ValueError as e:
        raise ConditionError(str(e), column) from None
    if is_kind and field == "event" and value not in scope.kinds:
        raise ConditionError(_unknown_kind(value, scope), column)
    return value


def make_compare(
    field: str, op: str, literal: Literal, scope: Scope, column: int | None
) -> Compare:
    """A ``Compare`` node with its literal typed by ``field``; ``op`` must be normalised."""
    value = literal_value(field, literal, scope, column, is_kind=op in ("==", "!="))
    return Compare(field, op, value)


def _unknown_kind(value: Value, scope: Scope) -> str:
    known = ", ".join(sorted(scope.kinds))
    return f"unknown event kind {value!r} (known: {known})"


# The parser.


class _Parser:
    """Recursive descent over the tokens; precedence ``not`` > ``and`` > ``or``.

    Grammar::

        or    := and ("or" and)*
        and   := not ("and" not)*
        not   := "not" not | atom
        atom  := "(" or ")" | FIELD OP value | FIELD "in" set | MACRO
        set   := "(" [item ("," item)*] ")" | LIST
        value := WORD | STRING
    """

    def __init__(self, text: str, scope: Scope) -> None:
        self.tokens = tokenize(text)
        self.pos = 0
        self.scope = scope

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ConditionError("empty condition")
        node = self.parse_or()
        end = self.peek()
        if end.kind != "end":
            raise ConditionError(f"unexpected {_describe(end)}", end.column)
        return node

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != "end":
            self.pos += 1
        return token

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text == word

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.at_keyword("or"):
            self.advance()
            items.append(self.parse_and())
        return any_of(items)

    def parse_and(self) -> Node:
        items = [self.parse_not()]
        while self.at_keyword("and"):
            self.advance()
            items.append(self.parse_not())
        return all_of(items)

    def parse_not(self) -> Node:
        if self.at_keyword("not"):
            self.advance()
            return Not(self.parse_not())
        return self.parse_atom()

    def parse_atom(self) -> Node:
        token = self.advance()
        if token.kind == "(":
            node = self.parse_or()
            self.expect(")")
            return node
        if token.kind != "word" or token.text in KEYWORDS:
            raise ConditionError(
                f"expected a field, a macro, 'not' or '(', got {_describe(token)}", token.column
            )
        following = self.peek()
        if following.kind == "op" or (
            following.kind == "word" and following.text in WORD_OPERATORS
        ):
            return self.parse_comparison(token)
        if token.text in self.scope.macros:
            return self.scope.macros[token.text]
        if token.text in self.scope.fields:
            raise ConditionError(
                f"field '{token.text}' needs an operator, got {_describe(following)}",
                following.column,
            )
        raise ConditionError(f"unknown field or macro '{token.text}'", token.column)

    def parse_comparison(self, field: Token) -> Node:
        if field.text not in self.scope.fields:
            raise ConditionError(f"unknown field '{field.text}'", field.column)
        op_token = self.advance()
        op = check_operator(field.text, op_token.text, self.scope, op_token.column)
        if op == "in":
            return self.parse_set(field)
        token = self.advance()
        if token.kind == "string" or (token.kind == "word" and token.text not in KEYWORDS):
            literal = Literal(token.text, token.kind == "string")
            return make_compare(field.text, op, literal, self.scope, token.column)
        raise ConditionError(
            f"expected a value after '{op_token.text}', got {_describe(token)}", token.column
        )

    def parse_set(self, field: Token) -> Node:
        token = self.advance()
        if token.kind == "word" and token.text not in KEYWORDS:
            if token.text not in self.scope.lists:
                raise ConditionError(f"unknown list '{token.text}'", token.column)
            return InSet(field.text, (), (token.text,))
        if token.kind != "(":
            raise ConditionError(
                f"expected '(' or a list name after 'in', got {_describe(token)}", token.column
            )
        values: list[Value] = []
        lists: list[str] = []
        if self.peek().kind == ")":
            self.advance()
            return InSet(field.text, (), ())
        while True:
            item = self.advance()
            if item.kind == "word" and item.text in self.scope.lists:
                lists.append(item.text)
            elif item.kind in ("word", "string"):
                literal = Literal(item.text, item.kind == "string")
                values.append(
                    literal_value(field.text, literal, self.scope, item.column, is_kind=True)
                )
            else:
                raise ConditionError(f"expected a value, got {_describe(item)}", item.column)
            separator = self.advance()
            if separator.kind == ")":
                return InSet(field.text, tuple(values), tuple(lists))
            if separator.kind != ",":
                raise ConditionError(
                    f"expected ',' or ')', got {_describe(separator)}", separator.column
                )

    def expect(self, kind: str) -> None:
        token = self.advance()
        if token.kind != kind:
            raise ConditionError(f"expected '{kind}', got {_describe(token)}", token.column)


def _describe(token: Token) -> str:
    if token.kind == "end":
        return "end of condition"
    if token.kind == "string":
        return f"string {token.text!r}"
    return f"'{token.text}'"


def parse_condition(text: str, scope: Scope) -> Node:
    """The expression tree of a condition; raises ``ConditionError`` with a column."""
    return _Parser(text, scope).parse()


# Questions asked of a tree at load time.


def fields_of(node: Node) -> set[str]:
    """Every field a tree reads (macros are inlined, so theirs count too)."""
    if isinstance(node, Compare | InSet):
        return {node.field}
    if isinstance(node, Not):
        return fields_of(node.item)
    return set().union(*(fields_of(item) for item in node.items))


def required_kinds(node: Node, lists: Mapping[str, Sequence[ListItem]]) -> frozenset[str] | None:
    """The event kinds a tree can match at most, from ``event == k`` / ``event in (...)``.

    None means "not restricted by the tree". Used to narrow a rule's applicability
    below "every kind that has the fields", so ``event == exec and path ...`` is only
    evaluated on exec events.
    """
    if isinstance(node, Compare):
        if node.field == "event" and node.op == "==":
            return frozenset({str(node.value)})
        return None
    if isinstance(node, InSet):
        if node.field != "event":
            return None
        named = (item.text for name in node.lists for item in lists[name])
        return frozenset(str(v) for v in node.values) | frozenset(named)
    if isinstance(node, Not):
        return None
    kinds = [required_kinds(item, lists) for item in node.items]
    if isinstance(node, And):
        known = [k for k in kinds if k is not None]
        return frozenset.intersection(*known) if known else None
    if any(k is None for k in kinds):
        return None
    return frozenset().union(*(k for k in kinds if k is not None))


# Compilation to closures.


def compile_condition(
    node: Node, fields: Mapping[str, type], lists: Mapping[str, Sequence[ListItem]]
) -> Matcher:
    """A function ``event -> bool`` for the tree; ``lists`` holds the final list contents.

    A comparison on a field the event lacks (or holds as None) is false, whatever
    the operator, including ``!=``. Raises ``RuleError`` if a list item does not fit
    the type of the field it is compared with.
    """
    if isinstance(node, Compare):
        return _compile_compare(node)
    if isinstance(node, InSet):
        return _compile_in_set(node, fields, lists)
    if isinstance(node, Not):
        inner = compile_condition(node.item, fields, lists)
        return lambda e: not inner(e)
    parts = [compile_condition(item, fields, lists) for item in node.items]
    combine = _both if isinstance(node, And) else _either
    matcher = parts[-1]
    for part in reversed(parts[:-1]):
        matcher = combine(part, matcher)
    return matcher


def _both(a: Matcher, b: Matcher) -> Matcher:
    return lambda e: a(e) and b(e)


def _either(a: Matcher, b: Matcher) -> Matcher:
    return lambda e: a(e) or b(e)


_ORDER_FUNCS: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _compile_compare(node: Compare) -> Matcher:
    f, v = node.field, node.value
    if node.op == "==":
        return lambda e: e.get(f) == v
    if node.op == "!=":
        return lambda e: (x := e.get(f)) is not None and x != v
    if node.op in _ORDER_FUNCS:
        cmp = _ORDER_FUNCS[node.op]
        return lambda e: (x := e.get(f)) is not None and cmp(x, v)
    s = str(v)
    if node.op == "startswith":
        return lambda e: (x := e.get(f)) is not None and x.startswith(s)
    if node.op == "endswith":
        return lambda e: (x := e.get(f)) is not None and x.endswith(s)
    if node.op == "contains":
        # Substring for str fields, element membership for list fields.
        return lambda e: (x := e.get(f)) is not None and s in x
    if node.op == "glob":
        # fnmatch rules: '*' also matches '/', so "/tmp/*" matches "/tmp/a/b".
        match = re.compile(fnmatch.translate(s)).match
        return lambda e: (x := e.get(f)) is not None and match(x) is not None
    raise AssertionError(f"unknown operator {node.op!r}")


def _compile_in_set(
    node: InSet, fields: Mapping[str, type], lists: Mapping[str, Sequence[ListItem]]
) -> Matcher:
    f = node.field
    ftype = fields[f]
    values = set(node.values)
    for name in node.lists:
        for item in lists[name]:
            try:
                values.add(typed_value(f, ftype, Literal(item.text, item.quoted)))
            except ValueError as e:
                raise RuleError(f"{item.origin}: {e} (the list is used with '{f}')") from None
    members = frozenset(values)
    if ftype is list:
        return lambda e: (x := e.get(f)) is not None and not members.isdisjoint(x)
    return lambda e: e.get(f) in members


# Output templates.

Template = tuple[tuple[str, str | None], ...]
_TEMPLATE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_template(text: str, fields: Collection[str]) -> Template:
    """Split an output template into (literal text, None) and ("", field) parts.

    ``%name`` is a field (letters, digits, underscores, so "%parent_comm." ends before the
    dot); ``%%`` is a literal percent. Raises ``ConditionError`` with a column.
    """
    parts: list[tuple[str, str | None]] = []
    literal: list[str] = []
    pos = 0
    while pos < len(text):
        percent = text.find("%", pos)
        if percent < 0:
            literal.append(text[pos:])
            break
        literal.append(text[pos:percent])
        if text.startswith("%%", percent):
            literal.append("%")
            pos = percent + 2
            continue
        m = _TEMPLATE_FIELD.match(text, percent + 1)
        if m is None:
            raise ConditionError("'%' must be followed by a field name or '%'", percent + 1)
        if m.group() not in fields:
            raise ConditionError(f"unknown field '{m.group()}'", percent + 1)
        if literal:
            parts.append(("".join(literal), None))
            literal = []
        parts.append(("", m.group()))
        pos = m.end()
    if literal and "".join(literal):
        parts.append(("".join(literal), None))
    return tuple(parts)


def template_fields(template: Template) -> set[str]:
    """The fields a template interpolates."""
    return {field for _, field in template if field is not None}


def compile_template(template: Template) -> Callable[[Event], str]:
    """A function rendering the template for an event: lists are joined with spaces,
    missing fields (or None) become ``<NA>``."""

    def render(event: Event) -> str:
        out = []
        for text, field in template:
            out.append(text if field is None else format_value(event.get(field)))
        return "".join(out)

    return render


def format_value(value: object) -> str:
    """A field value as output text."""
    if value is None:
        return "<NA>"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)
