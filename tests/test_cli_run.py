"""``bpfloom run`` end to end: the ecli-style objects run unmodified as a subprocess
while the test drives real activity (exec, signals, exits, a Go program, scheduling),
their events come out as a table or JSON lines, signals stop it cleanly, and bad input
gets one line of error, never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from bpfloom import _env
from bpfloom.perfbuf import online_cpus
from conftest import assert_gone_from_kernel, bpf_object, compile_bpf
from toolrun import BPFLOOM, SUMMARY, TIMEOUT, Result, one_error_line, run_tool_cli

HIST_LINE = re.compile(r"\d+ -> \d+\s*: \d+\s*\|\**\s*\|")
GOROUTINE_STATES = {
    "IDLE",
    "RUNNABLE",
    "RUNNING",
    "SYSCALL",
    "WAITING",
    "MORIBUND_UNUSED",
    "DEAD",
    "ENQUEUE_UNUSED",
    "COPYSTACK",
    "PREEMPTED",
}
SIGUSR1, SIGUSR2 = int(signal.SIGUSR1), int(signal.SIGUSR2)
ESRCH = 3

# Skipped on a developer machine without the objects; in CI (BPFLOOM_REQUIRE_KERNEL) it
# runs and fails loudly instead.
needs_objects = pytest.mark.skipif(
    not bpf_object("ecli/sigsnoop").exists() and not os.environ.get("BPFLOOM_REQUIRE_KERNEL"),
    reason="test BPF objects not built (make bpf)",
)


# --- running bpfloom --------------------------------------------------------------------


class Run:
    """``bpfloom run ARGS`` in the background, stdout to a file (it may print a lot
    before the test reads it: a pipe could fill up and stall it)."""

    def __init__(self, args: Sequence[str], tmp_path: Path, cwd: Path | None = None) -> None:
        self._out = tmp_path / f"stdout.{time.monotonic_ns()}"
        self._err = tmp_path / f"stderr.{time.monotonic_ns()}"
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.proc = subprocess.Popen(
                [*BPFLOOM, "run", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
            )

    def stdout_now(self) -> str:
        return self._out.read_text()

    def stderr_now(self) -> str:
        return self._err.read_text()

    def bpf_ids(self) -> dict[str, set[int]]:
        """Ids of the BPF programs, maps and links the process holds fds of."""
        return _bpf_fd_ids(self.proc.pid)

    def perf_event_fds(self) -> int:
        return _count_fds(self.proc.pid, "anon_inode:[perf_event]")

    def wait_attached(self, links: int, perf_rings: int = 0) -> dict[str, set[int]]:
        """Wait until the process holds ``links`` BPF links (and, for perf buffers, one
        perf event per CPU on top of those of the links): then it is tracing."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"bpfloom exited early ({self.proc.returncode}):\n{self.stderr_now()}")
            ids = self.bpf_ids()
            if len(ids["link"]) >= links and self.perf_event_fds() >= links + perf_rings:
                return ids
            time.sleep(0.01)
        self.proc.kill()
        pytest.fail(f"bpfloom did not attach {links} links in {TIMEOUT} s")

    def finish(self) -> Result:
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"bpfloom did not end within {TIMEOUT} s:\n{self.stderr_now()}")
        return Result(self.proc.returncode, self._out.read_text(), self._err.read_text())


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """``start(args, cwd=None)`` starts ``bpfloom run args``; whatever a failed test
    left running is killed afterwards."""
    runs: list[Run] = []

    def make(args: Sequence[str], cwd: Path | None = None) -> Run:
        run = Run(args, tmp_path, cwd=cwd)
        runs.append(run)
        return run

    yield make
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def bpfloom_run(*args: str) -> Result:
    """``bpfloom run ARGS`` to completion (for quick failures and --help)."""
    done = run_tool_cli("run", *args)
    return Result(done.returncode, done.stdout, done.stderr)


def _fd_targets(pid: int) -> list[tuple[str, str]]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append((fd, os.readlink(f"/proc/{pid}/fd/{fd}")))
        except OSError:
            continue
    return out


def _count_fds(pid: int, target: str) -> int:
    try:
        return sum(1 for _, t in _fd_targets(pid) if t == target)
    except FileNotFoundError:
        return 0


def _bpf_fd_ids(pid: int) -> dict[str, set[int]]:
    kinds = {
        "anon_inode:bpf-prog": "prog",
        "anon_inode:bpf-map": "map",
        "anon_inode:bpf_link": "link",
    }
    ids: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
    try:
        targets = _fd_targets(pid)
    except FileNotFoundError:
        return ids
    for fd, target in targets:
        kind = kinds.get(target)
        if kind is None:
            continue
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith(f"{kind}_id:"):
                ids[kind].add(int(line.split()[1]))
    return ids


def _my_comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def _table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The header's column names and the rows' cells of a table (split on whitespace)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output"
    return lines[0].split(), [line.split() for line in lines[1:]]


# --- execsnoop (perf buffer) ------------------------------------------------------------


def _run_true_children(count: int) -> list[int]:
    """Run /bin/true ``count`` times; their pids."""
    pids = []
    for _ in range(count):
        child = subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL)
        pids.append(child.pid)
        assert child.wait(timeout=TIMEOUT) == 0
    return pids


@needs_objects
@pytest.mark.kernel
def test_execsnoop_json(start: Callable[..., Run]) -> None:
    run = start([str(bpf_object("ecli/execsnoop")), "--duration", "3", "--json"])
    run.wait_attached(links=1, perf_rings=len(online_cpus()))
    children = _run_true_children(3)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    events = result.json_lines()
    for ev in events:
        assert set(ev) == {"pid", "ppid", "uid", "retval", "is_exit", "comm"}
    ours = [ev for ev in events if ev["pid"] in children]
    # One execve() each, seen on entry: the comm is still ours (the new image is not
    # loaded yet), retval is 0 and is_exit false by construction of the program.
    assert sorted(ev["pid"] for ev in ours) == sorted(children)
    for ev in ours:
        assert ev["ppid"] == os.getpid()
        assert ev["uid"] == os.getuid()
        assert ev["retval"] == 0
        assert ev["is_exit"] is False
        assert ev["comm"] == _my_comm()
    received, _, lost_user = result.summary()
    assert received == len(events)  # every received event is printed
    assert lost_user == 0


@needs_objects
@pytest.mark.kernel
def test_execsnoop_table(start: Callable[..., Run]) -> None:
    run = start([str(bpf_object("ecli/execsnoop")), "--duration", "3"])
    run.wait_attached(links=1, perf_rings=len(online_cpus()))
    children = _run_true_children(2)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    first = result.stdout.splitlines()[0]
    assert first.rstrip() == "TIME     PID     PPID    UID     RETVAL  IS_EXIT COMM"
    header, rows = _table(result.stdout)
    assert header == ["TIME", "PID", "PPID", "UID", "RETVAL", "IS_EXIT", "COMM"]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", row[0]) for row in rows)
    ours = {int(row[1]): row for row in rows if row[1].isdigit() and int(row[1]) in children}
    assert set(ours) == set(children)
    for row in ours.values():
        assert row[2:] == [str(os.getpid()), str(os.getuid()), "0", "False", _my_comm()]
    received, _, _ = result.summary()
    assert received == len(rows)


# --- sigsnoop (ring buffer, globals) ----------------------------------------------------


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)


def _reap(child: subprocess.Popen[bytes]) -> int:
    if child.poll() is None:
        child.kill()
    return child.wait(timeout=TIMEOUT)


def _pid_that_cannot_exist() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


@needs_objects
@pytest.mark.kernel
def test_sigsnoop_json(start: Callable[..., Run]) -> None:
    # --no-maps: these tests read events; sigsnoop's stash map `values` would be printed
    # at exit too (test_cli_maps.py tests map printing).
    run = start([str(bpf_object("ecli/sigsnoop")), "--duration", "3", "--json", "--no-maps"])
    run.wait_attached(links=6)
    child = _sleeper()
    try:
        os.kill(child.pid, 0)
        os.kill(child.pid, signal.SIGUSR1)  # ends `sleep`
        assert child.wait(timeout=TIMEOUT) == -SIGUSR1
    finally:
        _reap(child)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    events = result.json_lines()
    for ev in events:
        assert set(ev) == {"pid", "tpid", "sig", "ret", "comm"}
    ours = [ev for ev in events if ev["pid"] == os.getpid() and ev["tpid"] == child.pid]
    assert [ev["sig"] for ev in ours] == [0, SIGUSR1]
    for ev in ours:
        assert ev["ret"] == 0
        assert ev["comm"] == _my_comm()
    received, _, lost_user = result.summary()
    assert received == len(events)
    assert lost_user == 0


@needs_objects
@pytest.mark.kernel
def test_sigsnoop_table_with_target_signal(start: Callable[..., Run]) -> None:
    args = [str(bpf_object("ecli/sigsnoop")), "--duration", "3", "--target_signal", "10"]
    args.append("--no-maps")
    run = start(args)
    run.wait_attached(links=6)
    child = _sleeper()
    try:
        os.kill(child.pid, 0)
        os.kill(child.pid, signal.SIGUSR2)  # filtered out in the kernel, but `sleep` ends
        assert child.wait(timeout=TIMEOUT) == -SIGUSR2
        other = _sleeper()
        os.kill(other.pid, signal.SIGUSR1)
        assert other.wait(timeout=TIMEOUT) == -SIGUSR1
    finally:
        _reap(child)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    header, rows = _table(result.stdout)
    assert header == ["TIME", "PID", "TPID", "SIG", "RET", "COMM"]
    assert rows, "SIGUSR1 was sent; the table has no rows"
    assert {row[3] for row in rows} == {str(SIGUSR1)}  # only SIGUSR1, from anyone
    ours = [row for row in rows if row[1] == str(os.getpid())]
    assert [row[2] for row in ours] == [str(other.pid)]
    assert ours[0][4:] == ["0", _my_comm()]
    received, _, _ = result.summary()
    assert received == len(rows)


@needs_objects
@pytest.mark.kernel
def test_sigsnoop_failed_only_flag(start: Callable[..., Run]) -> None:
    args = [str(bpf_object("ecli/sigsnoop")), "--duration", "3", "--json", "--failed_only"]
    args.append("--no-maps")
    run = start(args)
    run.wait_attached(links=6)
    child = _sleeper()
    nobody = _pid_that_cannot_exist()
    try:
        os.kill(child.pid, 0)  # succeeds: not shown
        with pytest.raises(ProcessLookupError):
            os.kill(nobody, 0)  # fails with ESRCH: shown
    finally:
        _reap(child)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    events = result.json_lines()
    assert all(ev["ret"] < 0 for ev in events)
    ours = [ev for ev in events if ev["pid"] == os.getpid()]
    assert [(ev["tpid"], ev["sig"], ev["ret"]) for ev in ours] == [(nobody, 0, -ESRCH)]


# --- exitsnoop (ring buffer) ------------------------------------------------------------


@needs_objects
@pytest.mark.kernel
def test_exitsnoop_json(start: Callable[..., Run]) -> None:
    run = start([str(bpf_object("ecli/exitsnoop")), "--duration", "3", "--json"])
    run.wait_attached(links=1)
    exits7 = subprocess.Popen(["sh", "-c", "exit 7"], stdin=subprocess.DEVNULL)
    assert exits7.wait(timeout=TIMEOUT) == 7
    killed = _sleeper()
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=TIMEOUT) == -signal.SIGKILL
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    events = result.json_lines()
    by_pid = {ev["pid"]: ev for ev in events if ev["ppid"] == os.getpid()}
    # Only our children's keys: another process on the machine may have a comm that is
    # not UTF-8, which its record carries as comm_b64.
    for ev in by_pid.values():
        assert set(ev) == {"pid", "ppid", "exit_code", "duration_ns", "comm"}
    assert by_pid[exits7.pid]["exit_code"] == 7
    assert by_pid[exits7.pid]["comm"] == "sh"
    # Killed by a signal: 128 + the signal number, as a shell's $? shows it.
    assert by_pid[killed.pid]["exit_code"] == 128 + signal.SIGKILL
    assert by_pid[killed.pid]["comm"] == "sleep"
    assert by_pid[killed.pid]["duration_ns"] > 0
    received, _, _ = result.summary()
    assert received == len(events)


# --- goroutine (uprobe on a Go binary) --------------------------------------------------

GO_PROGRAM = """\
package main

import (
	"sync"
	"time"
)

// Goroutines that sleep and talk over channels, for about a second.
func main() {
	for round := 0; round < 40; round++ {
		var wg sync.WaitGroup
		ch := make(chan int)
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				time.Sleep(time.Millisecond)
				ch <- i
			}(i)
		}
		for i := 0; i < 4; i++ {
			<-ch
		}
		wg.Wait()
		time.Sleep(10 * time.Millisecond)
	}
}
"""


@pytest.fixture
def go_server(tmp_path: Path) -> Path:
    """A Go binary at tmp_path/go-server-http/main, where goroutine.bpf.o's section
    name points relative to the working directory."""
    go = shutil.which("go")
    if go is None:
        if os.environ.get("BPFLOOM_REQUIRE_KERNEL"):
            pytest.fail("go is not installed (scripts/setup.sh installs golang-go)")
        pytest.skip("go is not installed")
    src = tmp_path / "go-server-http"
    src.mkdir()
    (src / "main.go").write_text(GO_PROGRAM)
    env = {
        **os.environ,
        "GOCACHE": str(tmp_path / "gocache"),
        "GOPATH": str(tmp_path / "gopath"),
        "GO111MODULE": "off",  # one file, standard library only: no go.mod needed
    }
    subprocess.run(
        [go, "build", "-o", "main", "main.go"],
        cwd=src,
        env=env,
        check=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return src / "main"


@needs_objects
@pytest.mark.kernel
def test_goroutine_json(start: Callable[..., Run], tmp_path: Path, go_server: Path) -> None:
    run = start([str(bpf_object("ecli/goroutine")), "--duration", "3", "--json"], cwd=tmp_path)
    run.wait_attached(links=1)
    go = subprocess.Popen([str(go_server)], stdin=subprocess.DEVNULL)
    assert go.wait(timeout=TIMEOUT) == 0
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    events = result.json_lines()
    for ev in events:
        assert set(ev) == {"state", "goid", "pid", "tgid"}
    ours = [ev for ev in events if ev["tgid"] == go.pid]
    assert ours, f"no goroutine events of the Go process among {len(events)}"
    states = {ev["state"] for ev in ours}
    assert states <= GOROUTINE_STATES
    assert {"RUNNABLE", "RUNNING", "WAITING"} <= states
    assert all(ev["pid"] > 0 for ev in ours)  # thread ids of the Go process
    received, _, _ = result.summary()
    assert received == len(events)


# --- runqlat (histogram map) ------------------------------------------------------------


def _scheduling_activity(run: Run) -> None:
    """Sleep and wake up many times until bpfloom ends: run queue latencies to measure."""
    while run.proc.poll() is None:
        time.sleep(0.001)


@needs_objects
@pytest.mark.kernel
def test_runqlat_histogram(start: Callable[..., Run]) -> None:
    args = [str(bpf_object("ecli/runqlat")), "--interval", "1", "--duration", "3"]
    run = start(args)
    run.wait_attached(links=3)
    _scheduling_activity(run)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    lines = result.stdout.splitlines()
    titles = [i for i, line in enumerate(lines) if line.startswith("hists key = ")]
    # Printed every second and at exit: at least twice in three seconds.
    assert len(titles) >= 2, result.stdout
    for i in titles:
        assert lines[i] == f"hists key = {2**32 - 1}"  # the system-wide histogram
        assert lines[i + 1].split() == ["usecs", ":", "count", "distribution"]
    bars = [line for line in lines if HIST_LINE.search(line)]
    assert bars
    assert sum(int(line.split(":")[1].split()[0]) for line in bars) > 0
    assert result.summary() == (0, 0, 0)  # no event buffer: nothing received


@needs_objects
@pytest.mark.kernel
def test_runqlat_json(start: Callable[..., Run]) -> None:
    args = [str(bpf_object("ecli/runqlat")), "--interval", "1", "--duration", "3", "--json"]
    run = start(args)
    run.wait_attached(links=3)
    _scheduling_activity(run)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    # runqlat's other maps (`start`, `pending`) are printed too: keep the histograms.
    rows = [row for row in result.json_lines() if row.get("map") == "hists"]
    assert len(rows) >= 2
    for row in rows:
        assert row["key"] == 2**32 - 1
        assert len(row["slots"]) == 26
    assert sum(rows[-1]["slots"]) > 0


# --- arrays (an event struct only in DWARF, with 128-255-element arrays) ----------------


@needs_objects
@pytest.mark.kernel
def test_arrays_of_128_to_255_elements(start: Callable[..., Run]) -> None:
    """char[130] and __u8[200] have a data1 DW_AT_count with the top bit set; they once
    decoded as "" and []."""
    me = os.getpid()
    args = [str(bpf_object("ecli/arrays")), "--duration", "3", "--json", "--target_pid", str(me)]
    run = start(args)
    run.wait_attached(links=1)
    assert os.getpgid(0) == os.getpgid(me)  # two getpgid() calls: two events
    result = run.finish()
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    fname = "".join(chr(ord("a") + i % 26) for i in range(130))  # all 130 bytes, no NUL
    assert result.json_lines() == [
        {"pid": me, "arg": arg, "fname": fname, "x": list(range(200)), "magic": 0xFEEDF00D}
        for arg in (0, me)
    ]
    assert result.summary() == (2, 0, 0)


HUGE_EVENT = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct event { __u32 pid; char huge[1UL << 40]; };  /* only in DWARF */

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} rb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpgid")
int handle(void *ctx)
{
    struct event *e = bpf_ringbuf_reserve(&rb, 8, 0);

    if (!e)
        return 0;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_ringbuf_submit(e, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_absurd_array_in_the_event(tmp_path: Path) -> None:
    """A 2^40-byte event type is one line of error, not an allocation or a traceback."""
    obj = compile_bpf(HUGE_EVENT, tmp_path)
    result = bpfloom_run(str(obj), "--duration", "1")
    one_error_line(result, f"struct event is {2**40 + 4} bytes", "at most")


# --- stopping with a signal -------------------------------------------------------------


def _readers_open(run: Run, readers: int) -> None:
    """Wait until bpfloom has opened its readers (each holds an eventfd to be woken
    with on close): then it is in its event loop."""
    deadline = time.monotonic() + TIMEOUT
    while _count_fds(run.proc.pid, "anon_inode:[eventfd]") < readers:
        if run.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"bpfloom never opened its reader:\n{run.stderr_now()}")
        time.sleep(0.01)


@needs_objects
@pytest.mark.kernel
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("name", ["ecli/exitsnoop", "ecli/execsnoop"])
@pytest.mark.parametrize("when", ["attached", "reading"])
def test_signal_stops_cleanly(
    start: Callable[..., Run], signum: signal.Signals, name: str, when: str
) -> None:
    """A signal once the programs are attached (tracing has begun: a user may press
    Ctrl-C), or once the event loop reads, ends bpfloom cleanly with its summary."""
    perf = name == "ecli/execsnoop"
    run = start([str(bpf_object(name)), "--json"])
    ids = run.wait_attached(links=1)
    assert ids["prog"] and ids["map"] and ids["link"]
    if when == "reading":
        run.wait_attached(links=1, perf_rings=len(online_cpus()) if perf else 0)
        _readers_open(run, 1)
        child = subprocess.Popen(["sh", "-c", "exit 3"], stdin=subprocess.DEVNULL)
        assert child.wait(timeout=TIMEOUT) == 3
    run.proc.send_signal(signum)
    result = run.finish()
    assert result.returncode == 0, (result.returncode, result.stderr)
    _no_traceback(result)
    events = result.json_lines()
    received, _, _ = result.summary()
    assert received == len(events)
    if when == "reading":
        # Stopping drains first: the child's event, recorded before the signal, is out.
        assert child.pid in {ev["pid"] for ev in events}
    assert_gone_from_kernel(ids)


# --- help -------------------------------------------------------------------------------


def _option_block(help_text: str, option: str) -> str:
    """The help of one option (its line and wrapped continuation lines), one line."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"  {option} ") or line.rstrip() == f"  {option}":
            block = [line]
            for more in lines[i + 1 :]:
                if not more.startswith("    ") or more.lstrip().startswith("-"):
                    break
                block.append(more)
            return " ".join(" ".join(block).split())
    raise AssertionError(f"{option} is not in the help:\n{help_text}")


@needs_objects
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "ecli/sigsnoop",
            {
                "--filtered_pid": ("pid_t", "0"),
                "--target_signal": ("int", "0"),
                "--failed_only": ("bool", None),  # a flag: off unless given
            },
        ),
        (
            "shapes",
            {
                "--g_s8": ("__s8", "-5"),
                "--g_u8": ("__u8", "250"),
                "--g_s16": ("__s16", "-300"),
                "--g_u16": ("__u16", "60000"),
                "--g_s32": ("__s32", "-70000"),
                "--g_u32": ("__u32", "4000000000"),
                "--g_s64": ("__s64", "-5000000000"),
                "--g_u64": ("__u64", "18000000000000000000"),
                "--g_bool": ("bool", None),
                "--g_str": ("char[16]", "default"),
                "--g_color": ("enum shape_color", "SHAPE_GREEN"),
                "--target_pid": ("int", "0"),
                "--data_value": ("__u64", str(0x1122334455667788)),
                "--emit_count": ("__u64", "0"),
                "--bpfloom_wakeup_flags": ("__u64", "0"),
            },
        ),
    ],
)
def test_help_lists_every_global(name: str, expected: dict[str, tuple[str, str | None]]) -> None:
    result = bpfloom_run(str(bpf_object(name)), "--help")
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    for option, (c_type, default) in expected.items():
        block = _option_block(result.stdout, option)
        assert f"global {c_type} in" in block, block
        if default is not None:
            assert f"[default: {default}]" in block, block
    options = set(re.findall(r"^  (--[\w-]+)", result.stdout, re.MULTILINE))
    globals_shown = {o for o in options if " global " in f" {_option_block(result.stdout, o)}"}
    assert globals_shown == set(expected)  # every global, and nothing else, as a global


# --- bad input --------------------------------------------------------------------------


def _usage_error(result: Result, option: str) -> None:
    """A bad option value: one error line naming the option and where help is."""
    line = one_error_line(result, option, "--help", status=2)
    assert "Usage:" not in line
    assert result.stdout == ""


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bpf.o"
    one_error_line(bpfloom_run(str(missing)), str(missing), "no such file")


def test_not_elf(tmp_path: Path) -> None:
    text = tmp_path / "notes.bpf.o"
    text.write_text("not an object\n")
    one_error_line(bpfloom_run(str(text)), "not an ELF file")


@needs_objects
@pytest.mark.parametrize("keep", [16, 1000, "half"])
def test_truncated_object(tmp_path: Path, keep: int | str) -> None:
    data = bpf_object("ecli/sigsnoop").read_bytes()
    cut = tmp_path / "cut.bpf.o"
    cut.write_bytes(data[: len(data) // 2 if keep == "half" else int(keep)])
    line = one_error_line(bpfloom_run(str(cut)), str(cut))
    assert "truncated" in line


def test_elf_for_another_machine() -> None:
    one_error_line(bpfloom_run("/bin/true"), "/bin/true", "not a BPF object")


@needs_objects
def test_object_without_programs() -> None:
    one_error_line(bpfloom_run(str(bpf_object("noprog"))), "no BPF programs")


@needs_objects
@pytest.mark.kernel
def test_verifier_rejection_quotes_the_log() -> None:
    result = bpfloom_run(str(bpf_object("bad_verifier")), "--duration", "1")
    assert result.returncode == 1
    _no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("bpfloom: error: the kernel refused to load")
    assert "verifier log" in result.stderr
    assert "R0 invalid mem access 'map_value_or_null'" in result.stderr
    assert SUMMARY.search(result.stderr) is None  # it never ran


@needs_objects
@pytest.mark.kernel
def test_kprobe_object_says_kprobes_are_missing() -> None:
    result = bpfloom_run(str(bpf_object("kprobe")), "--duration", "1")
    if _env.kprobes_available():  # another kernel: it runs, and stops after a second
        assert result.returncode == 0, result.stderr
        return
    line = one_error_line(result, "on_do_unlinkat", "kprobe")
    assert "no kprobes" in line and "tracepoint" in line


@needs_objects
def test_unknown_global_lists_the_valid_ones() -> None:
    result = bpfloom_run(str(bpf_object("ecli/sigsnoop")), "--no_such_global", "1")
    one_error_line(
        result, "--no_such_global", "--filtered_pid", "--target_signal", "--failed_only", status=2
    )


@needs_objects
@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--filtered_pid", "99999999999"], "--filtered_pid"),
        (["--target_signal", "SIGUSR1"], "--target_signal"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "0"], "--duration"),
        (["--interval", "soon"], "--interval"),
    ],
)
def test_bad_option_value(args: list[str], option: str) -> None:
    _usage_error(bpfloom_run(str(bpf_object("ecli/sigsnoop")), *args), option)


def test_no_object() -> None:
    one_error_line(bpfloom_run(), "missing OBJECT", status=2)


def test_run_help_without_object() -> None:
    result = bpfloom_run("--help")
    assert result.returncode == 0
    assert "OBJECT" in result.stdout and "--duration" in result.stdout
