"""Rules must not be a denial of service (issue 9, items 6 and 7).

Evaluation: long ``and``/``or`` chains evaluate without recursion, and a rule whose
evaluation raises is counted against that rule while every other rule still runs.

Loading: every hostile rule file is loaded in a subprocess with its address space
capped (``RLIMIT_AS``) and a wall timeout far above the real cost, which only catches
a hang; each must end in a clean ``RuleError`` naming the file and line. No test here
measures time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from bpfloom.rules import RuleError, RuleSet
from toolrun import run_tool_cli

MEMORY_LIMIT = 1 << 30  # bytes of address space a hostile load may use
TIMEOUT = 60  # seconds; loads that are refused take well under one

HOSTILE_LOAD = textwrap.dedent(
    """
    import resource, sys
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from bpfloom.rules import RuleError, load_rules
    try:
        rules = load_rules([sys.argv[1]])
    except RuleError as e:
        print(e)
        sys.exit(3)
    print("loaded", len(rules.rules))
    """
)


def hostile_load(path: Path) -> str:
    """The RuleError message of loading ``path`` under the memory and time caps."""
    result = subprocess.run(
        [sys.executable, "-c", HOSTILE_LOAD, str(path), str(MEMORY_LIMIT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 3, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout[-3000:]
    return lines[0]


def write(tmp_path: Path, items: list[str], name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(items) + "\n")
    return path


def line_of(items: list[str], index: int) -> int:
    """The 1-based line where ``items[index]`` starts once joined by newlines."""
    return 1 + sum(item.count("\n") + 1 for item in items[:index])


def rule(name: str, condition: str, **keys: str) -> str:
    extra = "".join(f"\n  {key}: {value}" for key, value in keys.items())
    return f"- rule: {name}\n  condition: {condition}\n  output: out\n  priority: NOTICE{extra}"


def exec_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "exec", "time": 5.0, "pid": 10, "comm": "ls"}
    event.update(fields)
    return event


# Item 6: evaluation.


@pytest.mark.parametrize("joiner", ["and", "or"])
def test_a_long_chain_evaluates_without_recursion(joiner: str) -> None:
    n = 3000
    terms = [f"pid != {i}" for i in range(100, 100 + n)]
    rules = RuleSet.from_text(
        rule("chain", f" {joiner} ".join(terms)) + "\n" + rule("other", "comm = ls")
    )
    assert [a.rule for a in rules.evaluate(exec_event())] == ["chain", "other"]
    # The last term decides: the whole chain was walked, in order.
    hit = exec_event(pid=100 + n - 1)
    expected = ["other"] if joiner == "and" else ["chain", "other"]
    assert [a.rule for a in rules.evaluate(hit)] == expected
    assert rules.errors == {}


def test_a_long_mixed_chain_keeps_precedence() -> None:
    # a0 and b0 or a1 and b1 or ...: true iff some pair holds.
    n = 1500
    text = " or ".join(f"pid = {i} and comm = c{i}" for i in range(n))
    rules = RuleSet.from_text(rule("mixed", text))
    assert [a.rule for a in rules.evaluate(exec_event(pid=n - 1, comm=f"c{n - 1}"))] == ["mixed"]
    assert rules.evaluate(exec_event(pid=n - 1, comm="c0")) == []


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no text")


def test_a_failing_rule_is_counted_and_the_others_still_fire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = "\n".join(
        [
            rule("first", "pid = 10"),
            rule("bad match", "comm startswith l"),
            rule("bad output", "pid = 10").replace("output: out", "output: '%comm'"),
            rule("last", "event = exec"),
        ]
    )
    rules = RuleSet.from_text(text)
    assert rules.errors == {}
    # comm as an int makes 'startswith' raise; as an unprintable object, the output.
    caplog.set_level(logging.WARNING, logger="bpfloom.rules")
    assert [a.rule for a in rules.evaluate(exec_event(comm=5))] == [
        "first",
        "bad output",
        "last",
    ]
    assert rules.errors == {"bad match": 1}
    assert [a.rule for a in rules.evaluate(exec_event(comm=Unprintable()))] == ["first", "last"]
    assert rules.errors == {"bad match": 2, "bad output": 1}
    # A good event still raises every alert it should.
    assert [a.rule for a in rules.evaluate(exec_event())] == [
        "first",
        "bad match",
        "bad output",
        "last",
    ]
    assert rules.errors == {"bad match": 2, "bad output": 1}
    logged = [r.getMessage() for r in caplog.records if r.name == "bpfloom.rules"]
    assert logged, "the first failure is logged"
    assert "bad match" in logged[0] and "<string>:" in logged[0]


def test_rule_errors_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    rules = RuleSet.from_text(rule("bad", "comm startswith l"))
    caplog.set_level(logging.WARNING, logger="bpfloom.rules")
    for _ in range(50):
        assert rules.evaluate(exec_event(comm=5)) == []
    assert rules.errors == {"bad": 50}
    logged = [r for r in caplog.records if r.name == "bpfloom.rules"]
    # One line per interval (seconds), not one per event.
    assert 1 <= len(logged) < 50


def test_error_counts_are_exact_across_threads() -> None:
    rules = RuleSet.from_text(rule("bad", "comm startswith l") + "\n" + rule("good", "pid = 10"))
    threads_n, per_thread = 4, 500
    barrier = threading.Barrier(threads_n)
    good: list[int] = []

    def work() -> None:
        barrier.wait()
        n = 0
        for _ in range(per_thread):
            n += len(rules.evaluate(exec_event(comm=5)))
        good.append(n)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert good == [per_thread] * threads_n
    assert rules.errors == {"bad": threads_n * per_thread}


class Unsayable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("nothing to say")


class Raising:
    def startswith(self, prefix: str) -> bool:
        raise Unsayable


def test_an_exception_without_a_message_is_still_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = RuleSet.from_text(rule("bad", "comm startswith l") + "\n" + rule("ok", "pid = 10"))
    caplog.set_level(logging.WARNING, logger="bpfloom.rules")
    assert [a.rule for a in rules.evaluate(exec_event(comm=Raising()))] == ["ok"]
    assert rules.errors == {"bad": 1}
    logged = [r.getMessage() for r in caplog.records if r.name == "bpfloom.rules"]
    assert len(logged) == 1 and "Unsayable: (no message)" in logged[0]


@pytest.mark.parametrize("kind", [["exec"], {"a": 1}, None, 5])
def test_an_event_with_a_strange_kind_raises_no_alert_and_no_error(kind: object) -> None:
    rules = RuleSet.from_text(rule("r", "pid = 10"))
    assert rules.evaluate(exec_event(event=kind)) == []
    assert rules.errors == {}


def test_detect_reports_rule_errors_at_exit() -> None:
    from bpfloom.tools.detect import rule_errors_line

    rules = RuleSet.from_text(rule("bad", "comm startswith l") + "\n" + rule("ok", "pid = 1"))
    assert rule_errors_line(rules) is None
    rules.evaluate(exec_event(comm=5))
    rules.evaluate(exec_event(comm=6))
    line = rule_errors_line(rules)
    assert line is not None
    assert line.startswith("bpfloom detect: ") and "2 'bad'" in line and "'ok'" not in line


# Item 7: loading is bounded. Each test fails before the fix: it hangs, runs out of
# memory, overflows the stack, or loads a file that should be refused.


def test_a_list_inclusion_bomb_is_refused(tmp_path: Path) -> None:
    items = ["- list: l0\n  items: [" + ", ".join(f"v{i}" for i in range(10)) + "]"]
    items += [f"- list: l{k}\n  items: [{', '.join([f'l{k - 1}'] * 10)}]" for k in range(1, 9)]
    items.append(rule("r", "comm in (l8)"))
    message = hostile_load(write(tmp_path, items))
    # l4 holds 10**5 values and 11 110 inclusions: the first over 100 000 entries.
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:{line_of(items, 4)}: list 'l4'")
    assert "more than 100000" in message


def test_macro_doubling_is_refused(tmp_path: Path) -> None:
    items = ["- macro: m0\n  condition: comm = a"]
    items += [f"- macro: m{k}\n  condition: m{k - 1} or m{k - 1}" for k in range(1, 25)]
    items.append(rule("r", "m24"))
    message = hostile_load(write(tmp_path, items))
    # m17 = 2**17 comparisons: the second operand crosses 100 000 nodes.
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:{line_of(items, 17) + 1}: macro 'm17'")
    assert "more than 100000 nodes" in message and message.endswith("at column 8")


def test_a_huge_glob_is_refused(tmp_path: Path) -> None:
    items = [rule("r", "\"path glob '" + "[" * 50_000 + "'\"")]
    message = hostile_load(write(tmp_path, items))
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:2: rule 'r': condition:")
    assert "longer than 4096 characters" in message and message.endswith("at column 11")


def test_the_longest_glob_loads_and_matches(tmp_path: Path) -> None:
    # Translated in linear time: 4096 unclosed brackets are 4096 literal '['.
    rules = RuleSet.from_text(rule("r", "\"path glob '" + "[" * 4096 + "'\""))
    assert [a.rule for a in rules.evaluate(exec_event(path="[" * 4096))] == ["r"]
    assert rules.evaluate(exec_event(path="[" * 4095)) == []


@pytest.mark.parametrize(
    ("condition", "column"),
    [
        ("(" * 500 + "comm = a" + ")" * 500, 101),
        ("not " * 10_000 + "comm = a", 401),
        ("(not " * 300 + "comm = a" + ")" * 300, 251),
    ],
    ids=["parentheses", "not", "both"],
)
def test_deep_nesting_is_refused_with_a_column(tmp_path: Path, condition: str, column: int) -> None:
    message = hostile_load(write(tmp_path, [rule("r", condition)]))
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:2: rule 'r': condition:")
    assert "nested more than 100 deep" in message and message.endswith(f"at column {column}")


def test_the_deepest_nesting_loads() -> None:
    text = rule("r", "(" * 50 + "not " * 50 + "comm = a" + ")" * 50)
    rules = RuleSet.from_text(text)
    assert [a.rule for a in rules.evaluate(exec_event(comm="b"))] == []
    assert [a.rule for a in rules.evaluate(exec_event(comm="a"))] == ["r"]


def test_a_deep_macro_chain_is_refused(tmp_path: Path) -> None:
    # No condition nests deeply, but inlined, each macro adds a level.
    items = ["- macro: m0\n  condition: comm = a"]
    items += [f"- macro: m{k}\n  condition: not m{k - 1}" for k in range(1, 3000)]
    items.append(rule("r", "m2999"))
    message = hostile_load(write(tmp_path, items))
    # m100 is 'not' 100 times over a comparison: the deepest allowed.
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:{line_of(items, 101) + 1}: macro 'm101'")
    assert "nested more than 100 deep" in message and message.endswith("at column 1")


def test_deeply_nested_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- rule: r\n  tags:\n   " + "[" * 20_000 + "]" * 20_000 + "\n")
    message = hostile_load(path)
    assert message.startswith(f"{path}:3: ")
    assert "YAML nested more than 100 deep" in message


def test_too_many_yaml_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- list: l\n  items: [" + ",".join(["a"] * 2_000_000) + "]\n")
    message = hostile_load(path)
    assert message.startswith(f"{path}:2: ")
    assert "more than 250000 YAML values" in message


def test_aliases_count_at_every_use(tmp_path: Path) -> None:
    # A 1 MiB condition, aliased by thousands of rules: 4 MiB of text in all is the cap.
    items = ["- macro: m\n  condition: &c \"comm = '" + "a" * (1 << 20) + "'\""]
    items += [rule(f"r{i}", "*c") for i in range(5000)]
    message = hostile_load(write(tmp_path, items))
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:{line_of(items, 3) + 1}: ")
    assert "more than 4 MiB" in message and "aliases" in message


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- rule: r\n  tags: &t [a, *t]\n")
    message = hostile_load(path)
    assert message.startswith(f"{path}:2: ") and "contains it" in message


def test_conditions_have_a_total_budget(tmp_path: Path) -> None:
    # One macro of 60 001 nodes is fine; rules inlining it 17 times are not.
    items = ["- macro: big\n  condition: " + " or ".join(f"pid = {i}" for i in range(60_000))]
    items += [rule(f"r{i}", f"big and comm = c{i}") for i in range(30)]
    message = hostile_load(write(tmp_path, items))
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:{line_of(items, 16) + 1}: rule 'r15'")
    assert "more than 1000000 nodes in total" in message


def test_lists_have_a_total_budget(tmp_path: Path) -> None:
    items = ["- list: base\n  items: [" + ", ".join(f"v{i}" for i in range(90_000)) + "]"]
    items += [f"- list: l{i}\n  items: [base]" for i in range(30)]
    items.append(rule("r", "comm in (l0)"))
    message = hostile_load(write(tmp_path, items))
    # base holds 90 000 entries, each l 90 001: the running total passes 10**6 at l10.
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:{line_of(items, 11)}: list 'l10'")
    assert "more than 1000000 entries in total" in message


def test_list_cycle_checks_are_bounded(tmp_path: Path) -> None:
    # Each append of d_top to 'a' must check that d_top does not lead back to 'a':
    # a walk down the whole chain. The walks count against the lists' total budget.
    n = 15_000
    items = ["- {list: a, items: [x]}", "- {list: d0, items: [y]}"]
    items += [f"- {{list: d{k}, items: [d{k - 1}]}}" for k in range(1, n)]
    items += [f"- {{list: a, append: true, items: [d{n - 1}]}}"] * 5000
    message = hostile_load(write(tmp_path, items))
    assert message.startswith(f"{tmp_path / 'rules.yaml'}:")
    assert "list 'a'" in message and "more than 1000000 entries in total" in message
    line = int(message.split(":")[1])
    assert n + 2 < line < n + 2 + 100


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda tmp: Path("/dev/zero"), "a character device"),
        (lambda tmp: tmp, "a directory"),
        (lambda tmp: (os.mkfifo(tmp / "fifo"), tmp / "fifo")[1], "a FIFO"),
    ],
    ids=["dev-zero", "directory", "fifo"],
)
def test_only_regular_files_are_read(tmp_path: Path, make: Any, what: str) -> None:
    path = make(tmp_path)
    assert hostile_load(path) == f"{path}: not a regular file ({what})"


def test_a_rule_file_over_4_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("# " + "x" * (4 << 20) + "\n")
    assert hostile_load(path) == f"{path}: larger than 4 MiB ({(4 << 20) + 3} bytes)"


def test_detect_refuses_a_device_as_rule_file() -> None:
    result = run_tool_cli("detect", "--rules", "/dev/zero", "--list")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "bpfloom: error: /dev/zero: not a regular file (a character device)"
    )


def test_hostile_errors_are_rule_errors() -> None:
    with pytest.raises(RuleError, match=r"<string>:2: rule 'r': condition: .* at column 101$"):
        RuleSet.from_text(rule("r", "(" * 200 + "comm = a" + ")" * 200))
