"""hardirqs and softirqs on real interrupts the tests cause: O_DIRECT reads of a file
on the disk under the test's tmp directory (the disk's completion interrupts), and
pings across a veth pair into a network namespace the test makes (NET_RX softirqs).

Interrupts are system-wide and other work on the machine raises them too, so exact
counts are impossible; the bounds are exact ones, though. The kernel counts every
interrupt it handles in /proc/interrupts and every softirq it runs in /proc/softirqs,
at the same points as the tracepoints: read before the tool starts and after it stops,
they bound what the tool can have counted from above (per CPU too, for ``-s``/``-c``).
From below: each O_DIRECT read completes through the disk's interrupt (no polling
queues here), so there is at least one; each ping's echo request arrives through
the veth's receive path, one NET_RX softirq run each at least (the 50 ms between
pings leaves nothing to batch).
"""

from __future__ import annotations

import mmap
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpfloom.tools.hardirqs import HardIrqs
from bpfloom.tools.softirqs import VECTORS, SoftIrqs
from toolrun import run_tool_cli

BLOCK = 4096
READS = 50
PINGS = 20
HIST_KEYS = {"interval", "time", "unit", "slots", "count"}


# --- what the kernel says ---------------------------------------------------------------


def proc_interrupts() -> dict[str, list[int]]:
    """Per-CPU counts of every device interrupt handler in /proc/interrupts, by the
    handler's name (the last column)."""
    lines = Path("/proc/interrupts").read_text().splitlines()
    cpus = len(lines[0].split())
    out: dict[str, list[int]] = {}
    for line in lines[1:]:
        fields = line.split()
        if not fields[0].rstrip(":").isdigit() or len(fields) < cpus + 2:
            continue
        # Handlers sharing a name are summed, as the tool's key (the name) sums them.
        counts = [int(n) for n in fields[1 : cpus + 1]]
        out[fields[-1]] = [
            a + b for a, b in zip(out.get(fields[-1], [0] * cpus), counts, strict=True)
        ]
    return out


def proc_softirqs() -> dict[str, list[int]]:
    """Per-CPU counts of every softirq vector in /proc/softirqs, by libbpf-tools' name."""
    out = {}
    for line in Path("/proc/softirqs").read_text().splitlines()[1:]:
        name, *counts = line.split()
        out[name.rstrip(":").lower()] = [int(n) for n in counts]
    return out


def grown(before: list[int], after: list[int], cpu: int | None) -> int:
    if cpu is not None:
        return after[cpu] - before[cpu]
    return sum(after) - sum(before)


def disk_irqs(path: Path) -> list[str]:
    """The interrupt handlers of the virtio disk holding ``path`` (``virtio1-req.0``)."""
    dev = os.stat(path).st_dev
    block = Path(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
    disk = block.parent if (block / "partition").exists() else block
    device = os.path.basename(os.path.realpath(disk / "device"))
    names = [name for name in proc_interrupts() if name.startswith(f"{device}-")]
    if not names:
        pytest.skip(f"the disk of {path} ({disk.name}) raises no interrupts of its own")
    return names


def direct_reads(path: Path, count: int) -> None:
    """``count`` O_DIRECT reads of one block each (the page cache is bypassed)."""
    buf = mmap.mmap(-1, BLOCK)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for i in range(count):
            assert os.preadv(fd, [buf], (i % 64) * BLOCK) == BLOCK
    finally:
        os.close(fd)
        buf.close()


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(64 * BLOCK))
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return path


# --- the veth pair (as tests/test_net_attach.py's) -------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def veth() -> Iterator[str]:
    """A veth pair with its far end in a new namespace: the namespace's name; the
    local end is 10.249.0.1, the far end 10.249.0.2."""
    tag = f"{os.getpid() % 100000}"
    ns, local, peer = f"bpfloom-irq-{tag}", f"bfi{tag}a", f"bfi{tag}b"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", local, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("addr", "add", "10.249.0.1/30", "dev", local)
        _ip("link", "set", local, "up")
        _ip("-n", ns, "addr", "add", "10.249.0.2/30", "dev", peer)
        _ip("-n", ns, "link", "set", peer, "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", local], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def ping_from(ns: str, count: int, cpu: int | None = None) -> None:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    ping = ["ping", "-c", str(count), "-i", "0.05", "-W", "2", "10.249.0.1"]
    subprocess.run([*pin, "ip", "netns", "exec", ns, *ping], check=True, capture_output=True)


# --- hardirqs -----------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("cpu", [None, 0, 1])
def test_hardirqs_counts_disk_interrupts(start_tool: Any, data_file: Path, cpu: int | None) -> None:
    if cpu is not None and cpu >= (os.cpu_count() or 1):
        pytest.skip(f"no CPU {cpu}")
    names = disk_irqs(data_file)
    cpu_args = [] if cpu is None else ["-s", str(cpu)]
    before = proc_interrupts()
    run = start_tool("hardirqs", "--json", "-C", *cpu_args)
    direct_reads(data_file, READS)
    result = run.stop()
    after = proc_interrupts()
    assert result.returncode == 0, result.stderr
    rows = {r["hardirq"]: r for r in result.json_lines()}
    assert all(
        set(r) == {"interval", "time", "hardirq", "total_count", "total_usecs"}
        for r in rows.values()
    )
    for name, row in rows.items():
        if name in before and name in after:  # (not a second handler of a shared line)
            assert 1 <= row["total_count"] <= grown(before[name], after[name], cpu), name
    disk = sum(rows[name]["total_count"] for name in names if name in rows)
    assert disk <= sum(grown(before[n], after[n], cpu) for n in names)
    if cpu is None:
        assert disk >= 1  # the reads completed through the disk's interrupt
    summary = re.search(
        r"^bpfloom hardirqs: (\d+) interrupts counted in the kernel; "
        r"0 not counted \(map full\)$",
        result.stderr,
        re.MULTILINE,
    )
    assert summary is not None
    assert int(summary[1]) == sum(r["total_count"] for r in rows.values())


@pytest.mark.kernel
def test_hardirqs_distributions_and_table(start_tool: Any, data_file: Path) -> None:
    names = disk_irqs(data_file)
    run = start_tool("hardirqs", "--json", "-d", "-N")
    direct_reads(data_file, READS)
    rows = {r["hardirq"]: r for r in run.stop().json_lines()}
    assert set(rows) & set(names)
    for row in rows.values():
        assert set(row) == HIST_KEYS | {"hardirq"} and row["unit"] == "nsecs"
        assert row["count"] == sum(row["slots"]) >= 1
    run = start_tool("hardirqs", "-T")
    direct_reads(data_file, READS)
    lines = run.stop().stdout.splitlines()
    assert lines[0] == "" and re.fullmatch(r"\d\d:\d\d:\d\d", lines[1])
    assert lines[2].split() == ["HARDIRQ", "TOTAL_usecs"]
    table = {line.split()[0]: int(line.split()[1]) for line in lines[3:]}
    assert set(table) & set(names) and all(t >= 0 for t in table.values())


@pytest.mark.kernel
def test_hardirqs_library(data_file: Path) -> None:
    names = disk_irqs(data_file)
    with HardIrqs() as tool:
        tool.attach()
        direct_reads(data_file, READS)
        counts = {r["hardirq"]: r for r in tool.counts(reset=False)}
        hists = {r["hardirq"]: r for r in tool.histograms()}
        # One read of the kernel's figures, two views: a histogram holds at least the
        # handler calls the count read before it saw.
        assert set(counts) <= set(hists) and set(counts) & set(names)
        for name, row in counts.items():
            assert hists[name]["count"] >= row["total_count"] >= 1
        assert tool.counted == sum(r["count"] for r in hists.values())


# --- softirqs -----------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("cpu", [None, 0])
def test_softirqs_net_rx_of_pings(start_tool: Any, veth: str, cpu: int | None) -> None:
    if os.cpu_count() == 1 and cpu is not None:
        pytest.skip("one CPU: nothing to filter out")
    # With -c 0, ping runs on the last CPU: its NET_RX runs there, not on CPU 0.
    ping_cpu = None if cpu is None else (os.cpu_count() or 1) - 1
    cpu_args = [] if cpu is None else ["-c", str(cpu)]
    before = proc_softirqs()
    run = start_tool("softirqs", "--json", "-C", *cpu_args)
    ping_from(veth, PINGS, ping_cpu)
    result = run.stop()
    after = proc_softirqs()
    assert result.returncode == 0, result.stderr
    rows = {r["softirq"]: r for r in result.json_lines()}
    assert set(rows) <= set(VECTORS)
    for name, row in rows.items():
        assert set(row) == {"interval", "time", "softirq", "total_usecs", "total_count"}
        assert 1 <= row["total_count"] <= grown(before[name], after[name], cpu), name
    if cpu is None:
        assert rows["net_rx"]["total_count"] >= PINGS


@pytest.mark.kernel
def test_softirqs_distributions_and_table(start_tool: Any, veth: str) -> None:
    run = start_tool("softirqs", "--json", "-d", "-N")
    ping_from(veth, 5)
    rows = {r["softirq"]: r for r in run.stop().json_lines()}
    assert rows["net_rx"]["count"] >= 5
    for row in rows.values():
        assert set(row) == HIST_KEYS | {"softirq"} and row["unit"] == "nsecs"
        assert row["count"] == sum(row["slots"])
    run = start_tool("softirqs", "-C")
    ping_from(veth, 5)
    lines = run.stop().stdout.splitlines()
    assert lines[0] == "" and lines[1].split() == ["SOFTIRQ", "TOTAL_usecs", "TOTAL_count"]
    table = {line.split()[0]: int(line.split()[2]) for line in lines[2:]}
    assert table["net_rx"] >= 5
    names = list(table)
    assert names == sorted(names, key=VECTORS.index)  # the kernel's vector order


@pytest.mark.kernel
def test_softirqs_library_reset(veth: str) -> None:
    with SoftIrqs() as tool:
        tool.attach()
        ping_from(veth, 5)
        first = {r["softirq"]: r for r in tool.counts()}
        assert first["net_rx"]["total_count"] >= 5
        ping_from(veth, 3)
        second = {r["softirq"]: r for r in tool.histograms()}
        # Counted from the reset on: the second pings, not the first again.
        assert second["net_rx"]["count"] >= 3
        assert tool.counted == sum(r["total_count"] for r in first.values()) + sum(
            r["count"] for r in second.values()
        )


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("hardirqs", ["-C", "-d"], "-C and -d cannot be used together"),
        ("hardirqs", ["-s", "4096"], "CPU 4096 does not exist"),
        ("hardirqs", ["-s", "x"], "'x' is not a valid integer"),
        ("hardirqs", ["1", "0"], "0 is not in the range"),
        ("softirqs", ["-c", "-1"], "CPU -1 does not exist"),
        ("softirqs", ["nan"], "is not a finite number"),
        ("softirqs", ["1", "2", "3"], "unexpected extra argument"),
    ],
)
def test_bad_input(tool: str, args: list[str], message: str) -> None:
    result = run_tool_cli(tool, *args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpfloom: error: "), result.stderr
    assert message in lines[0]


def test_library_rejects_bad_cpu() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        HardIrqs(cpu=-2)
    with pytest.raises(ValueError, match="does not exist"):
        SoftIrqs(cpu=1 << 20)
