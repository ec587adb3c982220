"""opensnoop on real processes: open, openat and openat2 with their flags and results,
failures, kernel-side filters (pid, tid, uid, name, failed), table and JSON output."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bpfloom.tools import opensnoop
from bpfloom.tools.opensnoop import OpenSnoop, syscall_tracepoints
from bpfloom.tools.syscalls import syscall_number
from toolrun import GatedChild, run_tool_cli

pytestmark = pytest.mark.kernel

Records = list[dict[str, Any]]
KEYS = {"event", "time", "pid", "tid", "uid", "comm", "fd", "err", "flags", "path"}
NOBODY = 65534
ENOENT, ENAMETOOLONG = 2, 36
SYS_OPEN = syscall_number("open")  # None where there is no open(2) (aarch64)
SYS_OPENAT = syscall_number("openat")
SYS_OPENAT2 = syscall_number("openat2")

# Child-side helpers: raw system calls with exact flags (os.open adds O_CLOEXEC) and
# open attempts that report the fd or -errno; `done` collects them for the test.
OPENS = f"""
libc.syscall.restype = ctypes.c_long
class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]
def raw(nr, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = libc.syscall(ctypes.c_long(nr), *args)
    return ret if ret >= 0 else -ctypes.get_errno()
def sys_open(path, flags, mode=0o600):
    return raw({SYS_OPEN}, path.encode(), flags, mode)
def sys_openat(path, flags, mode=0o600):
    return raw({SYS_OPENAT}, -100, path.encode(), flags, mode)
def sys_openat2(path, flags, mode=0o600):
    how = OpenHow(flags, mode, 0)
    return raw({SYS_OPENAT2}, -100, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
def py_open(path, flags, mode=0o600):
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        return -exc.errno
done = {{}}
"""
REPORT = "print(json.dumps(done))\n"


def _path(base: Path | str, name: str) -> str:
    return f"{base}/bpfloom-opensnoop-{name}-{uuid.uuid4().hex[:8]}"


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _by_path(records: Records, path: str) -> dict[str, Any]:
    found = [r for r in records if r["path"] == path]
    assert len(found) == 1, f"{path}: {found} in {records}"
    return found[0]


def _read_until(tool: OpenSnoop, path: str) -> Records:
    records: Records = []
    deadline = time.monotonic() + 30
    while path not in {r["path"] for r in records} and time.monotonic() < deadline:
        records.extend(tool.read(timeout=0.2))
    return records


def test_this_kernel_has_every_open_tracepoint() -> None:
    expected = ["openat", "openat2"] if SYS_OPEN is None else ["open", "openat", "openat2"]
    assert syscall_tracepoints() == expected


def test_cli_json_open_openat_openat2(start_tool: Any, gated_child: Any, tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_text("x")
    paths = {
        "existing": str(existing),
        "missing": _path(tmp_path, "missing"),
        "created": _path(tmp_path, "created"),
        "openat": _path(tmp_path, "openat"),
        "openat2": _path(tmp_path, "openat2"),
        "open": _path(tmp_path, "open"),
    }
    p = {k: repr(v) for k, v in paths.items()}
    legacy = f"done['open'] = sys_open({p['open']}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
    child = gated_child(
        OPENS
        + f"done['existing'] = py_open({p['existing']}, os.O_RDONLY)\n"
        + f"done['missing'] = py_open({p['missing']}, os.O_RDONLY)\n"
        + f"done['created'] = py_open({p['created']}, os.O_WRONLY | os.O_CREAT)\n"
        + f"done['openat'] = sys_openat({p['openat']}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
        + f"done['openat2'] = sys_openat2({p['openat2']}, os.O_RDWR | os.O_CREAT | os.O_EXCL)\n"
        + (legacy if SYS_OPEN is not None else "")
        + REPORT
    )
    run = start_tool("opensnoop", "--json", "-p", str(child.pid))
    comm = _comm(child.pid)
    done = json.loads(child.finish())
    last = "open" if SYS_OPEN is not None else "openat2"
    run.wait_output(json.dumps(paths[last]))
    result = run.stop()
    assert result.returncode == 0, result.stderr
    records = result.json_lines()

    for r in records:
        assert set(r) == KEYS
        assert (r["event"], r["pid"], r["tid"], r["uid"], r["comm"]) == (
            "open",
            child.pid,
            child.pid,
            0,
            comm,
        )
        assert abs(r["time"] - time.time()) < 60
    for name, ret in done.items():
        r = _by_path(records, paths[name])
        assert (r["fd"], r["err"]) == ((ret, 0) if ret >= 0 else (-1, -ret)), name
    assert done["existing"] >= 0 and done["missing"] == -ENOENT
    assert _by_path(records, paths["missing"])["err"] == ENOENT
    # os.open (openat) adds O_CLOEXEC; the raw calls pass their flags as they are.
    flags = {name: _by_path(records, paths[name])["flags"] for name in done}
    assert flags["existing"] & os.O_ACCMODE == os.O_RDONLY
    assert flags["existing"] & os.O_CLOEXEC
    assert flags["created"] & (os.O_WRONLY | os.O_CREAT) == os.O_WRONLY | os.O_CREAT
    assert flags["openat"] == os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert flags["openat2"] == os.O_RDWR | os.O_CREAT | os.O_EXCL  # from struct open_how
    if SYS_OPEN is not None:
        assert flags["open"] == os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    events, kernel, user = result.lost()
    assert events >= len(done) and (kernel, user) == (0, 0)


def test_cli_failed_only(start_tool: Any, gated_child: Any, tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_text("x")
    missing, last = _path(tmp_path, "missing"), _path(tmp_path, "last")
    child = gated_child(
        OPENS
        + f"done['ok'] = py_open({str(existing)!r}, os.O_RDONLY)\n"
        + f"py_open({missing!r}, os.O_RDONLY)\n"
        + f"py_open({str(tmp_path)!r}, os.O_WRONLY)\n"  # EISDIR
        + f"py_open({last!r}, os.O_RDONLY)\n"
        + REPORT
    )
    run = start_tool("opensnoop", "--json", "-x", "-p", str(child.pid))
    assert json.loads(child.finish())["ok"] >= 0
    run.wait_output(json.dumps(last))
    records = run.stop().json_lines()
    assert [(r["path"], r["err"]) for r in records] == [
        (missing, ENOENT),
        (str(tmp_path), 21),
        (last, ENOENT),
    ]
    assert all(r["fd"] == -1 for r in records)


def test_cli_name_filter_is_a_substring(start_tool: Any, gated_child: Any) -> None:
    other_path, named_path = _path("/tmp", "other"), _path("/tmp", "named")
    other = gated_child(OPENS + f"py_open({other_path!r}, os.O_RDONLY)\n")
    named = gated_child(OPENS + f"py_open({named_path!r}, os.O_RDONLY)\n", comm="opensnoop_tst1")
    run = start_tool("opensnoop", "--json", "-n", "snoop_ts")
    other.finish()  # first: had the filter failed, its open would be printed first
    named.finish()
    run.wait_output(json.dumps(named_path))
    records = run.stop().json_lines()
    assert _by_path(records, named_path)["pid"] == named.pid
    assert other_path not in {r["path"] for r in records}
    assert all("snoop_ts" in r["comm"] for r in records)


def test_cli_uid_filter(start_tool: Any, gated_child: Any) -> None:
    root_path, nobody_path = _path("/tmp", "root"), _path("/tmp", "nobody")
    root = gated_child(OPENS + f"py_open({root_path!r}, os.O_RDONLY)\n")
    nobody = gated_child(OPENS + f"py_open({nobody_path!r}, os.O_RDONLY)\n", user=NOBODY)
    run = start_tool("opensnoop", "--json", "-u", str(NOBODY))
    root.finish()
    nobody.finish()
    run.wait_output(json.dumps(nobody_path))
    records = run.stop().json_lines()
    r = _by_path(records, nobody_path)
    assert (r["pid"], r["uid"], r["err"]) == (nobody.pid, NOBODY, ENOENT)
    assert root_path not in {r["path"] for r in records}
    assert all(r["uid"] == NOBODY for r in records)


def test_cli_table_with_time_uid_and_flags(
    start_tool: Any, gated_child: Any, tmp_path: Path
) -> None:
    created, missing = _path(tmp_path, "created"), _path(tmp_path, "missing")
    forged = _path(tmp_path, "forged") + "\nfake-row"  # a newline must not start a row
    child = gated_child(
        OPENS
        + f"sys_openat({forged!r}, os.O_RDONLY)\n"
        + f"done['created'] = sys_openat({created!r}, os.O_WRONLY | os.O_CREAT)\n"
        + f"done['missing'] = sys_openat({missing!r}, os.O_RDONLY)\n"
        + REPORT
    )
    run = start_tool("opensnoop", "-T", "-U", "-e", "-p", str(child.pid))
    comm = _comm(child.pid)
    fd = json.loads(child.finish())["created"]
    run.wait_output(missing)
    lines = run.stop().stdout.splitlines()
    assert lines[0].split() == ["TIME", "UID", "PID", "COMM", "FD", "ERR", "FLAGS", "PATH"]
    rows = {line.split()[-1]: line.split() for line in lines[1:]}
    assert re.fullmatch(r"\d\d:\d\d:\d\d", rows[created][0])
    assert rows[created][1:] == ["0", str(child.pid), comm, str(fd), "0", "00000101", created]
    assert rows[missing][1:] == ["0", str(child.pid), comm, "-1", "2", "00000000", missing]
    assert rows[forged.replace("\n", "\\n")][4:6] == ["-1", "2"]
    assert not any(line.startswith("fake-row") for line in lines)


def test_library_reads_records_and_marks_cut_paths(gated_child: Any) -> None:
    long_path = "/tmp/" + "a" * 300  # longer than the 255 bytes copied
    exact_path = "/tmp/" + "b" * 250  # exactly 255 bytes: not cut
    child = gated_child(
        OPENS
        + f"done['long'] = py_open({long_path!r}, os.O_RDONLY)\n"
        + f"done['exact'] = py_open({exact_path!r}, os.O_RDONLY)\n"
        + REPORT
    )
    with OpenSnoop(pid=child.pid) as tool:
        tool.attach()
        done = json.loads(child.finish())
        records = _read_until(tool, exact_path)
    assert done == {"long": -ENAMETOOLONG, "exact": -ENOENT}
    cut = _by_path(records, long_path[:255] + "...")
    assert (cut["err"], cut["fd"], cut["pid"]) == (ENAMETOOLONG, -1, child.pid)
    assert _by_path(records, exact_path)["err"] == ENOENT
    assert all(set(r) == KEYS and r["pid"] == child.pid for r in records)


def test_library_thread_filter(gated_child: Any) -> None:
    main_path, thread_path = _path("/tmp", "main"), _path("/tmp", "thread")
    child: GatedChild = gated_child(
        OPENS
        + "import threading\n"
        + "go_on = threading.Event()\n"
        + "def work():\n"
        + "    go_on.wait()\n"
        + f"    py_open({thread_path!r}, os.O_RDONLY)\n"
        + "t = threading.Thread(target=work)\n"
        + "t.start()\n"
        + "print(t.native_id, flush=True)\n"
        + "gate()\n"
        + f"py_open({main_path!r}, os.O_RDONLY)\n"  # the main thread first
        + "go_on.set()\n"
        + "t.join()\n"
    )
    child.go()
    assert child.proc.stdout is not None
    tid = int(child.proc.stdout.readline())
    with OpenSnoop(tid=tid) as tool:
        tool.attach()
        child.finish()
        records = _read_until(tool, thread_path)
    r = _by_path(records, thread_path)
    assert (r["pid"], r["tid"]) == (child.pid, tid)
    assert all(r["tid"] == tid for r in records)


def test_missing_tracepoints_are_not_loaded(
    monkeypatch: pytest.MonkeyPatch, gated_child: Any, tmp_path: Path
) -> None:
    """As on arm64, where there is no open(2): its programs are not loaded, the rest
    traces. (The tracefs check is replaced; the kernel part is real.)"""
    if SYS_OPEN is None:
        pytest.skip("this architecture has no open(2) to leave out")
    monkeypatch.setattr(opensnoop, "syscall_tracepoints", lambda: ["openat", "openat2"])
    legacy, modern = _path(tmp_path, "legacy"), _path(tmp_path, "modern")
    child = gated_child(
        OPENS + f"sys_open({legacy!r}, os.O_RDONLY)\n" + f"sys_openat({modern!r}, os.O_RDONLY)\n"
    )
    with OpenSnoop(pid=child.pid) as tool:
        assert not tool.obj.programs["enter_open"].autoload
        assert not tool.obj.programs["exit_open"].autoload
        tool.attach()
        child.finish()
        records = _read_until(tool, modern)
    assert _by_path(records, modern)["pid"] == child.pid
    assert legacy not in {r["path"] for r in records}  # opened first: it would be here


def test_library_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="15 bytes"):
        OpenSnoop(comm="a-very-long-command-name")
    with pytest.raises(ValueError, match="uid"):
        OpenSnoop(uid=-1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "abc"], "'abc' is not a valid integer"),
        (["-p", "0"], "0 is not in the range"),
        (["-t", "-5"], "-5 is not in the range"),
        (["-u", "-1"], "-1 is not in the range"),
        (["-n", "a-very-long-command-name"], "at most 15 bytes"),
        (["--duration", "0"], "0 is not in the range"),
        (["--bogus"], "No such option"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    result = run_tool_cli("opensnoop", *args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
