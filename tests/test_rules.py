"""The rule engine of ``bpfloom detect`` (``bpfloom.rules``), on hand-built events.

Conditions, lists, macros, exceptions and the YAML loader are checked table by table;
every load error is checked for the exact ``file:line`` it names. Time-dependent
behaviour (rate limits, thresholds) runs on event times or a fake clock, never sleeps.
"""

from __future__ import annotations

import builtins
import re
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bpfloom.rules
from bpfloom._exceptions import BpfloomError
from bpfloom.rules import (
    PRIORITIES,
    Alert,
    RateLimit,
    RuleError,
    RuleSet,
    Threshold,
    load_rules,
)
from bpfloom.tools.paths import lexical

# Events and rule text.


def exec_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "exec",
        "time": 100.0,
        "pid": 10,
        "ppid": 1,
        "uid": 1000,
        "comm": "ls",
        "parent_comm": "bash",
        "path": "/usr/bin/ls",
        "args": ["ls", "-l"],
        "ret": 0,
        "cgroup": "/user.slice",
    }
    event.update(fields)
    event.setdefault("norm_path", lexical(event["path"]))  # as detect's events have
    return event


def open_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "open",
        "time": 100.0,
        "pid": 10,
        "tid": 10,
        "uid": 1000,
        "comm": "cat",
        "fd": 3,
        "err": 0,
        "flags": 0,
        "path": "/etc/passwd",
    }
    event.update(fields)
    event.setdefault("norm_path", lexical(event["path"]))  # as detect's events have
    return event


def exit_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "exit",
        "time": 100.0,
        "pid": 10,
        "ppid": 1,
        "tid": 10,
        "comm": "ls",
        "age": 0.25,
        "exit_code": 0,
        "signal": 0,
    }
    event.update(fields)
    return event


def rule_yaml(condition: str, name: str = "r", **keys: str) -> str:
    """One rule as YAML; the condition goes in a block scalar, so it needs no quoting."""
    lines = [
        f"- rule: {name}",
        "  condition: |-",
        f"    {condition}",
        "  output: out",
        "  priority: NOTICE",
    ]
    lines += [f"  {key}: {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def fired(rules: RuleSet, event: dict[str, Any]) -> list[str]:
    return [alert.rule for alert in rules.evaluate(event)]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_rules(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def marked_line(text: str) -> int:
    """The 1-based line of ``text`` that carries the ``# <-`` marker."""
    lines = textwrap.dedent(text).splitlines()
    return next(i for i, line in enumerate(lines, 1) if "# <-" in line)


# The public face.


def test_public_api() -> None:
    assert sorted(bpfloom.rules.__all__) == [
        "Alert",
        "DEFAULT_RULES",
        "DEFAULT_SCHEMA",
        "PRIORITIES",
        "RateLimit",
        "Rule",
        "RuleError",
        "RuleSet",
        "Schema",
        "Threshold",
        "load_rules",
    ]
    for name in bpfloom.rules.__all__:
        assert hasattr(bpfloom.rules, name)
    assert issubclass(RuleError, BpfloomError)
    assert PRIORITIES[0] == "EMERGENCY" and PRIORITIES[-1] == "DEBUG"
    assert len(PRIORITIES) == 8


# Conditions: every operator, on the field types they accept.

EXEC = exec_event()
OPEN_FAILED = open_event(fd=-1, err=2, flags=0x241, path="/tmp/a/b")


@pytest.mark.parametrize(
    ("condition", "event", "expected"),
    [
        # equality, both spellings, bare and quoted literals
        ("comm == ls", EXEC, True),
        ("comm = ls", EXEC, True),
        ('comm == "ls"', EXEC, True),
        ("comm == 'ls'", EXEC, True),
        ("comm == cat", EXEC, False),
        ("comm != cat", EXEC, True),
        ("comm != ls", EXEC, False),
        ("path == /usr/bin/ls", EXEC, True),
        # integers: decimal, negative, hex, octal
        ("pid == 10", EXEC, True),
        ("pid != 10", EXEC, False),
        ("pid < 11", EXEC, True),
        ("pid < 10", EXEC, False),
        ("pid <= 10", EXEC, True),
        ("pid > 9", EXEC, True),
        ("pid > 10", EXEC, False),
        ("pid >= 10", EXEC, True),
        ("fd == -1", OPEN_FAILED, True),
        ("fd < 0", OPEN_FAILED, True),
        ("err != 0", OPEN_FAILED, True),
        ("flags == 0x241", OPEN_FAILED, True),
        ("flags == 0X241", OPEN_FAILED, True),
        ("flags == 577", OPEN_FAILED, True),
        ("flags == 0o1101", OPEN_FAILED, True),
        ("ret == -0x2", exec_event(ret=-2), True),
        # floats take integers and decimals
        ("time > 99.5", EXEC, True),
        ("time == 100", EXEC, True),
        ("age < 0.5", exit_event(), True),
        ("age >= 1", exit_event(), False),
        # in: inline values, empty set
        ("comm in (ls, cat)", EXEC, True),
        ("comm in (cat, 'sh')", EXEC, False),
        ("comm in ()", EXEC, False),
        ("pid in (1, 0xa)", EXEC, True),
        ("event in (exec, open)", EXEC, True),
        ("event in (exit)", EXEC, False),
        # string operators
        ("path startswith /usr/", EXEC, True),
        ("path startswith /usr/sbin", EXEC, False),
        ("path endswith /ls", EXEC, True),
        ("path endswith /cat", EXEC, False),
        ("path contains bin/l", EXEC, True),
        ("path contains sbin", EXEC, False),
        ("cgroup contains user", EXEC, True),
        # glob: fnmatch rules, '*' crosses '/'
        ('path glob "/usr/*/ls"', EXEC, True),
        ("path glob /usr/bin/l?", EXEC, True),
        ("path glob /usr/bin/[kl]s", EXEC, True),
        ('path glob "/usr/bin/[!l]s"', EXEC, False),
        ("path glob /tmp/*", OPEN_FAILED, True),
        ("path glob /tmp/a", OPEN_FAILED, False),
        ("path glob /TMP/*", OPEN_FAILED, False),
        # list fields: membership only
        ("args contains -l", EXEC, True),
        ("args contains ls", EXEC, True),
        ("args contains l", EXEC, False),
        ("args in (-x, -l)", EXEC, True),
        ("args in (-x, -y)", EXEC, False),
        # quoting
        ('comm == "a b"', exec_event(comm="a b"), True),
        ("comm == 'it\\'s'", exec_event(comm="it's"), True),
        ('comm == "say \\"hi\\""', exec_event(comm='say "hi"'), True),
        ('comm == "and"', exec_event(comm="and"), True),
        ('comm == "x,y(z)"', exec_event(comm="x,y(z)"), True),
        ('comm in ("a b", c)', exec_event(comm="a b"), True),
        ("comm == ''", exec_event(comm=""), True),
        # a missing (or None) field never compares true, not even with !=
        ("comm != cat", {k: v for k, v in EXEC.items() if k != "comm"}, False),
        ("comm == cat", exec_event(comm=None), False),
        ("pid < 100", exec_event(pid=None), False),
        ("path glob *", exec_event(path=None), False),
        ("args contains x", exec_event(args=None), False),
        ("not comm == cat", {k: v for k, v in EXEC.items() if k != "comm"}, True),
    ],
)
def test_operator(condition: str, event: dict[str, Any], expected: bool) -> None:
    rules = RuleSet.from_text(rule_yaml(condition))
    assert bool(fired(rules, event)) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # not > and > or
        ("comm == x or comm == ls and pid == 1", False),
        ("comm == ls or comm == x and pid == 1", True),
        ("(comm == x or comm == ls) and pid == 10", True),
        ("(comm == x or comm == ls) and pid == 1", False),
        ("not comm == x and pid == 10", True),
        ("not comm == ls and pid == 10", False),
        ("not (comm == ls and pid == 1)", True),
        ("not comm == ls or pid == 10", True),
        ("not not comm == ls", True),
        ("comm == a or comm == b or comm == ls", True),
        ("comm == ls and pid == 10 and uid == 1000 and ret == 0", True),
        ("comm == ls and pid == 10 and uid == 0", False),
        ("((comm == ls))", True),
        ("(comm == ls)and(pid == 10)", True),
        ("comm==ls and pid==10", True),
        ("  comm == ls\n  and pid == 10  ", True),
    ],
)
def test_precedence_and_parentheses(condition: str, expected: bool) -> None:
    rules = RuleSet.from_text(rule_yaml(condition.replace("\n", "\n    ")))
    assert bool(fired(rules, EXEC)) is expected


MACROS = """\
- macro: is_exec
  condition: event == exec
- macro: is_shell
  condition: is_exec and comm in (bash, sh)
- macro: from_login
  condition: parent_comm in (sshd, login) or uid == 0
"""


@pytest.mark.parametrize(
    ("condition", "event", "expected"),
    [
        ("is_shell", exec_event(comm="sh"), True),
        ("is_shell", exec_event(comm="ls"), False),
        ("is_shell and not from_login", exec_event(comm="sh", parent_comm="python3"), True),
        ("is_shell and not from_login", exec_event(comm="sh", parent_comm="sshd"), False),
        # a macro is one atom: 'not' applies to all of it
        ("not from_login and pid == 10", exec_event(uid=0), False),
        ("(is_shell)", exec_event(comm="bash"), True),
    ],
)
def test_macros(condition: str, event: dict[str, Any], expected: bool) -> None:
    rules = RuleSet.from_text(MACROS + rule_yaml(condition))
    assert bool(fired(rules, event)) is expected


LISTS = """\
- list: shells
  items: [bash, sh]
- list: more_shells
  items: [shells, zsh, "fish"]
- list: quoted
  items: ["shells"]
- list: pids
  items: [1, 0x10, "22", -3]
- list: kinds
  items: [open, exit]
"""


@pytest.mark.parametrize(
    ("condition", "event", "expected"),
    [
        ("comm in shells", exec_event(comm="sh"), True),
        ("comm in (shells)", exec_event(comm="bash"), True),
        ("comm in (shells, ls)", exec_event(comm="ls"), True),
        ("comm in (shells)", exec_event(comm="zsh"), False),
        # a list includes an earlier list named by a plain item
        ("comm in more_shells", exec_event(comm="bash"), True),
        ("comm in more_shells", exec_event(comm="fish"), True),
        # quoted, in YAML or in the condition: a value, not a list
        ("comm in quoted", exec_event(comm="shells"), True),
        ("comm in quoted", exec_event(comm="sh"), False),
        ("comm in ('shells')", exec_event(comm="shells"), True),
        ("comm in ('shells')", exec_event(comm="sh"), False),
        # list items are typed by the field they meet
        ("pid in pids", exec_event(pid=16), True),
        ("pid in pids", exec_event(pid=22), True),
        ("pid in pids", exec_event(pid=-3), True),
        ("pid in (pids, 7)", exec_event(pid=7), True),
        ("pid in pids", exec_event(pid=2), False),
        ("args in shells", exec_event(args=["sh", "-c"]), True),
        ("args in shells", exec_event(args=["ls"]), False),
    ],
)
def test_lists(condition: str, event: dict[str, Any], expected: bool) -> None:
    rules = RuleSet.from_text(LISTS + rule_yaml(condition))
    assert bool(fired(rules, event)) is expected


def test_append_reaches_rules_defined_before(tmp_path: Path) -> None:
    base = write_rules(
        tmp_path,
        """\
        - list: shells
          items: [bash]
        - rule: shell
          condition: comm in shells
          output: out
          priority: NOTICE
        - list: shells
          append: true
          items: [sh]
        """,
        "base.yaml",
    )
    local = write_rules(
        tmp_path,
        """\
        - list: shells
          append: true
          items: [zsh]
        """,
        "local.yaml",
    )
    rules = load_rules([base, local])
    for comm, expected in [("bash", True), ("sh", True), ("zsh", True), ("ls", False)]:
        assert bool(fired(rules, exec_event(comm=comm))) is expected, comm
    # Loaded alone, the base file does not know zsh.
    assert not fired(load_rules([base]), exec_event(comm="zsh"))


def test_nested_list_sees_appends_to_the_list_it_includes() -> None:
    text = """\
- list: a
  items: [x]
- list: b
  items: [a, y]
- list: a
  append: true
  items: [z]
"""
    rules = RuleSet.from_text(text + rule_yaml("comm in b"))
    assert [bool(fired(rules, exec_event(comm=c))) for c in "xyzw"] == [True, True, True, False]


EXCEPTIONS = """\
- list: trusted
  items: [cron, systemd]
- rule: r
  condition: event == exec and comm == sh
  output: out
  priority: NOTICE
  exceptions:
    - name: parent_and_dir
      fields: [parent_comm, path]
      comps: [=, startswith]
      values:
        - [make, /usr/]
        - [python3, /opt/]
    - name: default_comps
      fields: [uid, ppid]
      values: [[0, 1], ["7", 0x10]]
    - name: parent_in
      fields: [parent_comm]
      comps: [in]
      values: [[[ninja, bazel]], [trusted]]
    - name: glob_path
      fields: [path]
      comps: [glob]
      values: [["/srv/*/sh"]]
    - name: list_field
      fields: [args]
      comps: [contains]
      values: [[--safe]]
    - name: no_values_yet
      fields: [comm]
"""


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, True),
        ({"parent_comm": "make", "path": "/usr/bin/sh"}, False),
        ({"parent_comm": "make", "path": "/opt/sh"}, True),
        ({"parent_comm": "python3", "path": "/opt/sh"}, False),
        ({"uid": 0, "ppid": 1}, False),
        ({"uid": 0, "ppid": 2}, True),
        ({"uid": 7, "ppid": 16}, False),
        ({"parent_comm": "ninja"}, False),
        ({"parent_comm": "bazel"}, False),
        ({"parent_comm": "cron"}, False),
        ({"parent_comm": "systemd"}, False),
        ({"parent_comm": "trusted"}, True),
        ({"path": "/srv/app/sh"}, False),
        ({"args": ["sh", "--safe"]}, False),
        ({"comm": "bash"}, False),
    ],
)
def test_exceptions(fields: dict[str, Any], expected: bool) -> None:
    rules = RuleSet.from_text(EXCEPTIONS)
    event = exec_event(comm="sh", path="/bin/sh", parent_comm="python3")
    event.update(fields)
    assert bool(fired(rules, event)) is expected


def test_conditions_are_parsed_never_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {sentinel}')",
        f"comm == __import__('os').system('touch {sentinel}')",
        f"comm == x or exec(\"open('{sentinel}', 'w')\")",
    ]
    for payload in payloads:
        with pytest.raises(RuleError, match=r"condition: .* at column \d+"):
            RuleSet.from_text(rule_yaml(payload))
    assert not sentinel.exists()

    # Loading and evaluating never reach eval, exec or compile.
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec/compile called")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    rules = RuleSet.from_text(EXCEPTIONS + rule_yaml("path glob /tmp/* and pid > 1", name="g"))
    assert fired(rules, exec_event(comm="sh", path="/tmp/sh")) == ["r", "g"]
    assert fired(load_rules(), exec_event(comm="sh", parent_comm="python3")) != []


# Load errors: each names the file and the line of the node at fault.

ERRORS: list[tuple[str, str, str]] = [
    (
        "unknown field",
        """\
        - rule: Shell in container
          output: out
          condition: comm == x and proc.name = bash  # <-
          priority: NOTICE
        """,
        "rule 'Shell in container': condition: unknown field 'proc.name' at column 15",
    ),
    (
        "unknown field or macro",
        """\
        - rule: r
          condition: comm == x and is_shell  # <-
        """,
        "rule 'r': condition: unknown field or macro 'is_shell' at column 15",
    ),
    (
        "macro used before its definition",
        """\
        - rule: r
          condition: later  # <-
          output: out
          priority: NOTICE
        - macro: later
          condition: comm == x
        """,
        "unknown field or macro 'later' at column 1",
    ),
    (
        "field without operator",
        """\
        - rule: r
          condition: comm and pid == 1  # <-
        """,
        "field 'comm' needs an operator, got 'and' at column 6",
    ),
    (
        "unknown list",
        """\
        - rule: r
          condition: comm in shells  # <-
        """,
        "unknown list 'shells' at column 9",
    ),
    (
        "list used before its definition",
        """\
        - macro: m
          condition: comm in shells  # <-
        - list: shells
          items: [sh]
        """,
        "macro 'm': condition: unknown list 'shells' at column 9",
    ),
    (
        "missing value",
        """\
        - rule: r
          condition: comm ==  # <-
        """,
        "expected a value after '==', got end of condition at column 8",
    ),
    (
        "keyword as value",
        """\
        - rule: r
          condition: comm == and  # <-
        """,
        "expected a value after '==', got 'and' at column 9",
    ),
    (
        "unclosed parenthesis",
        """\
        - rule: r
          condition: (comm == x or pid == 1  # <-
        """,
        "expected ')', got end of condition at column 23",
    ),
    (
        "trailing token",
        """\
        - rule: r
          condition: comm == x y  # <-
        """,
        "unexpected 'y' at column 11",
    ),
    (
        "dangling operator",
        """\
        - rule: r
          condition: comm == x and  # <-
        """,
        "expected a field, a macro, 'not' or '(', got end of condition at column 14",
    ),
    (
        "unterminated string",
        """\
        - rule: r
          condition: comm == 'abc  # <-
        """,
        "unterminated string at column 9",
    ),
    (
        "stray character",
        """\
        - rule: r
          condition: comm == x ! pid == 1  # <-
        """,
        "unexpected character '!' at column 11",
    ),
    (
        "empty condition",
        """\
        - rule: r
          condition: ""  # <-
        """,
        "rule 'r': condition: empty condition",
    ),
    (
        "bad in list",
        """\
        - rule: r
          condition: comm in (a b)  # <-
        """,
        "expected ',' or ')', got 'b' at column 12",
    ),
    (
        "in without a list",
        """\
        - rule: r
          condition: comm in "a"  # <-
        """,
        "expected '(' or a list name after 'in', got string 'a' at column 9",
    ),
    (
        "int field, word literal",
        """\
        - rule: r
          condition: pid == abc  # <-
        """,
        "field 'pid' is an integer; 'abc' is not at column 8",
    ),
    (
        "int field, quoted literal",
        """\
        - rule: r
          condition: pid == "1"  # <-
        """,
        "field 'pid' is an integer; quoted string '1' is not at column 8",
    ),
    (
        "int field, decimal literal",
        """\
        - rule: r
          condition: pid == 1.5  # <-
        """,
        "field 'pid' is an integer; '1.5' is not at column 8",
    ),
    (
        "int field, word in a set",
        """\
        - rule: r
          condition: uid in (0, root)  # <-
        """,
        "field 'uid' is an integer; 'root' is not at column 12",
    ),
    (
        "float field, word literal",
        """\
        - rule: r
          condition: age < old  # <-
        """,
        "field 'age' is a number; 'old' is not at column 7",
    ),
    (
        "ordering on a str field",
        """\
        - rule: r
          condition: comm < x  # <-
        """,
        "operator '<' cannot be used on str field 'comm' at column 6",
    ),
    (
        "string operator on an int field",
        """\
        - rule: r
          condition: pid startswith 1  # <-
        """,
        "operator 'startswith' cannot be used on int field 'pid' at column 5",
    ),
    (
        "glob on an int field",
        """\
        - rule: r
          condition: pid glob 1*  # <-
        """,
        "operator 'glob' cannot be used on int field 'pid' at column 5",
    ),
    (
        "== on a list field",
        """\
        - rule: r
          condition: args == ls  # <-
        """,
        "operator '==' cannot be used on list field 'args' (use 'contains' or 'in') at column 6",
    ),
    (
        "startswith on a list field",
        """\
        - rule: r
          condition: args startswith ls  # <-
        """,
        "operator 'startswith' cannot be used on list field 'args'",
    ),
    (
        "glob on a list field",
        """\
        - rule: r
          condition: args glob "*"  # <-
        """,
        "operator 'glob' cannot be used on list field 'args'",
    ),
    (
        "unknown event kind",
        """\
        - rule: r
          condition: event == exce  # <-
        """,
        "unknown event kind 'exce' (known: exec, exit, open) at column 10",
    ),
    (
        "unknown event kind in a set",
        """\
        - rule: r
          condition: event in (exec, opn)  # <-
        """,
        "unknown event kind 'opn' (known: exec, exit, open) at column 17",
    ),
    (
        "condition not a string",
        """\
        - rule: r
          condition: [comm, ls]  # <-
        """,
        "rule 'r': condition must be a single value, not a list or mapping",
    ),
    (
        "macro with a bad condition",
        """\
        - macro: m
          condition: comm ==  # <-
        """,
        "macro 'm': condition: expected a value after '==', got end of condition at column 8",
    ),
    (
        "bad priority",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: URGENT  # <-
        """,
        "rule 'r': priority 'URGENT' is not one of EMERGENCY, ALERT, CRITICAL, ERROR, "
        "WARNING, NOTICE, INFORMATIONAL, DEBUG",
    ),
    (
        "bad rate limit unit",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          rate_limit: 5/y  # <-
        """,
        "rule 'r': rate_limit: '5/y' is not a rate limit such as 5/s, 100/m, 1/h or 10/30s",
    ),
    (
        "zero rate limit",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          rate_limit: 0/s  # <-
        """,
        "rule 'r': rate_limit: '0/s' is not a rate limit",
    ),
    (
        "missing output",
        """\
        - rule: r  # <-
          condition: comm == x
          priority: NOTICE
        """,
        "rule 'r': missing required key 'output'",
    ),
    (
        "missing condition",
        """\
        - rule: r  # <-
          output: out
          priority: NOTICE
        """,
        "rule 'r': missing required key 'condition'",
    ),
    (
        "missing priority",
        """\
        - rule: r  # <-
          condition: comm == x
          output: out
        """,
        "rule 'r': missing required key 'priority'",
    ),
    (
        "missing list items",
        """\
        - list: l  # <-
        """,
        "list 'l': missing required key 'items'",
    ),
    (
        "duplicate rule",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
        - rule: r  # <-
          condition: comm == y
          output: out
          priority: NOTICE
        """,
        "rule 'r' is already defined at {path}:1",
    ),
    (
        "duplicate macro",
        """\
        - macro: m
          condition: comm == x
        - macro: m  # <-
          condition: comm == y
        """,
        "macro 'm' is already defined at {path}:1",
    ),
    (
        "duplicate list",
        """\
        - list: l
          items: [a]
        - list: l  # <-
          items: [b]
        """,
        "list 'l' is already defined at {path}:1; use 'append: true' to add items",
    ),
    (
        "append to an undefined list",
        """\
        - list: l  # <-
          append: true
          items: [b]
        """,
        "list 'l': append to a list that is not defined before",
    ),
    (
        "append to a macro",
        """\
        - macro: m
          condition: comm == x
        - macro: m
          append: true  # <-
          condition: or comm == y
        """,
        "macro 'm': 'append' is supported for lists only",
    ),
    (
        "append to a rule",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          append: true  # <-
        """,
        "rule 'r': 'append' is supported for lists only",
    ),
    (
        "unknown rule key",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          source: syscall  # <-
        """,
        "rule 'r': unknown key 'source'",
    ),
    (
        "unknown item kind",
        """\
        - required_engine_version: 10  # <-
        """,
        "unknown item with keys 'required_engine_version': expected 'list', 'macro' or 'rule'",
    ),
    (
        "item of two kinds",
        """\
        - list: l  # <-
          rule: r
        """,
        "an item cannot be both 'list' and 'rule'",
    ),
    (
        "item not a mapping",
        """\
        - list: l
          items: [a]
        - just a string  # <-
        """,
        "an item must be a mapping with a 'list', 'macro' or 'rule' key",
    ),
    (
        "file not a list",
        """\
        rule: r  # <-
        condition: comm == x
        """,
        "a rule file must be a YAML list of items",
    ),
    (
        "duplicate YAML key",
        """\
        - rule: r
          condition: comm == x
          output: out
          condition: comm == y  # <-
          priority: NOTICE
        """,
        "duplicate key 'condition'",
    ),
    (
        "invalid YAML",
        """\
        - list: l
          items: [a, b
        - rule: r  # <-
        """,
        "invalid YAML: while parsing a flow sequence; expected ',' or ']', but got ':'",
    ),
    (
        "tab in YAML",
        """\
        - rule: r
        \tcondition: comm == x  # <-
        """,
        "invalid YAML: while scanning for the next token; found character '\\t'",
    ),
    (
        "fields never in the same event",
        """\
        - list: l
          items: [a]
        - rule: r  # <-
          condition: fd == 1 and ppid == 1
          output: out
          priority: NOTICE
        """,
        "rule 'r': fields 'fd' and 'ppid' never appear in the same event",
    ),
    (
        "fields never together through the output",
        """\
        - rule: r  # <-
          condition: path startswith /etc/
          output: "%path %age"
          priority: NOTICE
        """,
        "rule 'r': fields 'age' and 'path' never appear in the same event",
    ),
    (
        "event kind that lacks a field",
        """\
        - rule: r  # <-
          condition: event == exec and fd == 1
          output: out
          priority: NOTICE
        """,
        "rule 'r': the condition only matches event kind(s) exec, which lack some of the "
        "fields event, fd",
    ),
    (
        "unknown field in the output",
        """\
        - rule: r
          condition: comm == x
          output: "%comm started %nope"  # <-
          priority: NOTICE
        """,
        "rule 'r': output: unknown field 'nope' at column 15",
    ),
    (
        "lone percent in the output",
        """\
        - rule: r
          condition: comm == x
          output: "100% %comm"  # <-
          priority: NOTICE
        """,
        "rule 'r': output: '%' must be followed by a field name or '%' at column 4",
    ),
    (
        "threshold count",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          threshold:
            count: 0  # <-
            within: 1s
        """,
        "rule 'r': threshold: count '0' is not a positive integer",
    ),
    (
        "threshold within",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          threshold: {count: 2,
                      within: soon}  # <-
        """,
        "rule 'r': threshold: within: 'soon' is not a positive duration",
    ),
    (
        "threshold without within",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          threshold: {count: 2}  # <-
        """,
        "rule 'r': threshold: missing required key 'within'",
    ),
    (
        "threshold by unknown field",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          threshold:
            count: 2
            within: 1s
            by: proc  # <-
        """,
        "rule 'r': threshold: by: unknown field 'proc'",
    ),
    (
        "threshold by a list field",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          threshold:
            count: 2
            within: 1s
            by: args  # <-
        """,
        "rule 'r': threshold: by: list field 'args' cannot be a key",
    ),
    (
        "enabled not a bool",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          enabled: maybe  # <-
        """,
        "rule 'r': enabled must be true or false",
    ),
    (
        "tags not a list",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          tags: shell  # <-
        """,
        "rule 'r': tags must be a YAML list of strings",
    ),
    (
        "macro named like a field",
        """\
        - macro: comm  # <-
          condition: pid == 1
        """,
        "macro 'comm': the name is already a field",
    ),
    (
        "exception with an unknown field",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - name: e
              fields: [comm,
                       parent]  # <-
        """,
        "rule 'r': exception 'e': unknown field 'parent'",
    ),
    (
        "exception comps count",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - name: e
              fields: [comm, pid]
              comps: [=]  # <-
        """,
        "rule 'r': exception 'e': 1 comps for 2 fields",
    ),
    (
        "exception comp on the wrong type",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - name: e
              fields: [pid]
              comps:
                - startswith  # <-
        """,
        "rule 'r': exception 'e': operator 'startswith' cannot be used on int field 'pid'",
    ),
    (
        "exception unknown comp",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - name: e
              fields: [comm]
              comps: [like]  # <-
        """,
        "rule 'r': exception 'e': unknown comp 'like'",
    ),
    (
        "exception value tuple length",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - name: e
              fields: [comm, pid]
              values:
                - [sh, 1]
                - [sh]  # <-
        """,
        "rule 'r': exception 'e': each value must be a list of 2",
    ),
    (
        "exception value type",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - name: e
              fields: [comm, pid]
              values:
                - [sh,
                   one]  # <-
        """,
        "rule 'r': exception 'e': field 'pid' is an integer; 'one' is not",
    ),
    (
        "exception in with an unknown list",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - name: e
              fields: [comm]
              comps: [in]
              values:
                - [nolist]  # <-
        """,
        "rule 'r': exception 'e': unknown list 'nolist'",
    ),
    (
        "exception without a name",
        """\
        - rule: r
          condition: comm == x
          output: out
          priority: NOTICE
          exceptions:
            - fields: [comm]  # <-
        """,
        "rule 'r': missing required key 'name'",
    ),
    (
        "list item that is not an integer",
        """\
        - list: ports
          items:
            - 22
            - ssh  # <-
        - rule: r
          condition: pid in ports
          output: out
          priority: NOTICE
        """,
        "list 'ports': field 'pid' is an integer; 'ssh' is not (the list is used with 'pid')",
    ),
    (
        "lists that include each other",
        """\
        - list: a
          items: [x]
        - list: b
          items: [a]
        - list: a
          append: true
          items:
            - b  # <-
        """,
        "list 'a': including 'b' makes lists include each other (a -> b -> a)",
    ),
    (
        "list name with a space",
        """\
        - list: my shells  # <-
          items: [sh]
        """,
        "list 'my shells': a list name must be a single word",
    ),
    (
        "macro name with a space",
        """\
        - macro: is shell  # <-
          condition: comm == sh
        """,
        "macro 'is shell': a macro name must be a single word",
    ),
    (
        "empty output",
        """\
        - rule: r
          condition: comm == x
          output:  # <-
          priority: NOTICE
        """,
        "rule 'r': output is empty",
    ),
    (
        "list item not a value",
        """\
        - list: l
          items:
            - tmux: server  # <-
        """,
        "list 'l': an item must be a single value",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [(t, m) for _, t, m in ERRORS], ids=[i for i, _, _ in ERRORS]
)
def test_load_error_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write_rules(tmp_path, text)
    with pytest.raises(RuleError) as info:
        load_rules([path])
    expected_prefix = f"{path}:{marked_line(text)}: "
    assert str(info.value).startswith(expected_prefix), str(info.value)
    assert message.format(path=path) in str(info.value)


def test_error_example_message_is_exact() -> None:
    text = """\
- list: shells
  items: [bash]
- rule: Shell in container
  condition: not proc.name = bash
  output: out
  priority: NOTICE
"""
    with pytest.raises(RuleError) as info:
        RuleSet.from_text(text, "rules.yaml")
    assert str(info.value) == (
        "rules.yaml:4: rule 'Shell in container': condition: unknown field 'proc.name' at column 5"
    )


def test_error_in_a_later_file_names_that_file(tmp_path: Path) -> None:
    first = write_rules(tmp_path, "- list: l\n  items: [a]\n", "first.yaml")
    second = write_rules(tmp_path, "- list: l\n  items: [b]\n", "second.yaml")
    with pytest.raises(RuleError, match=r"second\.yaml:1: list 'l' is already defined at .*first"):
        load_rules([first, second])


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(RuleError, match=rf"^{re.escape(str(missing))}: cannot read: "):
        load_rules([missing])


def test_schema_with_conflicting_types() -> None:
    schema = {"a": {"event": str, "x": int}, "b": {"event": str, "x": str}}
    with pytest.raises(RuleError, match="schema: field 'x' has two types"):
        RuleSet.from_text("", schema=schema)


# Rule properties.


@pytest.mark.parametrize(
    ("text", "within", "limit"),
    [
        ("within: 1s", 1.0, "5/s"),
        ("within: 500ms", 0.5, "100/m"),
        ("within: 2m", 120.0, "1/h"),
        ("within: 1h", 3600.0, "10/30s"),
        ("within: 1.5", 1.5, "3 / 500ms"),
        ("within: 2", 2.0, "7/2m"),
    ],
)
def test_durations_and_rate_limits(text: str, within: float, limit: str) -> None:
    rules = RuleSet.from_text(
        rule_yaml("comm == x", threshold=f"{{count: 3, {text}, by: pid}}", rate_limit=limit)
    )
    (rule,) = rules.rules
    assert rule.threshold == Threshold(3, within, "pid")
    count, _, period = limit.replace(" ", "").partition("/")
    assert rule.rate_limit is not None and rule.rate_limit.count == int(count)
    expected_period = {"s": 1, "m": 60, "h": 3600, "500ms": 0.5, "30s": 30, "2m": 120}[period]
    assert rule.rate_limit == RateLimit(int(count), float(expected_period))


def test_rule_fields() -> None:
    text = """\
- rule: Full
  desc: what it is
  condition: comm == x
  output: "%comm"
  priority: warning
  tags: [a, b]
  enabled: false
"""
    (rule,) = RuleSet.from_text(text, "t.yaml").rules
    assert rule.name == "Full"
    assert rule.desc == "what it is"
    assert rule.priority == "WARNING"
    assert rule.tags == ("a", "b")
    assert rule.enabled is False
    assert rule.condition == "comm == x"
    assert rule.output == "%comm"
    assert rule.source == "t.yaml:1"
    assert rule.rate_limit is None and rule.threshold is None


@pytest.mark.parametrize(
    ("condition", "keys", "kinds"),
    [
        ("comm == cat", {}, {"exec", "open", "exit"}),
        ("path glob /tmp/*", {}, {"exec", "open"}),
        ("ppid == 1", {}, {"exec", "exit"}),
        ("event == exec and path glob /tmp/*", {}, {"exec"}),
        ("path glob /tmp/* and event == exec", {}, {"exec"}),
        ("event in (exec, exit) and comm == x", {}, {"exec", "exit"}),
        ("event in kinds_list and comm == x", {}, {"open", "exit"}),
        ("(event == exec or event == exit) and comm == x", {}, {"exec", "exit"}),
        ("event == exec or comm == x", {}, {"exec", "open", "exit"}),
        ("not event == exec", {}, {"exec", "open", "exit"}),
        ("event != exec and comm == x", {}, {"exec", "open", "exit"}),
        # the output, the threshold key and exceptions count too
        ("comm == x", {"output": '"%comm %fd"'}, {"open"}),
        ("comm == x", {"threshold": "{count: 2, within: 1s, by: ppid}"}, {"exec", "exit"}),
        (
            "comm == x",
            {"exceptions": "[{name: e, fields: [tid], values: [[1]]}]"},
            {"open", "exit"},
        ),
    ],
)
def test_applicability(condition: str, keys: dict[str, str], kinds: set[str]) -> None:
    prelude = "- list: kinds_list\n  items: [open, exit]\n"
    text = prelude + rule_yaml(condition).replace("  output: out\n", "")
    text += "".join(f"  {k}: {v}\n" for k, v in keys.items())
    if "output" not in keys:
        text += "  output: out\n"
    rules = RuleSet.from_text(text)
    (rule,) = rules.rules
    assert rule.applies_to == kinds
    assert rules.event_kinds == kinds


def test_rules_only_see_events_of_their_kinds() -> None:
    calls: list[str] = []

    class Spy(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            calls.append(key)
            return super().get(key, default)

    rules = RuleSet.from_text(rule_yaml("event == exec and comm == ls"))
    assert fired(rules, exec_event()) == ["r"]
    # An open event with the same fields is not even looked at past its kind.
    calls.clear()
    assert rules.evaluate(Spy(open_event(comm="ls"))) == []
    assert calls == ["event"]
    assert rules.evaluate({"comm": "ls"}) == []
    assert rules.evaluate({"event": "fork", "comm": "ls"}) == []


def test_disabled_rule_is_loaded_but_never_fires() -> None:
    text = rule_yaml("comm == ls", name="off", enabled="false") + rule_yaml("pid > 0", name="on")
    rules = RuleSet.from_text(text)
    assert [r.name for r in rules.rules] == ["off", "on"]
    assert fired(rules, exec_event()) == ["on"]


def test_alert_contents_and_rendering() -> None:
    text = """\
- rule: Render
  condition: event == exec
  output: "%comm ran %args (%%: 100%%, cgroup %cgroup, %path.)"
  priority: notice
  tags: [t1, t2]
"""
    rules = RuleSet.from_text(text, clock=FakeClock(5.0))
    event = exec_event(time=123.5, cgroup=None)
    del event["path"]
    (alert,) = rules.evaluate(event)
    assert alert == Alert(
        rule="Render",
        priority="NOTICE",
        time=123.5,
        output="ls ran ls -l (%: 100%, cgroup <NA>, <NA>.)",
        tags=("t1", "t2"),
        fields=event,
    )
    assert alert.to_json() == {
        "rule": "Render",
        "priority": "NOTICE",
        "time": 123.5,
        "output": "ls ran ls -l (%: 100%, cgroup <NA>, <NA>.)",
        "tags": ["t1", "t2"],
        "fields": event,
    }
    # The alert keeps a copy: the caller may reuse its dict.
    event["comm"] = "changed"
    assert alert.fields["comm"] == "ls"
    # Without a time field, the clock gives the time.
    del event["time"]
    (alert,) = rules.evaluate(event)
    assert alert.time == 5.0


# Rate limits and thresholds.


@pytest.mark.parametrize(
    ("limit", "times", "expected"),
    [
        # at most 3 in any second (sliding): the 4th waits until the 1st is a second old
        # (times are exact binary fractions, so "a second later" is exact).
        ("3/s", [0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.25, 1.5, 1.75, 2.25], "1110011101"),
        ("1/m", [0, 30, 59.9, 60, 61, 120], "100101"),
        ("2/500ms", [0, 0, 0, 0.5, 0.5, 0.5], "110110"),
        ("5/h", [0] * 10, "1111100000"),
    ],
)
def test_rate_limit(limit: str, times: list[float], expected: str) -> None:
    clock = FakeClock()
    rules = RuleSet.from_text(rule_yaml("comm == ls", rate_limit=limit), clock=clock)
    event = exec_event()
    del event["time"]
    got = ""
    for t in times:
        clock.now = 1000.0 + t
        got += "1" if rules.evaluate(event) else "0"
    assert got == expected
    assert rules.suppressed == {"r": expected.count("0")}


@pytest.mark.parametrize(
    ("threshold", "events", "expected"),
    [
        # count 3 within 1s, by pid: (time, pid) -> fired?
        (
            "{count: 3, within: 1s, by: pid}",
            [(0.0, 1), (0.1, 1), (0.2, 2), (0.3, 1), (0.4, 1), (0.5, 2), (0.6, 2)],
            "0001001",
        ),
        # the window restarts after firing
        (
            "{count: 2, within: 1s, by: pid}",
            [(0.0, 1), (0.1, 1), (0.2, 1), (0.3, 1), (0.4, 1)],
            "01010",
        ),
        # matches too far apart never add up; the window is inclusive
        (
            "{count: 2, within: 1s, by: pid}",
            [(0.0, 1), (1.5, 1), (3.0, 1), (4.0, 1)],
            "0001",
        ),
        (
            "{count: 3, within: 500ms}",
            [(0.0, 1), (0.1, 2), (0.7, 3), (0.8, 4), (0.9, 5), (1.0, 6)],
            "000010",
        ),
        ("{count: 1, within: 1s, by: comm}", [(0.0, 1), (0.0, 1)], "11"),
    ],
)
def test_threshold(threshold: str, events: list[tuple[float, int]], expected: str) -> None:
    rules = RuleSet.from_text(rule_yaml("event == open and err != 0", threshold=threshold))
    got = ""
    for t, pid in events:
        got += "1" if rules.evaluate(open_event(time=t, pid=pid, err=2)) else "0"
    assert got == expected


def test_threshold_forgets_stale_keys() -> None:
    rules = RuleSet.from_text(rule_yaml("err != 0", threshold="{count: 3, within: 1s, by: pid}"))
    for pid in range(1000):
        rules.evaluate(open_event(time=0.0, pid=pid, err=2))
    rules.evaluate(open_event(time=5.0, pid=0, err=2))
    state = rules._entries[0].threshold
    assert state is not None and list(state.windows) == [0]


def test_threshold_then_rate_limit_counts_suppressed() -> None:
    text = rule_yaml("err != 0", threshold="{count: 2, within: 1s}", rate_limit="2/h")
    text += rule_yaml("comm == cat", name="unlimited")
    rules = RuleSet.from_text(text)
    assert rules.suppressed == {"r": 0}
    alerts = [rules.evaluate(open_event(time=i * 0.01, err=13)) for i in range(10)]
    assert [len(a) for a in alerts] == [1, 2, 1, 2, 1, 1, 1, 1, 1, 1]
    # 10 matches -> 5 threshold firings -> 2 alerts, 3 suppressed.
    assert rules.suppressed == {"r": 3}


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so concurrent evaluations really interleave."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("fast_switching")
def test_concurrent_evaluation_counts_add_up() -> None:
    text = rule_yaml(
        "err != 0", name="limited", threshold="{count: 4, within: 1h}", rate_limit="100/h"
    )
    text += rule_yaml("err != 0", name="keyed", threshold="{count: 5, within: 1h, by: pid}")
    text += rule_yaml("err != 0", name="plain")
    rules = RuleSet.from_text(text)
    threads_n, per_thread = 8, 2000
    barrier = threading.Barrier(threads_n)
    counts: list[dict[str, int]] = [{} for _ in range(threads_n)]

    def work(index: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            event = open_event(time=1.0, err=2, pid=i % 10)
            for alert in rules.evaluate(event):
                counts[index][alert.rule] = counts[index].get(alert.rule, 0) + 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = {name: sum(c.get(name, 0) for c in counts) for name in ("limited", "keyed", "plain")}
    matches = threads_n * per_thread
    assert total == {"limited": 100, "keyed": matches // 5, "plain": matches}
    assert rules.suppressed == {"limited": matches // 4 - 100}


# The default rules.


@pytest.fixture(scope="module")
def default_rules() -> RuleSet:
    return load_rules()


SHELL = "Shell spawned by a non-shell program"
SHADOW = "Read of shadow password file"
TMP_EXEC = "Execution from a temporary directory"
BURST = "Burst of failed opens"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        # fire
        (
            exec_event(
                comm="sh", parent_comm="python3", path="/bin/sh", args=["/bin/sh", "-c", "true"]
            ),
            [SHELL],
        ),
        (exec_event(comm="bash", parent_comm="python", path="/bin/bash"), [SHELL]),
        (exec_event(comm="dash", parent_comm="nginx", path="/bin/dash"), [SHELL]),
        (exec_event(comm="payload", path="/tmp/payload"), [TMP_EXEC]),
        (exec_event(comm="x", path="/tmp/.hidden/x"), [TMP_EXEC]),
        (exec_event(comm="x", path="/dev/shm/x"), [TMP_EXEC]),
        (exec_event(comm="x", path="/var/tmp/x"), [TMP_EXEC]),
        (exec_event(comm="sh", parent_comm="php-fpm", path="/tmp/sh"), [SHELL, TMP_EXEC]),
        (open_event(comm="cat", path="/etc/shadow"), [SHADOW]),
        (open_event(comm="python3", path="/etc/shadow", fd=-1, err=13), [SHADOW]),
        (open_event(comm="cat", path="/etc/gshadow"), [SHADOW]),
        (open_event(comm="cp", path="/etc/shadow-"), [SHADOW]),
        # stay silent
        (exec_event(comm="bash", parent_comm="sshd", path="/bin/bash"), []),
        (exec_event(comm="python3", parent_comm="bash", path="/usr/bin/python3"), []),
        (exec_event(comm="sh", parent_comm="bash", path="/bin/sh"), []),
        (exec_event(comm="sh", parent_comm="tmux: server", path="/bin/sh"), []),
        (exec_event(comm="sh", parent_comm="cron", path="/bin/sh"), []),
        (exec_event(comm="sh", parent_comm="dpkg", path="/bin/sh"), []),
        (exec_event(comm="sh", parent_comm="python3", path="/bin/sh", ret=-2), []),
        (exec_event(comm="ls", parent_comm="bash", path="/usr/bin/ls"), []),
        (exec_event(comm="x", path="/tmp/x", ret=-13), []),
        (exec_event(comm="main", path="/tmp/go-build123/b001/exe/main"), []),
        (exec_event(comm="x", path="/usr/tmp/x"), []),
        (open_event(comm="cat", path="/etc/passwd"), []),
        (open_event(comm="passwd", path="/etc/shadow"), []),
        (open_event(comm="unix_chkpwd", path="/etc/shadow"), []),
        (open_event(comm="sshd", path="/etc/shadow"), []),
        (open_event(comm="cat", path="/etc/shadowsocks.json"), []),
        (open_event(comm="python3", path="/missing", fd=-1, err=2), []),
        (exit_event(), []),
        (exit_event(signal=9, exit_code=137), []),
    ],
)
def test_default_rules(default_rules: RuleSet, event: dict[str, Any], expected: list[str]) -> None:
    assert fired(default_rules, event) == expected


def test_default_rules_are_complete(default_rules: RuleSet) -> None:
    assert [r.name for r in default_rules.rules] == [SHELL, SHADOW, TMP_EXEC, BURST]
    for rule in default_rules.rules:
        assert rule.desc and rule.tags and rule.rate_limit is not None, rule.name
        assert rule.enabled
    assert default_rules.event_kinds == {"exec", "open"}
    (alert,) = default_rules.evaluate(
        exec_event(
            comm="sh", parent_comm="python3", pid=42, ppid=41, args=["/bin/sh", "-c", "true"]
        )
    )
    assert (
        alert.output == "shell sh (pid 42, uid 1000) started by python3 (ppid 41): /bin/sh -c true"
    )


@pytest.mark.parametrize(
    ("description", "opens", "expected"),
    [
        ("10 failed opens", [(0.001 * i, 10) for i in range(10)], 0),
        ("python startup", [(0.0005 * i, 10) for i in range(200)], 0),
        ("499 failed opens", [(0.001 * i, 10) for i in range(499)], 0),
        ("500 within a second", [(0.001 * i, 10) for i in range(500)], 1),
        ("1000 within a second", [(0.0005 * i, 10) for i in range(1000)], 2),
        ("500 over two seconds", [(0.004 * i, 10) for i in range(500)], 0),
        ("500 across five processes", [(0.001 * i, i % 5) for i in range(500)], 0),
    ],
)
def test_default_failed_open_burst(
    description: str, opens: list[tuple[float, int]], expected: int
) -> None:
    rules = load_rules()  # fresh threshold state for each case
    alerts = []
    for t, pid in opens:
        event = open_event(time=t, pid=pid, comm="scanner", fd=-1, err=2, path=f"/x/{t}")
        alerts += rules.evaluate(event)
    assert [a.rule for a in alerts] == [BURST] * expected, description
    if alerts:
        assert alerts[0].output.startswith("burst of failed opens by scanner (pid 10, uid 1000)")


def test_no_paths_means_default_rules_and_empty_means_none() -> None:
    assert [r.name for r in load_rules(None).rules] == [SHELL, SHADOW, TMP_EXEC, BURST]
    empty = load_rules([])
    assert empty.rules == [] and empty.event_kinds == frozenset()
    assert empty.evaluate(exec_event()) == []
