"""The kernel prefilter of ``bpfloom detect`` (``bpf/bpfloom_prefilter.h``,
``bpfloom.rules._prefilter``): events no rule can match are not emitted, and counted
as filtered; events a rule can match are, every one of them (a threshold counts them).

Without a kernel, a property: over random rule sets and raw records, every record some
enabled rule's condition matches passes the prefilter as the BPF programs evaluate it
(modelled here on the same bytes). With the kernel, real opens, execs and exits of our
own children against the loaded programs: which of them were emitted, and how many
were left out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bpfloom.batch import Batch
from bpfloom.rules import RuleError, RuleSet, load_rules
from bpfloom.rules._prefilter import (
    COMM,
    KNOW_BITS,
    NPATH,
    PATH,
    PCOMM,
    RET_ANY,
    RET_FAILED,
    RET_OK,
    KernelFilter,
)
from bpfloom.tools.execsnoop import ExecSnoop
from bpfloom.tools.exitsnoop import ExitSnoop
from bpfloom.tools.opensnoop import OpenSnoop
from bpfloom.tools.tool import _MONO_TO_WALL_NS, Tool
from detect_events import (
    BASE_TIME,
    FUZZ,
    OBJECTS,
    RECORD,
    ROW,
    raw_batch,
    rule_file,
    sample_batches,
)

# A model of bpfloom_prefilter_pass() on the bytes of one record.


def _c_string(raw: np.ndarray, batch: Batch, name: str) -> bytes:
    dtype, offset = batch.decoder.dtype.fields[name][:2]  # type: ignore[index]
    return bytes(raw[offset : offset + dtype.itemsize])


def _int(raw: np.ndarray, batch: Batch, name: str) -> int:
    dtype, offset = batch.decoder.dtype.fields[name][:2]  # type: ignore[index]
    return int(raw[offset : offset + dtype.itemsize].view(dtype)[0])


def _trie(f: KernelFilter, key: bytes) -> int:
    """The longest-prefix-match lookup of ``key`` (256 bytes) in the path entries."""
    found = [p for p in f.paths if key.startswith(p)]
    return f.paths[max(found, key=len)] if found else 0


def kernel_passes(f: KernelFilter, kind: str, batch: Batch, row: int) -> bool | None:
    """Whether the program would emit this record; None for a record no kernel writes
    (a comm without its NUL)."""
    if f.clauses is None:
        return True
    raw = batch.records[row]
    known, sets = 0, {COMM: 0, PCOMM: 0, PATH: 0, NPATH: 0}

    def comm(name: str, fact: str) -> bool:
        nonlocal known
        value = _c_string(raw, batch, name)
        if b"\0" not in value:
            return False
        if f.needs & KNOW_BITS[fact]:
            sets[fact] = f.comms.get(value.split(b"\0", 1)[0].ljust(16, b"\0"), 0)
            known |= KNOW_BITS[fact]
        return True

    def path(name: str, fact: str) -> None:
        nonlocal known
        if f.needs & KNOW_BITS[fact]:
            sets[fact] = _trie(f, _c_string(raw, batch, name))
            known |= KNOW_BITS[fact]

    if not comm("comm", COMM):
        return None
    ret = RET_ANY
    if kind in ("open", "exec"):
        ret = RET_FAILED if _int(raw, batch, "ret") < 0 else RET_OK
        if kind == "exec":
            if not comm("parent_comm", PCOMM):
                return None
            path("path", PATH)
        elif _int(raw, batch, "path_truncated") == 0:
            path("path", PATH)
        fs = _c_string(raw, batch, "fs_path")
        if _int(raw, batch, "fs_path_kind") == 1 and _int(raw, batch, "fs_path_cut") == 0 and fs[0]:
            path("fs_path", NPATH)
    for clause in f.clauses:
        if not clause.ret & ret:
            continue
        if all(
            not known & KNOW_BITS[fact]
            or (sets[fact] & clause.mask(fact) == clause.mask(fact)
                and not sets[fact] & clause.mask(fact, True))
            for fact in (COMM, PCOMM, PATH, NPATH)
        ):  # fmt: skip
            return True
    return False


def unsound_rows(rules: RuleSet, kind: str, batches: list[Batch]) -> tuple[int, int]:
    """(records some enabled rule matches that the prefilter drops, records dropped)."""
    f = rules.kernel_filter(kind)
    entries = rules._by_kind.get(kind, ())
    unsound = dropped = 0
    for batch in batches:
        for row, event in enumerate(batch.decoder.decode_batch(batch.records)):
            passes = kernel_passes(f, kind, batch, row)
            if passes is None:
                continue
            record = RECORD[kind](event)
            if not passes:
                dropped += 1
                unsound += any(entry.match(record) for entry in entries)
    return unsound, dropped


@pytest.mark.parametrize("kind", sorted(OBJECTS))
@FUZZ
@given(data=st.data())
def test_prefilter_passes_every_record_a_rule_matches(kind: str, data: st.DataObject) -> None:
    try:
        rules = RuleSet.from_text(data.draw(rule_file(kind), label="rules"))
    except RuleError:
        assume(False)
        return
    clock = [int(BASE_TIME * 1e9) - _MONO_TO_WALL_NS]
    rows = data.draw(st.lists(ROW, min_size=1, max_size=24), label="rows")
    unsound, _ = unsound_rows(rules, kind, [raw_batch(kind, rows, clock, seed=1)])
    assert unsound == 0


@pytest.mark.parametrize("kind", ["open", "exec"])
def test_default_rules_prefilter_drops_much_and_nothing_wrong(kind: str) -> None:
    unsound, dropped = unsound_rows(load_rules(), kind, sample_batches(kind, 1500, seed=5))
    assert unsound == 0
    assert dropped > 100  # (of 1500, about half of which failed calls, all kept)


def test_default_rules_prefilter_clauses() -> None:
    rules = load_rules()
    opens = rules.kernel_filter("open")
    assert opens.describe().splitlines() == ["npath in 0x1 and comm not in 0x1", "failed"]
    shadows = (b"/etc/shadow", b"/etc/gshadow", b"/etc/shadow-", b"/etc/gshadow-")
    assert set(opens.paths) == {p + b"\0" for p in shadows}
    assert opens.comms[b"sshd".ljust(16, b"\0")] == 1
    execs = rules.kernel_filter("exec").describe().splitlines()
    assert execs[0] == "succeeded and comm in 0x1 and pcomm not in 0x2"
    assert len(execs) == 4 and all("npath not in 0x8" in line for line in execs[1:])
    assert rules.kernel_filter("exit").clauses == []  # no rule: nothing to emit


def test_prefilter_gives_up_past_its_bounds() -> None:
    """More clauses than the program holds: no prefilter (every event), never a wrong one."""
    text = "".join(
        f"- rule: r{i}\n  condition: comm == c{i} and path startswith /p{i}\n"
        "  output: o\n  priority: DEBUG\n"
        for i in range(17)
    )
    assert RuleSet.from_text(text).kernel_filter("open").clauses is None
    assert (
        len(RuleSet.from_text(text.split("- rule: r16")[0]).kernel_filter("open").clauses or [])
        == 16
    )


# In the kernel.


def _drain(tool: Tool) -> list[dict[str, Any]]:
    """Every record the tool's buffers hold now (its programs detached or idle)."""
    out: list[dict[str, Any]] = []
    while True:
        got = tool.read(timeout=0.3)
        if not got:
            return out
        out.extend(got)


def _traced(tool: Tool, run: Callable[[], Any]) -> list[dict[str, Any]]:
    tool.attach()
    try:
        run()
    finally:
        tool.detach()
    return _drain(tool)


@pytest.mark.kernel
def test_opens_left_out_exactly_when_no_rule_can_match(tmp_path: Path, gated_child: Any) -> None:
    rules = RuleSet.from_text(
        f"""
- rule: kept files
  condition: event == open and err == 0 and norm_path startswith "{tmp_path}/keep"
  output: "%path"
  priority: DEBUG
- rule: failures of one program
  condition: event == open and err != 0 and comm == pf-open
  output: "%path"
  priority: DEBUG
"""
    )
    child = gated_child(
        f"""
flags = os.O_CREAT | os.O_WRONLY
for name in ("keep1", "other"):
    os.close(os.open("{tmp_path}/" + name, flags))
for name in ("missing1", "rename", "missing2"):
    try:
        if name == "rename":
            fd = os.open("/proc/self/comm", os.O_WRONLY)
            os.write(fd, b"pf-other")
            os.close(fd)
        else:
            os.open("{tmp_path}/nodir/" + name, os.O_RDONLY)
    except FileNotFoundError:
        pass
""",
        comm="pf-open",
    )
    with OpenSnoop(pid=child.pid, full_path=True, prefilter=rules.kernel_filter("open")) as tool:
        records = _traced(tool, child.finish)
        filtered = tool.filtered_kernel()
    mine = [(r["norm_path"], r["err"]) for r in records if r["pid"] == child.pid]
    assert mine == [(f"{tmp_path}/keep1", 0), (f"{tmp_path}/nodir/missing1", 2)]
    # Left out: "other" (no rule), the open of /proc/self/comm (succeeded, not kept),
    # "missing2" (failed, but by pf-other): counted, and only those (pid-filtered).
    # (Without "err == 0" in the first rule, missing2 would be emitted: the kernel
    # knows norm_path only for files it opened, so a failed open passes that test.)
    assert filtered == 3


@pytest.mark.kernel
def test_every_failed_open_reaches_the_threshold_rule(gated_child: Any) -> None:
    """The default rules' burst rule counts failed opens: the prefilter keeps all of
    them, and leaves out successful opens of files no rule names."""
    child = gated_child(
        """
for i in range(600):
    try:
        os.open(f"/nonexistent-bpfloom-prefilter/{i}", os.O_RDONLY)
    except FileNotFoundError:
        pass
for i in range(300):
    os.close(os.open("/dev/null", os.O_RDONLY))
"""
    )
    kernel = load_rules().kernel_filter("open")
    with OpenSnoop(pid=child.pid, full_path=True, prefilter=kernel) as tool:
        records = _traced(tool, child.finish)
        filtered = tool.filtered_kernel()
        dropped = tool.dropped_kernel()
    assert dropped == 0
    mine = [r for r in records if r["pid"] == child.pid]
    assert len(mine) == 600 and all(r["err"] == 2 for r in mine)
    assert filtered == 300


@pytest.mark.kernel
def test_execs_and_exits_left_out_by_names_and_paths(tmp_path: Path, gated_child: Any) -> None:
    rules = RuleSet.from_text(
        f"""
- rule: true from the test
  condition: event == exec and comm == "true" and parent_comm == pf-exec
  output: "%path"
  priority: DEBUG
- rule: run from tmp
  condition: event == exec and ret == 0 and norm_path glob "{tmp_path}/*"
  output: "%path"
  priority: DEBUG
- rule: one name exits
  condition: event == exit and comm == pf-exit
  output: "%comm"
  priority: DEBUG
"""
    )
    dropped = tmp_path / "dropped"
    shutil.copy("/usr/bin/echo", dropped)
    code = f"""
import subprocess
procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL)
         for argv in (["/usr/bin/true"], ["/usr/bin/echo"], ["{dropped}"])]
for p in procs:
    p.wait()
print(json.dumps([p.pid for p in procs]))
fd = os.open("/proc/self/comm", os.O_WRONLY)
os.write(fd, b"pf-exit")
"""
    with (
        ExecSnoop(include_failed=True, resolve_paths=True,
                  prefilter=rules.kernel_filter("exec")) as execs,
        ExitSnoop(prefilter=rules.kernel_filter("exit")) as exits,
    ):  # fmt: skip
        runner = gated_child(code, comm="pf-exec")
        other = gated_child("pass", comm="pf-other")
        execs.attach()
        exits.attach()
        pids = [*json.loads(runner.finish()), runner.pid]
        other.finish()  # both waited for: their exits were traced
        execs.detach()
        exits.detach()
        exec_records = _drain(execs)
        exit_records = _drain(exits)
        filtered = execs.filtered_kernel(), exits.filtered_kernel()
    true_pid, echo_pid, dropped_pid, runner_pid = pids
    ran = {r["pid"]: r["norm_path"] for r in exec_records if r["pid"] in pids}
    assert ran == {true_pid: "/usr/bin/true", dropped_pid: str(dropped)}
    ended = {r["pid"] for r in exit_records if r["pid"] in (*pids, other.pid)}
    assert ended == {runner_pid}  # the echo, true and pf-other exits were left out
    assert filtered[0] >= 1 and filtered[1] >= 4
    assert echo_pid not in ran


@pytest.mark.kernel
def test_cli_reports_what_the_kernel_left_out(tmp_path: Path, start_tool: Any) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- rule: never\n  condition: event == open and comm == nothing-has-this\n"
        "  output: o\n  priority: DEBUG\n"
    )
    run = start_tool("detect", "--rules", str(rules), "--stats")
    for _ in range(3):
        subprocess.run(["cat", "/etc/hostname"], stdout=subprocess.DEVNULL, check=True)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stderr.strip().splitlines()[-1])["stats"]
    assert stats["filtered_kernel"] >= 3  # the cats' opens, at least
    assert stats["produced"] == stats["handled"] + stats["dropped_kernel"] + stats["dropped_queue"]
    assert f"{stats['filtered_kernel']} left out in the kernel" in result.stderr
