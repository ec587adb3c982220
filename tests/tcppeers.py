"""TCP peers for the TCP tools' tests: child processes with known pids and names that
listen, connect, send and receive exactly what a test asks, in this network namespace
or in a test's own.

Each peer is ``python -c`` with its comm renamed before anything else, so a tool sees
the connect(), accept() and close() calls under that pid and name. A peer reports what
it measured (CLOCK_MONOTONIC seconds, the clock of ``bpf_ktime_get_ns``) as JSON lines
on its stdout; ``read()`` waits for the next one. ``netns`` makes it join a namespace
made by ``ip netns add`` (setns on /run/netns/NAME) before it opens a socket.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

TIMEOUT = 60  # seconds a peer may take for any one step; far above what it needs

_PRELUDE = """\
import ctypes, errno, json, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def say(**fields):
    print(json.dumps(fields), flush=True)
def wait():
    sys.stdin.readline()
def recv_exactly(sock, n):
    got = 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        assert data, f"EOF after {got} of {n} bytes"
        got += len(data)
"""


class Peer:
    """One peer process running ``code`` (after the prelude above: ``say``, ``wait``,
    ``recv_exactly``, and the modules it imports)."""

    def __init__(self, code: str, *, comm: str, netns: str | None = None) -> None:
        setup = f"open('/proc/self/comm', 'w').write({comm!r})\n"
        if netns is not None:
            setup += (
                f"fd = os.open('/run/netns/{netns}', os.O_RDONLY)\n"
                "assert libc.setns(fd, 0x40000000) == 0, os.strerror(ctypes.get_errno())\n"
            )
        self.comm = comm
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PRELUDE + setup + textwrap.dedent(code)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid

    def read(self) -> dict[str, Any]:
        """The next JSON line the peer says; fails the test if it ends or hangs first."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(TIMEOUT):
                self.kill()
                pytest.fail(f"peer {self.comm} said nothing within {TIMEOUT} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=TIMEOUT)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"peer {self.comm} ended ({self.proc.returncode}):\n{err}")
        said: dict[str, Any] = json.loads(line)
        return said

    def go(self) -> None:
        """Let the peer past its next ``wait()``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        """Let it run to its end; its last JSON line. Fails the test if it failed."""
        try:
            out, err = self.proc.communicate("go\n" * 4, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"peer {self.comm} did not end within {TIMEOUT} s")
        assert self.proc.returncode == 0, f"peer {self.comm} failed:\n{err}"
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return lines[-1] if lines else {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def family_of(address: str) -> int:
    return int(socket.AF_INET6 if ":" in address else socket.AF_INET)


def server_code(address: str, port: int, *, receive: int, send: int, accepts: int = 1) -> str:
    """At the go-ahead, listen on ``address:port`` (say ``listening``), accept
    ``accepts`` connections one after the other, and on each receive exactly ``receive``
    bytes, send ``send``, wait for the client's close and close; say each connection's
    ``t_accept`` (after accept() returned), ``t_close`` (before close()) and the client's
    ``peer_port``."""
    return f"""
        wait()
        srv = socket.socket({family_of(address)}, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(({address!r}, {port}))
        srv.listen()
        say(listening=srv.getsockname()[1])
        for _ in range({accepts}):
            conn, peer = srv.accept()
            t_accept = time.monotonic()
            recv_exactly(conn, {receive})
            conn.sendall(b"m" * {send})
            assert conn.recv(1) == b""  # the client closes first
            t_close = time.monotonic()
            conn.close()
            say(t_accept=t_accept, t_close=t_close, peer_port=peer[1])
        srv.close()
    """


def client_code(address: str, port: int, *, send: int = 0, receive: int = 0) -> str:
    """At the go-ahead, connect to ``address:port``, send exactly ``send`` bytes,
    receive exactly ``receive``, close; say ``t_start`` (before connect()), ``t_conn``
    (after it returned), ``t_close`` (before close()), the local ``port``, and ``err``
    (the errno name of a failed connect, which ends it there)."""
    return f"""
        wait()
        s = socket.socket({family_of(address)}, socket.SOCK_STREAM)
        t_start = time.monotonic()
        try:
            s.connect(({address!r}, {port}))
        except OSError as exc:
            say(t_start=t_start, t_conn=time.monotonic(), err=errno.errorcode[exc.errno])
            sys.exit(0)
        t_conn = time.monotonic()
        s.sendall(b"n" * {send})
        recv_exactly(s, {receive})
        t_close = time.monotonic()
        port = s.getsockname()[1]
        s.close()
        say(t_start=t_start, t_conn=t_conn, t_close=t_close, port=port, err=None)
    """


def netns_inode(name: str | None = None) -> int:
    """The inode number of network namespace ``name`` (ours when None), as the tools'
    ``netns`` field gives it."""
    path = "/proc/self/ns/net" if name is None else f"/run/netns/{name}"
    return os.stat(path).st_ino
