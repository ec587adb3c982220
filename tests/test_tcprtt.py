"""tcprtt on real connections: one over a link that delays every packet by a known time
(``tcpnet.DelayedLink``), one over the plain veth pair, into the test's own namespace.

Over the delayed link every round trip takes at least twice the delay, so every srtt
sample of its two sockets is at least that: the histogram's mass sits in the slots the
delay puts it in, and none below. Both ends are sockets of this host, so each
connection gives samples from both (the client's, keyed by the server's address, and
the server's). Every tool instance is attached before the traffic starts and the
connections are shut down in a way that leaves no segment for tcp_rcv_established
afterwards (``ping_pong``), so every instance sees exactly the same samples: a filter
must keep exactly the unfiltered instance's samples of the sockets it matches.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bpfloom.tools.tcprtt import TcpRtt
from conftest import Veth, assert_gone_from_kernel, own_bpf_ids
from tcpnet import DelayedLink, add_ipv6, client, in_netns, listener, port_of, recv_exactly
from toolrun import one_error_line, run_tool_cli

DELAY = 0.025  # seconds, each way
MIN_RTT_US = 50_000  # twice the delay
SLOW_SLOT_US = 15  # MIN_RTT_US is in [2**15, 2**16) usecs
SLOW_SLOT_MS = 5  # 50 ms is in [2**5, 2**6) msecs
ROUNDS = 10


@dataclass
class Ends:
    version: int
    slow_local: str  # this side of the delayed link
    slow_peer: str  # the namespace's side
    fast_local: str  # the veth pair
    fast_peer: str
    ns: str

    @property
    def ours(self) -> set[str]:
        return {self.slow_local, self.slow_peer, self.fast_local, self.fast_peer}


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def ends(request: pytest.FixtureRequest, veth: Veth) -> Iterator[Ends]:
    link = DelayedLink(veth.ns, DELAY)
    try:
        if request.param == 4:
            yield Ends(4, link.local, link.peer, veth.local_ip, veth.peer_ip, veth.ns)
        else:
            local6, peer6 = add_ipv6(veth)
            yield Ends(6, link.local6, link.peer6, local6, peer6, veth.ns)
    finally:
        link.close()


def ping_pong(server: socket.socket, address: str, rounds: int = ROUNDS) -> None:
    """Connect to ``server`` (listening at ``address``), exchange ``rounds`` one-byte
    messages each way, and shut down: the client's FIN reaches the server while it is
    established (its last sample), then both leave ESTABLISHED, so once the client has
    read the server's FIN no segment of this connection is sampled any more."""
    with client(address) as c:
        c.connect((address, port_of(server)))
        conn, _ = server.accept()
        with conn:
            exchange(c, conn, rounds)


def exchange(c: socket.socket, conn: socket.socket, rounds: int) -> None:
    for _ in range(rounds):
        c.sendall(b"p")
        recv_exactly(conn, 1)
        conn.sendall(b"q")
        recv_exactly(c, 1)
    c.shutdown(socket.SHUT_WR)
    assert conn.recv(1) == b""
    conn.close()
    assert c.recv(1) == b""


def servers(ends: Ends) -> tuple[socket.socket, socket.socket]:
    """Listening sockets in the namespace, on the delayed link and on the veth pair, on
    different ports (so that a port filter tells them apart)."""
    slow = in_netns(ends.ns, lambda: listener(ends.slow_peer))
    fast = in_netns(ends.ns, lambda: listener(ends.fast_peer, port_of(slow) + 1))
    return slow, fast


def by_address(rows: list[dict[str, Any]], key: str, ours: set[str]) -> dict[str, Any]:
    """The rows of our addresses, by ``key`` (laddr or raddr); each address once."""
    mine = [r for r in rows if r[key] in ours]
    found = {r[key]: r for r in mine}
    assert len(found) == len(mine), mine
    return found


@pytest.mark.kernel
def test_histogram_mass_where_the_delay_puts_it(start_tool: Any, ends: Ends) -> None:
    other = "-6" if ends.version == 4 else "-4"
    every = start_tool("tcprtt", "--json", "-B", "-e")
    text = start_tool("tcprtt", "-m", "-e", "-T", "-A", ends.slow_peer)
    filtered = start_tool("tcprtt", "--json", "-B", other)
    ids = own_bpf_ids(every.proc.pid)
    slow, fast = servers(ends)
    with slow, fast:
        ping_pong(slow, ends.slow_peer)
        ping_pong(fast, ends.fast_peer)

    result = every.stop()
    assert result.returncode == 0, result.stderr
    rows = by_address(result.json_lines(), "raddr", ends.ours)
    assert set(rows) == ends.ours
    for address in (ends.slow_peer, ends.slow_local):  # the client's samples, the server's
        row = rows[address]
        assert set(row) == {"interval", "time", "raddr", "unit", "slots", "count", "avg"}
        assert row["unit"] == "usecs" and row["count"] >= ROUNDS, row
        assert sum(row["slots"][:SLOW_SLOT_US]) == 0, row  # nothing under 2**15 us
        assert row["avg"] >= MIN_RTT_US, row
    for address in (ends.fast_peer, ends.fast_local):
        assert rows[address]["count"] >= ROUNDS
    assert_gone_from_kernel(ids)
    assert not by_address(filtered.stop().json_lines(), "raddr", ends.ours)

    # libbpf-tools' layout: a blank line, the time, the header with the average, bars.
    lines = text.stop().stdout.splitlines()
    assert lines[0] == "" and re.fullmatch(r"\d\d:\d\d:\d\d", lines[1]), lines
    header = re.fullmatch(r"All Address = \*{6} \[AVG (\d+)\]", lines[2])
    assert header is not None and int(header[1]) >= MIN_RTT_US // 1000, lines
    assert lines[3] == "     msecs               : count    distribution"
    bars = [re.match(r" +(\d+) -> (\d+) +: (\d+) ", line) for line in lines[4:]]
    assert all(bars) and len(bars) >= SLOW_SLOT_MS + 1, lines
    assert [int(bar[3]) for bar in bars if bar][:SLOW_SLOT_MS] == [0] * SLOW_SLOT_MS


@pytest.mark.kernel
def test_filters_keep_exactly_their_sockets(start_tool: Any, ends: Ends) -> None:
    slow, fast = servers(ends)
    sport = port_of(slow)
    every_remote = start_tool("tcprtt", "--json", "-B")
    every_local = start_tool("tcprtt", "--json", "-b")
    runs = {
        ("-A", ends.slow_peer): start_tool("tcprtt", "--json", "-B", "-A", ends.slow_peer),
        ("-a", ends.slow_local): start_tool("tcprtt", "--json", "-b", "-a", ends.slow_local),
        ("-P", sport): start_tool("tcprtt", "--json", "-B", "-P", str(sport)),
        ("-p", sport): start_tool("tcprtt", "--json", "-B", "-p", str(sport)),
    }
    with slow, fast:
        ping_pong(slow, ends.slow_peer)
        ping_pong(fast, ends.fast_peer)

    remote = by_address(every_remote.stop().json_lines(), "raddr", ends.ours)
    local = by_address(every_local.stop().json_lines(), "laddr", ends.ours)
    assert set(remote) == set(local) == ends.ours
    # The client on the delayed link: local slow_local, remote slow_peer:sport; its
    # server: local slow_peer:sport, remote slow_local.
    expected = {
        ("-A", ends.slow_peer): ("raddr", remote[ends.slow_peer]),
        ("-a", ends.slow_local): ("laddr", local[ends.slow_local]),
        ("-P", sport): ("raddr", remote[ends.slow_peer]),
        ("-p", sport): ("raddr", remote[ends.slow_local]),
    }
    for option, run in runs.items():
        key, want = expected[option]
        got = by_address(run.stop().json_lines(), key, ends.ours)
        assert list(got) == [want[key]], (option, got)
        assert got[want[key]]["slots"] == want["slots"], option


@pytest.mark.kernel
def test_library_leaves_nothing_in_the_kernel() -> None:
    before = own_bpf_ids()
    with TcpRtt(by="raddr", laddr="::1", lport=22, milliseconds=True) as tool:
        tool.attach()
        made = {kind: own_bpf_ids()[kind] - before[kind] for kind in before}
        assert made["prog"] and made["link"]
        assert tool.histograms() == []  # nothing comes from [::1]:22
    assert_gone_from_kernel(made)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["-b", "-B"], ["-b and -B"]),
        (["-4", "-6"], ["-4 and -6"]),
        (["-a", "10.0.0"], ["'10.0.0' is not an IPv4 or IPv6 address"]),
        (["-A", "host.example"], ["is not an IPv4 or IPv6 address"]),
        (["-p", "0"], ["port 0 is not between 1 and 65535"]),
        (["-P", "70000"], ["port 70000"]),
        (["-i", "1", "2"], ["give the interval once"]),
        (["-d", "1", "--duration", "2"], ["give the duration once"]),
        (["-i", "nan"], ["nan"]),
    ],
)
def test_bad_command_lines(args: list[str], needles: list[str]) -> None:
    one_error_line(run_tool_cli("tcprtt", *args), *needles, status=2)


@pytest.mark.kernel
def test_libbpf_tools_interval_and_duration() -> None:
    """``-i 0.2 -d 1``: 0.2 s summaries for a second, then it exits by itself."""
    result = run_tool_cli("tcprtt", "--json", "-i", "0.2", "-d", "1", "-A", "::1")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^bpfloom tcprtt: \d+ RTT samples counted", result.stderr, re.M)
