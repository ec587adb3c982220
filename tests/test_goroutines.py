"""``bpfloom goroutines``: reading Go binaries (version, ABI, goid offset, clear errors),
the per-goroutine state times, and real traces of a Go program (tests/go/goroutines)
through the library API and the CLI.

The Go program waits for a line on stdin before it starts its goroutines, so every
test attaches the tracer first and then releases it: nothing races the attach.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from bpfloom.tools import gobinary
from bpfloom.tools.gobinary import (
    GoBinaryError,
    parse_go_version,
    read_go_binary,
    uses_register_abi,
)
from bpfloom.tools.goroutines import STATES, GoroutineTracer, StateTimes, state_name
from conftest import TESTS_GO, go_build
from toolrun import Result, run_tool_cli

SOURCE = TESTS_GO / "goroutines" / "main.go"
WORKERS = 10  # goroutines the program starts, besides main and the pipe reader
TIMEOUT = 60  # seconds any one process may take, far above what it needs
STATE_NAMES = set(STATES.values())
RECORD_KEYS = {"time", "state", "old_state", "goid", "pid", "tgid"}
# The goid offset of runtime.g as Go's own sources lay it out, for the versions we
# have checked; other versions are still read from DWARF, just not compared.
KNOWN_GOID_OFFSETS = {(1, 17): 152, (1, 18): 152, (1, 19): 152}


# --- Go binaries --------------------------------------------------------------------------


@dataclass(frozen=True)
class GoBuilds:
    """The test program built three ways, and the toolchain's version."""

    program: Path  # symbols and DWARF
    stripped: Path  # -ldflags="-s -w": neither
    no_dwarf: Path  # -ldflags=-w: symbols, no DWARF
    version: str  # "go1.19.8", from `go version`


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> GoBuilds:
    work = tmp_path_factory.mktemp("go")
    program = go_build(SOURCE, work / "goroutines", cache=work)
    stripped = go_build(SOURCE, work / "stripped", cache=work, ldflags="-s -w")
    no_dwarf = go_build(SOURCE, work / "no_dwarf", cache=work, ldflags="-w")
    out = subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"go\d+\.\d+(\.\d+)?\S*", out)
    assert found, out
    return GoBuilds(program, stripped, no_dwarf, found.group(0))


def test_reads_version_abi_and_goid_offset(builds: GoBuilds) -> None:
    info = read_go_binary(str(builds.program))
    assert info.version == builds.version
    assert info.version_tuple == parse_go_version(builds.version)
    assert info.goarch == {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    assert info.register_abi == uses_register_abi(info.goarch, info.version_tuple)
    if info.version_tuple in KNOWN_GOID_OFFSETS:
        assert info.goid_offset == KNOWN_GOID_OFFSETS[info.version_tuple]


def test_goid_offset_fast_search_matches_a_full_walk(
    builds: GoBuilds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name search that finds runtime.g quickly gives what walking every DIE of the
    runtime units gives."""
    fast = read_go_binary(str(builds.program)).goid_offset
    monkeypatch.setattr(gobinary, "_runtime_g_candidates", lambda dwarf: iter(()))
    assert read_go_binary(str(builds.program)).goid_offset == fast


def _patch_buildinfo(binary: Path, out: Path, header: bytes) -> Path:
    """A copy of ``binary`` whose .go.buildinfo starts with ``header`` instead."""
    with open(binary, "rb") as f:
        section = ELFFile(f).get_section_by_name(".go.buildinfo")
        assert section is not None
        offset = section["sh_offset"]
    data = bytearray(binary.read_bytes())
    data[offset : offset + len(header)] = header
    out.write_bytes(bytes(data))
    return out


def _symbol(binary: Path, name: str) -> int:
    with open(binary, "rb") as f:
        symbols = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
    assert symbols, name
    return int(symbols[0]["st_value"])


def test_reads_the_pre_go118_buildinfo_format(builds: GoBuilds, tmp_path: Path) -> None:
    """Go 1.13-1.17 wrote addresses of runtime.buildVersion and runtime.modinfo (Go
    strings) instead of inline strings: made here from a real binary by rewriting its
    header to point at its own runtime.buildVersion."""
    version_at = _symbol(builds.program, "runtime.buildVersion")
    modinfo_at = _symbol(builds.program, "runtime.modinfo")
    header = gobinary.BUILDINFO_MAGIC + bytes([8, 0])  # 8-byte pointers, little-endian
    header += version_at.to_bytes(8, "little") + modinfo_at.to_bytes(8, "little")
    old = _patch_buildinfo(builds.program, tmp_path / "old", header)
    assert read_go_binary(str(old)).version == builds.version


def test_reads_the_version_from_the_symbol_without_buildinfo(
    builds: GoBuilds, tmp_path: Path
) -> None:
    """Without a .go.buildinfo header, runtime.buildVersion gives the version."""
    plain = _patch_buildinfo(builds.program, tmp_path / "plain", bytes(16))
    assert read_go_binary(str(plain)).version == builds.version


def test_goid_offset_override_for_a_binary_without_dwarf(builds: GoBuilds) -> None:
    with pytest.raises(GoBinaryError, match="no DWARF"):
        read_go_binary(str(builds.no_dwarf))
    offset = read_go_binary(str(builds.program)).goid_offset
    assert read_go_binary(str(builds.no_dwarf), goid_offset=offset).goid_offset == offset


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "stripped",
            "{path} has no symbol runtime.casgstatus (stripped binary? build without -ldflags=-s)",
        ),
        (
            "no_dwarf",
            "{path} has no DWARF debug info (built with -ldflags=-w?); cannot find the "
            "goid offset of runtime.g",
        ),
        ("/bin/true", "{path} is not a Go binary"),
        ("missing", "{path}: no such file"),
        ("text", "{path} is not an ELF file"),
        ("directory", "{path} is not a regular file"),
    ],
)
def test_read_errors(builds: GoBuilds, tmp_path: Path, target: str, message: str) -> None:
    path = _error_target(builds, tmp_path, target)
    with pytest.raises(GoBinaryError) as raised:
        read_go_binary(path)
    assert str(raised.value).startswith(message.format(path=path))


def _error_target(builds: GoBuilds, tmp_path: Path, target: str) -> str:
    if target == "stripped":
        return str(builds.stripped)
    if target == "no_dwarf":
        return str(builds.no_dwarf)
    if target == "missing":
        return str(tmp_path / "missing")
    if target == "text":
        (tmp_path / "text").write_text("#!/bin/sh\necho not a Go binary\n")
        return str(tmp_path / "text")
    if target == "directory":
        return str(tmp_path)
    return target


@pytest.mark.parametrize(
    ("version", "parsed"),
    [
        ("go1.19.8", (1, 19)),
        ("go1.17", (1, 17)),
        ("go1.21rc2", (1, 21)),
        ("devel go1.23-4f0e5b5 Tue Jan 2 00:00:00 2024 +0000", (1, 23)),
    ],
)
def test_parse_go_version(version: str, parsed: tuple[int, int]) -> None:
    assert parse_go_version(version) == parsed


def test_parse_go_version_rejects_other_text() -> None:
    with pytest.raises(ValueError, match="not a Go version"):
        parse_go_version("gcc 12")


@pytest.mark.parametrize(
    ("goarch", "version", "experiments", "registers"),
    [
        ("amd64", (1, 16), frozenset(), False),
        ("amd64", (1, 17), frozenset(), True),
        ("amd64", (1, 17), frozenset({"noregabi"}), False),
        ("amd64", (1, 18), frozenset({"noregabi", "boringcrypto"}), False),
        ("amd64", (1, 19), frozenset({"noregabi"}), True),  # no longer optional
        ("amd64", (1, 22), frozenset(), True),
        ("arm64", (1, 17), frozenset(), False),
        ("arm64", (1, 18), frozenset(), True),
        ("arm64", (1, 18), frozenset({"noregabi"}), False),
    ],
)
def test_register_abi_by_version(
    goarch: str, version: tuple[int, int], experiments: frozenset[str], registers: bool
) -> None:
    assert uses_register_abi(goarch, version, experiments) is registers


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (0, "IDLE"),
        (1, "RUNNABLE"),
        (2, "RUNNING"),
        (3, "SYSCALL"),
        (4, "WAITING"),
        (5, "MORIBUND_UNUSED"),
        (6, "DEAD"),
        (7, "ENQUEUE_UNUSED"),
        (8, "COPYSTACK"),
        (9, "PREEMPTED"),
        (0x1001, "SCAN_RUNNABLE"),
        (0x1004, "SCAN_WAITING"),
        (10, "UNKNOWN_10"),
        (0x100A, "UNKNOWN_4106"),
    ],
)
def test_state_name(value: int, name: str) -> None:
    assert state_name(value) == name


# --- state times (the summary's arithmetic) -----------------------------------------------

IDLE, RUNNABLE, RUNNING, SYSCALL, WAITING, DEAD = 0, 1, 2, 3, 4, 6


def test_state_times_follow_gs_through_reuse_and_process_exit() -> None:
    """Go 1.19's newproc1 moves a reused g DEAD -> RUNNABLE before it writes the new
    goroutine's id: that transition carries the previous id (0 for a new g) and must
    be credited to the goroutine the g shows next."""
    times = StateTimes()
    g1, g2 = 0xC000001000, 0xC000002000
    # A fresh g becomes goroutine 5, which runs, waits, runs again and dies.
    times.state_change(100, 0, g1, IDLE, DEAD, 0)
    times.state_change(100, 0, g1, DEAD, RUNNABLE, 10)
    times.state_change(100, 5, g1, RUNNABLE, RUNNING, 30)
    times.state_change(100, 5, g1, RUNNING, WAITING, 100)
    times.state_change(100, 5, g1, WAITING, RUNNABLE, 400)
    times.state_change(100, 5, g1, RUNNABLE, RUNNING, 410)
    times.state_change(100, 5, g1, RUNNING, DEAD, 500)
    # g1 is reused for goroutine 7 (the transition still shows goid 5).
    times.state_change(100, 5, g1, DEAD, RUNNABLE, 600)
    times.state_change(100, 7, g1, RUNNABLE, RUNNING, 650)
    # Goroutine 9, first seen in mid-life in another g; then a g that never ran.
    times.state_change(100, 9, g2, SYSCALL, RUNNING, 700)
    times.state_change(100, 0, 0xC000003000, DEAD, RUNNABLE, 800)
    times.process_exit(100, 1000)
    # Process 200 is still running when the summary is made.
    times.state_change(200, 1, g1, SYSCALL, RUNNING, 0)
    times.state_change(200, 1, g1, RUNNING, SYSCALL, 100)

    rows = {(r["tgid"], r["goid"]): r for r in times.rows(until_ns=350)}
    assert set(rows) == {(100, 5), (100, 7), (100, 9), (200, 1)}
    ns = 1e-9
    expect = {
        (100, 5): (
            6,
            "DEAD",
            True,
            {"RUNNABLE": 30 * ns, "RUNNING": 160 * ns, "WAITING": 300 * ns},
        ),
        (100, 7): (2, "RUNNING", True, {"RUNNABLE": 50 * ns, "RUNNING": 350 * ns}),
        (100, 9): (1, "RUNNING", True, {"RUNNING": 300 * ns}),
        (200, 1): (2, "SYSCALL", False, {"RUNNING": 100 * ns, "SYSCALL": 250 * ns}),
    }
    for key, (transitions, state, exited, spent) in expect.items():
        row = rows[key]
        assert (row["transitions"], row["state"], row["exited"]) == (transitions, state, exited)
        assert row["time_in_state"] == pytest.approx(spent)


def test_state_times_after_pid_reuse_start_a_new_process() -> None:
    times = StateTimes()
    times.state_change(100, 1, 0x1000, RUNNABLE, RUNNING, 0)
    times.process_exit(100, 50)
    times.state_change(100, 1, 0x1000, RUNNABLE, RUNNING, 100)
    rows = times.rows(until_ns=120)
    assert [(r["goid"], r["exited"], r["time_in_state"]) for r in rows] == [
        (1, True, {"RUNNING": pytest.approx(50e-9)}),
        (1, False, {"RUNNING": pytest.approx(20e-9)}),
    ]


# --- tracing a real Go program ------------------------------------------------------------


class GoProgram:
    """The test program, started and waiting for its start line on stdin."""

    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary), str(WORKERS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def finish(self) -> None:
        """Wait for the program to end, and check that it did all its work."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        returncode = self.proc.wait(timeout=TIMEOUT)
        out, err = self.proc.stdout.read(), self.proc.stderr.read()  # a few bytes
        assert returncode == 0, err
        assert out.decode().split() == ["done", str(WORKERS), "1"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def go_programs() -> Iterator[list[GoProgram]]:
    """Append started programs here; whatever a failed test left running is killed."""
    started: list[GoProgram] = []
    yield started
    for program in started:
        program.kill()


def start_program(binary: Path, started: list[GoProgram]) -> GoProgram:
    program = GoProgram(binary)
    started.append(program)
    return program


def check_trace(
    records: list[dict[str, Any]], summaries: list[dict[str, Any]], pid: int, wall: float
) -> None:
    """What a trace of one run of the test program must show. ``wall`` bounds, in
    seconds, how long the trace can have lasted."""
    assert records, "no goroutine state changes recorded"
    assert {r["tgid"] for r in records} == {pid}
    # pid is the thread: every one is a thread of the process, the main thread among them.
    assert all(r["pid"] > 0 for r in records)
    assert any(r["pid"] == pid for r in records)
    states = {r["state"] for r in records}
    assert states <= STATE_NAMES
    assert {"RUNNABLE", "RUNNING", "WAITING", "SYSCALL", "DEAD"} <= states
    assert all(r["old_state"] in STATE_NAMES and r["old_state"] != r["state"] for r in records)
    goids = {r["goid"] for r in records} - {0}
    assert len(goids) >= WORKERS + 2, goids  # the workers, the pipe reader, main

    assert {s["tgid"] for s in summaries} == {pid}
    assert len(summaries) >= WORKERS + 2
    assert 1 in {s["goid"] for s in summaries}  # main
    for s in summaries:
        assert s["transitions"] > 0
        assert s["exited"], s  # the process exit closed every goroutine's last state
        assert s["state"] in STATE_NAMES
        assert set(s["time_in_state"]) <= STATE_NAMES
        assert all(seconds >= 0 for seconds in s["time_in_state"].values())
        assert sum(s["time_in_state"].values()) <= wall
    assert sum(s["transitions"] for s in summaries) <= len(records)
    # The goroutines started under the tracer ran to their end; their birth transition
    # (DEAD -> RUNNABLE, read before Go wrote their id) was credited to them.
    dead = [s for s in summaries if s["state"] == "DEAD"]
    assert len(dead) >= WORKERS + 1
    assert all("RUNNABLE" in s["time_in_state"] for s in dead)
    # Workers slept, waited on a channel and read a file.
    workers = [
        s
        for s in dead
        if s["time_in_state"].get("WAITING", 0) > 0 and s["time_in_state"].get("SYSCALL", 0) > 0
    ]
    assert len(workers) >= WORKERS


@pytest.mark.kernel
def test_library_traces_one_process(builds: GoBuilds, go_programs: list[GoProgram]) -> None:
    program = start_program(builds.program, go_programs)
    records: list[dict[str, Any]] = []
    start = time.monotonic()
    with GoroutineTracer(str(builds.program), pid=program.pid) as tracer:
        assert tracer.go.goid_offset == read_go_binary(str(builds.program)).goid_offset
        tracer.attach()
        program.release()
        deadline = time.monotonic() + TIMEOUT
        # Read until the process exit came through: the ring is ordered, every state
        # change of the process was before it.
        while not any(s["exited"] for s in tracer.summaries()):
            assert time.monotonic() < deadline, "the process exit was never reported"
            records.extend(tracer.read(timeout=0.5))
        summaries = tracer.summaries()
        assert tracer.dropped_kernel() == 0
    wall = time.monotonic() - start
    program.finish()
    assert all(set(r) == RECORD_KEYS for r in records)
    check_trace(records, summaries, program.pid, wall)


@pytest.mark.kernel
def test_a_binary_name_is_one_file_for_analysis_and_probe(
    builds: GoBuilds,
    go_programs: list[GoProgram],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--binary true` in a directory holding a Go program called `true`: the file read
    for the analysis is the file probed (it used to probe /usr/bin/true from PATH)."""
    (tmp_path / "true").symlink_to(builds.program)
    monkeypatch.chdir(tmp_path)
    with GoroutineTracer("true") as tracer:
        assert tracer.go.path == os.path.realpath(builds.program)
        tracer.attach()
        program = start_program(builds.program, go_programs)
        program.release()
        program.finish()
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + TIMEOUT
        while not any(s["exited"] for s in tracer.summaries()):
            assert time.monotonic() < deadline, "the Go program was never traced"
            records.extend(tracer.read(timeout=0.5))
    assert {r["tgid"] for r in records} == {program.pid}


# --- the CLI ------------------------------------------------------------------------------


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.kernel
def test_cli_json(builds: GoBuilds, start_tool: Any, go_programs: list[GoProgram]) -> None:
    start_wall, start = time.time(), time.monotonic()
    cli = start_tool("goroutines", "--binary", str(builds.program), "--json")
    program = start_program(builds.program, go_programs)  # started under the uprobe
    program.release()
    program.finish()
    result = cli.stop()
    wall = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    records = [line for line in lines if "summary" not in line]
    summaries = [line["summary"] for line in lines if "summary" in line]
    assert lines == records + [{"summary": s} for s in summaries]  # summaries come last
    assert all(set(r) == RECORD_KEYS for r in records)
    assert all(start_wall - 1 <= r["time"] <= time.time() + 1 for r in records)
    check_trace(records, summaries, program.pid, wall)
    received, lost_kernel, lost_user = result.lost()
    assert (lost_kernel, lost_user) == (0, 0)
    assert received == len(records) + 1  # and the one process exit event


@pytest.mark.kernel
def test_cli_pid_traces_only_that_process(
    builds: GoBuilds, start_tool: Any, go_programs: list[GoProgram]
) -> None:
    """--pid alone traces the executable of that process, and only that process: a
    second copy of the same binary, released at the same time, is not reported."""
    traced = start_program(builds.program, go_programs)
    other = start_program(builds.program, go_programs)
    cli = start_tool("goroutines", "--pid", str(traced.pid))
    traced.release()
    other.release()
    traced.finish()
    other.finish()
    result = cli.stop()
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    events, summary = _parse_table(result.stdout)
    assert events, result.stdout
    assert {tgid for *_, tgid in events} == {str(traced.pid)}
    assert {state for _, state, *_ in events} >= {"RUNNING", "WAITING", "SYSCALL", "DEAD"}
    assert {row[0] for row in summary} == {str(traced.pid)}
    assert len(summary) >= WORKERS + 2


def _parse_table(stdout: str) -> tuple[list[list[str]], list[list[str]]]:
    """The event rows (TIME STATE GOID PID TGID) and the summary rows (TGID GOID
    TRANSITIONS STATE seconds...) of the table output."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["TIME", "STATE", "GOID", "PID", "TGID"]
    end = lines.index("Time in each state (seconds), per goroutine:")
    events = [line.split() for line in lines[1:end]]
    assert all(len(row) == 5 for row in events)
    header = lines[end + 1].split()
    assert header[:4] == ["TGID", "GOID", "TRANSITIONS", "STATE"]
    assert set(header[4:]) <= STATE_NAMES
    summary = [line.split() for line in lines[end + 2 :]]
    assert all(len(row) == len(header) for row in summary)
    return events, summary


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "stripped",
            "{path} has no symbol runtime.casgstatus (stripped binary? build without -ldflags=-s)",
        ),
        ("no_dwarf", "{path} has no DWARF debug info (built with -ldflags=-w?)"),
        ("/bin/true", "{path} is not a Go binary"),
        ("missing", "{path}: no such file"),
        ("text", "{path} is not an ELF file"),
    ],
)
def test_cli_errors_are_one_line(
    builds: GoBuilds, tmp_path: Path, target: str, message: str
) -> None:
    path = _error_target(builds, tmp_path, target)
    result = run_tool_cli("goroutines", "--binary", path)
    assert result.returncode == 1
    assert result.stdout == ""
    # The message names the file read: the path resolved once (/bin/true is
    # /usr/bin/true where /bin links to usr/bin).
    resolved = os.path.realpath(path)
    assert result.stderr.startswith("bpfloom: error: " + message.format(path=resolved))
    assert result.stderr.count("\n") == 1, result.stderr


def test_cli_pid_errors(builds: GoBuilds) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    result = run_tool_cli("goroutines", "--pid", str(gone.pid))
    assert (result.returncode, result.stderr) == (1, f"bpfloom: error: no process {gone.pid}\n")
    # This Python process does not run the Go binary.
    result = run_tool_cli("goroutines", "--binary", str(builds.program), "--pid", str(os.getpid()))
    assert result.returncode == 1
    assert result.stderr == (
        f"bpfloom: error: process {os.getpid()} does not run {builds.program}\n"
    )


def test_cli_needs_a_binary_or_a_pid() -> None:
    result = run_tool_cli("goroutines")
    assert result.returncode == 2
    assert result.stderr == (
        "bpfloom: error: give --binary PATH, --pid N, or both (see 'bpfloom goroutines --help')\n"
    )
    no_traceback(result)


def test_cli_help_explains_every_option() -> None:
    result = run_tool_cli("goroutines", "--help")
    assert result.returncode == 0
    for option in ("--binary", "--pid", "--goid-offset", "--json", "--duration"):
        assert option in result.stdout
