"""Hostile rule files at the real bounds, run by tests/test_rules_fuzz.py in a subprocess.

``python rules_hostile.py KIND`` caps its address space (``RLIMIT_AS``), then loads
rule files hypothesis builds from a few numbers (nesting depths, doubling levels,
list fan-outs, chain lengths, glob texts, alias counts), each of which, unbounded,
would take minutes or gigabytes. Every load must either succeed, and then evaluate
events without a rule error, or end in ``RuleError``: a MemoryError, RecursionError or
any other exception fails the run (exit status 1), and the caller's wall timeout
catches a hang. Prints ``loaded refused`` counts last.
"""

from __future__ import annotations

import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MEMORY_LIMIT = 1 << 30  # bytes of address space
EXAMPLES = 12

Builder = Callable[[st.DataObject], str]


def rule(condition: str, name: str = "r") -> str:
    return f"- rule: {name}\n  condition: {condition}\n  output: '%comm'\n  priority: NOTICE"


def nesting(data: st.DataObject) -> str:
    parens = data.draw(st.integers(0, 400))
    nots = data.draw(st.integers(0, 400))
    return rule("(" * parens + "not " * nots + "comm = a" + ")" * parens)


def macros(data: st.DataObject) -> str:
    levels = data.draw(st.integers(1, 30))
    fanout = data.draw(st.integers(2, 4))
    items = ["- macro: m0\n  condition: comm = a"]
    for k in range(1, levels + 1):
        joiner = " or " if k % 2 else " and "
        items.append(f"- macro: m{k}\n  condition: " + joiner.join([f"m{k - 1}"] * fanout))
    rules = data.draw(st.integers(1, 50))
    items += [rule(f"m{levels} or pid = {i}", f"r{i}") for i in range(rules)]
    return "\n".join(items)


def lists(data: st.DataObject) -> str:
    levels = data.draw(st.integers(1, 9))
    fanout = data.draw(st.integers(1, 12))
    values = data.draw(st.integers(0, 20))
    items = ["- list: l0\n  items: [" + ", ".join(f"v{i}" for i in range(values)) + "]"]
    for k in range(1, levels + 1):
        items.append(f"- list: l{k}\n  items: [{', '.join([f'l{k - 1}'] * fanout)}]")
    rules = data.draw(st.integers(1, 50))
    items += [rule(f"comm in (l{levels}, x{i})", f"r{i}") for i in range(rules)]
    return "\n".join(items)


def chains(data: st.DataObject) -> str:
    terms = data.draw(st.integers(1, 150_000))
    joiner = data.draw(st.sampled_from([" and ", " or "]))
    return rule(joiner.join(f"pid != {i}" for i in range(terms)))


def globs(data: st.DataObject) -> str:
    pattern = data.draw(st.text("[]!-*?a", min_size=0, max_size=8))
    repeat = data.draw(st.integers(1, 1500))
    return rule(f"\"path glob '{pattern * repeat}'\"")


def aliases(data: st.DataObject) -> str:
    length = data.draw(st.integers(1, 1 << 20))
    uses = data.draw(st.integers(1, 3000))
    items = ["- macro: m\n  condition: &c \"comm = '" + "a" * length + "'\""]
    items += [rule("*c", f"r{i}") for i in range(uses)]
    return "\n".join(items)


def yaml(data: st.DataObject) -> str:
    depth = data.draw(st.integers(1, 5000))
    width = data.draw(st.integers(1, 400_000))
    tags = "[" * depth + ", ".join(["t"] * width) + "]" * depth
    return rule("comm = a") + f"\n  tags: {tags}"


BUILDERS: dict[str, Builder] = {
    "nesting": nesting,
    "macros": macros,
    "lists": lists,
    "chains": chains,
    "globs": globs,
    "aliases": aliases,
    "yaml": yaml,
}


def main(kind: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    from bpfloom.rules import RuleError, load_rules

    build = BUILDERS[kind]
    counts = {"loaded": 0, "refused": 0}
    events = [
        {"event": "exec", "pid": 5, "comm": "a", "path": "[" * 4096, "args": ["a"]},
        {"event": "exec", "pid": 7, "comm": "x3", "path": "a" * 4096, "args": []},
        {"event": "open", "pid": 5, "comm": "a", "path": "/tmp/a"},
    ]

    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=EXAMPLES,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def load(data: st.DataObject) -> None:
        text = build(data)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rules.yaml"
            path.write_text(text + "\n")
            try:
                rules = load_rules([path])
            except RuleError as e:
                assert str(e).startswith(f"{path}"), str(e)[:500]
                counts["refused"] += 1
                return
        for event in events:
            rules.evaluate(event)
        assert rules.errors == {}, rules.errors
        counts["loaded"] += 1

    load()
    print(counts["loaded"], counts["refused"])


if __name__ == "__main__":
    main(sys.argv[1])
