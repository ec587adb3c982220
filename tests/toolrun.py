"""Running a tool's CLI (``bpfloom execsnoop ...``) as a real subprocess in tests.

The tool prints ``bpfloom NAME: tracing; Ctrl-C to stop`` on stderr once its programs
are attached: ``wait_ready()`` waits for that line, so activity made afterwards is
traced — no sleeps. stdout goes to a file (a pipe could fill up and stall the tool).
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BPFLOOM = [sys.executable, "-m", "bpfloom"]
TIMEOUT = 60  # seconds any one tool process may take, far above what it needs
LOST = re.compile(r"^bpfloom (\w+): (\d+) events; lost (\d+) in the kernel, (\d+) in user space$")
SUMMARY = re.compile(
    r"^bpfloom: (\d+) events received; lost: (\d+) in the kernel, (\d+) in user space$",
    re.MULTILINE,
)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def lost(self) -> tuple[int, int, int]:
        """(events, lost in the kernel, lost in user space) from a tool's exit line."""
        found = [m.groups() for m in map(LOST.match, self.stderr.splitlines()) if m]
        assert len(found) == 1, f"no single exit line in stderr:\n{self.stderr}"
        _, events, kernel, user = found[0]
        return int(events), int(kernel), int(user)

    def summary(self) -> tuple[int, int, int]:
        """(received, lost in the kernel, lost in user space) from ``bpfloom run``'s
        exit summary."""
        found = SUMMARY.findall(self.stderr)
        assert len(found) == 1, f"no single exit summary in stderr:\n{self.stderr}"
        received, kernel, user = found[0]
        return int(received), int(kernel), int(user)


def one_error_line(result: Result, *needles: str, status: int = 1) -> str:
    """One ``bpfloom: error:`` line on stderr holding ``needles``, no traceback; exit
    ``status`` (2: a wrong command line, 1: a failed run)."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line of error, got:\n{result.stderr}"
    assert lines[0].startswith("bpfloom: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class ToolRun:
    """``bpfloom TOOL ARGS`` in the background."""

    def __init__(self, tool: str, args: Sequence[str], tmp_path: Path) -> None:
        stamp = time.monotonic_ns()
        self._out = tmp_path / f"{tool}.{stamp}.out"
        self._err = tmp_path / f"{tool}.{stamp}.err"
        self.tool = tool
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.proc = subprocess.Popen(
                [*BPFLOOM, tool, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

    def stdout_now(self) -> str:
        return self._out.read_text()

    def stderr_now(self) -> str:
        return self._err.read_text()

    def wait_ready(self) -> ToolRun:
        """Wait until the tool says it is tracing; fail if it exits first."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if f"bpfloom {self.tool}: tracing" in self.stderr_now():
                return self
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.tool} exited early ({self.proc.returncode}):\n{self.stderr_now()}"
                )
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"{self.tool} was not tracing within {TIMEOUT} s:\n{self.stderr_now()}")

    def wait_output(self, text: str) -> None:
        """Wait until ``text`` shows up in stdout (for output that lags the activity)."""
        deadline = time.monotonic() + TIMEOUT
        while text not in self.stdout_now():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{text!r} never printed by {self.tool}:\n{self.stdout_now()}")
            time.sleep(0.02)

    def stop(self) -> Result:
        """Ctrl-C (SIGINT), then the tool's final output and exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> Result:
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.tool} did not end within {TIMEOUT} s:\n{self.stderr_now()}")
        return Result(self.proc.returncode, self.stdout_now(), self.stderr_now())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_tool(tmp_path: Path) -> Iterator[Any]:
    """``start_tool(tool, *args)`` starts ``bpfloom tool args`` and waits until it
    traces; whatever a failed test left running is killed afterwards."""
    runs: list[ToolRun] = []

    def make(tool: str, *args: str, ready: bool = True) -> ToolRun:
        run = ToolRun(tool, args, tmp_path)
        runs.append(run)
        return run.wait_ready() if ready else run

    yield make
    for run in runs:
        run.kill()


def run_tool_cli(tool: str, *args: str) -> Result:
    """``bpfloom TOOL ARGS`` to completion (quick failures, --help, --duration runs)."""
    proc = subprocess.run(
        [*BPFLOOM, tool, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


# The child's own imports and helpers; ``gate()`` waits for the test's go-ahead.
_GATED = "gated\n"  # what a child writes on stderr when it reaches its first gate
_CHILD_PRELUDE = """\
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def gate():
    sys.stdin.readline()
"""


class GatedChild:
    """A Python child process whose ``code`` starts only at the test's go-ahead, so that
    a tool can be started first — filtered on the child's pid or name — and see all of
    it. ``code`` runs after one ``gate()`` and may call ``gate()`` again to wait for the
    next ``go()``; it has ``os``, ``sys``, ``json``, ``time``, ``ctypes`` and ``libc``.

    ``comm`` renames the child before the first gate; ``user`` runs it as that uid
    (with the system's python3, which any user can read). The constructor returns once
    the child waits at its first gate: nothing of the interpreter's start-up (it opens
    dozens of files) reaches a tool attached afterwards, however slow the machine.
    """

    def __init__(self, code: str, *, comm: str | None = None, user: int | None = None) -> None:
        rename = f"open('/proc/self/comm', 'w').write({comm!r})\n" if comm else ""
        ready = f"sys.stderr.write({_GATED!r}); sys.stderr.flush()\n"
        script = _CHILD_PRELUDE + rename + ready + "gate()\n" + code
        python = sys.executable if user is None else "/usr/bin/python3"
        self.proc = subprocess.Popen(
            [python, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            user=user,
        )
        self.pid = self.proc.pid
        self._wait_gated()

    def _wait_gated(self) -> None:
        """Until the child reports it reached its first gate (it then blocks on stdin
        and writes nothing more, so reading this line reads nothing after it)."""
        assert self.proc.stderr is not None
        if not select.select([self.proc.stderr], [], [], TIMEOUT)[0]:
            self.kill()
            pytest.fail(f"child {self.pid} did not reach its first gate within {TIMEOUT} s")
        line = self.proc.stderr.readline()
        if line != _GATED:
            self.proc.kill()
            rest = self.proc.communicate()[1]
            pytest.fail(f"child {self.pid} failed before its first gate:\n{line}{rest}")

    def go(self) -> None:
        """Let the child pass its next ``gate()``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> str:
        """Let it run to its end (past every gate); its stdout. Fails the test if the
        child failed."""
        try:
            out, err = self.proc.communicate("go\n" * 8, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"child {self.pid} did not end within {TIMEOUT} s")
        assert self.proc.returncode == 0, f"child {self.pid} failed:\n{err}"
        return out

    def kill(self) -> None:
        """Kill it if it still runs, and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.communicate()


@pytest.fixture
def gated_child() -> Iterator[Any]:
    """``gated_child(code, comm=None, user=None)`` starts a ``GatedChild``; whatever a
    failed test left waiting is killed afterwards."""
    children: list[GatedChild] = []

    def make(code: str, *, comm: str | None = None, user: int | None = None) -> GatedChild:
        child = GatedChild(code, comm=comm, user=user)
        children.append(child)
        return child

    yield make
    for child in children:
        child.kill()
