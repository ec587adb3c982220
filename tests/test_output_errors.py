"""An output that cannot be written is a fatal error, never a silent loss.

stdout on a full disk (/dev/full) or closed: the tool stops, says so on stderr in one
line, exits non-zero and counts what it could not write. A reader that goes away
(EPIPE, ``| head``) stays a quiet stop with status 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import bpf_object

pytestmark = pytest.mark.kernel

BPFLOOM = [sys.executable, "-m", "bpfloom"]
UNWRITTEN = re.compile(
    r"^bpfloom: error: cannot write to standard output \((.+)\); (\d+) (records|alerts) "
    r"were not written$",
    re.MULTILINE,
)


def _spawn(args: list[str], stdout: Any, preexec: Callable[[], None] | None = None) -> Any:
    return subprocess.Popen(
        [*BPFLOOM, *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def _wait_tracing(proc: Any, deadline: float = 60) -> str:
    """stderr up to the 'tracing' line (read line by line: the process keeps running)."""
    seen = ""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"exited before tracing:\n{seen}")
        seen += line
        if ": tracing" in line:
            return seen
    pytest.fail("never started tracing")


def _activity(times: int = 20) -> None:
    for _ in range(times):
        subprocess.run(["/bin/true"], check=True)


def _close_stdout() -> None:
    os.close(1)


@pytest.mark.parametrize("how", ["/dev/full", "closed"])
@pytest.mark.parametrize(
    "args",
    [
        ["execsnoop"],
        ["execsnoop", "--json"],
        ["exitsnoop"],
        ["run", str(bpf_object("ecli/exitsnoop"))],
        ["detect", "--rules", "RULES"],
    ],
    ids=["execsnoop", "execsnoop-json", "exitsnoop", "run", "detect"],
)
def test_a_failing_stdout_is_fatal_and_counted(args: list[str], how: str, tmp_path: Any) -> None:
    if "RULES" in args:
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            "- rule: Any exec\n  condition: event == exec\n  output: exec %comm\n"
            "  priority: NOTICE\n"
        )
        args = [str(rules) if a == "RULES" else a for a in args]
    with open("/dev/full", "w") as full:
        proc = _spawn(args, None, _close_stdout) if how == "closed" else _spawn(args, full)
        try:
            _wait_tracing(proc)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                _activity(5)  # the first write fails; the run stops by itself
            rest = proc.communicate(timeout=60)[1]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1, rest
    assert "Traceback" not in rest and "Exception ignored" not in rest, rest
    found = UNWRITTEN.findall(rest)
    assert len(found) == 1, rest
    reason, count, _ = found[0]
    assert reason in ("No space left on device", "Bad file descriptor", "standard output is closed")
    assert int(count) >= 1
    assert rest.strip().splitlines()[-1].startswith("bpfloom: error: cannot write")


def test_a_reader_going_away_is_a_quiet_stop() -> None:
    proc = _spawn(["execsnoop"], subprocess.PIPE)
    _wait_tracing(proc)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away, as `| head` does
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        _activity(5)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    assert "error" not in err and "Traceback" not in err, err
