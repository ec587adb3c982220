"""A real Prometheus server and promtool, for the tests that check what bpfloom serves.

The Debian ``prometheus`` package (scripts/setup.sh installs it) runs in a temp dir on
127.0.0.1, scraping its targets every 200 ms; tests query it through its HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DEADLINE = 60  # seconds to wait for a scrape to show; only a real failure takes this long


def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts the exposition: no error, no lint problem."""
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"promtool: {proc.stdout}{proc.stderr}\n--- exposition:\n{text}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """The Debian ``prometheus`` server in a temp dir, on 127.0.0.1, scraping
    ``targets`` every 200 ms; queried through its HTTP API."""

    def __init__(self, tmp_path: Path, targets: list[str]) -> None:
        if shutil.which("prometheus") is None:
            pytest.fail("prometheus is not installed (scripts/setup.sh installs it)")
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n"
            "scrape_configs:\n  - job_name: bpfloom\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.dir / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.console.templates=/nonexistent",
                "--web.console.libraries=/nonexistent",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        self.wait_for(lambda: self._get("/-/ready") is not None, "Prometheus ready")

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                body = response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (``/api/v1/query``)."""
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if answer is None or answer.get("status") != "success":
            return []
        return list(answer["data"]["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def targets(self) -> list[dict[str, Any]]:
        answer = self._get("/api/v1/targets")
        return [] if answer is None else list(answer["data"]["activeTargets"])

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()}")
            if ready():
                return
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}")

    def wait_value(self, expr: str, expected: float) -> float | None:
        """Poll ``expr`` until Prometheus has scraped ``expected`` (or the deadline);
        return what it last had, for the test to assert on."""
        last: list[float | None] = [None]

        def seen() -> bool:
            last[0] = self.value(expr)
            return last[0] == expected

        with contextlib.suppress(pytest.fail.Exception):
            self.wait_for(seen, f"{expr} == {expected}")
        return last[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
