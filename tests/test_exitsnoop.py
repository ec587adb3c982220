"""exitsnoop on real processes: exit codes, killing signals, lifetimes, filters."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest

from bpfloom.tools.exitsnoop import ExitSnoop, describe_status
from toolrun import run_tool_cli

pytestmark = pytest.mark.kernel


def _exit_of(records: list[dict[str, Any]], pid: int) -> dict[str, Any]:
    found = [r for r in records if r["pid"] == pid and r["tid"] == pid]
    assert len(found) == 1, f"pid {pid}: {found} in {records}"
    return found[0]


def _read_until(tool: ExitSnoop, pids: set[int]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not pids <= {r["pid"] for r in records} and time.monotonic() < deadline:
        records.extend(tool.read(timeout=0.2))
    return records


def test_library_reports_codes_signals_and_age() -> None:
    with ExitSnoop() as tool:
        tool.attach()
        ok = subprocess.Popen(["sh", "-c", "exit 0"])
        code = subprocess.Popen(["sh", "-c", "exit 7"])
        slow = subprocess.Popen(["sh", "-c", "sleep 0.3; exit 1"])
        killed = subprocess.Popen(["sleep", "30"])
        killed.send_signal(signal.SIGKILL)
        for p in (ok, code, slow, killed):
            p.wait()
        records = _read_until(tool, {ok.pid, code.pid, slow.pid, killed.pid})

    mine = os.getpid()
    r = _exit_of(records, ok.pid)
    assert (r["exit_code"], r["signal"], r["status"], r["ppid"]) == (0, 0, "0", mine)
    r = _exit_of(records, code.pid)
    assert (r["exit_code"], r["signal"], r["status"], r["comm"]) == (7, 0, "code 7", "sh")
    r = _exit_of(records, slow.pid)
    assert r["exit_code"] == 1 and r["age"] >= 0.3
    r = _exit_of(records, killed.pid)
    assert (r["exit_code"], r["signal"]) == (0, signal.SIGKILL)
    assert r["status"] == "signal 9 (SIGKILL)" and r["comm"] == "sleep"
    assert all(r["event"] == "exit" and abs(r["time"] - time.time()) < 60 for r in records)


def test_kernel_filters_pid_comm_and_failures() -> None:
    with ExitSnoop(comm="sh", failed_only=True) as tool:
        tool.attach()
        quiet = subprocess.Popen(["sh", "-c", "exit 0"])
        other = subprocess.Popen(["sleep", "0"])
        noisy = subprocess.Popen(["sh", "-c", "exit 3"])
        for p in (quiet, other, noisy):
            p.wait()
        records = _read_until(tool, {noisy.pid})
    pids = {r["pid"] for r in records}
    assert noisy.pid in pids
    assert quiet.pid not in pids and other.pid not in pids
    assert all(r["comm"] == "sh" and (r["exit_code"] or r["signal"]) for r in records)


def test_threads_are_reported_only_when_asked() -> None:
    script = "import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()"
    for threads in (False, True):
        with ExitSnoop(threads=threads) as tool:
            tool.attach()
            child = subprocess.Popen(["python3", "-c", script])
            child.wait()
            records = _read_until(tool, {child.pid})
        tids = {r["tid"] for r in records if r["pid"] == child.pid}
        assert child.pid in tids
        assert (len(tids) > 1) is threads


def test_cli_json_and_table(start_tool: Any) -> None:
    run = start_tool("exitsnoop", "--json", "-c", "sh")
    child = subprocess.run(["sh", "-c", "exit 42"], check=False)
    assert child.returncode == 42
    run.wait_output('"exit_code": 42')
    result = run.stop()
    assert result.returncode == 0
    rows = [r for r in result.json_lines() if r["exit_code"] == 42]
    assert rows and {"pcomm", "pid", "ppid", "tid", "age", "exit_code"} <= rows[0].keys()
    events, kernel, user = result.lost()
    assert events >= 1 and (kernel, user) == (0, 0)

    run = start_tool("exitsnoop", "-t", "-x", "-c", "sh")
    subprocess.run(["sh", "-c", "kill -TERM $$"], check=False)
    run.wait_output("SIGTERM")
    result = run.stop()
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "PCOMM", "PID", "PPID", "TID", "AGE(s)", "EXIT_CODE"]
    assert any(line.endswith("signal 15 (SIGTERM)") and " sh " in line for line in lines[1:])


def test_cli_duration_ends_the_run() -> None:
    result = run_tool_cli("exitsnoop", "--duration", "0.5", "-p", "1")
    assert result.returncode == 0, result.stderr
    assert result.lost()[1:] == (0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "abc"], "'abc' is not a valid integer"),
        (["-p", "0"], "0 is not in the range"),
        (["-c", "a-very-long-command-name"], "at most 15 bytes"),
        (["--duration", "-1"], "-1"),
        (["--bogus"], "No such option"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    result = run_tool_cli("exitsnoop", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("code", "sig", "text"),
    [(0, 0, "0"), (3, 0, "code 3"), (0, 9, "signal 9 (SIGKILL)"), (0, 100, "signal 100")],
)
def test_describe_status(code: int, sig: int, text: str) -> None:
    assert describe_status(code, sig) == text
