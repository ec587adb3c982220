"""``--metrics-addr``: a command's own counters, scraped by a real Prometheus.

Each test starts the tool with --metrics-addr on a free port and a Prometheus server
scraping it; the activity the test makes must show up exactly in the series Prometheus
stored, and ``promtool check metrics`` must accept every exposition.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from promserver import Prometheus, free_port, promtool_check
from toolrun import run_tool_cli

pytestmark = pytest.mark.kernel


def _fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _marked_program(tmp_path: Path) -> Path:
    """A copy of /bin/true under a name no other process has (it becomes the comm)."""
    program = tmp_path / f"bf{uuid.uuid4().hex[:10]}"
    shutil.copy("/usr/bin/true", program)
    return program


def test_tool_counters_reach_prometheus(start_tool: Any, tmp_path: Path) -> None:
    program = _marked_program(tmp_path)
    port = free_port()
    run = start_tool("execsnoop", "-n", program.name, "--metrics-addr", str(port))
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
    try:
        for _ in range(7):
            subprocess.run([str(program)], check=True)
        tool = '{tool="execsnoop"}'
        assert prometheus.wait_value(f"bpfloom_events_received_total{tool}", 7) == 7
        assert prometheus.value(f"bpfloom_events_handled_total{tool}") == 7
        for where in ("kernel", "queue", "sink"):
            expr = f'bpfloom_events_lost_total{{tool="execsnoop",where="{where}"}}'
            assert prometheus.value(expr) == 0
        # The handler runs once per batch: 7 execs came in 1 to 7 batches.
        batches = prometheus.value(f"bpfloom_handler_latency_seconds_count{tool}")
        assert batches is not None and 1 <= batches <= 7
        promtool_check(_fetch(port))
    finally:
        prometheus.stop()
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert f"bpfloom execsnoop: metrics at http://127.0.0.1:{port}/metrics" in result.stderr


def test_detect_alerts_reach_prometheus(start_tool: Any, tmp_path: Path) -> None:
    program = _marked_program(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- rule: Marked program\n"
        f"  condition: event == exec and comm == {program.name}\n"
        "  output: ran %comm\n"
        "  priority: WARNING\n"
    )
    port = free_port()
    run = start_tool("detect", "--rules", str(rules), "--json", "--metrics-addr", str(port))
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
    try:
        for _ in range(3):
            subprocess.run([str(program)], check=True)
        expr = 'bpfloom_alerts_total{tool="detect",rule="Marked program",priority="WARNING"}'
        assert prometheus.wait_value(expr, 3) == 3
        promtool_check(_fetch(port))
    finally:
        prometheus.stop()
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert len(result.json_lines()) == 3


def test_metric_tool_histograms_are_served_cumulatively(start_tool: Any) -> None:
    port = free_port()
    run = start_tool("runqlat", "0.5", "--metrics-addr", str(port), "--json")
    run.wait_output('"interval": 2')
    text = _fetch(port)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    promtool_check(text)
    counts = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('bpfloom_runqlat_usecs_count{tool="runqlat"}')
    ]
    assert len(counts) == 1 and counts[0] > 0
    # The served count is what the intervals printed so far, added up.
    printed = [row["count"] for row in result.json_lines() if "count" in row]
    assert counts[0] <= sum(printed)


@pytest.mark.parametrize(
    ("value", "status", "needle"),
    [
        ("nonsense", 2, "is not HOST:PORT"),
        (":9000", 2, "names no host"),
        ("99999", 2, "out of range"),
    ],
)
def test_bad_metrics_addr(value: str, status: int, needle: str) -> None:
    result = run_tool_cli("exitsnoop", "--metrics-addr", value, "--duration", "0.1")
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1 and needle in result.stderr


def test_metrics_addr_in_use_is_one_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_tool_cli("exitsnoop", "--metrics-addr", str(port), "--duration", "0.1")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"bpfloom: error: --metrics-addr 127.0.0.1:{port}: ")
    assert "Traceback" not in result.stderr


def test_syscount_serves_its_counters(start_tool: Any) -> None:
    """syscount builds its session apart from the other tools; --metrics-addr reaches
    it too (it once took the option and served nothing)."""
    port = free_port()
    run = start_tool("syscount", "-i", "0.5", "--json", "--metrics-addr", str(port))
    run.wait_output('"syscall"')
    text = _fetch(port)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    promtool_check(text)
    assert 'bpfloom_events_lost_total{tool="syscount",where="kernel"} 0' in text
    assert f"bpfloom syscount: metrics at http://127.0.0.1:{port}/metrics" in result.stderr
