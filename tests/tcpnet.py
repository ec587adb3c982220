"""TCP traffic the network tool tests make in network namespaces of their own.

- ``in_netns(ns, fn)`` runs ``fn`` in a thread that joined namespace ``ns``: sockets it
  creates live there (a socket's namespace is fixed when it is made), and the test
  uses them from any thread. So one test process can be both ends of a connection
  across the ``veth`` fixture's pair, and its own pid is the one the tools must show.
- ``add_ipv6(veth)`` gives the pair IPv6 addresses (``nodad``: usable at once).
- ``nft(ns, script)`` loads nftables rules into ``ns`` only; the host's ruleset is
  never touched. ``tcp_mib(ns)`` reads the namespace's own TCP counters (RetransSegs...).
- ``DelayedLink``: this kernel has no netem qdisc, so a known delay is made in user
  space: two TUN devices, one here and one in the namespace, joined by a thread that
  forwards every packet after ``delay`` seconds. A round trip over it takes at least
  twice that.

Names and subnets derive from the test process's pid, as the ``veth`` fixture's do, so
test runs side by side do not clash.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import heapq
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from conftest import Veth, ip_command

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in a thread that joined network namespace ``ns``; its result (or
    its exception, raised here)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            with open(f"/run/netns/{ns}") as f:
                if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns})")
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def listener(address: str, port: int = 0) -> socket.socket:
    """A TCP socket listening on ``address`` (IPv4 or IPv6) and ``port`` (0: any)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((address, port))
    sock.listen(8)
    sock.settimeout(60)
    return sock


def client(address: str) -> socket.socket:
    """An unconnected TCP socket of ``address``'s family, with a 60 s timeout."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(60)
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def linger_zero(sock: socket.socket) -> None:
    """SO_LINGER with a zero timeout: close() then aborts with a reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _tag() -> int:
    return os.getpid() % 16384


def add_ipv6(veth: Veth) -> tuple[str, str]:
    """IPv6 addresses for the veth pair (here, in the namespace), from this pid."""
    prefix = f"fd42:bf1:{_tag():x}::"
    local, peer = f"{prefix}1", f"{prefix}2"
    ip_command("-6", "addr", "add", f"{local}/64", "dev", veth.local, "nodad")
    peer_dev = veth.local[:-1] + "b"  # the fixture names the pair ...a / ...b
    ip_command("-n", veth.ns, "-6", "addr", "add", f"{peer}/64", "dev", peer_dev, "nodad")
    return local, peer


def nft(ns: str, script: str) -> None:
    """Load nftables ``script`` into namespace ``ns`` (never the host's ruleset)."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, capture_output=True
    )
    assert done.returncode == 0, f"nft -f in {ns} failed:\n{script}\n{done.stderr}"


def tcp_mib(ns: str) -> dict[str, int]:
    """The ``Tcp:`` counters of /proc/net/snmp as namespace ``ns`` sees them (its
    own: RetransSegs, OutRsts...; shared by IPv4 and IPv6)."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def wait_until(what: str, done: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``done`` until it holds; fail the test with ``what`` after ``timeout``
    (a bound on a real hang, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class DelayedLink:
    """A point-to-point link from this namespace into ``ns`` whose every packet is
    delivered ``delay`` seconds after it was sent, each way (``local``/``peer`` and
    ``local6``/``peer6`` are the two ends' addresses). ``close()`` removes it."""

    def __init__(self, ns: str, delay: float) -> None:
        tag = _tag()
        self.delay = delay
        self.here, self.there = f"bft{tag}a", f"bft{tag}b"
        base = f"10.249.{tag // 64}.{(tag % 64) * 4}"
        prefix, last = base.rsplit(".", 1)
        self.local, self.peer = f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}"
        self.local6, self.peer6 = f"fd43:bf1:{tag:x}::1", f"fd43:bf1:{tag:x}::2"
        self._fds = [_open_tun(self.here)]
        self._wake_r, self._wake_w = os.pipe()
        try:
            self._fds.append(_open_tun(self.there))
            ip_command("link", "set", self.there, "netns", ns)
            for args, dev, mine, theirs, six in (
                ((), self.here, self.local, self.peer, self.local6),
                (("-n", ns), self.there, self.peer, self.local, self.peer6),
            ):
                ip_command(*args, "addr", "add", f"{mine}/32", "peer", f"{theirs}/32", "dev", dev)
                ip_command(*args, "-6", "addr", "add", f"{six}/64", "dev", dev, "nodad")
                ip_command(*args, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._forward, name="delayed-link", daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        a, b = self._fds
        other = {a: b, b: a}
        queue: list[tuple[float, int, int, bytes]] = []
        n = 0
        while True:
            timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
            ready, _, _ = select.select([a, b, self._wake_r], [], [], timeout)
            if self._wake_r in ready:
                return
            for fd in ready:
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    return
                heapq.heappush(queue, (time.monotonic() + self.delay, n, other[fd], packet))
                n += 1
            while queue and queue[0][0] <= time.monotonic():
                _, _, out, packet = heapq.heappop(queue)
                # OSError: the device is going away, or refuses this one (a full queue).
                with contextlib.suppress(OSError):
                    os.write(out, packet)

    def close(self) -> None:
        """Stop forwarding and remove both devices (closing a TUN fd deletes it)."""
        os.write(self._wake_w, b"x")
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout=10)
        for fd in (*self._fds, self._wake_r, self._wake_w):
            os.close(fd)
        self._fds = []
