"""biolatency on real block I/O: a loop device the test makes over a file in its tmp
directory, written with O_DIRECT (one request per write: each write waits for its own
completion, so none can merge) and flushed with one fsync. Nothing else uses that
device, so its counts are exact: N writes and one flush (blkdev_fsync issues one
empty pre-flush, which the loop driver, with a write cache, turns into one request).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpfloom.tools.biolatency import BioLatency, disk_dev, disk_name, flags_name
from toolrun import TIMEOUT, run_tool_cli

WRITES = 40
BLOCK = 4096
HIST_KEYS = {"interval", "time", "unit", "slots", "count"}
BAR = re.compile(r"^ +\d+ -> \d+ +: \d+ +\|[* ]{40}\|$")


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[str]:
    """A loop device over a 16 MiB file in tmp_path: its name (``loop3``)."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    device = ""
    for _ in range(5):  # another process may take the free device first
        proc = subprocess.run(
            ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            device = proc.stdout.strip()
            break
        time.sleep(0.1)
    if not device:
        pytest.fail(f"losetup failed: {proc.stderr}")
    try:
        yield os.path.basename(device)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def direct_writes(disk: str, count: int, *, offset: int = 0) -> None:
    """``count`` O_DIRECT writes of one block each to /dev/DISK, then one fsync."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(b"b" * BLOCK)
    fd = os.open(f"/dev/{disk}", os.O_WRONLY | os.O_DIRECT)
    try:
        for i in range(count):
            assert os.pwrite(fd, buf, (offset + i) * BLOCK) == BLOCK
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def ours(rows: list[dict[str, Any]], disk: str) -> dict[str, dict[str, Any]]:
    """The rows of ``disk`` by flags (one each)."""
    mine = [r for r in rows if r["disk"] == disk]
    by_flags = {r["flags"]: r for r in mine}
    assert len(by_flags) == len(mine), mine
    return by_flags


@pytest.mark.kernel
def test_cli_per_disk_and_flags(start_tool: Any, loop_disk: str) -> None:
    run = start_tool("biolatency", "--json", "-D", "-F")
    direct_writes(loop_disk, WRITES)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    rows = result.json_lines()
    assert all(set(r) == HIST_KEYS | {"disk", "flags"} for r in rows)
    mine = ours(rows, loop_disk)
    # O_DIRECT writes are synchronous and idle-class (REQ_SYNC | REQ_IDLE); the fsync's
    # flush is a pre-flush.
    assert {flags: r["count"] for flags, r in mine.items()} == {
        "Idle-Sync-Write": WRITES,
        "PreFlush-Flush": 1,
    }
    for row in mine.values():
        assert row["unit"] == "usecs" and len(row["slots"]) == 27
        assert row["count"] == sum(row["slots"])
    summary = re.search(
        r"^bpfloom biolatency: (\d+) I/O requests counted in the kernel; "
        r"0 not counted \(map full\)$",
        result.stderr,
        re.MULTILINE,
    )
    assert summary is not None and int(summary[1]) == sum(r["count"] for r in rows)


@pytest.mark.kernel
@pytest.mark.parametrize("queued", [False, True])
def test_cli_one_disk(start_tool: Any, loop_disk: str, queued: bool) -> None:
    if queued:
        # With an I/O scheduler requests are inserted into its queue: -Q times them
        # from there. The flush bypasses the scheduler (never inserted), and with -Q
        # and a scheduler issue times are not taken: only the writes are measured.
        Path(f"/sys/block/{loop_disk}/queue/scheduler").write_text("mq-deadline")
    args = ["-Q"] if queued else []
    run = start_tool("biolatency", "--json", "-d", loop_disk, "-D", "-F", *args)
    direct_writes(loop_disk, WRITES)
    rows = run.stop().json_lines()
    assert {r["disk"] for r in rows} == {loop_disk}  # -d: nothing of other disks
    counts = {flags: r["count"] for flags, r in ours(rows, loop_disk).items()}
    if queued:
        assert counts == {"Idle-Sync-Write": WRITES}
    else:
        assert counts == {"Idle-Sync-Write": WRITES, "PreFlush-Flush": 1}


@pytest.mark.kernel
def test_cli_text_in_milliseconds(start_tool: Any, loop_disk: str) -> None:
    run = start_tool("biolatency", "-m", "-T", "-D", "-d", loop_disk)
    direct_writes(loop_disk, WRITES)
    lines = run.stop().stdout.splitlines()
    # libbpf-tools' layout: a blank line, the time, a blank line, "disk = NAME", bars.
    assert lines[0] == "" and re.fullmatch(r"\d\d:\d\d:\d\d", lines[1])
    assert lines[2:5] == [
        "",
        f"disk = {loop_disk}",
        "     msecs               : count    distribution",
    ]
    counts = [int(line.split(":")[1].split()[0]) for line in lines[5:]]
    assert all(BAR.match(line) for line in lines[5:]) and sum(counts) == WRITES + 1


@pytest.mark.kernel
def test_cli_intervals(start_tool: Any, loop_disk: str) -> None:
    run = start_tool("biolatency", "--json", "-d", loop_disk, "0.2")
    direct_writes(loop_disk, WRITES)
    run.wait_output('"interval": ')
    direct_writes(loop_disk, WRITES, offset=WRITES)
    deadline = time.monotonic() + TIMEOUT
    while sum(json.loads(line)["count"] for line in run.stdout_now().splitlines()) < 2 * (
        WRITES + 1
    ):
        assert time.monotonic() < deadline, run.stdout_now()
        time.sleep(0.05)
    rows = run.stop().json_lines()
    # Every request in exactly one interval: none lost, none twice.
    assert sum(r["count"] for r in rows) == 2 * (WRITES + 1)
    assert len({r["interval"] for r in rows}) >= 2
    assert all(set(r) == HIST_KEYS for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "nosuchdisk0"], "no disk 'nosuchdisk0'"),
        (["-d", "../etc"], "is not a disk name"),
        (["0"], "0 is not in the range"),
        (["1", "-5"], "No such option"),
        (["--bogus"], "No such option"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    result = run_tool_cli("biolatency", *args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpfloom: error: "), result.stderr
    assert message in lines[0]


# --- the library ----------------------------------------------------------------------


@pytest.mark.kernel
def test_library_histograms(loop_disk: str) -> None:
    with BioLatency(per_disk=True, disk=loop_disk) as tool:
        tool.attach()
        direct_writes(loop_disk, WRITES)
        rows = tool.histograms()
        assert [(r["disk"], r["unit"], r["count"]) for r in rows] == [
            (loop_disk, "usecs", WRITES + 1)
        ]
        assert tool.histograms() == []
        assert tool.counted == WRITES + 1


def test_library_names(loop_disk: str) -> None:
    assert flags_name(1) == "Write"
    assert flags_name((1 << 18) | (1 << 14) | 1) == "Idle-Sync-Write"
    assert flags_name((1 << 11) | 2) == "PreFlush-Flush"
    assert flags_name((1 << 10) | 0) == "ReadAhead-Read"
    assert flags_name(200) == "Unknown"
    major, minor = Path(f"/sys/block/{loop_disk}/dev").read_text().split(":")
    dev = disk_dev(loop_disk)
    assert disk_name(dev) == loop_disk and dev == (int(major) << 20) | int(minor)
    assert disk_name((4095 << 20) | 12345) == "4095:12345"
    with pytest.raises(ValueError, match="no disk"):
        BioLatency(disk="nosuchdisk0")
