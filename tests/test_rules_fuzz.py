"""Fuzzing the rule language (issue 9): random nesting, macro and list graphs, globs.

Each generated rule set is checked against a reference written here from the
documented semantics: which events a condition matches, which values a list holds
after inclusions and appends, what a glob matches (``fnmatch``), and when a bound of
``bpfloom.rules._limits`` refuses the set, at which line. The bounds are lowered for
the graphs, so they are crossed by small inputs. Hostile inputs at the real bounds
run in a subprocess (``rules_hostile.py``) under a memory cap and a wall timeout
that only catches a hang. Every run is derandomized: no flaky examples.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import event as tally
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfloom.rules import RuleError, RuleSet, _limits
from bpfloom.rules._glob import glob_regex

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150)

Event = dict[str, Any]

# Conditions: a small model of the language, rendered to text with as few
# parentheses as precedence allows (plus extra ones), and evaluated directly.


@dataclass(frozen=True)
class Leaf:
    text: str
    test: Callable[[Event], bool]
    size: int = 1


@dataclass(frozen=True)
class Join:
    kind: str  # "and" or "or"
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class Neg:
    item: Cond


@dataclass(frozen=True)
class Paren:
    item: Cond
    count: int


@dataclass(frozen=True)
class MacroRef:
    name: str
    body: Cond


Cond = Leaf | Join | Neg | Paren | MacroRef

PRECEDENCE = {"or": 1, "and": 2}


def render(c: Cond, outer: int = 0) -> tuple[str, int]:
    """The text of ``c`` and the parser nesting it needs (parentheses and 'not')."""
    if isinstance(c, Leaf):
        return c.text, 0
    if isinstance(c, MacroRef):
        return c.name, 0
    if isinstance(c, Neg):
        text, level = render(c.item, 3)
        return f"not {text}", level + 1
    if isinstance(c, Paren):
        text, level = render(c.item, 0)
        return "(" * c.count + text + ")" * c.count, level + c.count
    prec = PRECEDENCE[c.kind]
    parts = [render(item, prec) for item in c.items]
    text = f" {c.kind} ".join(p[0] for p in parts)
    level = max(p[1] for p in parts)
    if outer > prec:
        return f"({text})", level + 1
    return text, level


def evaluate(c: Cond, e: Event) -> bool:
    if isinstance(c, Leaf):
        return c.test(e)
    if isinstance(c, Neg):
        return not evaluate(c.item, e)
    if isinstance(c, Paren | MacroRef):
        return evaluate(c.item if isinstance(c, Paren) else c.body, e)
    if c.kind == "and":
        return all(evaluate(item, e) for item in c.items)
    return any(evaluate(item, e) for item in c.items)


def root_kind(c: Cond) -> str | None:
    if isinstance(c, Join):
        return c.kind
    if isinstance(c, Paren):
        return root_kind(c.item)
    if isinstance(c, MacroRef):
        return root_kind(c.body)
    return None


def measure(c: Cond, memo: dict[int, tuple[int, int]] | None = None) -> tuple[int, int]:
    """(size, depth) with macros inlined and nested and/or of the same kind merged:
    nodes (and values written in sets), and and/or/not levels above the deepest
    comparison. ``memo`` (by identity) keeps shared macro bodies from being re-walked."""
    memo = {} if memo is None else memo
    found = memo.get(id(c))
    if found is not None:
        return found
    if isinstance(c, Leaf):
        result = (c.size, 0)
    elif isinstance(c, Neg):
        n, d = measure(c.item, memo)
        result = (n + 1, d + 1)
    elif isinstance(c, Paren | MacroRef):
        result = measure(c.item if isinstance(c, Paren) else c.body, memo)
    else:
        n, d = 1, 0
        for item in c.items:
            merged = root_kind(item) == c.kind
            item_n, item_d = measure(item, memo)
            n += item_n - merged
            d = max(d, item_d + 1 - merged)
        result = (n, d)
    memo[id(c)] = result
    return result


INTS = st.integers(0, 3)
WORDS = st.sampled_from(["a", "b", "ab", "ba"])
GLOBS = st.text("ab*?[]!-", max_size=6)


def _pid(op: str, n: int) -> Leaf:
    tests: dict[str, Callable[[Any], bool]] = {
        "==": lambda x: x == n,
        "!=": lambda x: x != n,
        "<": lambda x: x < n,
        ">=": lambda x: x >= n,
    }
    test = tests[op]
    return Leaf(f"pid {op} {n}", lambda e: e.get("pid") is not None and test(e["pid"]))


def _comm_in(words: list[str]) -> Leaf:
    return Leaf(
        f"comm in ({', '.join(words)})", lambda e: e.get("comm") in set(words), 1 + len(words)
    )


def _args_in(words: list[str]) -> Leaf:
    return Leaf(
        f"args in ({', '.join(words)})",
        lambda e: e.get("args") is not None and bool(set(words) & set(e["args"])),
        1 + len(words),
    )


def _glob(g: str) -> Leaf:
    return Leaf(
        f"comm glob '{g}'",
        lambda e: e.get("comm") is not None and fnmatch.fnmatchcase(e["comm"], g),
    )


LEAVES: st.SearchStrategy[Cond] = st.one_of(
    st.builds(_pid, st.sampled_from(["==", "!=", "<", ">="]), INTS),
    WORDS.map(lambda w: Leaf(f"comm == {w}", lambda e: e.get("comm") == w)),
    WORDS.map(
        lambda w: Leaf(
            f"comm startswith {w}",
            lambda e: e.get("comm") is not None and e["comm"].startswith(w),
        )
    ),
    st.lists(WORDS, max_size=3).map(_comm_in),
    GLOBS.map(_glob),
    WORDS.map(
        lambda w: Leaf(f"args contains {w}", lambda e: e.get("args") is not None and w in e["args"])
    ),
    st.lists(WORDS, max_size=2).map(_args_in),
)


def conditions(leaves: st.SearchStrategy[Cond], max_leaves: int = 10) -> st.SearchStrategy[Cond]:
    def extend(children: st.SearchStrategy[Cond]) -> st.SearchStrategy[Cond]:
        joins = st.builds(
            lambda kind, items: Join(kind, tuple(items)),
            st.sampled_from(["and", "or"]),
            st.lists(children, min_size=2, max_size=4),
        )
        return joins | children.map(Neg) | st.builds(Paren, children, st.integers(1, 2))

    return st.recursive(leaves, extend, max_leaves=max_leaves)


def wrapped(c: Cond, wraps: list[tuple[str, int]]) -> Cond:
    """``c`` under runs of 'not' and of parentheses, to reach the nesting bound."""
    for kind, n in wraps:
        if kind == "paren":
            c = Paren(c, n)
        else:
            for _ in range(n):
                c = Neg(c)
    return c


WRAPS = st.lists(st.tuples(st.sampled_from(["not", "paren"]), st.integers(1, 60)), max_size=3)
WRAPS_FEW = st.lists(st.tuples(st.sampled_from(["not", "paren"]), st.integers(1, 3)), max_size=2)


def make_event(pid: int | None, comm: str | None, args: list[str] | None) -> Event:
    event: Event = {"event": "exec", "time": 1.0}
    for key, value in (("pid", pid), ("comm", comm), ("args", args)):
        if value is not None:
            event[key] = value
    return event


EVENTS = st.lists(
    st.builds(
        make_event,
        st.none() | INTS,
        st.none() | WORDS | st.just(""),
        st.none() | st.lists(WORDS, max_size=3),
    ),
    min_size=1,
    max_size=8,
)


def rule_item(name: str, text: str) -> str:
    return f"- rule: {name}\n  condition: |-\n    {text}\n  output: out\n  priority: NOTICE"


@contextlib.contextmanager
def limits(**values: int) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name, value in values.items():
            stack.enter_context(mock.patch.object(_limits, name, value))
        yield


# Random nesting, at the real bounds.


@FUZZ
@given(
    cond=conditions(LEAVES),
    wraps=WRAPS,
    events=EVENTS,
)
def test_random_conditions_match_their_reference(
    cond: Cond, wraps: list[tuple[str, int]], events: list[Event]
) -> None:
    cond = wrapped(cond, wraps)
    text, level = render(cond)
    too_deep = max(level, measure(cond)[1]) > _limits.MAX_NESTING
    try:
        rules = RuleSet.from_text(rule_item("r", text))
    except RuleError as e:
        tally("refused")
        assert too_deep, f"{e}\n{text}"
        assert re.fullmatch(
            r"<string>:2: rule 'r': condition: the condition is nested more than 100 deep"
            r" \(parentheses and 'not', macros inlined\) at column \d+",
            str(e),
        ), str(e)
        return
    tally("loaded")
    assert not too_deep, text
    for event in events:
        assert bool(rules.evaluate(event)) == evaluate(cond, event), (text, event)
    assert rules.errors == {}


# Macro graphs, under lowered bounds.


def first_line(items: list[str], index: int) -> int:
    """The line where ``items[index]`` starts, the items joined by newlines."""
    return 1 + sum(item.count("\n") + 1 for item in items[:index])


@FUZZ
@given(data=st.data())
def test_random_macro_graphs_match_their_reference(data: st.DataObject) -> None:
    macros: list[MacroRef] = []
    items: list[str] = []
    measured: list[tuple[str, int, int, int]] = []  # (name, nesting, nodes, running total)
    memo: dict[int, tuple[int, int]] = {}
    count = data.draw(st.integers(0, 6), "macros")
    body: Cond | None = None
    for i in range(count + 1):
        refs = st.sampled_from(macros) if macros else st.nothing()
        body = data.draw(conditions(LEAVES | refs, max_leaves=6), f"item {i}")
        body = wrapped(body, data.draw(WRAPS_FEW, f"wraps {i}"))
        text, level = render(body)
        name = f"m{i}" if i < count else "r"
        if i < count:
            items.append(f"- macro: {name}\n  condition: |-\n    {text}")
            macros.append(MacroRef(name, body))
        else:
            items.append(rule_item(name, text))
        n, d = measure(body, memo)
        measured.append((name, max(level, d), n, n + (measured[-1][3] if measured else 0)))
    assert body is not None
    # Bounds one below, at or one above what some item needs, so that in many
    # examples a bound is crossed by exactly one node or level. YAML rule files nest
    # 3 deep, the least nesting bound they load with; a comparison is one node.
    near = {
        "MAX_NESTING": {max(3, m[1] + k) for m in measured for k in (-1, 0, 1)},
        "MAX_CONDITION_NODES": {max(1, m[2] + k) for m in measured for k in (-1, 0, 1)},
        "MAX_TOTAL_CONDITION_NODES": {max(1, m[3] + k) for m in measured for k in (-1, 0, 1)},
    }
    if data.draw(st.booleans(), "tight bounds"):
        bounds = {name: data.draw(st.sampled_from(sorted(v)), name) for name, v in near.items()}
    else:
        bounds = {name: max(v) for name, v in near.items()}
    refused = next(
        (
            (i, name)
            for i, (name, nesting, n, total) in enumerate(measured)
            if nesting > bounds["MAX_NESTING"]
            or n > bounds["MAX_CONDITION_NODES"]
            or total > bounds["MAX_TOTAL_CONDITION_NODES"]
        ),
        None,
    )
    text = "\n".join(items) + "\n"
    events = data.draw(EVENTS, "events")
    with limits(**bounds):
        try:
            rules = RuleSet.from_text(text)
        except RuleError as e:
            tally(f"refused {str(e).split(': ')[-1][:40]}")
            assert refused is not None, f"{e}\n{text}"
            index, name = refused
            kind = "rule" if name == "r" else "macro"
            where = f"<string>:{first_line(items, index) + 1}: {kind} '{name}': condition: "
            assert str(e).startswith(where), f"{e}\n{text}"
            return
    tally("loaded")
    assert refused is None, f"{refused} not refused:\n{text}"
    for event in events:
        assert bool(rules.evaluate(event)) == evaluate(body, event), (text, event)


# List graphs with appends, under lowered bounds.


@dataclass
class ListModel:
    where: int  # the line of its definition
    values: list[str]
    refs: list[str]


def expand(lists: dict[str, ListModel], name: str) -> tuple[set[str], int]:
    """(values, entries) of a list, inclusions expanded (no cycles): an inclusion is
    one entry plus the included list's entries."""
    found: set[str] = set(lists[name].values)
    entries = len(lists[name].values)
    for ref in lists[name].refs:
        values, n = expand(lists, ref)
        found |= values
        entries += 1 + n
    return found, entries


def reaches(lists: dict[str, ListModel], start: str, target: str) -> bool:
    return start == target or any(reaches(lists, r, target) for r in lists[start].refs)


def expected_list_refusal(
    lists: dict[str, ListModel], bounds: dict[str, int]
) -> tuple[str, int] | None:
    """(name, line) of the list the bounds refuse once all are read, if any: the first
    over its own bound or taking the running total over the total bound."""
    running = 0
    for name, model in lists.items():
        entries = expand(lists, name)[1]
        running += entries
        if entries > bounds["MAX_LIST_ENTRIES"] or running > bounds["MAX_TOTAL_LIST_ENTRIES"]:
            return name, model.where
    return None


@FUZZ
@given(data=st.data())
def test_random_list_graphs_match_their_reference(data: st.DataObject) -> None:
    lists: dict[str, ListModel] = {}  # in definition order, as the loader keeps them
    items: list[str] = []
    appends: list[int] = []  # the lines of the appends' items
    cycle_line: int | None = None  # the line of the append that first closes a cycle
    for _ in range(data.draw(st.integers(1, 10), "steps")):
        append = bool(lists) and data.draw(st.booleans(), "append")
        name = data.draw(st.sampled_from(sorted(lists)), "to") if append else f"l{len(lists)}"
        known = st.sampled_from(sorted(lists)) if lists else st.nothing()
        values = st.sampled_from(["a", "b", "c", "d"])
        # Appends name lists less often: most would close a cycle.
        entry = values | values | values | known if append else values | known
        entries = data.draw(st.lists(entry, max_size=4))
        start = first_line(items, len(items))
        head = f"- list: {name}\n  append: true" if append else f"- list: {name}"
        items.append(f"{head}\n  items: [{', '.join(entries)}]")
        refs = [e for e in entries if e in lists]  # names of lists defined before
        if append:
            appends.append(start + 2)
            if any(reaches(lists, ref, name) for ref in refs):
                cycle_line = start + 2
                break
        model = lists.setdefault(name, ListModel(start, [], []))
        model.values += [e for e in entries if e not in lists]
        model.refs += refs
    items += [rule_item(f"r{n}", f"comm in ({n})") for n in lists]
    text = "\n".join(items) + "\n"
    # As for macros: bounds near what some list needs, or above all of them.
    sizes = [expand(lists, n)[1] for n in lists] if cycle_line is None else [1]
    totals = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    near = {
        "MAX_LIST_ENTRIES": {max(1, n + k) for n in sizes for k in (-1, 0, 1)},
        "MAX_TOTAL_LIST_ENTRIES": {max(1, n + k) for n in totals for k in (-1, 0, 1)},
    }
    if data.draw(st.booleans(), "tight bounds"):
        bounds = {name: data.draw(st.sampled_from(sorted(v)), name) for name, v in near.items()}
    else:
        bounds = {name: max(v) for name, v in near.items()}
    with limits(**bounds):
        try:
            rules = RuleSet.from_text(text)
        except RuleError as e:
            message = str(e)
            tally(f"refused {message.split(': ')[-1][:30]}")
            line = int(message.split(":")[1])
            if "include each other" in message:
                assert line == cycle_line, f"{message}\n{text}"
                return
            assert "more than" in message, message
            if line in appends:
                # A cycle check that walked past the total bound stops at its append,
                # before any cycle: only when the total is over the bound.
                assert "entries in total" in message, message
                assert cycle_line is None or line <= cycle_line, message
                if cycle_line is None:
                    total = sum(expand(lists, n)[1] for n in lists)
                    assert total > bounds["MAX_TOTAL_LIST_ENTRIES"], message
                return
            assert cycle_line is None, message
            refusal = expected_list_refusal(lists, bounds)
            assert refusal is not None, f"{message}\n{text}"
            name, where = refusal
            assert message.startswith(f"<string>:{where}: list '{name}'"), message
            return
    tally("loaded")
    assert cycle_line is None, text
    assert expected_list_refusal(lists, bounds) is None, text
    for value in ["a", "b", "c", "d", "e", "l0"]:
        fired = {a.rule for a in rules.evaluate(make_event(1, value, None))}
        assert fired == {f"r{n}" for n in lists if value in expand(lists, n)[0]}, (value, text)


# Globs.


@FUZZ
@given(
    pattern=st.text("ab*?[]!-^\\/&~|", max_size=24),
    names=st.lists(st.text("ab[]!-^\\/&", max_size=10), max_size=12),
)
def test_glob_translation_is_fnmatch(pattern: str, names: list[str]) -> None:
    if sys.version_info[:2] == (3, 11):  # the version whose fnmatch.py _glob follows
        assert glob_regex(pattern) == fnmatch.translate(pattern)
    compiled = re.compile(glob_regex(pattern))
    for name in names:
        assert (compiled.match(name) is not None) == fnmatch.fnmatchcase(name, pattern)


# Hostile inputs at the real bounds, in a subprocess with memory and time caps.

HOSTILE = Path(__file__).with_name("rules_hostile.py")


@pytest.mark.parametrize(
    "kind", ["nesting", "macros", "lists", "chains", "globs", "aliases", "yaml"]
)
def test_hostile_rule_files_load_or_fail_cleanly_within_bounds(kind: str) -> None:
    result = subprocess.run(
        [sys.executable, str(HOSTILE), kind],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    loaded, refused = map(int, result.stdout.split()[-2:])
    assert loaded + refused > 0
