"""``bpfloom run`` on objects written the way third-party objects are
(tests/bpf/ecli/printk.bpf.c): which globals become options, the warning for a global no
program reads, bpf_printk output, the table's layout, enum values without a name, and
errors as one line."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

from bpfloom import BpfObject
from bpfloom.tracepipe import parse_line
from conftest import bpf_object, compile_bpf
from toolrun import one_error_line, run_tool_cli

PRINTK = str(bpf_object("ecli/printk"))
FOLDED_WARNING = (
    "bpfloom: warning: no program reads global 'folded_limit', so setting it changes "
    "nothing (a plain `const` is folded into the code by the compiler; declare it "
    "`const volatile`)"
)


def _comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


def _getppid(times: int) -> None:
    for _ in range(times):
        os.getppid()


# --- which globals are options ------------------------------------------------------


def test_help_offers_identifier_globals_only() -> None:
    """bpf_printk's format string (`handle_getppid.____fmt`) and the function-local
    static counter are not options; --help works (it used to crash on the dot)."""
    result = run_tool_cli("run", PRINTK, "--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    options = set(re.findall(r"^  (--\S+)", result.stdout, re.MULTILINE))
    assert {"--target_pid", "--folded_limit"} <= options
    assert not [o for o in options if "." in o or "fmt" in o or "calls" in o]
    globals_in_help = re.findall(r"^  (--\S+) .*global ", result.stdout, re.MULTILINE)
    assert sorted(globals_in_help) == ["--folded_limit", "--target_pid"]


def test_library_reaches_every_global_by_its_full_name() -> None:
    with BpfObject(PRINTK) as obj:
        assert obj.globals["handle_getppid.____fmt"] == "getppid from %d call %llu"
        assert obj.globals["handle_getppid.calls"] == 0
        assert obj.globals["folded_limit"] == 1000
        assert obj.globals.referenced("target_pid")
        assert obj.globals.referenced("handle_getppid.calls")
        assert not obj.globals.referenced("folded_limit")


@pytest.mark.kernel
def test_setting_a_global_no_program_reads_warns_once(start_tool) -> None:  # type: ignore[no-untyped-def]
    pid = os.getpid()
    run = start_tool("run", PRINTK, "--json", "--target_pid", str(pid), "--folded_limit", "1")
    _getppid(3)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [FOLDED_WARNING]
    # It really changed nothing: a limit of 1 would have let one event through.
    events = [ev for ev in result.json_lines() if ev.get("pid") == pid]
    assert len(events) == 3


# --- bpf_printk ---------------------------------------------------------------------


@pytest.mark.kernel
def test_printk_program_says_where_its_lines_go() -> None:
    result = run_tool_cli("run", PRINTK, "--duration", "0.3", "--target_pid", "1")
    assert result.returncode == 0, result.stderr
    assert (
        "bpfloom: note: program handle_getppid prints with bpf_printk; the lines go to "
        "/sys/kernel/tracing/trace_pipe (add --trace-pipe to print them here)"
    ) in result.stderr.splitlines()


@pytest.mark.kernel
def test_trace_pipe_streams_printk_lines_as_json(start_tool) -> None:  # type: ignore[no-untyped-def]
    pid = os.getpid()
    run = start_tool("run", PRINTK, "--json", "--trace-pipe", "--target_pid", str(pid))
    _getppid(5)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr  # --trace-pipe given: nothing to point at
    rows = result.json_lines()
    traces = [r["trace_pipe"] for r in rows if "trace_pipe" in r]
    ours = [t for t in traces if t["pid"] == pid]
    assert [t["message"] for t in ours] == [f"getppid from {pid} call {n}" for n in range(1, 6)]
    assert {t["comm"] for t in ours} == {_comm()}
    assert all(isinstance(t["cpu"], int) and t["time"] > 0 for t in ours)
    events = [r for r in rows if "trace_pipe" not in r]
    assert [ev["pid"] for ev in events] == [pid] * 5
    counted = re.search(r"^bpfloom: (\d+) bpf_printk lines from trace_pipe$", result.stderr, re.M)
    assert counted is not None and int(counted.group(1)) >= 5


@pytest.mark.kernel
def test_trace_pipe_text_is_escaped(start_tool, gated_child) -> None:  # type: ignore[no-untyped-def]
    """A process named with an escape sequence cannot reach the terminal through it."""
    child = gated_child("os.getppid()\n", comm="x\x1b[2Jy")
    run = start_tool("run", PRINTK, "--trace-pipe", "--target_pid", str(child.pid))
    child.finish()
    run.wait_output("TRACE ")
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    traces = [line for line in result.stdout.splitlines() if " TRACE " in line]
    assert len(traces) == 1, result.stdout
    # trace_pipe names the task from the kernel's comm cache when the line is read:
    # a task that has exited by then shows as <...>.
    assert re.search(rf"TRACE (x\\x1b\[2Jy|<\.\.\.>)-{child.pid} \[", traces[0]), traces
    assert traces[0].endswith(f"] getppid from {child.pid} call 1")
    # The event table escapes the same comm.
    rows = [line for line in result.stdout.splitlines() if str(child.pid) in line]
    assert any(row.endswith("x\\x1b[2Jy") for row in rows), result.stdout


def test_trace_lines_are_escaped_for_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from bpfloom.cli.run import trace_interval
    from bpfloom.sinks.table import TableSink
    from bpfloom.tracepipe import TraceLine

    hostile = TraceLine("x\x1b[2J", 7, 1, 3.5, "a\nFAKE ALERT\x1b]0;t\x07")
    part = trace_interval(hostile)
    TableSink([]).summary(part.text, part.records)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "\x1b" not in out and "\x07" not in out
    assert out.rstrip("\n").endswith("TRACE x\\x1b[2J-7 [001] a\\nFAKE ALERT\\x1b]0;t\\x07")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "          python-1234    [001] d..31  4521.123456: bpf_trace_printk: hi 1",
            ("python", 1234, 1, 4521.123456, "hi 1"),
        ),
        (  # old kernels print no flags field
            "  bash-7 [000] 12.5: bpf_trace_printk: x",
            ("bash", 7, 0, 12.5, "x"),
        ),
        (  # the comm of an exited task
            "           <...>-9142    [001] d..31   449.563922: bpf_trace_printk: hi 2",
            ("<...>", 9142, 1, 449.563922, "hi 2"),
        ),
        (  # a comm with dashes and spaces
            "  my-prog name-77 [003] .... 1.000001: bpf_trace_printk: ok",
            ("my-prog name", 77, 3, 1.000001, "ok"),
        ),
        (  # a message that imitates the prefix stays the message
            "  a-5 [000] .... 2.0: bpf_trace_printk: b-6 [001] .... 3.0: bpf_trace_printk: c",
            ("a", 5, 0, 2.0, "b-6 [001] .... 3.0: bpf_trace_printk: c"),
        ),
    ],
)
def test_parse_trace_pipe_line(line: str, expected: tuple[object, ...]) -> None:
    parsed = parse_line(line)
    assert parsed is not None
    assert (parsed.comm, parsed.pid, parsed.cpu, parsed.time, parsed.message) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "# tracer: nop",
        "  bash-7 [000] 12.5: sched_switch: prev_comm=bash",
        "garbage without structure",
    ],
)
def test_other_trace_lines_are_not_printk_lines(line: str) -> None:
    assert parse_line(line) is None


# --- the table ----------------------------------------------------------------------


@pytest.mark.kernel
def test_table_widens_columns_and_prints_unnamed_enum_values(start_tool) -> None:  # type: ignore[no-untyped-def]
    pid = os.getpid()
    run = start_tool("run", PRINTK, "--target_pid", str(pid))
    _getppid(4)
    run.wait_output("4000000000000000")
    result = run.stop()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header, rows = lines[0], lines[1:]
    assert header == header.rstrip()
    assert header.split() == ["TIME", "PID", "MOOD", "VALUE", "COMM"]
    assert [row.split()[1:] for row in rows] == [
        [str(pid), "MOOD_CALM", "1", _comm()],
        [str(pid), "MOOD_ANGRY", "2000000000000000", _comm()],
        [str(pid), "0", "3000000000000000", _comm()],  # call 3: 3 % 3 = 0, no enumerator
        [str(pid), "MOOD_CALM", "4000000000000000", _comm()],
    ]
    assert all(row == row.rstrip() for row in rows)
    # VALUE widened for the second row; from there on COMM starts in one column.
    comm_at = [row.rindex(_comm()) for row in rows]
    assert comm_at[1] > comm_at[0]
    assert comm_at[1] == comm_at[2] == comm_at[3]


@pytest.mark.kernel
def test_json_keeps_unnamed_enum_values_as_numbers(start_tool) -> None:  # type: ignore[no-untyped-def]
    pid = os.getpid()
    run = start_tool("run", PRINTK, "--json", "--target_pid", str(pid))
    _getppid(3)
    result = run.stop()
    moods = [ev["mood"] for ev in result.json_lines() if ev.get("pid") == pid]
    assert moods == ["MOOD_CALM", "MOOD_ANGRY", 0]


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--target_pid", "abc"], ["Invalid value for '--target_pid'", "'abc' is not a valid int"]),
        (["--target_pid", "99999999999"], ["does not fit s32 (-2147483648..2147483647)"]),
        (["--duration", "0"], ["Invalid value for '--duration'"]),
    ],
)
def test_bad_option_value_is_one_line_not_doubled(args: list[str], needles: list[str]) -> None:
    result = run_tool_cli("run", PRINTK, *args)
    line = one_error_line(result, *needles, f"'bpfloom run {PRINTK} --help'", status=2)
    for needle in needles:
        assert line.count(needle) == 1, line
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["execsnoop", "--bogus"], ["opensnoop", "-p", "pid"], ["goroutines"], ["no-such-command"]],
)
def test_usage_errors_of_every_command_are_one_line(args: list[str]) -> None:
    result = run_tool_cli(*args)
    one_error_line(result, "--help", status=2)
    assert result.stdout == ""


@pytest.mark.kernel
def test_trampoline_object_says_what_really_failed() -> None:
    result = run_tool_cli("run", str(bpf_object("trampoline")), "--duration", "1")
    one_error_line(
        result,
        "program 'on_fentry'",
        "program type tracing, attach type trace_fentry",
        "no BPF trampolines",
        "tp_btf",
    )


def test_corrupt_relocations_raise_object_file_error(tmp_path: Path) -> None:
    """Every byte of the relocation records and the code they point into, overwritten:
    the scan answers or raises ObjectFileError, never anything else."""
    from elftools.elf.elffile import ELFFile

    from bpfloom._exceptions import ObjectFileError
    from bpfloom.relocations import data_references

    data = bytearray(Path(PRINTK).read_bytes())
    with open(PRINTK, "rb") as f:
        elf = ELFFile(f)
        spans = [
            (s["sh_offset"], s["sh_size"])
            for s in elf.iter_sections()
            if s.name in (".reltracepoint/syscalls/sys_enter_getppid", ".symtab")
        ]
    assert len(spans) == 2
    bad = tmp_path / "bad.bpf.o"
    for start, size in spans:
        for at in range(start, start + min(size, 512), 3):
            corrupt = bytearray(data)
            corrupt[at] ^= 0xFF
            bad.write_bytes(corrupt)
            with contextlib.suppress(ObjectFileError):
                data_references(bad)


CLASHING = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile int duration = 3;   /* named like run's --duration */
const volatile int target_pid = 0;

struct event { int pid; int duration; };
const struct event *unused __attribute__((unused));

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} rb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int emit(void *ctx)
{
    struct event e = { .pid = bpf_get_current_pid_tgid() >> 32, .duration = duration };
    if (e.pid == target_pid)
        bpf_ringbuf_output(&rb, &e, sizeof(e), 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_a_global_named_like_a_run_option_gets_its_own_flag(tmp_path: Path, start_tool) -> None:  # type: ignore[no-untyped-def]
    path = str(compile_bpf(CLASHING, tmp_path))
    help_text = run_tool_cli("run", path, "--help").stdout
    assert re.search(r"^  --global-duration INT\s+global int in rodata", help_text, re.M)
    assert re.search(r"^  --duration SECONDS\s", help_text, re.M)
    pid = os.getpid()
    run = start_tool(
        "run",
        path,
        "--json",
        "--duration",
        "30",
        "--global-duration",
        "7",
        "--target_pid",
        str(pid),
    )
    _getppid(2)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert [(ev["pid"], ev["duration"]) for ev in result.json_lines()] == [(pid, 7)] * 2
