"""Conditions and output templates: tokenizer, parser, and compilation to matchers.

A condition is parsed once, at load time, by a recursive-descent parser into a small
tree (``Compare``, ``InSet``, ``And``, ``Or``, ``Not``); ``and``/``or`` chains are
n-ary nodes, and macros are inlined as the trees they were parsed into. The parser
counts, as it builds, each tree's size and depth with macros inlined (``Tree``), so
the bounds of ``_limits`` are enforced before a macro doubling or a deep nesting costs
anything. ``Compiler`` turns a tree into nested closures (a long ``and``/``or`` is one
closure looping over its items) when it is at most ``SHALLOW`` levels deep, and
otherwise into a flat branching program (``Program``) run in a loop, so matching
never recurses more than ``SHALLOW`` calls deep, however long or deep the condition.
Trees keep no compiled state: later evaluators can walk them as they are. The
text is only ever tokenised: nothing reaches ``eval``, ``exec`` or ``compile``, and
every literal becomes a plain ``str``, ``int`` or ``float``.

Literals are typed by the field they are compared with, at load time: an ``int``
field needs an integer literal, so a typo fails the load instead of silently never
matching. Values from lists are typed when the rules are compiled, after every file
(and every ``append``) has been read.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._exceptions import BpfloomError
from . import _limits
from ._glob import glob_regex

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
    macros: Mapping[str, Tree]
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


# Trees with their size and depth, macros inlined, for the bounds of _limits.


class Tree(NamedTuple):
    """A condition tree with its ``size`` (nodes, and values inside ``in (...)``) and
    ``depth`` (``and``/``or``/``not`` levels above the deepest comparison), both
    counted with macros inlined. Macros share their tree, so these are what compiling
    costs, not what the tree occupies."""

    node: Node
    size: int
    depth: int


def leaf(node: Compare | InSet) -> Tree:
    """A comparison as a tree: one node, plus the values written in a set."""
    return Tree(node, 1 + len(node.values) if isinstance(node, InSet) else 1, 0)


def negate(tree: Tree) -> Tree:
    return Tree(Not(tree.node), tree.size + 1, tree.depth + 1)


class Joiner:
    """Builds an ``And`` or ``Or`` tree item by item, flattening nested ones of the same
    kind, and keeps the size and depth the result will have, so a caller can stop
    before flattening copies more than a bound allows."""

    def __init__(self, kind: type[And] | type[Or]) -> None:
        self.kind = kind
        self.trees: list[Tree] = []
        self.size = 1  # of the result, once it has two items
        self.depth = 0

    def add(self, tree: Tree) -> None:
        merged = isinstance(tree.node, self.kind)
        self.size += tree.size - 1 if merged else tree.size
        self.depth = max(self.depth, tree.depth if merged else tree.depth + 1)
        self.trees.append(tree)

    def tree(self) -> Tree:
        if len(self.trees) == 1:
            return self.trees[0]
        flat: list[Node] = []
        for tree in self.trees:
            node = tree.node
            if isinstance(node, self.kind):
                flat.extend(node.items)
            else:
                flat.append(node)
        return Tree(self.kind(tuple(flat)), self.size, self.depth)


def join(kind: type[And] | type[Or], trees: Sequence[Tree]) -> Tree:
    """The conjunction or disjunction of ``trees`` (at least one), flattened."""
    joiner = Joiner(kind)
    for tree in trees:
        joiner.add(tree)
    return joiner.tree()


def too_big(size: int) -> str | None:
    """Why a condition of ``size`` nodes is refused, or None."""
    if size > _limits.MAX_CONDITION_NODES:
        return (
            f"the condition expands to more than {_limits.MAX_CONDITION_NODES} nodes"
            " (macros inlined)"
        )
    return None


def too_deep(depth: int) -> str | None:
    """Why a condition nested ``depth`` levels deep is refused, or None."""
    if depth > _limits.MAX_NESTING:
        return (
            f"the condition is nested more than {_limits.MAX_NESTING} deep"
            " (parentheses and 'not', macros inlined)"
        )
    return None


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


def tokenize(text: str) -> Iterator[Token]:
    """Split a condition into tokens, ending with an ``end`` token; a quoted string
    keeps its unescaped content.

    Bare words run until white space or one of ``( ) , " ' = < > !``, so paths and
    globs such as ``/tmp/*`` need no quotes. Inside quotes, a backslash escapes the
    next character. Tokens come one at a time, as the parser pulls them, so a
    condition refused early is never tokenised to its end.
    """
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
            yield Token("string", _ESCAPE.sub(r"\1", m.group()[1:-1]), column)
        elif kind == "punct":
            yield Token(m.group(), m.group(), column)
        elif kind != "space":
            yield Token(kind, m.group(), column)
        pos = m.end()
    yield Token("end", "", len(text) + 1)


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
    if op == "glob" and len(str(value)) > _limits.MAX_GLOB:
        raise ConditionError(
            f"glob pattern longer than {_limits.MAX_GLOB} characters ({len(str(value))})",
            column,
        )
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

    Each ``(`` and ``not`` is one level of recursion (a few Python frames), so their
    nesting is bounded by ``MAX_NESTING`` as they are read; sizes and depths with
    macros inlined are checked as each tree is built, before it is built.
    """

    def __init__(self, text: str, scope: Scope) -> None:
        self.tokens = tokenize(text)
        self.current = next(self.tokens)
        self.level = 0
        self.scope = scope

    def parse(self) -> Tree:
        if self.peek().kind == "end":
            raise ConditionError("empty condition")
        tree = self.parse_or()
        end = self.peek()
        if end.kind != "end":
            raise ConditionError(f"unexpected {_describe(end)}", end.column)
        return tree

    def peek(self) -> Token:
        return self.current

    def advance(self) -> Token:
        token = self.current
        if token.kind != "end":
            self.current = next(self.tokens)
        return token

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text == word

    def parse_or(self) -> Tree:
        return self.parse_joined(Or, "or", self.parse_and)

    def parse_and(self) -> Tree:
        return self.parse_joined(And, "and", self.parse_not)

    def parse_joined(
        self, kind: type[And] | type[Or], word: str, parse_item: Callable[[], Tree]
    ) -> Tree:
        joiner = Joiner(kind)
        deepest = (-1, 0)  # (depth, column) of the deepest item so far
        column = self.peek().column
        while True:
            item = parse_item()
            if item.depth > deepest[0]:
                deepest = (item.depth, column)
            joiner.add(item)
            if len(joiner.trees) > 1:
                problem = too_big(joiner.size)
                if problem is not None:
                    raise ConditionError(problem, column)
                problem = too_deep(joiner.depth)
                if problem is not None:
                    raise ConditionError(problem, deepest[1])
            if not self.at_keyword(word):
                return joiner.tree()
            self.advance()
            column = self.peek().column

    def parse_not(self) -> Tree:
        if self.at_keyword("not"):
            token = self.advance()
            self.enter(token)
            tree = negate(self.parse_not())
            self.level -= 1
            problem = too_big(tree.size) or too_deep(tree.depth)
            if problem is not None:
                raise ConditionError(problem, token.column)
            return tree
        return self.parse_atom()

    def enter(self, token: Token) -> None:
        """One more level of ``(`` or ``not``, refused past ``MAX_NESTING``."""
        self.level += 1
        problem = too_deep(self.level)
        if problem is not None:
            raise ConditionError(problem, token.column)

    def parse_atom(self) -> Tree:
        token = self.advance()
        if token.kind == "(":
            self.enter(token)
            tree = self.parse_or()
            self.expect(")")
            self.level -= 1
            return tree
        if token.kind != "word" or token.text in KEYWORDS:
            raise ConditionError(
                f"expected a field, a macro, 'not' or '(', got {_describe(token)}", token.column
            )
        following = self.peek()
        if following.kind == "op" or (
            following.kind == "word" and following.text in WORD_OPERATORS
        ):
            return leaf(self.parse_comparison(token))
        if token.text in self.scope.macros:
            return self.scope.macros[token.text]
        if token.text in self.scope.fields:
            raise ConditionError(
                f"field '{token.text}' needs an operator, got {_describe(following)}",
                following.column,
            )
        raise ConditionError(f"unknown field or macro '{token.text}'", token.column)

    def parse_comparison(self, field: Token) -> Compare | InSet:
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

    def parse_set(self, field: Token) -> InSet:
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
                problem = too_big(1 + len(values))
                if problem is not None:
                    raise ConditionError(problem, item.column)
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


def parse_condition(text: str, scope: Scope) -> Tree:
    """The expression tree of a condition; raises ``ConditionError`` with a column."""
    return _Parser(text, scope).parse()


# Questions asked of a tree at load time.


def fields_of(node: Node) -> set[str]:
    """Every field a tree reads (macros are inlined, so theirs count too).

    Iterative, and each shared (macro) subtree is visited once.
    """
    found: set[str] = set()
    seen: set[int] = set()
    stack = [node]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Compare | InSet):
            found.add(node.field)
        elif isinstance(node, Not):
            stack.append(node.item)
        else:
            stack.extend(node.items)
    return found


# Compilation to matchers.

_ORDER_FUNCS: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


MATCH = -1
NO_MATCH = -2


@dataclass(frozen=True)
class Program:
    """A condition as a flat branching program over its comparisons.

    Run ``tests[start]``; if it holds go to ``on_true[i]``, else to ``on_false[i]``;
    a negative index ends the run with ``MATCH`` or ``NO_MATCH``. ``and``, ``or`` and
    ``not`` become targets (``not`` swaps them), so each comparison appears once per
    use, comparisons run in the order and with the short-circuits of the condition,
    and running needs a loop rather than one call per level.
    """

    tests: tuple[Matcher, ...]
    on_true: tuple[int, ...]
    on_false: tuple[int, ...]
    start: int

    def matcher(self) -> Matcher:
        """The program as a function ``event -> bool``."""
        tests, on_true, on_false, start = self.tests, self.on_true, self.on_false, self.start
        if len(tests) == 1:
            test = tests[0]
            return test if on_true[0] == MATCH else lambda e: not test(e)

        def run(event: Event) -> bool:
            i = start
            while i >= 0:
                i = on_true[i] if tests[i](event) else on_false[i]
            return i == MATCH

        return run


SHALLOW = 16
"""Trees at most this deep are compiled to nested closures, deeper ones to a Program."""


def _all(parts: tuple[Matcher, ...]) -> Matcher:
    if len(parts) == 2:
        a, b = parts
        return lambda e: a(e) and b(e)

    def every(e: Event) -> bool:
        # A plain loop: all() over a generator costs a generator per event.
        for part in parts:  # noqa: SIM110
            if not part(e):
                return False
        return True

    return every


def _any(parts: tuple[Matcher, ...]) -> Matcher:
    if len(parts) == 2:
        a, b = parts
        return lambda e: a(e) or b(e)

    def some(e: Event) -> bool:
        for part in parts:  # noqa: SIM110 (as in _all)
            if part(e):
                return True
        return False

    return some


class Compiler:
    """Turns condition trees into matchers, for one rule set.

    ``lists`` holds the final list contents. What macros and lists share is built
    once: a comparison node (shared by every use of its macro) gets one function,
    a list one typed set per field type, a glob pattern one regular expression.
    """

    def __init__(self, fields: Mapping[str, type], lists: Mapping[str, Sequence[ListItem]]):
        self.fields = fields
        self.lists = lists
        # By id(node), with the node kept alive so that its id is not reused.
        self._tests: dict[int, tuple[Node, Matcher]] = {}
        self._closures: dict[int, tuple[Node, Matcher]] = {}
        self._depths: dict[int, int] = {}
        self._sets: dict[tuple[str, type], frozenset[Value]] = {}
        self._texts: dict[str, frozenset[str]] = {}
        self._globs: dict[str, Callable[[str], object]] = {}

    def members(self, name: str, field: str) -> frozenset[Value]:
        """The values of list ``name``, typed for ``field``; RuleError if one does not fit."""
        ftype = self.fields[field]
        found = self._sets.get((name, ftype))
        if found is None:
            values: set[Value] = set()
            for item in self.lists[name]:
                try:
                    values.add(typed_value(field, ftype, Literal(item.text, item.quoted)))
                except ValueError as e:
                    raise RuleError(
                        f"{item.origin}: {e} (the list is used with '{field}')"
                    ) from None
            found = self._sets[(name, ftype)] = frozenset(values)
        return found

    def texts(self, name: str) -> frozenset[str]:
        """The values of list ``name`` as written."""
        found = self._texts.get(name)
        if found is None:
            found = self._texts[name] = frozenset(item.text for item in self.lists[name])
        return found

    def required_kinds(self, node: Node) -> frozenset[str] | None:
        """The event kinds a tree can match at most, from ``event == k`` / ``event in (...)``.

        None means "not restricted by the tree". Used to narrow a rule's applicability
        below "every kind that has the fields", so ``event == exec and path ...`` is only
        evaluated on exec events. Recursive: trees are at most ``MAX_NESTING`` deep
        (plus the three levels exceptions add).
        """
        if isinstance(node, Compare):
            if node.field == "event" and node.op == "==":
                return frozenset({str(node.value)})
            return None
        if isinstance(node, InSet):
            if node.field != "event":
                return None
            named = frozenset().union(*(self.texts(name) for name in node.lists))
            return frozenset(str(v) for v in node.values) | named
        if isinstance(node, Not):
            return None
        kinds = [self.required_kinds(item) for item in node.items]
        if isinstance(node, And):
            known = [k for k in kinds if k is not None]
            return frozenset.intersection(*known) if known else None
        if any(k is None for k in kinds):
            return None
        return frozenset().union(*(k for k in kinds if k is not None))

    def compile(self, node: Node) -> Matcher:
        """A function ``event -> bool`` for the tree.

        A comparison on a field the event lacks (or holds as None) is false, whatever
        the operator, including ``!=``. Raises ``RuleError`` if a list item does not fit
        the type of the field it is compared with.

        A tree at most ``SHALLOW`` levels deep (nearly every real one) becomes nested
        closures, the fastest form: ``a(e) and b(e)``, or a loop over the items of a
        long ``and``/``or``; running one recurses at most ``SHALLOW`` calls deep. A
        deeper tree (``MAX_NESTING`` allows 100 levels) runs as a ``Program``, in a
        loop: no tree makes matching recurse further.
        """
        if self.depth(node) <= SHALLOW:
            return self.closure(node)
        return self.program(node).matcher()

    def depth(self, node: Node) -> int:
        """and/or/not levels above the deepest comparison (recursive, see above)."""
        found = self._depths.get(id(node))
        if found is None:
            if isinstance(node, Compare | InSet):
                found = 0
            elif isinstance(node, Not):
                found = 1 + self.depth(node.item)
            else:
                found = 1 + max(self.depth(item) for item in node.items)
            self._depths[id(node)] = found
        return found

    def closure(self, node: Node) -> Matcher:
        """The tree as nested closures, one per and/or/not node, made once per node."""
        if isinstance(node, Compare | InSet):
            return self.test(node)
        found = self._closures.get(id(node))
        if found is not None:
            return found[1]
        match: Matcher
        if isinstance(node, Not):
            inner = self.closure(node.item)
            match = lambda e: not inner(e)  # noqa: E731
        else:
            parts = tuple(self.closure(item) for item in node.items)
            match = _all(parts) if isinstance(node, And) else _any(parts)
        self._closures[id(node)] = (node, match)
        return match

    def program(self, node: Node) -> Program:
        """The tree as a branching program (see ``Program``)."""
        tests: list[Matcher] = []
        on_true: list[int] = []
        on_false: list[int] = []

        def emit(node: Node, if_true: int, if_false: int) -> int:
            # Depth-bounded recursion (see required_kinds); returns the entry index.
            if isinstance(node, Compare | InSet):
                tests.append(self.test(node))
                on_true.append(if_true)
                on_false.append(if_false)
                return len(tests) - 1
            if isinstance(node, Not):
                return emit(node.item, if_false, if_true)
            entry = if_true if isinstance(node, And) else if_false
            for item in reversed(node.items):
                if isinstance(node, And):
                    entry = emit(item, entry, if_false)
                else:
                    entry = emit(item, if_true, entry)
            return entry

        # Make the tests in the condition's order first (emit goes backwards), so
        # that of two lists whose values do not fit, the first is reported.
        self._make_tests(node)
        start = emit(node, MATCH, NO_MATCH)
        return Program(tuple(tests), tuple(on_true), tuple(on_false), start)

    def _make_tests(self, node: Node) -> None:
        if isinstance(node, Compare | InSet):
            self.test(node)
        elif isinstance(node, Not):
            self._make_tests(node.item)
        else:
            for item in node.items:
                self._make_tests(item)

    def test(self, node: Compare | InSet) -> Matcher:
        """The function of one comparison, made once per node."""
        found = self._tests.get(id(node))
        if found is None:
            test = self._compare(node) if isinstance(node, Compare) else self._in_set(node)
            found = self._tests[id(node)] = (node, test)
        return found[1]

    def _compare(self, node: Compare) -> Matcher:
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
            match = self._globs.get(s)
            if match is None:
                match = self._globs[s] = re.compile(glob_regex(s)).match
            return lambda e: (x := e.get(f)) is not None and match(x) is not None
        raise AssertionError(f"unknown operator {node.op!r}")

    def _in_set(self, node: InSet) -> Matcher:
        f = node.field
        sets = [frozenset(node.values)] if node.values or not node.lists else []
        sets += [self.members(name, f) for name in node.lists]
        if len(sets) == 1:
            members = sets[0]
            if self.fields[f] is list:
                return lambda e: (x := e.get(f)) is not None and not members.isdisjoint(x)
            return lambda e: e.get(f) in members
        # Several lists (or lists and values): each is typed once and shared with
        # every other use, so the sets are asked in turn rather than merged.
        several = tuple(sets)
        if self.fields[f] is list:
            return lambda e: (
                (x := e.get(f)) is not None and any(not s.isdisjoint(x) for s in several)
            )

        def member(e: Event) -> bool:
            x = e.get(f)
            return any(x in s for s in several)

        return member


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
