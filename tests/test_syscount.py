"""syscount on real processes: exact per-syscall counts of a child, failures and errno,
per-process counts, latency, top N, intervals; and the syscall name table."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bpfloom.tools.syscalls import SYSCALLS, syscall_name, syscall_number, syscall_table
from bpfloom.tools.syscount import SysCount, parse_errno
from toolrun import TIMEOUT, ToolRun, run_tool_cli

ROOT = Path(__file__).resolve().parent.parent
EXIT_LINE = re.compile(
    r"^bpfloom syscount: (\d+) system calls counted in the kernel; (\d+) not counted "
    r"\(map full\)$",
    re.MULTILINE,
)
STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]$", re.MULTILINE)

# Child-side loops of calls nothing else in the child makes.
CALLS = """
def calls(n, fn, *args):
    for _ in range(n):
        try:
            fn(*args)
        except OSError:
            pass
"""


def _rows(records: list[dict[str, Any]], key: str = "syscall") -> dict[Any, dict[str, Any]]:
    rows = {r[key]: r for r in records}
    assert len(rows) == len(records), f"one row per {key} expected: {records}"
    return rows


# --- the CLI on real processes --------------------------------------------------------


@pytest.mark.kernel
def test_cli_exact_counts_of_a_process_top_3(start_tool: Any, gated_child: Any) -> None:
    child = gated_child(
        CALLS + "calls(1000, os.getppid)\ncalls(500, os.getuid)\ncalls(300, os.getgid)\n"
    )
    run = start_tool("syscount", "--json", "-T", "3", "-p", str(child.pid))
    child.finish()
    result = run.stop()
    assert result.returncode == 0, result.stderr
    records = result.json_lines()
    # The three largest, in order, exactly as many as the child made; more than three
    # syscalls were made (read, exit paths...), so -T 3 did cut.
    assert [(r["syscall"], r["count"]) for r in records] == [
        ("getppid", 1000),
        ("getuid", 500),
        ("getgid", 300),
    ]
    assert all(set(r) == {"time", "syscall", "count"} for r in records)
    assert len({r["time"] for r in records}) == 1 and abs(records[0]["time"] - time.time()) < 60
    counted, lost = map(int, EXIT_LINE.findall(result.stderr)[0])
    assert counted > 1800 and lost == 0  # every call of the child, not only the top 3


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("args", "openat_count"),
    [(["-x"], 700), (["-e", "ENOENT"], 500), (["-e", "21"], 200)],
)
def test_cli_failures_and_errno(
    start_tool: Any, gated_child: Any, tmp_path: Path, args: list[str], openat_count: int
) -> None:
    existing = tmp_path / "existing"
    existing.write_text("x")
    child = gated_child(
        CALLS
        + f"calls(500, os.open, {str(tmp_path / 'missing')!r}, os.O_RDONLY)\n"  # ENOENT
        + f"calls(200, os.open, {str(tmp_path)!r}, os.O_WRONLY)\n"  # EISDIR (21)
        + f"for _ in range(300): os.close(os.open({str(existing)!r}, os.O_RDONLY))\n"
        + "calls(1000, os.getppid)\n"
    )
    run = start_tool("syscount", "--json", *args, "-p", str(child.pid))
    child.finish()
    rows = _rows(run.stop().json_lines())
    assert rows["openat"]["count"] == openat_count
    assert "getppid" not in rows and "close" not in rows  # they never fail


@pytest.mark.kernel
def test_cli_per_process_with_exact_comm(start_tool: Any, gated_child: Any) -> None:
    code = CALLS + "calls(1000, os.getppid)\n"
    named = gated_child(code, comm="syscount_tst1")
    longer = gated_child(code, comm="syscount_tst12")  # not an exact match
    run = start_tool("syscount", "--json", "-P", "-c", "syscount_tst1")
    longer.finish()
    named.finish()
    records = run.stop().json_lines()
    assert len(records) == 1, records
    row = records[0]
    assert set(row) == {"time", "pid", "comm", "count"}
    assert (row["pid"], row["comm"]) == (named.pid, "syscount_tst1")
    assert row["count"] > 1000


@pytest.mark.kernel
def test_cli_latency(start_tool: Any, gated_child: Any) -> None:
    child = gated_child(CALLS + "calls(1000, os.getppid)\ncalls(3, time.sleep, 0.05)\n")
    run = start_tool("syscount", "--json", "-L", "-T", "0", "-p", str(child.pid))
    child.finish()
    records = run.stop().json_lines()
    assert all(set(r) == {"time", "syscall", "count", "time_us"} for r in records)
    times = [r["time_us"] for r in records]
    assert times == sorted(times, reverse=True) and min(times) >= 0
    # A sleep cannot end early: three of 50 ms are at least 150 ms in the kernel.
    assert (records[0]["syscall"], records[0]["count"]) == ("clock_nanosleep", 3)
    assert records[0]["time_us"] >= 150_000
    assert _rows(records)["getppid"]["count"] == 1000


@pytest.mark.kernel
def test_cli_latency_histograms(start_tool: Any, gated_child: Any) -> None:
    child = gated_child(CALLS + "calls(1000, os.getppid)\ncalls(3, time.sleep, 0.05)\n")
    run = start_tool("syscount", "--json", "--histogram", "-T", "0", "-p", str(child.pid))
    child.finish()
    records = run.stop().json_lines()
    keys = {"interval", "time", "syscall", "count", "time_us", "unit", "slots"}
    assert all(set(r) == keys and r["interval"] == 1 and r["unit"] == "usecs" for r in records)
    assert all(r["count"] == sum(r["slots"]) for r in records)  # every call in a slot
    rows = _rows(records)
    assert rows["getppid"]["count"] == 1000
    # A 50 ms sleep cannot end early: slot 15 (32768 -> 65535 us) or later.
    sleeps = rows["clock_nanosleep"]["slots"]
    assert sum(sleeps) == 3 and sum(sleeps[15:]) == 3


@pytest.mark.kernel
def test_cli_latency_histogram_text(start_tool: Any, gated_child: Any) -> None:
    child = gated_child(CALLS + "calls(2, time.sleep, 0.05)\n")
    run = start_tool("syscount", "--histogram", "-m", "-T", "1", "-p", str(child.pid))
    child.finish()
    lines = run.stop().stdout.splitlines()
    assert STAMP.match(lines[0]) and lines[1] == ""
    head = re.fullmatch(r"syscall = clock_nanosleep  count = 2, time \(ms\) = ([\d.]+)", lines[2])
    assert head is not None and float(head[1]) >= 100
    assert lines[3] == "     msecs               : count    distribution"
    # 50 ms: slot 5 (32 -> 63 ms) or later; the bars end at the last non-empty slot.
    assert lines[-1].split(":")[1].split()[0] != "0" and len(lines) >= 4 + 6


@pytest.mark.kernel
def test_cli_table_in_milliseconds(start_tool: Any, gated_child: Any) -> None:
    child = gated_child(CALLS + "calls(2, time.sleep, 0.05)\n")
    run = start_tool("syscount", "-m", "-p", str(child.pid))
    child.finish()
    lines = run.stop().stdout.splitlines()
    assert STAMP.match(lines[0])
    assert lines[1].split() == ["SYSCALL", "COUNT", "TIME", "(ms)"]
    name, count, ms = lines[2].split()
    assert (name, count) == ("clock_nanosleep", "2") and float(ms) >= 100


@pytest.mark.kernel
def test_cli_intervals_print_and_reset(start_tool: Any, gated_child: Any) -> None:
    child = gated_child(CALLS + "calls(1000, os.getppid)\ngate()\ncalls(500, os.getppid)\n")
    run = start_tool("syscount", "--json", "-i", "0.3", "-p", str(child.pid))
    child.go()
    run.wait_output('"getppid"')  # an interval has printed (part of) the first 1000
    child.finish()  # the next 500, in a later interval
    records = run.stop().json_lines()
    getppid = [r for r in records if r["syscall"] == "getppid"]
    assert len({r["time"] for r in getppid}) >= 2
    # Reset at every interval, and nothing lost at the interval's ends.
    assert sum(r["count"] for r in getppid) == 1500


@pytest.mark.kernel
def test_cli_interval_tables(start_tool: Any) -> None:
    run: ToolRun = start_tool("syscount", "-i", "0.2", "-T", "2")
    deadline = time.monotonic() + TIMEOUT
    while len(STAMP.findall(run.stdout_now())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    blocks = run.stop().stdout.split("\n\n")
    assert len(blocks) >= 3
    for block in blocks:
        lines = block.strip().splitlines()
        assert STAMP.match(lines[0]) and lines[1].split() == ["SYSCALL", "COUNT"]
        assert len(lines) <= 4  # at most -T 2 rows


def test_cli_list() -> None:
    result = run_tool_cli("syscount", "-l")
    assert result.returncode == 0
    table = syscall_table()
    assert result.stdout.splitlines() == [f"{nr:3d}: {name}" for nr, name in sorted(table.items())]
    if syscall_number("openat") == 257:
        assert "257: openat" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "EFOO"], "'EFOO' is not an errno"),
        (["-e", "0"], "'0' is not an errno"),
        (["-c", "a-very-long-command-name"], "at most 15 bytes"),
        (["-T", "-1"], "-1 is not in the range"),
        (["-i", "0"], "0 is not in the range"),
        (["-p", "abc"], "'abc' is not a valid integer"),
        (["--bogus"], "No such option"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    result = run_tool_cli("syscount", *args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


# --- the library ----------------------------------------------------------------------


@pytest.mark.kernel
def test_library_rows_reset(gated_child: Any) -> None:
    child = gated_child(CALLS + "calls(700, os.getppid)\ngate()\ncalls(50, os.getppid)\n")
    with SysCount(pid=child.pid, latency=True) as tool:
        tool.attach()
        child.go()
        deadline = time.monotonic() + TIMEOUT
        first: list[dict[str, Any]] = []
        while not any(r["count"] == 700 for r in first) and time.monotonic() < deadline:
            first = [r for r in tool.rows(reset=False) if r["syscall"] == "getppid"]
            time.sleep(0.02)
        assert [r["count"] for r in first] == [700]
        assert first[0]["time_us"] >= 0
        assert _rows(tool.rows())["getppid"]["count"] == 700  # read and reset
        assert "getppid" not in _rows(tool.rows())  # nothing new since
        child.finish()
        assert _rows(tool.rows())["getppid"]["count"] == 50


def test_library_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="15 bytes"):
        SysCount(comm="a-very-long-command-name")
    with pytest.raises(ValueError, match="errno"):
        SysCount(errno=-2)


@pytest.mark.parametrize(
    ("text", "value"), [("ENOENT", 2), ("enoent", 2), ("2", 2), ("EISDIR", 21), ("EAGAIN", 11)]
)
def test_parse_errno(text: str, value: int) -> None:
    assert parse_errno(text) == value


@pytest.mark.parametrize("text", ["", "0", "E", "EFOO", "errorcode", "-2", "99999"])
def test_parse_errno_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not an errno"):
        parse_errno(text)


# --- the syscall table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "name", "nr"),
    [
        ("x86_64", "read", 0),
        ("x86_64", "write", 1),
        ("x86_64", "open", 2),
        ("x86_64", "openat", 257),
        ("x86_64", "getppid", 110),
        ("x86_64", "openat2", 437),
        ("x86_64", "mseal", 462),  # newer than the headers it was generated from
        ("aarch64", "io_setup", 0),
        ("aarch64", "openat", 56),
        ("aarch64", "fcntl", 25),  # __NR3264_fcntl
        ("aarch64", "newfstatat", 79),  # __NR3264_fstatat
        ("aarch64", "getppid", 173),
        ("aarch64", "clone3", 435),
        ("arm64", "openat2", 437),
    ],
)
def test_syscall_table(machine: str, name: str, nr: int) -> None:
    assert syscall_name(nr, machine) == name
    assert syscall_number(name, machine) == nr


def test_syscall_table_round_trips_and_unknowns() -> None:
    for machine, table in SYSCALLS.items():
        assert len(set(table.values())) == len(table), f"{machine}: a name twice"
        for nr, name in table.items():
            assert syscall_name(nr, machine) == name
            assert syscall_number(name, machine) == nr
    assert syscall_number("open", "aarch64") is None  # arm64 has openat only
    assert 403 not in SYSCALLS["aarch64"]  # the 32-bit time64 calls are not arm64's
    assert syscall_name(9999, "x86_64") == "syscall_9999"
    assert syscall_number("syscall_9999") == 9999
    assert syscall_number("no_such_call") is None
    assert syscall_name(0, "sparc") == "syscall_0"


def test_generated_table_is_up_to_date() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_syscalls.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == (ROOT / "src" / "bpfloom" / "tools" / "syscalls.py").read_text()
