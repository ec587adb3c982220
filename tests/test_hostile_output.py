"""What a traced process controls never controls the terminal, and JSON keeps it exact.

A process picks its own name (comm), the paths it opens and its arguments. Here they
hold escape sequences, a C1 CSI (U+009B), bidi overrides, newlines and bytes that are
not UTF-8: every table, alert and message shows them escaped on one line
(bpfloom._terminal.escape_control), and JSON carries the exact bytes (``<field>_b64``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bpfloom._terminal import escape_control, json_line

# Bytes a process may put in its name or a path: ESC sequences, a UTF-8 encoded C1
# CSI, a right-to-left override, a newline and a byte that is no UTF-8 at all.
HOSTILE = b"x\x1b[2J\xc2\x9by\xe2\x80\xaez\n\xff"
HOSTILE_ESCAPED = "x\\x1b[2J\\u009by\\u202ez\\n\\xff"
# What may never reach a terminal.
RAW = ("\x1b", "\x9b", "\u202e", "\udcff")


def _clean(text: str) -> None:
    for bad in RAW:
        assert bad not in text, f"{bad!r} in the output"


# --- the functions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
        ("\x00\x07\x1b[31m\x7f", "\\x00\\x07\\x1b[31m\\x7f"),
        ("\x85\x9b2J", "\\u0085\\u009b2J"),  # NEL and CSI, C1
        ("a\u202eb\u2066c\u2069\u200f\u061c", "a\\u202eb\\u2066c\\u2069\\u200f\\u061c"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("é ü 中 🙂", "é ü 中 🙂"),  # ordinary non-ASCII stays readable
        (b"ok\xff\xc3".decode("utf-8", "surrogateescape"), "ok\\xff\\xc3"),
        (HOSTILE.decode("utf-8", "surrogateescape"), HOSTILE_ESCAPED),
    ],
)
def test_escape_control(text: str, shown: str) -> None:
    assert escape_control(text) == shown
    assert escape_control(shown) == shown  # idempotent: escapes are printable ASCII


def test_json_line_keeps_exact_bytes_and_no_terminal_controls() -> None:
    text = HOSTILE.decode("utf-8", "surrogateescape")
    line = json_line({"comm": text, "args": ["ok", text], "nested": {"path": text}, "n": 1})
    _clean(line)
    assert "\n" not in line
    data = json.loads(line)
    assert base64.b64decode(data["comm_b64"]) == HOSTILE
    assert [base64.b64decode(a) for a in data["args_b64"]] == [b"ok", HOSTILE]
    assert base64.b64decode(data["nested"]["path_b64"]) == HOSTILE
    assert data["comm"] == HOSTILE.decode("utf-8", "replace")  # readable beside it
    assert data["n"] == 1
    # Valid UTF-8, even with controls: no _b64, and the same text back.
    assert json.loads(json_line({"s": "a\u202e\x9bé"})) == {"s": "a\u202e\x9bé"}


# --- the tools, on real processes ------------------------------------------------------

HOSTILE_CHILD = f"""
open('/proc/self/comm', 'wb').write({HOSTILE[:15]!r})
gate()
"""


@pytest.mark.kernel
def test_opensnoop_escapes_comm_and_path_and_json_keeps_their_bytes(
    start_tool: Any, gated_child: Any, tmp_path: Path
) -> None:
    path = bytes(tmp_path) + b"/" + HOSTILE.replace(b"/", b"")
    code = HOSTILE_CHILD + f"os.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))\n"
    child = gated_child(code)
    table = start_tool("opensnoop", "-p", str(child.pid))
    child.go()
    child.finish()
    table.wait_output(HOSTILE_ESCAPED[:8])
    text = table.stop().stdout
    _clean(text)
    rows = [line for line in text.splitlines() if line.split()[:1] == [str(child.pid)]]
    # Two opens (of /proc/self/comm, then the file), two lines: the newline in the
    # name did not split a row.
    assert len(rows) == 2, text
    assert rows[1].endswith(escape_control(os.fsdecode(path)))
    assert escape_control(HOSTILE[:15].decode("utf-8", "surrogateescape")) in rows[1]


@pytest.mark.kernel
def test_opensnoop_json_is_exact(start_tool: Any, gated_child: Any, tmp_path: Path) -> None:
    path = bytes(tmp_path) + b"/" + HOSTILE.replace(b"/", b"")
    code = HOSTILE_CHILD + f"os.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))\n"
    child = gated_child(code)
    run = start_tool("opensnoop", "--json", "-p", str(child.pid))
    child.go()
    child.finish()
    run.wait_output('"path_b64"')
    result = run.stop()
    _clean(result.stdout)
    records = [r for r in result.json_lines() if r["pid"] == child.pid and "path_b64" in r]
    assert len(records) == 1
    assert base64.b64decode(records[0]["path_b64"]) == path
    assert base64.b64decode(records[0]["comm_b64"]) == HOSTILE[:15]


@pytest.mark.kernel
def test_exitsnoop_escapes_the_name(start_tool: Any, gated_child: Any) -> None:
    child = gated_child(HOSTILE_CHILD)
    run = start_tool("exitsnoop", "-p", str(child.pid))
    child.go()
    child.finish()
    run.wait_output(str(child.pid))
    text = run.stop().stdout
    _clean(text)
    rows = [line for line in text.splitlines() if str(child.pid) in line.split()]
    assert len(rows) == 1, text
    assert rows[0].startswith(escape_control(HOSTILE[:15].decode("utf-8", "surrogateescape")))


@pytest.mark.kernel
def test_execsnoop_escapes_arguments(start_tool: Any) -> None:
    run = start_tool("execsnoop")
    arg = HOSTILE.decode("utf-8", "surrogateescape")
    proc = subprocess.run(["/bin/true", "--", os.fsencode(arg)], check=True)
    assert proc.returncode == 0
    run.wait_output("x\\x1b[2J")
    text = run.stop().stdout
    _clean(text)
    rows = [line for line in text.splitlines() if line.endswith("-- " + HOSTILE_ESCAPED)]
    assert len(rows) == 1, text


@pytest.mark.kernel
def test_a_file_name_cannot_forge_an_alert(start_tool: Any, tmp_path: Path) -> None:
    """A program run from /tmp whose name holds a newline and a fake alert line: the
    real alert is one line, and no line of the output starts with the forgery."""
    forged = "12:00:00 CRITICAL Fake rule: all is well"
    program = tmp_path / f"x\n{forged}\x1b[2J"
    shutil.copy("/usr/bin/true", program)
    run = start_tool("detect")
    subprocess.run([str(program)], check=True)
    run.wait_output("Fake rule")
    text = run.stop().stdout
    _clean(text)
    assert not [line for line in text.splitlines() if line.startswith(forged)]
    alerts = [line for line in text.splitlines() if "Fake rule" in line]
    assert len(alerts) == 1
    assert "x\\n12:00:00 CRITICAL Fake rule: all is well\\x1b[2J" in alerts[0]
