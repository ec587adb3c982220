"""Every kind of output, with real events through the commands: what reaches a sink is
what the pipeline handled (``--stats``), for a file (``-o .jsonl``, ``-o .parquet``)
and for the table on stdout; bad ``-o`` values are one clear error that loses nothing.

The same with a fake source and sinks that fail or block: tests/test_sinks.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import bpf_object
from toolrun import TIMEOUT, Result, one_error_line, run_tool_cli

MISSING_OPENS = 300  # failed opens the child makes; each is one opensnoop event
CALLS = 500  # getpriority(cookie, v) calls; each is one counters_rb event


def stats_of(result: Result) -> dict[str, Any]:
    """The ``--stats`` record (on stderr when the records go to a file)."""
    found = [json.loads(line)["stats"] for line in result.stderr.splitlines() if '"stats"' in line]
    assert len(found) == 1, result.stderr
    return found[0]


def _opens_child(gated_child: Any, tmp_path: Path) -> tuple[Any, str]:
    """A child that fails to open ``MISSING_OPENS`` paths under a unique prefix."""
    prefix = str(tmp_path / "missing-")
    code = (
        f"for i in range({MISSING_OPENS}):\n"
        f"    try: os.open({prefix!r} + str(i), os.O_RDONLY)\n"
        "    except FileNotFoundError: pass\n"
    )
    return gated_child(code), prefix


@pytest.mark.kernel
def test_tool_to_a_jsonl_file_writes_every_handled_record(
    start_tool: Any, gated_child: Any, tmp_path: Path
) -> None:
    out = tmp_path / "opens.jsonl"
    out.write_text('{"kept": "what the user had"}\n')
    child, prefix = _opens_child(gated_child, tmp_path)
    run = start_tool("opensnoop", "-p", str(child.pid), "-o", str(out), "--stats")
    child.finish()
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # records and stats went elsewhere
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"kept": "what the user had"}  # appended, not replaced
    records = [json.loads(line) for line in lines[1:]]
    stats = stats_of(result)
    assert len(records) == stats["handled"] == stats["received"]
    assert stats["sink_errors"] == 0 and stats["dropped_kernel"] == 0
    ours = sorted(int(r["path"][len(prefix) :]) for r in records if r["path"].startswith(prefix))
    assert ours == list(range(MISSING_OPENS))


@pytest.mark.kernel
def test_tool_table_prints_every_handled_record(
    start_tool: Any, gated_child: Any, tmp_path: Path
) -> None:
    child, prefix = _opens_child(gated_child, tmp_path)
    run = start_tool("opensnoop", "-p", str(child.pid), "--stats")
    child.finish()
    result = run.stop()
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:2] == ["PID", "COMM"]
    assert len(rows) == stats_of(result)["handled"] >= MISSING_OPENS
    assert sum(prefix in row for row in rows) == MISSING_OPENS


@pytest.mark.kernel
def test_tool_to_parquet_writes_the_raw_records(start_tool: Any, tmp_path: Path) -> None:
    out = tmp_path / "execs.parquet"
    run = start_tool("execsnoop", "-o", str(out), "--stats")
    pids = []
    for _ in range(20):
        child = subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL)
        pids.append(child.pid)
        assert child.wait(timeout=TIMEOUT) == 0
    result = run.stop()
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    stats = stats_of(result)
    assert table.num_rows == stats["handled"] and stats["sink_errors"] == 0
    rows = {r["pid"]: r for r in table.to_pylist()}
    for pid in pids:  # the C struct's fields, char arrays as their bytes
        assert rows[pid]["comm"] == b"true" and rows[pid]["path"] == b"/bin/true"
        assert rows[pid]["ppid"] == os.getpid() and rows[pid]["args"][0] == b"/bin/true"


@pytest.mark.kernel
@pytest.mark.parametrize("ending", [".jsonl", ".parquet"])
def test_run_to_a_file_writes_every_handled_event(
    start_tool: Any, tmp_path: Path, ending: str
) -> None:
    out = tmp_path / f"calls{ending}"
    cookie = random.randrange(1 << 20, 1 << 30)
    obj = str(bpf_object("ecli/counters_rb"))  # getpriority(cookie, v) → one event {pid, v}
    run = start_tool("run", obj, "--cookie", str(cookie), "--no-maps", "-o", str(out), "--stats")
    for v in range(CALLS):
        with contextlib.suppress(OSError):  # EINVAL: the cookie is no valid `which`
            os.getpriority(cookie, v)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    if ending == ".jsonl":
        events = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        events = pq.read_table(out).to_pylist()
    stats = stats_of(result)
    assert len(events) == stats["handled"] == result.summary()[0] == CALLS
    assert stats["sink_errors"] == 0
    assert [(e["pid"], e["value"]) for e in events] == [(os.getpid(), v) for v in range(CALLS)]


@pytest.mark.kernel
def test_parquet_with_no_event_is_still_a_valid_file(tmp_path: Path) -> None:
    out = tmp_path / "none.parquet"
    obj = str(bpf_object("ecli/counters_rb"))
    result = run_tool_cli("run", obj, "--cookie", "7", "--duration", "0.5", "-o", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.names == ["pid", "value"]


def test_output_needs_a_known_ending(tmp_path: Path) -> None:
    result = run_tool_cli("execsnoop", "-o", str(tmp_path / "out.csv"))
    one_error_line(result, ".jsonl or .parquet", status=2)
    assert not (tmp_path / "out.csv").exists()


def test_parquet_output_never_replaces_a_file(tmp_path: Path) -> None:
    out = tmp_path / "had.parquet"
    out.write_bytes(b"precious")
    result = run_tool_cli("execsnoop", "-o", str(out), "--duration", "1")
    one_error_line(result, "exists")
    assert out.read_bytes() == b"precious"


def test_output_in_a_missing_directory_is_one_error(tmp_path: Path) -> None:
    result = run_tool_cli("opensnoop", "-o", str(tmp_path / "no" / "such.jsonl"))
    one_error_line(result, "cannot write", "No such file or directory")


def test_aggregating_tools_refuse_parquet(tmp_path: Path) -> None:
    result = run_tool_cli("runqlat", "-o", str(tmp_path / "h.parquet"), "1", "1")
    one_error_line(result, "aggregates", ".jsonl", status=2)
