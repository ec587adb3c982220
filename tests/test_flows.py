"""``bpfloom flows`` with real traffic: exact per-flow packets and bytes, exports,
evictions, and nothing left on the interface.

Every test makes its own network: the ``veth`` fixture's pair, whose far end sits in a
namespace of its own, with IPv6 addresses added here. Sockets on the far end are made
inside that namespace by this process (``in_netns``: a socket stays in the namespace
it was made in), so one test drives both ends and knows every byte it sent. The
byte counts are those ``bpf/flows.bpf.c`` defines: the IP header and what follows it
(IPv4 20 + 8 + payload for UDP, IPv6 40 + 8 + payload). For TCP, whose segments the
test cannot predict, the reference is nftables counters in the namespace, which
count the same packets at layer 3 (``skb->len`` at the input and output hooks).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bpfloom import AttachError
from bpfloom.tools import flows as flows_module
from bpfloom.tools.flows import END_GRACE, FIN, RECORD_KEYS, RST, SYN, Flows
from conftest import Veth, assert_gone_from_kernel, ip_command, own_bpf_ids
from promserver import free_port, promtool_check
from toolrun import BPFLOOM, TIMEOUT, one_error_line, run_tool_cli

pytestmark = pytest.mark.kernel

CLONE_NEWNET = 0x40000000
UDP_SEGMENT = 103  # include/uapi/linux/udp.h
_libc = ctypes.CDLL(None, use_errno=True)

Key = tuple[str, str, int, int, str, str]  # saddr, daddr, sport, dport, proto, direction


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name`` (sockets made in
    it stay there), then come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


@dataclass(frozen=True)
class Net:
    """One address family across the veth pair: ``local_ip`` here on ``local``,
    ``peer_ip`` in namespace ``ns``."""

    veth: Veth
    family: int
    local_ip: str
    peer_ip: str

    @property
    def ip_header(self) -> int:
        return 20 if self.family == socket.AF_INET else 40

    @property
    def local(self) -> str:
        return self.veth.local


def _net(veth: Veth, version: int) -> Net:
    if version == 4:
        return Net(veth, socket.AF_INET, veth.local_ip, veth.peer_ip)
    tag = os.getpid() % 65536
    local_ip, peer_ip = f"fd00:bf10:{tag:x}::1", f"fd00:bf10:{tag:x}::2"
    ip_command("-6", "addr", "add", f"{local_ip}/64", "dev", veth.local, "nodad")
    peer_dev = veth.local[:-1] + "b"
    ip_command("-n", veth.ns, "-6", "addr", "add", f"{peer_ip}/64", "dev", peer_dev, "nodad")
    return Net(veth, socket.AF_INET6, local_ip, peer_ip)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def net(request: pytest.FixtureRequest, veth: Veth) -> Net:
    return _net(veth, request.param)


@pytest.fixture
def net4(veth: Veth) -> Net:
    return _net(veth, 4)


# --- traffic ------------------------------------------------------------------------------


class UdpPair:
    """A UDP client here and an echo server in the namespace: ``exchange(size)`` sends
    one datagram of ``size`` bytes and waits for its echo."""

    def __init__(self, net: Net, port: int) -> None:
        self.net = net
        with in_netns(net.veth.ns):
            self.server = socket.socket(net.family, socket.SOCK_DGRAM)
        self.server.bind((net.peer_ip, port))
        self.server.settimeout(10)
        self.client = socket.socket(net.family, socket.SOCK_DGRAM)
        self.client.bind((net.local_ip, 0))
        self.client.settimeout(10)
        self.port = port
        self.client_port = self.client.getsockname()[1]

    def send(self, size: int) -> None:
        self.client.sendto(b"u" * size, (self.net.peer_ip, self.port))

    def echo(self) -> int:
        """Echo what the server received (one datagram); its size."""
        data, addr = self.server.recvfrom(65535)
        self.server.sendto(data, addr)
        self.client.recvfrom(65535)
        return len(data)

    def exchange(self, size: int) -> None:
        self.send(size)
        assert self.echo() == size

    def flow_keys(self) -> tuple[Key, Key]:
        """(egress, ingress) flow keys of this pair, as records spell them."""
        n = self.net
        return (
            (n.local_ip, n.peer_ip, self.client_port, self.port, "udp", "egress"),
            (n.peer_ip, n.local_ip, self.port, self.client_port, "udp", "ingress"),
        )

    def close(self) -> None:
        self.client.close()
        self.server.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class Pinger:
    """ICMP echo with an identifier of our choosing, through a raw socket (the peer's
    kernel answers)."""

    def __init__(self, net: Net, ident: int) -> None:
        self.net, self.ident = net, ident
        v4 = net.family == socket.AF_INET
        proto = socket.IPPROTO_ICMP if v4 else socket.IPPROTO_ICMPV6
        self.sock = socket.socket(net.family, socket.SOCK_RAW, proto)
        self.sock.settimeout(10)
        self.request, self.reply = (8, 0) if v4 else (128, 129)
        self.seq = 0

    def ping(self, size: int) -> None:
        self.seq += 1
        payload = b"p" * size
        head = struct.pack("!BBHHH", self.request, 0, 0, self.ident, self.seq)
        packet = head + payload
        if self.net.family == socket.AF_INET:  # the kernel sums ICMPv6 itself
            packet = head[:2] + struct.pack("!H", _checksum(packet)) + head[4:] + payload
        self.sock.sendto(packet, (self.net.peer_ip, 0))
        while True:  # a raw socket gets every ICMP message: wait for our reply
            data = self.sock.recv(65535)
            if self.net.family == socket.AF_INET:
                data = data[(data[0] & 0xF) * 4 :]
            kind, _, _, ident, seq = struct.unpack_from("!BBHHH", data)
            if kind == self.reply and ident == self.ident and seq == self.seq:
                return

    def flow_keys(self) -> tuple[Key, Key]:
        n, proto = self.net, "icmp" if self.net.family == socket.AF_INET else "icmpv6"
        return (
            (n.local_ip, n.peer_ip, self.ident, self.request << 8, proto, "egress"),
            (n.peer_ip, n.local_ip, self.ident, self.reply << 8, proto, "ingress"),
        )

    def close(self) -> None:
        self.sock.close()


class TcpPair:
    """A TCP connection from here to a listener in the namespace, small messages back
    and forth (each under one MSS, so every packet is one segment)."""

    def __init__(self, net: Net, port: int) -> None:
        self.net, self.port = net, port
        with in_netns(net.veth.ns):
            listener = socket.socket(net.family, socket.SOCK_STREAM)
        with listener:
            listener.bind((net.peer_ip, port))
            listener.listen(1)
            self.client = socket.create_connection((net.peer_ip, port), timeout=10)
            self.server, _ = listener.accept()
        self.server.settimeout(10)
        for s in (self.client, self.server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_port = self.client.getsockname()[1]

    def exchange(self, request: int, response: int) -> None:
        self.client.sendall(b"q" * request)
        _recv_exactly(self.server, request)
        self.server.sendall(b"r" * response)
        _recv_exactly(self.client, response)

    def close(self) -> None:
        """Both sides close: FIN each way, each acknowledged."""
        self.client.shutdown(socket.SHUT_WR)
        assert self.server.recv(1) == b""
        self.server.close()
        assert self.client.recv(1) == b""
        self.client.close()

    def flow_keys(self) -> tuple[Key, Key]:
        n = self.net
        return (
            (n.local_ip, n.peer_ip, self.client_port, self.port, "tcp", "egress"),
            (n.peer_ip, n.local_ip, self.port, self.client_port, "tcp", "ingress"),
        )


def _recv_exactly(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = sock.recv(n - got)
        assert chunk, "connection closed early"
        got += len(chunk)


class NftCounters:
    """nftables counters in the namespace for one TCP port: ``tcp dport`` at the input
    hook (what came from here: our egress) and ``tcp sport`` at the output hook (what
    went back: our ingress). They count skb->len there: the layer 3 length."""

    def __init__(self, ns: str, port: int) -> None:
        self.ns = ns
        self.table = f"bpfloom_flows_{os.getpid()}"
        rules = f"""
table inet {self.table} {{
    counter into {{}}
    counter back {{}}
    chain input {{ type filter hook input priority 0; tcp dport {port} counter name into; }}
    chain output {{ type filter hook output priority 0; tcp sport {port} counter name back; }}
}}
"""
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
        )

    def read(self) -> dict[str, tuple[int, int]]:
        """{"egress": (packets, bytes), "ingress": (packets, bytes)}, as our keys say."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-j", "list", "table", "inet", self.table],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        counters = {}
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                c = item["counter"]
                counters[c["name"]] = (c["packets"], c["bytes"])
        return {"egress": counters["into"], "ingress": counters["back"]}


# --- reading the tool ---------------------------------------------------------------------


def key_of(record: dict[str, Any]) -> Key:
    return (
        record["saddr"],
        record["daddr"],
        record["sport"],
        record["dport"],
        record["proto"],
        record["direction"],
    )


def totals(records: list[dict[str, Any]]) -> dict[Key, tuple[int, int]]:
    """(packets, bytes) per flow key, summed over the records."""
    out: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        acc = out[key_of(r)]
        acc[0] += r["packets"]
        acc[1] += r["bytes"]
    return {k: (p, b) for k, (p, b) in out.items()}


def by_key(records: list[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[key_of(r)].append(r)
    return out


@pytest.fixture
def make_flows() -> Iterator[Callable[..., Flows]]:
    """``Flows(...)``, attached, closed at teardown whatever the test did."""
    made: list[Flows] = []

    def make(interface: str, **kwargs: Any) -> Flows:
        tool = Flows(interface, **kwargs)
        made.append(tool)
        tool.attach()
        return tool

    yield make
    for tool in made:
        tool.close()


def finish(tool: Flows) -> list[dict[str, Any]]:
    """Detach, then the last records of every flow left."""
    tool.detach()
    return tool.flush()


def _tc(*args: str) -> str:
    return subprocess.run(["tc", *args], check=True, capture_output=True, text=True).stdout


def assert_interface_clean(interface: str, *, clsact: bool = False) -> None:
    """No tc filter on either hook, no XDP program, and a clsact qdisc only if the
    test put one there itself."""
    assert _tc("filter", "show", "dev", interface, "ingress").strip() == ""
    assert _tc("filter", "show", "dev", interface, "egress").strip() == ""
    assert ("clsact" in _tc("qdisc", "show", "dev", interface)) == clsact
    link = json.loads(ip_command("-j", "link", "show", interface))[0]
    assert "xdp" not in link, link


# --- exact counts ---------------------------------------------------------------------------


def test_concurrent_flows_counted_exactly(net: Net, make_flows: Callable[..., Flows]) -> None:
    """UDP, TCP and ICMP echo flows at once, both directions: every flow's packets and
    bytes are what the test sent (TCP: what nftables counted in the namespace)."""
    counters = NftCounters(net.veth.ns, 7001)
    tool = make_flows(net.local, active_timeout=60, idle_timeout=60)
    small, big = UdpPair(net, 7002), UdpPair(net, 7003)
    pinger = Pinger(net, ident=0x4242)
    tcp = TcpPair(net, 7001)
    small_sizes, big_sizes, ping_sizes = [10, 100, 0, 1], [1000, 1200, 900], [56, 300, 8, 1000]
    records = []
    for i in range(4):  # interleaved: every flow is live in the map at once
        small.exchange(small_sizes[i])
        if i < len(big_sizes):
            big.exchange(big_sizes[i])
        pinger.ping(ping_sizes[i])
        tcp.exchange(100 + i, 50 + i)
        records += tool.poll()
    tcp.close()
    records += finish(tool)
    for pair in (small, big):
        pair.close()
    pinger.close()

    got = totals(records)
    udp = 8 + net.ip_header
    icmp = 8 + net.ip_header
    for pair, sizes in ((small, small_sizes), (big, big_sizes)):
        expected = (len(sizes), sum(sizes) + len(sizes) * udp)
        assert got[pair.flow_keys()[0]] == expected
        assert got[pair.flow_keys()[1]] == expected
    expected = (len(ping_sizes), sum(ping_sizes) + len(ping_sizes) * icmp)
    assert got[pinger.flow_keys()[0]] == expected
    assert got[pinger.flow_keys()[1]] == expected
    nft = counters.read()
    egress, ingress = tcp.flow_keys()
    assert got[egress] == nft["egress"]
    assert got[ingress] == nft["ingress"]
    assert nft["egress"][0] >= 4 + 3  # requests, and SYN, FIN, ACKs
    flags = {r["direction"]: r["tcp_flags"] for r in records if r["proto"] == "tcp"}
    assert flags["egress"] & (SYN | FIN) == SYN | FIN
    assert flags["ingress"] & (SYN | FIN) == SYN | FIN
    assert not flags["egress"] & RST
    for r in records:
        assert tuple(r) == RECORD_KEYS
        assert r["first_seen"] <= r["last_seen"]
    assert tool.dropped_kernel() == 0
    assert tool.evicted() == 0


@pytest.mark.parametrize("tc_mode", ["auto", "clsact"])
def test_gso_super_packet_counts_as_its_segments(
    net: Net, make_flows: Callable[..., Flows], tc_mode: str
) -> None:
    """One UDP_SEGMENT send of 4700 bytes in 500-byte segments reaches tc egress as one
    skb: it counts as the 10 datagrams it becomes, each with its IP and UDP header;
    the same through tcx links and clsact filters."""
    tool = make_flows(net.local, active_timeout=60, idle_timeout=60, tc_mode=tc_mode)
    # The test machine's kernel (6.6+) has tcx, which auto prefers.
    assert tool.tc_attached == ("clsact" if tc_mode == "clsact" else "tcx")
    pair = UdpPair(net, 7010)
    pair.client.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 500)
    pair.send(4700)
    sizes = [pair.echo() for _ in range(10)]  # the receiver gets them one by one
    assert sizes == [500] * 9 + [200]
    got = totals(finish(tool))
    pair.close()
    expected = (10, 4700 + 10 * (8 + net.ip_header))
    assert got[pair.flow_keys()[0]] == expected
    assert got[pair.flow_keys()[1]] == expected  # the echoes: ten plain datagrams


def test_xdp_counts_ingress_only(net: Net, make_flows: Callable[..., Flows]) -> None:
    tool = make_flows(net.local, xdp=True, active_timeout=60, idle_timeout=60)
    link = json.loads(ip_command("-j", "link", "show", net.local))[0]
    assert "xdp" in link
    pair = UdpPair(net, 7020)
    for size in (20, 200, 2):
        pair.exchange(size)
    got = totals(finish(tool))
    pair.close()
    egress, ingress = pair.flow_keys()
    assert got[ingress] == (3, 222 + 3 * (8 + net.ip_header))
    assert egress not in got
    assert not [k for k in got if k[5] == "egress"]
    tool.close()
    assert_interface_clean(net.local)


# --- exports ------------------------------------------------------------------------------


@pytest.mark.parametrize("collide", [False, True], ids=["fingerprints", "collisions"])
def test_long_flow_reported_every_active_timeout(
    net4: Net, make_flows: Callable[..., Flows], monkeypatch: pytest.MonkeyPatch, collide: bool
) -> None:
    """A flow longer than the active timeout gets a record per timeout, each with what
    came since the previous one, and they add up. With every key's fingerprint the
    same, flows are matched by their keys and the records are the same."""
    if collide:
        monkeypatch.setattr(flows_module, "_fingerprints", lambda k: np.zeros(len(k), np.uint64))
    tool = make_flows(net4.local, active_timeout=0.3, idle_timeout=60)
    pair = UdpPair(net4, 7030)
    rounds = [3, 5, 2]
    records = []
    for count in rounds:
        for _ in range(count):
            pair.exchange(64)
        time.sleep(0.4)  # past the active timeout since the flow began / was reported
        records += tool.poll()
    records += finish(tool)
    pair.close()
    flows = by_key(records)
    for key in pair.flow_keys():
        mine = flows[key]
        assert [r["packets"] for r in mine] == rounds
        assert [r["bytes"] for r in mine] == [n * (64 + 28) for n in rounds]
        assert [r["reason"] for r in mine] == ["active"] * 3
        assert len({r["first_seen"] for r in mine}) == 1  # one flow, reported thrice
        assert mine[0]["last_seen"] < mine[1]["last_seen"] < mine[2]["last_seen"]


def test_idle_flow_expires_and_a_new_one_starts(
    net4: Net, make_flows: Callable[..., Flows]
) -> None:
    tool = make_flows(net4.local, active_timeout=60, idle_timeout=0.5)
    pair = UdpPair(net4, 7040)
    for _ in range(3):
        pair.exchange(10)
    time.sleep(0.7)
    first = tool.poll()
    egress, ingress = pair.flow_keys()
    expired = by_key(first)
    for key in (egress, ingress):
        assert [(r["packets"], r["bytes"], r["reason"]) for r in expired[key]] == [
            (3, 3 * 38, "idle")
        ]
    assert tool.removed >= 2
    assert not set(pair.flow_keys()) & set(by_key(tool.poll()))  # gone from the map
    pair.exchange(7)
    pair.exchange(7)
    later = by_key(finish(tool))
    pair.close()
    for key in (egress, ingress):
        (again,) = later[key]
        assert (again["packets"], again["bytes"], again["reason"]) == (2, 2 * 35, "exit")
        assert again["first_seen"] > expired[key][0]["last_seen"]
    assert tool.evicted() == 0  # removed by us, not evicted


def test_tcp_fin_ends_the_flow(net: Net, make_flows: Callable[..., Flows]) -> None:
    """A closed connection's flows are exported with reason 'end' once quiet for
    END_GRACE, long before the idle timeout, and leave the map."""
    counters = NftCounters(net.veth.ns, 7050)
    tool = make_flows(net.local, active_timeout=60, idle_timeout=60)
    tcp = TcpPair(net, 7050)
    tcp.exchange(300, 30)
    tcp.close()
    time.sleep(END_GRACE + 0.2)
    records = tool.poll()
    ended = by_key(records)
    nft = counters.read()
    for key in tcp.flow_keys():
        (record,) = ended[key]
        assert record["reason"] == "end"
        assert record["tcp_flags"] & FIN
        assert (record["packets"], record["bytes"]) == nft[key[5]]
    assert not [r for r in finish(tool) if key_of(r) in tcp.flow_keys()]  # gone from the map


# --- evictions ------------------------------------------------------------------------------


@pytest.fixture
def quiet_veth(veth: Veth) -> Veth:
    """``veth`` where only the test's IPv4 crosses: IPv6 off on both ends (no
    neighbour discovery, no MLD), the namespace drops UDP to ports 20000-29999 before
    it can draw an ICMP error, and ARP is resolved both ways."""
    peer = veth.local[:-1] + "b"
    for args in (
        ["sysctl", "-qw", f"net.ipv6.conf.{veth.local}.disable_ipv6=1"],
        ["ip", "netns", "exec", veth.ns, "sysctl", "-qw", f"net.ipv6.conf.{peer}.disable_ipv6=1"],
        ["ip", "netns", "exec", veth.ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"],
    ):
        subprocess.run(args, check=True)
    table = """
table inet bpfloom_flows_drop {
    chain input { type filter hook input priority 0; udp dport 20000-29999 drop; }
}
"""
    subprocess.run(
        ["ip", "netns", "exec", veth.ns, "nft", "-f", "-"], input=table, text=True, check=True
    )
    subprocess.run(["ping", "-c", "1", "-W", "2", veth.peer_ip], check=True, capture_output=True)
    return veth


def _udp_flows(veth: Veth, ports: range, packets: int = 1) -> None:
    """One flow to each of ``ports`` (dropped in the namespace), ``packets`` each."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in ports:
            for _ in range(packets):
                s.sendto(b"e", (veth.peer_ip, port))


def test_evictions_counted_when_the_map_is_full(
    quiet_veth: Veth, make_flows: Callable[..., Flows]
) -> None:
    """500 one-packet flows through a 128-flow map: the flows reported at exit plus
    those counted as evicted are exactly the 500 (nothing else crosses)."""
    tool = make_flows(quiet_veth.local, active_timeout=60, idle_timeout=60, max_flows=128)
    _udp_flows(quiet_veth, range(20000, 20500))
    records = finish(tool)
    assert all((r["proto"], r["packets"], r["bytes"]) == ("udp", 1, 29) for r in records)
    assert tool.created() == 500
    assert tool.left == len(records) <= 128
    assert tool.evicted() == 500 - len(records)
    assert tool.evicted() >= 500 - 128
    assert tool.dropped_kernel() == 0


def test_flow_evicted_and_created_again_reports_only_its_new_life(
    quiet_veth: Veth, make_flows: Callable[..., Flows]
) -> None:
    """A flow already reported is evicted, then its key comes back with fewer packets
    than were reported: the new entry is a new life (a later first packet), reported
    from zero — not compared with what was remembered of the old one."""
    net = _net(quiet_veth, 4)
    tool = make_flows(quiet_veth.local, active_timeout=0.2, idle_timeout=60, max_flows=128)
    flows_map = tool.obj.maps["flows"]
    # Every packet from one CPU: the LRU's free lists are per CPU, and a flow created
    # on another CPU's list may outlive what this one sends.
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    with contextlib.ExitStack() as restore, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        restore.callback(os.sched_setaffinity, 0, affinity)
        a.bind((net.local_ip, 0))
        for _ in range(3):
            a.sendto(b"x" * 10, (net.peer_ip, 29999))
        key = (net.local_ip, net.peer_ip, a.getsockname()[1], 29999, "udp", "egress")
        time.sleep(0.3)
        (first,) = by_key(tool.poll())[key]
        assert (first["packets"], first["reason"]) == (3, "active")
        # Until it is evicted: flows of two packets each, since the kernel's LRU gives
        # a flow that was looked up again (a second packet) a second chance over
        # one-packet flows.
        for start in range(20000, 29000, 200):
            _udp_flows(quiet_veth, range(start, start + 200), packets=2)
            if not any(k.dport == 29999 for k in flows_map):
                break
        else:
            pytest.fail("a 128-flow map kept a flow through 9000 others")
        a.sendto(b"x" * 20, (net.peer_ip, 29999))
        a.sendto(b"x" * 20, (net.peer_ip, 29999))
    (again,) = by_key(finish(tool))[key]
    assert (again["packets"], again["bytes"]) == (2, 2 * 48)
    assert again["first_seen"] > first["last_seen"]
    assert tool.evicted() > 0


# --- the command ----------------------------------------------------------------------------


@contextlib.contextmanager
def flows_cli(
    args: list[str], tmp_path: Path, stdout: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``bpfloom flows ARGS`` in the background, once it traces: stdout to ``stdout``
    (a path; default tmp_path/stdout), stderr to tmp_path/stderr; killed at the end
    of the block if it still runs."""
    with (
        open(tmp_path / "stderr", "w") as err,
        open(stdout or tmp_path / "stdout", "w") as out,
    ):
        proc = subprocess.Popen(
            [*BPFLOOM, "flows", *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "bpfloom flows: tracing" not in (tmp_path / "stderr").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"flows never traced:\n{(tmp_path / 'stderr').read_text()}")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("tc_mode", ["auto", "clsact"])
def test_cli_json_ctrl_c_flushes_and_leaves_nothing(net: Net, tmp_path: Path, tc_mode: str) -> None:
    """Ctrl-C: the last records, and nothing left: with tcx links (auto, on this
    kernel) no qdisc is ever made; with clsact filters, the filters and the qdisc
    flows made go."""
    args = ["-i", net.local, "--json", "--active-timeout", "60", "--tc-mode", tc_mode]
    with flows_cli(args, tmp_path) as proc:
        ids = own_bpf_ids(proc.pid)
        assert len(ids["prog"]) == 2
        filters = _tc("filter", "show", "dev", net.local, "ingress")
        filters += _tc("filter", "show", "dev", net.local, "egress")
        if tc_mode == "clsact":
            assert "clsact" in _tc("qdisc", "show", "dev", net.local)
            assert "flows_ingress" in filters and "flows_egress" in filters
        else:
            assert len(ids["link"]) == 2  # the tcx links
            assert_interface_clean(net.local)  # tcx: no qdisc, no filter
        pair = UdpPair(net, 7060)
        for size in (5, 50, 500):
            pair.exchange(size)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
    stderr = (tmp_path / "stderr").read_text()
    records = [json.loads(line) for line in (tmp_path / "stdout").read_text().splitlines()]
    got = totals(records)
    pair.close()
    expected = (3, 555 + 3 * (8 + net.ip_header))
    assert got[pair.flow_keys()[0]] == expected
    assert got[pair.flow_keys()[1]] == expected
    assert {r["reason"] for r in records if key_of(r) in pair.flow_keys()} == {"exit"}
    assert all(tuple(r) == RECORD_KEYS for r in records)
    assert re.search(
        rf"bpfloom flows: {len(records)} flow records on {net.local}; 0 packets not counted, "
        r"0 flows evicted",
        stderr,
    ), stderr
    assert "Traceback" not in stderr
    assert_interface_clean(net.local)
    assert_gone_from_kernel(ids)


def test_cli_killed_leaves_nothing_with_tcx(net4: Net, tmp_path: Path) -> None:
    """SIGKILL gives the command no chance to detach: its tcx links go with its file
    descriptors (a clsact filter would stay)."""
    with flows_cli(["-i", net4.local, "--tc-mode", "tcx"], tmp_path) as proc:
        ids = own_bpf_ids(proc.pid)
        assert len(ids["link"]) == 2
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert_interface_clean(net4.local)
    assert_gone_from_kernel(ids)


def test_cli_table_and_a_clsact_qdisc_that_was_there_stays(net4: Net, tmp_path: Path) -> None:
    """The top-talkers table; a clsact qdisc someone else made is left in place, our
    filters on it are not."""
    _tc("qdisc", "add", "dev", net4.local, "clsact")
    args = ["-i", net4.local, "--interval", "0.2", "--duration", "3", "--tc-mode", "clsact"]
    with flows_cli(args, tmp_path) as proc:
        pair = UdpPair(net4, 7070)
        pair.exchange(1000)
        assert proc.wait(timeout=TIMEOUT) == 0
    out = (tmp_path / "stdout").read_text()
    header = re.compile(r"^DIR +PROTO +SOURCE +DESTINATION +PACKETS +BYTES +RATE +FLAGS$", re.M)
    assert header.search(out), out
    local, peer = f"{net4.local_ip}:{pair.client_port}", f"{net4.peer_ip}:7070"
    row = re.compile(rf"^out +udp +{re.escape(local)} +{re.escape(peer)} +1 +1028 +\S+ +-$", re.M)
    assert row.search(out), out
    pair.close()
    assert_interface_clean(net4.local, clsact=True)


def test_cli_error_while_tracing_leaves_nothing(net4: Net, tmp_path: Path) -> None:
    """stdout is a full device: the first record cannot be written, the run stops
    with one error line, status 1, and the interface is as it was."""
    with flows_cli(
        ["-i", net4.local, "--json", "--active-timeout", "0.2"], tmp_path, "/dev/full"
    ) as proc:
        ids = own_bpf_ids(proc.pid)
        pair = UdpPair(net4, 7080)
        pair.exchange(10)
        assert proc.wait(timeout=TIMEOUT) == 1
    pair.close()
    stderr = (tmp_path / "stderr").read_text()
    assert "bpfloom: error: " in stderr and "Traceback" not in stderr, stderr
    assert_interface_clean(net4.local)
    assert_gone_from_kernel(ids)


def test_cli_refused_xdp_mode_leaves_nothing(net4: Net) -> None:
    result = run_tool_cli("flows", "-i", net4.local, "--xdp", "--xdp-mode", "offload")
    one_error_line(result, net4.local)
    assert_interface_clean(net4.local)


def test_cli_xdp_ctrl_c(net4: Net, tmp_path: Path) -> None:
    with flows_cli(["-i", net4.local, "--xdp", "--json"], tmp_path) as proc:
        assert "xdp" in json.loads(ip_command("-j", "link", "show", net4.local))[0]
        pair = UdpPair(net4, 7090)
        pair.exchange(3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
    records = [json.loads(line) for line in (tmp_path / "stdout").read_text().splitlines()]
    assert totals(records)[pair.flow_keys()[1]] == (1, 31)
    pair.close()
    assert_interface_clean(net4.local)


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (["-i", "nosuchif0"], 1, "no network interface 'nosuchif0'"),
        (["-i", "lo", "--xdp-mode", "skb"], 2, "--xdp-mode needs --xdp"),
        (["-i", "lo", "--xdp", "--tc-mode", "tcx"], 2, "--tc-mode and --xdp"),
        (["-i", "lo", "--idle-timeout", "0"], 2, "--idle-timeout"),
        (["-i", "lo", "--max-flows", "0"], 2, "--max-flows"),
        ([], 2, "--interface"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], status: int, needle: str) -> None:
    one_error_line(run_tool_cli("flows", *args), needle, status=status)


def test_cli_metrics_addr_serves_totals_per_direction_and_protocol(
    quiet_veth: Veth, tmp_path: Path
) -> None:
    """Prometheus gets packets, bytes and records per direction and protocol (one
    series per flow would never end), summed over the records written."""
    port = free_port()
    with flows_cli(
        ["-i", quiet_veth.local, "--json", "--active-timeout", "0.2", "--metrics-addr", str(port)],
        tmp_path,
    ) as proc:
        _udp_flows(quiet_veth, range(20001, 20004), packets=2)  # 3 flows, dropped there
        want = {
            "bpfloom_flows_packets_total": 6,
            "bpfloom_flows_bytes_total": 6 * 29,
            "bpfloom_flows_records_total": 3,
        }
        labels = '{tool="flows",direction="egress",proto="udp"}'
        deadline = time.monotonic() + TIMEOUT
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            got = {
                name: float(m.group(1))
                for name in want
                if (m := re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M))
            }
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got == want, text
        promtool_check(text)
        assert "sport" not in text and "saddr" not in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0


def test_cli_refuses_an_interface_without_ethernet_frames() -> None:
    """A tun device carries bare IP packets: the programs would parse nothing, so the
    command says so instead of counting nothing."""
    tun = f"bfltun{os.getpid() % 100000}"
    ip_command("tuntap", "add", "dev", tun, "mode", "tun")
    try:
        result = run_tool_cli("flows", "-i", tun)
        one_error_line(result, f"interface {tun!r} does not carry Ethernet frames")
        assert_interface_clean(tun)
    finally:
        subprocess.run(["ip", "link", "del", tun], capture_output=True, check=False)


def test_attach_tcx_errors_name_the_hook() -> None:
    with Flows("lo", tc_mode="tcx") as tool:
        prog = tool.obj.programs["flows_ingress"]
        with pytest.raises(AttachError, match="nosuchif0"):
            prog.attach_tcx("nosuchif0")
        with pytest.raises(AttachError, match="'sideways'"):
            prog.attach_tcx("lo", "sideways")
        assert tool.obj.links == []
