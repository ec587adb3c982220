"""Explicit attach with targets chosen at run time: a tracepoint and uprobes.

tracepoint.bpf.o and uprobe.bpf.o have sections that name no target, so nothing
attaches them but these calls. Events are counted exactly: a tracepoint or uprobe
program runs synchronously in the traced task, so its ring buffer record is
committed before the traced call returns, and a drain after the workload sees
everything (reads wait with a timeout only as a bound, never as a measurement).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

import bpfloom
from bpfloom import BpfObject, Link, RingBuffer
from conftest import TESTS_BPF, WaitingTarget, bpf_object, kernel_link_ids

pytestmark = pytest.mark.kernel

SYMBOL = "bpfloom_probe_me"


def own_link_ids() -> set[int]:
    """Ids of the BPF links this process holds fds for (from /proc/self/fdinfo)."""
    ids = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf_link":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                ids.update(int(x.split()[1]) for x in f if x.startswith("link_id:"))
        except OSError:
            continue
    return ids


def drain(rb: RingBuffer, want: int, timeout: float = 5.0) -> list[Any]:
    """Events until ``want`` arrived or reads time out; then whatever else is there."""
    events: list[Any] = []
    while len(events) < want:
        batch = rb.read(timeout=timeout)
        if not batch:
            break
        events += batch.events()
    events += rb.poll().events()
    return events


# --- tracepoint ---------------------------------------------------------------------------


@pytest.fixture
def tracepoint_obj() -> Iterator[BpfObject]:
    with bpfloom.load(bpf_object("tracepoint"), globals={"target_pid": os.getpid()}) as obj:
        yield obj


def attach_getppid(obj: BpfObject) -> Link:
    return obj.program("on_tracepoint").attach_tracepoint("syscalls", "sys_enter_getppid")


@pytest.mark.parametrize("calls", [1, 7, 500])
def test_tracepoint_counts_every_call(tracepoint_obj: BpfObject, calls: int) -> None:
    rb = tracepoint_obj.ring_buffer("rb")
    assert rb.poll().events() == []
    link = attach_getppid(tracepoint_obj)
    assert link.program == "on_tracepoint"
    assert link.hook == "tracepoint syscalls/sys_enter_getppid"
    for _ in range(calls):
        os.getppid()
    events = drain(rb, calls)
    assert len(events) == calls
    assert {ev.pid for ev in events} == {os.getpid()}


def test_tracepoint_filter_drops_other_processes(tracepoint_obj: BpfObject) -> None:
    rb = tracepoint_obj.ring_buffer("rb")
    attach_getppid(tracepoint_obj)
    child = "import os\nfor _ in range(50): os.getppid()"
    subprocess.run([sys.executable, "-c", child], check=True)
    os.getppid()
    events = drain(rb, 1)
    assert [ev.pid for ev in events] == [os.getpid()]


def test_tracepoint_without_filter_sees_other_processes() -> None:
    with bpfloom.load(bpf_object("tracepoint")) as obj:
        rb = obj.ring_buffer("rb")
        attach_getppid(obj)
        child = subprocess.Popen(
            [sys.executable, "-c", "import os, sys\nsys.stdin.read()\nos.getppid()"],
            stdin=subprocess.PIPE,
        )
        child.communicate(b"")
        assert child.returncode == 0
        events = drain(rb, 1)
    assert child.pid in {ev.pid for ev in events}


def test_tracepoint_link_close_stops_events(tracepoint_obj: BpfObject) -> None:
    rb = tracepoint_obj.ring_buffer("rb")
    link = attach_getppid(tracepoint_obj)
    os.getppid()
    assert len(drain(rb, 1)) == 1
    link.close()
    assert link.closed
    assert link not in tracepoint_obj.links
    for _ in range(20):
        os.getppid()
    # Detached before the calls: nothing can be in flight, so an immediate poll is exact.
    assert rb.poll().events() == []
    # Attach again: the program works, so the silence above was the detach.
    attach_getppid(tracepoint_obj)
    os.getppid()
    assert len(drain(rb, 1)) == 1


def test_tracepoint_same_program_twice_is_refused(tracepoint_obj: BpfObject) -> None:
    """The kernel keeps one copy of a program per tracepoint (bpf_prog_array_copy says
    EEXIST); the refusal is an AttachError and leaves the first link working."""
    rb = tracepoint_obj.ring_buffer("rb")
    first = attach_getppid(tracepoint_obj)
    with pytest.raises(bpfloom.AttachError) as info:
        attach_getppid(tracepoint_obj)
    assert info.value.errno == 17
    assert "on_tracepoint" in str(info.value)
    assert "syscalls/sys_enter_getppid" in str(info.value)
    assert tracepoint_obj.links == [first]
    os.getppid()
    assert len(drain(rb, 1)) == 1


def test_tracepoint_two_objects_both_count() -> None:
    pid = os.getpid()
    with (
        bpfloom.load(bpf_object("tracepoint"), globals={"target_pid": pid}) as one,
        bpfloom.load(bpf_object("tracepoint"), globals={"target_pid": pid}) as two,
    ):
        rb_one, rb_two = one.ring_buffer("rb"), two.ring_buffer("rb")
        first, _ = attach_getppid(one), attach_getppid(two)
        for _ in range(3):
            os.getppid()
        assert (len(drain(rb_one, 3)), len(drain(rb_two, 3))) == (3, 3)
        first.close()
        os.getppid()
        assert (len(drain(rb_one, 0)), len(drain(rb_two, 1))) == (0, 1)


# --- uprobes ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["pie", "no-pie"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/bpf/uprobe_target.c built with gcc -O1 -g; once as PIE (symbol value equals
    its file offset) and once not (text at 0x401000: value and offset differ)."""
    flavour = str(request.param)
    out = tmp_path_factory.mktemp("uprobe") / f"uprobe_target_{flavour.replace('-', '_')}"
    flags = ["-fPIE", "-pie"] if flavour == "pie" else ["-fno-PIE", "-no-pie"]
    subprocess.run(
        ["gcc", "-O1", "-g", *flags, "-o", str(out), str(TESTS_BPF / "uprobe_target.c")],
        check=True,
        capture_output=True,
    )
    return out


def symbol_file_offset(binary: Path, symbol: str) -> tuple[int, int]:
    """(symbol value, file offset) of ``symbol``: the value minus the vaddr of the
    PT_LOAD segment holding it plus that segment's file offset."""
    with open(binary, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        (sym,) = symtab.get_symbol_by_name(symbol)
        value = int(sym["st_value"])
        for seg in elf.iter_segments():
            if (
                seg["p_type"] == "PT_LOAD"
                and seg["p_vaddr"] <= value < seg["p_vaddr"] + seg["p_memsz"]
            ):
                return value, value - int(seg["p_vaddr"]) + int(seg["p_offset"])
    raise AssertionError(f"{symbol} is in no PT_LOAD segment of {binary}")


@pytest.fixture
def uprobe_obj() -> Iterator[BpfObject]:
    with bpfloom.load(bpf_object("uprobe")) as obj:
        yield obj


@pytest.mark.parametrize("calls", [1, 10])
def test_uprobe_and_uretprobe_by_symbol(uprobe_obj: BpfObject, target: Path, calls: int) -> None:
    rb = uprobe_obj.ring_buffer("rb")
    proc = WaitingTarget(target, calls)
    entry = uprobe_obj.program("probe_me_entry").attach_uprobe(str(target), SYMBOL, pid=proc.pid)
    ret = uprobe_obj.program("probe_me_return").attach_uprobe(
        str(target), SYMBOL, pid=proc.pid, retprobe=True
    )
    assert entry.hook == f"uprobe {target}:{SYMBOL}"
    assert ret.hook == f"uretprobe {target}:{SYMBOL}"
    assert proc.go() == f"done {calls * calls}"
    events = drain(rb, 2 * calls)
    assert len(events) == 2 * calls
    assert {ev.pid for ev in events} == {proc.pid}
    entries = [ev for ev in events if ev.is_return == 0]
    returns = [ev for ev in events if ev.is_return == 1]
    assert [ev.arg for ev in entries] == list(range(calls))
    assert [ev.ret for ev in entries] == [0] * calls
    assert [ev.ret for ev in returns] == [2 * i + 1 for i in range(calls)]
    assert [ev.arg for ev in returns] == [0] * calls
    # Entry and return alternate: each call's entry comes right before its return.
    assert [ev.is_return for ev in events] == [0, 1] * calls


def test_uprobe_pid_filter_ignores_other_processes(uprobe_obj: BpfObject, target: Path) -> None:
    rb = uprobe_obj.ring_buffer("rb")
    watched, other = WaitingTarget(target, 3), WaitingTarget(target, 5)
    uprobe_obj.program("probe_me_entry").attach_uprobe(str(target), SYMBOL, pid=watched.pid)
    assert other.go() == "done 25"
    assert watched.go() == "done 9"
    events = drain(rb, 3)
    assert [(ev.pid, ev.arg) for ev in events] == [(watched.pid, i) for i in range(3)]


@pytest.mark.parametrize("retprobe", [False, True])
def test_uprobe_by_offset(uprobe_obj: BpfObject, target: Path, retprobe: bool) -> None:
    value, offset = symbol_file_offset(target, SYMBOL)
    if "no_pie" in target.name:
        assert value != offset  # the case where the conversion matters
    # Cross-check the symbol value with nm, not only pyelftools.
    nm = subprocess.run(["nm", str(target)], capture_output=True, text=True, check=True).stdout
    assert f"{value:016x} T {SYMBOL}" in nm
    rb = uprobe_obj.ring_buffer("rb")
    proc = WaitingTarget(target, 4)
    name = "probe_me_return" if retprobe else "probe_me_entry"
    link = uprobe_obj.program(name).attach_uprobe(
        str(target), offset=offset, pid=proc.pid, retprobe=retprobe
    )
    assert link.hook == f"{'uretprobe' if retprobe else 'uprobe'} {target}:0x{offset:x}"
    assert proc.go() == "done 16"
    events = drain(rb, 4)
    if retprobe:
        assert [(ev.is_return, ev.ret) for ev in events] == [(1, 2 * i + 1) for i in range(4)]
    else:
        assert [(ev.is_return, ev.arg) for ev in events] == [(0, i) for i in range(4)]
    assert {ev.pid for ev in events} == {proc.pid}


def test_uprobe_link_close_stops_events(uprobe_obj: BpfObject, target: Path) -> None:
    rb = uprobe_obj.ring_buffer("rb")
    first = WaitingTarget(target, 2)
    link = uprobe_obj.program("probe_me_entry").attach_uprobe(str(target), SYMBOL, pid=-1)
    second = WaitingTarget(target, 3)
    assert first.go() == "done 4"
    assert len([ev for ev in drain(rb, 2) if ev.pid == first.pid]) == 2
    link.close()
    assert second.go() == "done 9"
    assert [ev for ev in rb.poll().events() if ev.pid == second.pid] == []


# --- nothing stays attached ---------------------------------------------------------------


def test_all_links_gone_after_close(target: Path) -> None:
    before = own_link_ids()
    obj = bpfloom.load(bpf_object("uprobe"))
    tp = bpfloom.load(bpf_object("tracepoint"))
    links = [
        obj.program("probe_me_entry").attach_uprobe(str(target), SYMBOL),
        obj.program("probe_me_return").attach_uprobe(str(target), SYMBOL, retprobe=True),
        obj.program("probe_me_entry").attach_uprobe(
            str(target), offset=symbol_file_offset(target, SYMBOL)[1]
        ),
        attach_getppid(tp),
    ]
    ours = own_link_ids() - before
    assert len(ours) == len(links)
    assert ours <= kernel_link_ids()
    assert len(obj.links) == 3
    assert len(tp.links) == 1
    obj.close()
    tp.close()
    assert all(link.closed for link in links)
    assert own_link_ids() - before == set()
    # Links are released synchronously with their last fd (bpf_link_put of a perf
    # event link), but check through the kernel's own listing as well.
    assert not ours & kernel_link_ids()
