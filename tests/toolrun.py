"""Running a tool's CLI (``bpfloom execsnoop ...``) as a real subprocess in tests.

The tool prints ``bpfloom NAME: tracing; Ctrl-C to stop`` on stderr once its programs
are attached: ``wait_ready()`` waits for that line, so activity made afterwards is
traced — no sleeps. stdout goes to a file (a pipe could fill up and stall the tool).
"""

from __future__ import annotations

import json
import re
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


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def lost(self) -> tuple[int, int, int]:
        """(events, lost in the kernel, lost in user space) from the exit line."""
        found = [m.groups() for m in map(LOST.match, self.stderr.splitlines()) if m]
        assert len(found) == 1, f"no single exit line in stderr:\n{self.stderr}"
        _, events, kernel, user = found[0]
        return int(events), int(kernel), int(user)


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
