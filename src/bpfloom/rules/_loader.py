"""Reading rule files: YAML nodes, with their line numbers, into compiled rules.

Files are read with ``yaml.compose`` (the SafeLoader's node tree), not ``safe_load``,
because nodes keep their position: every error names the file and the line of the
node at fault. Items are processed in order across all files, so a name is visible
only after its definition (as in Falco). List *contents* are resolved once every file
has been read, so a later ``append: true`` also reaches the rules that used the list
before the append; that is why rules are compiled in ``finish``, not as they are read.

What a file can make the loader compute is bounded (``_limits``): files are read only
if regular and small; the YAML composer counts values and nesting as it goes, and an
alias counts what it repeats at each use; lists are expanded, and appends checked for
cycles, without recursion and within entry budgets; conditions are sized as they are
parsed (``_expr.Tree``).
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import yaml

from . import _limits
from ._expr import (
    KEYWORDS,
    OPERATORS,
    And,
    Compare,
    Compiler,
    ConditionError,
    Event,
    InSet,
    ListItem,
    Literal,
    Matcher,
    Node,
    Or,
    RuleError,
    Scope,
    Template,
    Tree,
    Value,
    check_operator,
    compile_template,
    fields_of,
    join,
    leaf,
    literal_value,
    make_compare,
    negate,
    parse_condition,
    parse_template,
    template_fields,
    too_big,
)

Schema = Mapping[str, Mapping[str, type]]

PRIORITIES = (
    "EMERGENCY",
    "ALERT",
    "CRITICAL",
    "ERROR",
    "WARNING",
    "NOTICE",
    "INFORMATIONAL",
    "DEBUG",
)
"""Falco's priorities, most severe first."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_RATE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)")
_RULE_KEYS = frozenset(
    {
        "rule",
        "condition",
        "output",
        "priority",
        "desc",
        "tags",
        "enabled",
        "exceptions",
        "rate_limit",
        "threshold",
    }
)


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` alerts in any ``period`` seconds (a sliding window)."""

    count: int
    period: float


@dataclass(frozen=True)
class Threshold:
    """Fire once the condition matched ``count`` times within ``within`` seconds,
    counted separately for each value of field ``by`` (all together if None)."""

    count: int
    within: float
    by: str | None


@dataclass(frozen=True)
class Rule:
    """A rule as loaded: what it is called, when it fires, and what it says.

    ``applies_to`` is the set of event kinds the rule is evaluated on: the kinds that
    have every field the rule names, narrowed by ``event ==``/``event in`` tests that
    the whole condition depends on. ``source`` is "file:line" of the rule.
    """

    name: str
    priority: str
    condition: str
    output: str
    desc: str = ""
    tags: tuple[str, ...] = ()
    enabled: bool = True
    applies_to: frozenset[str] = frozenset()
    rate_limit: RateLimit | None = None
    threshold: Threshold | None = None
    source: str = ""


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its condition (exceptions included) and output compiled; ``tree``
    is the condition as parsed, macros inlined and exceptions added, for evaluators
    that walk it; ``compiler`` resolves its lists and comparisons for them."""

    rule: Rule
    match: Matcher
    render: Callable[[Event], str]
    tree: Node | None = None
    compiler: Compiler | None = None


class _ListRef(NamedTuple):
    """A list item naming an earlier list: its items are included in place."""

    name: str


@dataclass
class _ListDef:
    where: str  # "file:line" of the definition
    entries: list[ListItem | _ListRef]
    refs: list[str]  # the names of the included lists, in order (for cycle checks)


@dataclass
class _PendingRule:
    """A rule read and checked, waiting for the final list contents to be compiled."""

    rule: Rule
    tree: Node
    template: Template
    fields: set[str]


def merge_fields(schema: Schema) -> dict[str, type]:
    """Field name -> type over all event kinds; a field must have one type everywhere."""
    merged: dict[str, type] = {}
    for kind, fields in schema.items():
        for name, ftype in fields.items():
            if ftype not in OPERATORS:
                raise RuleError(f"schema: field '{name}' of '{kind}' has unsupported type {ftype}")
            if merged.setdefault(name, ftype) is not ftype:
                raise RuleError(f"schema: field '{name}' has two types, {merged[name]} and {ftype}")
    return merged


def load_sources(sources: Sequence[tuple[str, str]], schema: Schema) -> list[CompiledRule]:
    """Compile the rules of ``(name, text)`` sources, read in order as one rule set.

    ``name`` is what error messages call the file. Raises ``RuleError``.
    """
    loader = _Loader(schema)
    for name, text in sources:
        loader.add_file(name, text)
    return loader.finish()


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _error(file: str, node: yaml.Node, message: str) -> RuleError:
    return RuleError(f"{file}:{_line(node)}: {message}")


def read_rule_file(path: str | Path) -> str:
    """The text of a rule file, read only if it is a regular file of at most
    ``MAX_FILE_BYTES``; RuleError otherwise.

    The file is opened once, without blocking (a FIFO with no writer would block a
    plain open) and without becoming a controlling terminal, and its type checked on
    the open descriptor: a FIFO, a device such as ``/dev/zero`` or a directory is
    refused before anything is read. Newlines are read as ``Path.read_text`` reads
    them (``\\r\\n`` and ``\\r`` become ``\\n``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise RuleError(f"{path}: cannot read: {e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RuleError(f"{path}: not a regular file ({_file_kind(st.st_mode)})")
        limit = _limits.MAX_FILE_BYTES
        if st.st_size > limit:
            raise RuleError(f"{path}: larger than {_size_text(limit)} ({st.st_size} bytes)")
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise RuleError(f"{path}: cannot read: {e}") from e
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew since fstat
        raise RuleError(f"{path}: larger than {_size_text(limit)} (over {limit} bytes)")
    try:
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
    except UnicodeDecodeError as e:
        raise RuleError(f"{path}: cannot read: {e}") from e


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), f"mode {stat.S_IFMT(mode):o}")


def _size_text(size: int) -> str:
    return f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size} bytes"


class _BoundedComposer(yaml.SafeLoader):
    """PyYAML's safe loader, composing nodes within bounds (``_limits``).

    PyYAML's scanner and parser keep explicit stacks, but its composer recurses once
    per level of nesting and keeps every node: ``compose_node`` is wrapped to refuse
    more than ``MAX_NESTING`` levels before recursing further, and more than
    ``MAX_YAML_VALUES`` values before composing more. An alias is a second use of a
    node the loader then reads again, so it counts the values and scalar characters
    of the node it repeats (``MAX_FILE_BYTES`` of characters in all), and an alias
    to a node that contains it is refused.
    """

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self.depth = 0
        self.values = 0
        self.chars = 0
        self.aliases = False
        self.weights: dict[int, tuple[int, int]] = {}  # id(anchored node) -> (values, chars)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:  # else PyYAML reports the undefined alias
                weight = self.weights.get(id(node))
                if weight is None:
                    problem = f"alias '*{event.anchor}' names a node that contains it"
                    raise self.error(event, problem)
                self.aliases = True
                self.count(event, *weight)
            return super().compose_node(parent, index)
        if self.depth >= _limits.MAX_NESTING:
            raise self.error(event, f"YAML nested more than {_limits.MAX_NESTING} deep")
        values, chars = self.values, self.chars
        self.count(event, 1, len(event.value) if isinstance(event, yaml.ScalarEvent) else 0)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if getattr(event, "anchor", None) is not None:
            self.weights[id(node)] = (self.values - values, self.chars - chars)
        return node

    def count(self, event: yaml.Event, values: int, chars: int) -> None:
        self.values += values
        self.chars += chars
        if self.values > _limits.MAX_YAML_VALUES:
            raise self.error(
                event,
                f"more than {_limits.MAX_YAML_VALUES} YAML values in the file"
                + (" (an alias counts the values it repeats)" if self.aliases else ""),
            )
        if self.chars > _limits.MAX_FILE_BYTES:
            raise self.error(
                event,
                f"more than {_size_text(_limits.MAX_FILE_BYTES)} of text in the file"
                " with its aliases expanded",
            )

    def error(self, event: yaml.Event, message: str) -> RuleError:
        line = event.start_mark.line + 1 if event.start_mark is not None else 1
        return RuleError(f"{self.file}:{line}: {message}")


def _compose(file: str, text: str) -> yaml.Node | None:
    """The YAML node tree of a file (None if empty); syntax errors become RuleError."""
    loader = _BoundedComposer(text, file)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = "; ".join(part for part in (e.context, e.problem) if part)
        raise RuleError(f"{file}:{line}: invalid YAML: {problem}") from e
    except yaml.YAMLError as e:
        raise RuleError(f"{file}: invalid YAML: {e}") from e
    finally:
        loader.dispose()


def parse_duration(text: str) -> float:
    """Seconds in ``"1s"``, ``"500ms"``, ``"2m"``, ``"1h"`` or a plain number of seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or float(m[1]) <= 0:
        raise ValueError(f"{text!r} is not a positive duration such as 1s, 500ms, 2m or 0.5")
    return float(m[1]) * _UNIT_SECONDS[m[2] or "s"]


def parse_rate_limit(text: str) -> RateLimit:
    """``"5/s"``, ``"100/m"``, ``"1/h"``, ``"10/30s"``: N alerts per period."""
    m = _RATE.fullmatch(text.strip())
    if m is None or int(m[1]) <= 0 or (m[2] is not None and float(m[2]) <= 0):
        raise ValueError(f"{text!r} is not a rate limit such as 5/s, 100/m, 1/h or 10/30s")
    return RateLimit(int(m[1]), float(m[2] or 1) * _UNIT_SECONDS[m[3]])


class _Loader:
    """Reads items file by file, keeping lists, macros and rules in definition order."""

    def __init__(self, schema: Schema) -> None:
        self.schema = {kind: frozenset(fields) for kind, fields in schema.items()}
        self.fields = merge_fields(schema)
        self.lists: dict[str, _ListDef] = {}
        self.macros: dict[str, Tree] = {}
        self.origins: dict[str, str] = {}  # "macro x" / "rule x" -> "file:line"
        self.scope = Scope(self.fields, frozenset(schema), self.macros, self.lists)
        self.pending: list[_PendingRule] = []
        self.condition_nodes = 0  # of every macro and rule so far, macros inlined
        self.cycle_steps = 0  # inclusions followed by the cycle checks of appends

    # Items.

    def add_file(self, file: str, text: str) -> None:
        root = _compose(file, text)
        if root is None:
            return
        if not isinstance(root, yaml.SequenceNode):
            raise _error(file, root, "a rule file must be a YAML list of items")
        for item in root.value:
            self.add_item(file, item)

    def add_item(self, file: str, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            raise _error(
                file, node, "an item must be a mapping with a 'list', 'macro' or 'rule' key"
            )
        keys = self.mapping(file, node)
        kinds = [kind for kind in ("list", "macro", "rule") if kind in keys]
        if len(kinds) > 1:
            raise _error(file, node, f"an item cannot be both '{kinds[0]}' and '{kinds[1]}'")
        if not kinds:
            found = ", ".join(f"'{k}'" for k in keys)
            raise _error(
                file, node, f"unknown item with keys {found}: expected 'list', 'macro' or 'rule'"
            )
        if kinds[0] == "list":
            self.add_list(file, node, keys)
        elif kinds[0] == "macro":
            self.add_macro(file, node, keys)
        else:
            self.add_rule(file, node, keys)

    def add_list(self, file: str, node: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        name = self.name(file, keys, "list")
        ctx = f"list '{name}'"
        self.allow(file, keys, {"list", "items", "append"}, ctx)
        if not _NAME.fullmatch(name) or name in KEYWORDS:
            raise _error(file, keys["list"], f"{ctx}: a list name must be a single word")
        append = self.boolean(file, keys, "append", ctx, default=False)
        if append and name not in self.lists:
            raise _error(file, node, f"{ctx}: append to a list that is not defined before")
        if not append and name in self.lists:
            raise _error(
                file,
                keys["list"],
                f"{ctx} is already defined at {self.lists[name].where};"
                " use 'append: true' to add items",
            )
        items = self.require(file, node, keys, "items", ctx)
        if not isinstance(items, yaml.SequenceNode):
            raise _error(file, items, f"{ctx}: items must be a YAML list")
        # Only an append can close a cycle: a new list's name is not known yet, so
        # none of the lists it includes can lead back to it.
        checked: set[str] = set()  # lists known not to lead back, for this append
        entries = [
            self.list_entry(file, item, name, ctx, checked if append else None)
            for item in items.value
        ]
        refs = [entry.name for entry in entries if isinstance(entry, _ListRef)]
        if append:
            self.lists[name].entries.extend(entries)
            self.lists[name].refs.extend(refs)
        else:
            self.lists[name] = _ListDef(f"{file}:{_line(node)}", entries, refs)

    def list_entry(
        self, file: str, item: yaml.Node, name: str, ctx: str, checked: set[str] | None
    ) -> ListItem | _ListRef:
        """A value, or a reference if the item is a plain (unquoted) earlier list's name.

        With ``checked`` (an append), a reference is checked not to close a cycle.
        """
        if not isinstance(item, yaml.ScalarNode):
            raise _error(file, item, f"{ctx}: an item must be a single value")
        if item.style is None and item.value in self.lists:
            if checked is not None:
                cycle = self.inclusion_path(file, item, item.value, name, checked)
                if cycle is not None:
                    chain = " -> ".join(_shorten((name, *cycle)))
                    raise _error(
                        file,
                        item,
                        f"{ctx}: including '{item.value}' makes lists include each other ({chain})",
                    )
            return _ListRef(item.value)
        # YAML quotes are YAML syntax, not a type: "22" is still a number.
        return ListItem(item.value, False, f"{file}:{_line(item)}: {ctx}")

    def inclusion_path(
        self, file: str, item: yaml.Node, start: str, target: str, checked: set[str]
    ) -> tuple[str, ...] | None:
        """The chain of inclusions leading from list ``start`` to list ``target``, if any.

        A depth-first walk in entry order, without recursion, that skips the lists in
        ``checked`` (already known not to lead to ``target``) and adds those it finds
        so. Every inclusion it follows is an entry of the expanded list being appended
        to, so the walks together never exceed the lists' total budget: past it, the
        lists are refused now rather than after a long walk.
        """
        if start == target:
            return (start,)
        if start in checked:
            return None
        path = [start]
        pending = [iter(self.lists[start].refs)]
        checked.add(start)
        while pending:
            following = next(pending[-1], None)
            if following is None:
                pending.pop()
                path.pop()
                continue
            self.cycle_steps += 1
            if self.cycle_steps > _limits.MAX_TOTAL_LIST_ENTRIES:
                raise _error(file, item, self.lists_too_big(target))
            if following == target:
                return (*path, following)
            if following not in checked:
                checked.add(following)
                path.append(following)
                pending.append(iter(self.lists[following].refs))
        return None

    @staticmethod
    def lists_too_big(name: str) -> str:
        return (
            f"list '{name}': the lists expand to more than {_limits.MAX_TOTAL_LIST_ENTRIES}"
            " entries in total"
        )

    def add_macro(self, file: str, node: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        name = self.name(file, keys, "macro")
        ctx = f"macro '{name}'"
        self.allow(file, keys, {"macro", "condition"}, ctx)
        if not _NAME.fullmatch(name) or name in KEYWORDS:
            raise _error(file, keys["macro"], f"{ctx}: a macro name must be a single word")
        if name in self.fields:
            raise _error(file, keys["macro"], f"{ctx}: the name is already a field")
        self.check_new(file, keys["macro"], f"macro '{name}'")
        condition = self.require(file, node, keys, "condition", ctx)
        _, tree = self.condition(file, condition, ctx)
        self.count_nodes(file, condition, tree, f"{ctx}: condition")
        self.macros[name] = tree

    def add_rule(self, file: str, node: yaml.Node, keys: dict[str, yaml.Node]) -> None:
        name = self.name(file, keys, "rule")
        ctx = f"rule '{name}'"
        self.allow(file, keys, _RULE_KEYS, ctx)
        self.check_new(file, keys["rule"], ctx)
        condition = self.require(file, node, keys, "condition", ctx)
        text, tree = self.condition(file, condition, ctx)
        output_node = self.require(file, node, keys, "output", ctx)
        output = self.text(file, output_node, f"{ctx}: output")
        if not output.strip():
            raise _error(file, output_node, f"{ctx}: output is empty")
        try:
            template = parse_template(output, self.fields)
        except ConditionError as e:
            raise _error(file, output_node, f"{ctx}: output: {e}") from None
        exceptions = self.exceptions(file, keys["exceptions"], ctx) if "exceptions" in keys else []
        if exceptions:
            tree = join(And, [tree, negate(join(Or, exceptions))])
            problem = too_big(tree.size)
            if problem is not None:
                raise _error(file, keys["exceptions"], f"{ctx}: with its exceptions, {problem}")
        self.count_nodes(file, condition, tree, f"{ctx}: condition")
        threshold = self.threshold(file, keys["threshold"], ctx) if "threshold" in keys else None
        rule = Rule(
            name=name,
            priority=self.priority(file, self.require(file, node, keys, "priority", ctx), ctx),
            condition=text,
            output=output,
            desc=self.text(file, keys["desc"], f"{ctx}: desc") if "desc" in keys else "",
            tags=self.tags(file, keys["tags"], ctx) if "tags" in keys else (),
            enabled=self.boolean(file, keys, "enabled", ctx, default=True),
            rate_limit=self.rate_limit(file, keys["rate_limit"], ctx)
            if "rate_limit" in keys
            else None,
            threshold=threshold,
            source=f"{file}:{_line(node)}",
        )
        fields = fields_of(tree.node) | template_fields(template)
        if threshold is not None and threshold.by is not None:
            fields.add(threshold.by)
        self.pending.append(_PendingRule(rule, tree.node, template, fields))

    # Rule parts.

    def condition(self, file: str, node: yaml.Node, ctx: str) -> tuple[str, Tree]:
        text = self.text(file, node, f"{ctx}: condition")
        try:
            return text, parse_condition(text, self.scope)
        except ConditionError as e:
            raise _error(file, node, f"{ctx}: condition: {e}") from None

    def count_nodes(self, file: str, node: yaml.Node, tree: Tree, ctx: str) -> None:
        """Add a macro's or rule's condition to the set's total, refused past its bound."""
        self.condition_nodes += tree.size
        if self.condition_nodes > _limits.MAX_TOTAL_CONDITION_NODES:
            raise _error(
                file,
                node,
                f"{ctx}: the conditions of the rule set expand to more than"
                f" {_limits.MAX_TOTAL_CONDITION_NODES} nodes in total (macros inlined)",
            )

    def priority(self, file: str, node: yaml.Node, ctx: str) -> str:
        text = self.text(file, node, f"{ctx}: priority").strip().upper()
        if text not in PRIORITIES:
            raise _error(
                file,
                node,
                f"{ctx}: priority {node.value!r} is not one of {', '.join(PRIORITIES)}",
            )
        return text

    def tags(self, file: str, node: yaml.Node, ctx: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise _error(file, node, f"{ctx}: tags must be a YAML list of strings")
        return tuple(self.text(file, tag, f"{ctx}: tag") for tag in node.value)

    def rate_limit(self, file: str, node: yaml.Node, ctx: str) -> RateLimit:
        try:
            return parse_rate_limit(self.text(file, node, f"{ctx}: rate_limit"))
        except ValueError as e:
            raise _error(file, node, f"{ctx}: rate_limit: {e}") from None

    def threshold(self, file: str, node: yaml.Node, ctx: str) -> Threshold:
        ctx = f"{ctx}: threshold"
        if not isinstance(node, yaml.MappingNode):
            raise _error(file, node, f"{ctx} must be a mapping with count, within and by")
        keys = self.mapping(file, node)
        self.allow(file, keys, {"count", "within", "by"}, ctx)
        count_node = self.require(file, node, keys, "count", ctx)
        count = self.text(file, count_node, f"{ctx}: count")
        if not count.isdigit() or int(count) < 1:
            raise _error(file, count_node, f"{ctx}: count {count!r} is not a positive integer")
        within_node = self.require(file, node, keys, "within", ctx)
        try:
            within = parse_duration(self.text(file, within_node, f"{ctx}: within"))
        except ValueError as e:
            raise _error(file, within_node, f"{ctx}: within: {e}") from None
        by: str | None = None
        if "by" in keys:
            by = self.text(file, keys["by"], f"{ctx}: by")
            if by not in self.fields:
                raise _error(file, keys["by"], f"{ctx}: by: unknown field '{by}'")
            if self.fields[by] is list:
                raise _error(file, keys["by"], f"{ctx}: by: list field '{by}' cannot be a key")
        return Threshold(int(count), within, by)

    def exceptions(self, file: str, node: yaml.Node, ctx: str) -> list[Tree]:
        """One tree per exception value tuple; the rule fires only if none matches."""
        if not isinstance(node, yaml.SequenceNode):
            raise _error(file, node, f"{ctx}: exceptions must be a YAML list")
        trees: list[Tree] = []
        names: set[str] = set()
        for exc in node.value:
            if not isinstance(exc, yaml.MappingNode):
                raise _error(file, exc, f"{ctx}: an exception must be a mapping")
            keys = self.mapping(file, exc)
            self.allow(file, keys, {"name", "fields", "comps", "values"}, f"{ctx}: exception")
            name = self.text(file, self.require(file, exc, keys, "name", ctx), f"{ctx}: name")
            if name in names:
                raise _error(file, keys["name"], f"{ctx}: exception '{name}' is defined twice")
            names.add(name)
            trees.extend(self.exception(file, exc, keys, f"{ctx}: exception '{name}'"))
        return trees

    def exception(
        self, file: str, node: yaml.Node, keys: dict[str, yaml.Node], ctx: str
    ) -> list[Tree]:
        fields_node = self.require(file, node, keys, "fields", ctx)
        fields = self.scalars(file, fields_node, f"{ctx}: fields")
        for name, field_node in zip(fields, fields_node.value, strict=True):
            if name not in self.fields:
                raise _error(file, field_node, f"{ctx}: unknown field '{name}'")
        if "comps" in keys:
            comps = self.scalars(file, keys["comps"], f"{ctx}: comps")
            if len(comps) != len(fields):
                raise _error(
                    file, keys["comps"], f"{ctx}: {len(comps)} comps for {len(fields)} fields"
                )
            for i, (comp, comp_node) in enumerate(zip(comps, keys["comps"].value, strict=True)):
                if comp not in OPERATORS[str] | OPERATORS[int] | {"="}:
                    raise _error(file, comp_node, f"{ctx}: unknown comp '{comp}'")
                try:
                    comps[i] = check_operator(fields[i], comp, self.scope, None)
                except ConditionError as e:
                    raise _error(file, comp_node, f"{ctx}: {e}") from None
        else:
            comps = ["=="] * len(fields)
        values = keys.get("values")
        if values is None:
            return []
        if not isinstance(values, yaml.SequenceNode):
            raise _error(file, values, f"{ctx}: values must be a YAML list of value lists")
        trees: list[Tree] = []
        for row in values.value:
            if not isinstance(row, yaml.SequenceNode) or len(row.value) != len(fields):
                raise _error(file, row, f"{ctx}: each value must be a list of {len(fields)}")
            parts = [
                leaf(self.exception_part(file, f, op, value, ctx))
                for f, op, value in zip(fields, comps, row.value, strict=True)
            ]
            trees.append(join(And, parts))
        return trees

    def exception_part(
        self, file: str, field: str, op: str, node: yaml.Node, ctx: str
    ) -> Compare | InSet:
        """``field op value`` of one exception tuple; for ``in``, a list or a list name."""
        try:
            if op != "in":
                value = self.text(file, node, f"{ctx}: value for '{field}'")
                return make_compare(field, op, Literal(value, False), self.scope, None)
            if isinstance(node, yaml.ScalarNode):
                if node.value not in self.lists:
                    raise ConditionError(f"unknown list '{node.value}'")
                return InSet(field, (), (node.value,))
            if not isinstance(node, yaml.SequenceNode):
                raise ConditionError(f"the value for '{field}' must be a list or a list name")
            lists: list[str] = []
            values: list[Value] = []
            for item in node.value:
                text = self.text(file, item, f"{ctx}: value for '{field}'")
                if item.style is None and text in self.lists:  # as in list items
                    lists.append(text)
                else:
                    literal = Literal(text, False)
                    values.append(literal_value(field, literal, self.scope, None, is_kind=True))
            return InSet(field, tuple(values), tuple(lists))
        except ConditionError as e:
            raise _error(file, node, f"{ctx}: {e}") from None

    # YAML helpers.

    def mapping(self, file: str, node: yaml.MappingNode) -> dict[str, yaml.Node]:
        """Key -> value node; a key given twice is an error (PyYAML keeps the last)."""
        keys: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise _error(file, key, "a key must be a plain string")
            if key.value in keys:
                raise _error(file, key, f"duplicate key '{key.value}'")
            keys[key.value] = value
        return keys

    def allow(
        self, file: str, keys: dict[str, yaml.Node], allowed: set[str] | frozenset[str], ctx: str
    ) -> None:
        for key, value in keys.items():
            if key == "append" and "append" not in allowed:
                raise _error(file, value, f"{ctx}: 'append' is supported for lists only")
            if key not in allowed:
                raise _error(
                    file,
                    value,
                    f"{ctx}: unknown key '{key}' (expected {', '.join(sorted(allowed))})",
                )

    def require(
        self, file: str, node: yaml.Node, keys: dict[str, yaml.Node], key: str, ctx: str
    ) -> yaml.Node:
        if key not in keys:
            raise _error(file, node, f"{ctx}: missing required key '{key}'")
        return keys[key]

    def name(self, file: str, keys: dict[str, yaml.Node], kind: str) -> str:
        name = self.text(file, keys[kind], f"{kind} name").strip()
        if not name:
            raise _error(file, keys[kind], f"{kind} name is empty")
        return name

    def check_new(self, file: str, node: yaml.Node, what: str) -> None:
        if what in self.origins:
            raise _error(file, node, f"{what} is already defined at {self.origins[what]}")
        self.origins[what] = f"{file}:{_line(node)}"

    def text(self, file: str, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise _error(file, node, f"{what} must be a single value, not a list or mapping")
        return str(node.value)

    def scalars(self, file: str, node: yaml.Node, what: str) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            raise _error(file, node, f"{what} must be a YAML list")
        return [self.text(file, item, what) for item in node.value]

    def boolean(
        self, file: str, keys: dict[str, yaml.Node], key: str, ctx: str, *, default: bool
    ) -> bool:
        node = keys.get(key)
        if node is None:
            return default
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise _error(file, node, f"{ctx}: {key} must be true or false")
        return str(node.value).lower() in ("true", "yes", "on")

    # Compilation.

    def finish(self) -> list[CompiledRule]:
        """Resolve list contents, then compute applicability and compile every rule."""
        compiler = Compiler(self.fields, self.resolve_lists())
        return [self.compile(pending, compiler) for pending in self.pending]

    def resolve_lists(self) -> dict[str, tuple[ListItem, ...]]:
        """Every list's final values, inclusions expanded (they cannot form cycles).

        Sizes come first, so nothing is expanded past the bounds: a list's entries
        are its values plus, per included list, one and that list's entries. Both
        passes walk the inclusions without recursion (chains can be long).
        """
        order = self.inclusion_order()
        cap = _limits.MAX_TOTAL_LIST_ENTRIES + 1  # sizes are only compared with bounds
        sizes: dict[str, int] = {}
        for name in order:
            entries = self.lists[name].entries
            size = sum(1 + sizes[e.name] if isinstance(e, _ListRef) else 1 for e in entries)
            sizes[name] = min(size, cap)
        total = 0
        for name, definition in self.lists.items():
            if sizes[name] > _limits.MAX_LIST_ENTRIES:
                raise RuleError(
                    f"{definition.where}: list '{name}' expands to more than"
                    f" {_limits.MAX_LIST_ENTRIES} entries (its values, plus one and the"
                    " entries of each list it includes)"
                )
            total += sizes[name]
            if total > _limits.MAX_TOTAL_LIST_ENTRIES:
                raise RuleError(f"{definition.where}: {self.lists_too_big(name)}")
        resolved: dict[str, tuple[ListItem, ...]] = {}
        for name in order:
            items: list[ListItem] = []
            for entry in self.lists[name].entries:
                if isinstance(entry, ListItem):
                    items.append(entry)
                else:
                    items.extend(resolved[entry.name])
            resolved[name] = tuple(items)
        return {name: resolved[name] for name in self.lists}

    def inclusion_order(self) -> list[str]:
        """The lists, each after every list it includes (a depth-first post-order)."""
        order: list[str] = []
        done: set[str] = set()
        for root in self.lists:
            if root in done:
                continue
            done.add(root)
            stack = [(root, iter(self.lists[root].refs))]
            while stack:
                name, refs = stack[-1]
                following = next(refs, None)
                if following is None:
                    stack.pop()
                    order.append(name)
                elif following not in done:
                    done.add(following)
                    stack.append((following, iter(self.lists[following].refs)))
        return order

    def compile(self, pending: _PendingRule, compiler: Compiler) -> CompiledRule:
        rule = pending.rule
        where = f"{rule.source}: rule '{rule.name}'"
        kinds = frozenset(k for k, fields in self.schema.items() if pending.fields <= fields)
        if not kinds:
            raise RuleError(f"{where}: {self.never_together(pending.fields)}")
        required = compiler.required_kinds(pending.tree)
        if required is not None:
            narrowed = kinds & required
            if not narrowed:
                needed = ", ".join(sorted(required))
                raise RuleError(
                    f"{where}: the condition only matches event kind(s) {needed}, which lack "
                    f"some of the fields {', '.join(sorted(pending.fields))}"
                )
            kinds = narrowed
        match = compiler.compile(pending.tree)
        rule = replace(rule, applies_to=kinds)
        render = compile_template(pending.template)
        return CompiledRule(rule, match, render, pending.tree, compiler)

    def never_together(self, fields: set[str]) -> str:
        """Why no event kind has all ``fields``: a pair that never meets, if there is one."""
        ordered = sorted(fields)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                if not any(a in kf and b in kf for kf in self.schema.values()):
                    return f"fields '{a}' and '{b}' never appear in the same event"
        return f"fields {', '.join(repr(f) for f in ordered)} never appear in the same event"


def _shorten(chain: tuple[str, ...], keep: int = 5) -> tuple[str, ...]:
    """A chain of list names for a message, its middle elided if it is long."""
    if len(chain) <= 2 * keep + 1:
        return chain
    return (*chain[:keep], f"... {len(chain) - 2 * keep} more ...", *chain[-keep:])
