"""execsnoop on real execs: argv, parent, result, uid, truncation, kernel filters, CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpfloom.tools.cgroups import cgroup2_mount
from bpfloom.tools.execsnoop import ExecSnoop, cgroup_dir, format_args
from toolrun import run_tool_cli

pytestmark = pytest.mark.kernel

Records = list[dict[str, Any]]
KEYS = {
    "event", "time", "pid", "ppid", "uid", "comm", "pcomm", "parent_comm", "path", "args",
    "args_truncated", "ret", "cgroup",
}  # fmt: skip
NOBODY = 65534
MISSING = "/nonexistent/bpfloom-execsnoop-test"


def _marker() -> str:
    return f"mark-{uuid.uuid4().hex[:12]}"


def _my_comm() -> str:
    return Path("/proc/self/comm").read_text().strip()


def _my_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    pytest.fail("this process is in no cgroup v2")


def _with(records: Records, marker: str) -> Records:
    return [r for r in records if marker in r["args"]]


def _one(records: Records, marker: str) -> dict[str, Any]:
    found = _with(records, marker)
    assert len(found) == 1, f"{marker}: {found}"
    return found[0]


def _read_until(tool: ExecSnoop, markers: set[str]) -> Records:
    """Records until one carries each marker (bounded: fails rather than hangs)."""
    records: Records = []
    deadline = time.monotonic() + 20
    while any(not _with(records, m) for m in markers) and time.monotonic() < deadline:
        records.extend(tool.read(timeout=0.2))
    return records


def _run(argv: list[str]) -> subprocess.Popen[bytes]:
    """Spawn ``argv`` (no shell, output discarded) and wait for it to end."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.wait()
    return child


# --- library API --------------------------------------------------------------------


def test_library_reports_argv_parent_and_result() -> None:
    mark = _marker()
    argv = ["/bin/echo", mark, "with space", 'a "quote"', "", "ünïcödé", "x" * 127, "tab\there"]
    many = ["/bin/echo", _marker(), *map(str, range(30))]
    cut = ["/bin/echo", _marker(), "y" * 300]
    with ExecSnoop(include_failed=True) as tool:
        tool.attach()
        echo = _run(argv)
        failed = _run(["sh", "-c", f"exec {MISSING} {mark}-failed"])
        long = _run(many)
        cut_child = _run(cut)
        records = _read_until(tool, {mark, f"{mark}-failed", many[1], cut[1]})

    me, my_comm, my_cgroup = os.getpid(), _my_comm(), _my_cgroup()
    r = _one(records, mark)
    assert set(r) == KEYS
    assert r["args"] == argv and r["args_truncated"] is False
    assert (r["event"], r["path"], r["comm"], r["ret"], r["uid"]) == ("exec", argv[0], "echo", 0, 0)
    assert (r["pid"], r["ppid"], r["parent_comm"]) == (echo.pid, me, my_comm)
    assert r["cgroup"] == my_cgroup
    assert abs(r["time"] - time.time()) < 60

    # sh tried to exec a missing file: the caller's name stays, RET is -ENOENT.
    r = _one(records, f"{mark}-failed")
    assert r["args"] == [MISSING, f"{mark}-failed"] and r["path"] == MISSING
    assert (r["ret"], r["comm"], r["pid"]) == (-2, "sh", failed.pid)
    assert (r["ppid"], r["parent_comm"]) == (me, my_comm)

    # Default --max-args: 20 argv entries, then marked as cut.
    r = _one(records, many[1])
    assert r["args"] == many[:20] and r["args_truncated"] is True and r["pid"] == long.pid
    # An argument longer than 127 bytes is cut to 127.
    r = _one(records, cut[1])
    assert r["args"] == [*cut[:2], "y" * 127] and r["args_truncated"] is True
    assert r["pid"] == cut_child.pid


def test_failed_execs_are_left_out_by_default() -> None:
    mark = _marker()
    with ExecSnoop() as tool:
        tool.attach()
        _run(["sh", "-c", f"exec {MISSING} {mark}"])
        _run(["/bin/echo", f"{mark}-after"])  # its record comes after the failure's
        records = _read_until(tool, {f"{mark}-after"})
    assert not _with(records, mark)
    assert all(r["ret"] == 0 for r in records)


def test_max_args_60_full_records() -> None:
    # 60 slots of 127-byte arguments: the largest record; 61 entries are cut to 60.
    full = ["/bin/echo", _marker(), *(f"{i:02d}" + "z" * 125 for i in range(58))]
    over = ["/bin/echo", _marker(), *map(str, range(59))]
    assert len(full) == 60 and len(over) == 61
    with ExecSnoop(max_args=60) as tool:
        tool.attach()
        _run(full)
        _run(over)
        records = _read_until(tool, {full[1], over[1]})
    r = _one(records, full[1])
    assert r["args"] == full and r["args_truncated"] is False
    r = _one(records, over[1])
    assert r["args"] == over[:60] and r["args_truncated"] is True


def test_exec_from_a_thread_and_execveat() -> None:
    # A non-leader thread's exec takes over the process id (its thread id changes);
    # the entry kept for it must follow, or the exec is lost and the entry leaks.
    # fexecve() is execveat(fd, "", argv, envp, AT_EMPTY_PATH).
    thread_mark, fd_mark = _marker(), _marker()
    from_thread = (
        "import os, threading\n"
        "def run():\n"
        "    print(threading.get_native_id(), flush=True)\n"
        "    os.execv('/bin/echo', ['echo', os.environ['MARK']])\n"
        "threading.Thread(target=run).start()\n"
    )
    from_fd = (
        "import os\n"
        "os.execve(os.open('/bin/echo', os.O_RDONLY), ['echo', os.environ['MARK']], {})\n"
    )
    with ExecSnoop() as tool:
        tool.attach()
        # The markers go by environment, so that only the exec'd echo has them in argv.
        threaded = subprocess.Popen(
            [sys.executable, "-c", from_thread],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "MARK": thread_mark},
        )
        out, _ = threaded.communicate()
        by_fd = subprocess.Popen(
            [sys.executable, "-c", from_fd], env={**os.environ, "MARK": fd_mark}
        )
        by_fd.wait()
        records = _read_until(tool, {thread_mark, fd_mark})
        old_tid = int(out.split()[0])
        assert old_tid != threaded.pid
        assert tool.obj.maps["execs"].lookup(old_tid) is None
    r = _one(records, thread_mark)
    assert (r["pid"], r["comm"], r["args"]) == (threaded.pid, "echo", ["echo", thread_mark])
    assert out.split()[1] == thread_mark  # what the exec'd echo printed
    r = _one(records, fd_mark)
    assert (r["pid"], r["path"], r["args"], r["ret"]) == (by_fd.pid, "", ["echo", fd_mark], 0)


def test_bad_arguments_raise_before_loading() -> None:
    with pytest.raises(ValueError, match="max_args"):
        ExecSnoop(max_args=0)
    with pytest.raises(ValueError, match="15 bytes"):
        ExecSnoop(comm="x" * 16)


# --- cgroup filter ------------------------------------------------------------------


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh cgroup v2 directory, removed afterwards (its processes moved out)."""
    mount = cgroup2_mount()
    assert mount is not None, "no cgroup2 mount"
    path = Path(mount) / f"bpfloom-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            (Path(mount) / "cgroup.procs").write_text(pid)
        path.rmdir()


def test_cgroup_dir_accepts_full_and_record_paths(cgroup: Path) -> None:
    mount = cgroup2_mount()
    assert cgroup_dir(str(cgroup)) == str(cgroup)
    assert cgroup_dir("/" + cgroup.name) == os.path.join(str(mount), cgroup.name)


def test_cli_cgroup_filter(start_tool: Any, cgroup: Path) -> None:
    mark = _marker()
    run = start_tool("execsnoop", "--json", "-c", str(cgroup))
    _run(["/bin/echo", f"{mark}-outside"])
    inside = _run(["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec /bin/echo "$0"', mark])
    assert inside.returncode == 0
    run.wait_output(mark)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    records = result.json_lines()
    assert len(records) == 1, records
    r = records[0]
    assert (r["pid"], r["args"], r["comm"]) == (inside.pid, ["/bin/echo", mark], "echo")
    assert r["cgroup"] == "/" + cgroup.name


# --- CLI ----------------------------------------------------------------------------


def test_cli_json_failures_uid_and_name_filters(start_tool: Any) -> None:
    mark = _marker()
    run = start_tool("execsnoop", "--json", "-x", "-u", str(NOBODY), "-n", "ru")
    _run(["/bin/true", f"{mark}-root"])  # another uid
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    _run([*as_nobody, "/bin/echo", f"{mark}-echo"])  # another name
    _run([*as_nobody, "sh", "-c", f"exec {MISSING} {mark}-failed"])  # comm "sh": no "ru"
    nobody = _run([*as_nobody, "/bin/true", mark])
    run.wait_output(f'"{mark}"')
    result = run.stop()
    assert result.returncode == 0, result.stderr
    records = result.json_lines()
    r = _one(records, mark)
    assert set(r) == KEYS
    assert (r["uid"], r["pid"], r["ppid"], r["comm"], r["parent_comm"]) == (
        NOBODY, nobody.pid, os.getpid(), "true", _my_comm()
    )  # fmt: skip
    assert r["args"] == ["/bin/true", mark] and r["ret"] == 0
    for other in ("-root", "-echo", "-failed"):
        assert not _with(records, mark + other)
    assert all(r["uid"] == NOBODY and "ru" in r["comm"] for r in records)
    events, kernel, user = result.lost()
    assert events == len(records) and (kernel, user) == (0, 0)


def test_cli_json_includes_failures_with_x(start_tool: Any) -> None:
    mark = _marker()
    run = start_tool("execsnoop", "--json", "-x", "-n", "sh")
    sh = _run(["sh", "-c", f"exec {MISSING} {mark}"])
    run.wait_output(f"{MISSING}")
    result = run.stop()
    r = _one(result.json_lines(), mark)
    assert (r["ret"], r["pid"], r["path"], r["comm"]) == (-2, sh.pid, MISSING, "sh")


def test_cli_table(start_tool: Any) -> None:
    mark = _marker()
    run = start_tool("execsnoop", "-T", "-U", "-q", "--max-args", "4")
    child = _run(["/bin/echo", mark, 'say "hi"', "two words", "cut off"])
    run.wait_output(mark)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "UID", "PCOMM", "PID", "PPID", "RET", "ARGS"]
    rows = [line.split(None, 6) for line in lines[1:] if mark in line]
    assert len(rows) == 1, lines
    when, uid, pcomm, pid, ppid, ret, args = rows[0]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", when)
    assert (uid, pcomm, pid, ppid, ret) == ("0", "echo", str(child.pid), str(os.getpid()), "0")
    assert args == f'"/bin/echo" "{mark}" "say \\"hi\\"" "two words" ...'


def test_format_args() -> None:
    assert format_args(["a", "b c"], False) == "a b c"
    assert format_args(["a", "b\nc"], True) == "a b\nc ..."  # the printer escapes cells
    assert format_args(['x"y'], False, quote=True) == '"x\\"y"'


def test_cli_duration_ends_the_run() -> None:
    result = run_tool_cli("execsnoop", "--duration", "0.5", "-u", str(NOBODY), "-n", "nothing")
    assert result.returncode == 0, result.stderr
    assert result.lost()[1:] == (0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-u", "abc"], "'abc' is not a valid integer"),
        (["--max-args", "0"], "0 is not in the range"),
        (["--max-args", "61"], "61 is not in the range"),
        (["-n", "a-very-long-command-name"], "at most 15 bytes"),
        (["-c", "/nonexistent/cgroup"], "bpfloom: error: cgroup '/nonexistent/cgroup': no such"),
        (["-c", "/proc"], "bpfloom: error: cgroup '/proc': not a cgroup v2 directory"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    result = run_tool_cli("execsnoop", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if message.startswith("bpfloom: error:"):
        assert len(result.stderr.splitlines()) == 1, result.stderr
