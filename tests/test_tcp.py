"""The TCP life-cycle tools on real connections: tcplife, tcpstates, tcpconnect,
tcpconnlat and tcpaccept.

Traffic crosses a veth pair into a network namespace of the test's own (IPv4, and IPv6
addresses added here), between peer processes with known pids and names
(``tcppeers.py``). The tools trace every TCP socket of the machine, and other test runs
make connections of their own at the same time, so records are picked by our network
namespaces, addresses and ports; filter tests check that *every* record a filtered tool
printed passes the filter.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bpfloom.tools.inet import TCP_STATES
from bpfloom.tools.tcplife import TcpLife
from bpfloom.tools.tcpstate import connect_result, parse_ports, port_bitmap
from conftest import Veth, assert_gone_from_kernel, ip_command, own_bpf_ids
from tcppeers import Peer, client_code, family_of, netns_inode, server_code
from toolrun import TIMEOUT, ToolRun, one_error_line, run_tool_cli

pytestmark = pytest.mark.kernel

Record = dict[str, Any]


@dataclass
class Net:
    """The test's network: this namespace's end of a veth pair and a namespace ``ns``
    with the other end, each with an IPv4 and an IPv6 address."""

    ns: str
    local4: str
    peer4: str
    local6: str
    peer6: str

    def addresses(self, version: int) -> tuple[str, str]:
        """(ours, the namespace's) addresses of IP ``version``."""
        return (self.local4, self.peer4) if version == 4 else (self.local6, self.peer6)


@pytest.fixture
def net(veth: Veth) -> Iterator[Net]:
    """The veth fixture with IPv6 addresses too (no duplicate address detection, so they
    work at once), in a /64 derived from our pid like the fixture's IPv4 /30."""
    prefix = f"fd00:bf10:{os.getpid() % 65536:x}:"
    local6, peer6 = f"{prefix}:1", f"{prefix}:2"
    ip_command("-6", "addr", "add", f"{local6}/64", "dev", veth.local, "nodad")
    ip_command(
        "-n", veth.ns, "-6", "addr", "add", f"{peer6}/64", "dev", f"{veth.local[:-1]}b", "nodad"
    )
    yield Net(veth.ns, veth.local_ip, veth.peer_ip, local6, peer6)


def in_netns(ns: str, *command: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *command], check=True, capture_output=True)


def records(run: ToolRun) -> list[Record]:
    """The JSON records a tool has printed so far (whole lines only)."""
    text = run.stdout_now()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def wait_for(run: ToolRun, done: Callable[[list[Record]], bool], what: str) -> list[Record]:
    """The tool's records once ``done(records)``; fails if the tool ends or hangs first.
    The deadline only bounds a hang."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = records(run)
        if done(found):
            return found
        if run.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{run.tool}: never printed {what}:\n{run.stdout_now()[-3000:]}")
        time.sleep(0.05)


def stop_clean(run: ToolRun) -> list[Record]:
    """Stop a tool; its records, after checking it exited 0 and lost nothing."""
    result = run.stop()
    assert result.returncode == 0, result.stderr
    _, kernel, user = result.lost()
    assert (kernel, user) == (0, 0), result.stderr
    return result.json_lines()


def our_port() -> int:
    """A port of this test run: from the pid like the veth fixture's addresses, and
    below the ephemeral range (32768 up), so that no client socket of another program
    has it as its local port while the tools watch every socket of the machine."""
    return 10000 + os.getpid() % 20000


@dataclass
class Session:
    """One client/server exchange across the veth pair, as both peers measured it."""

    client: Peer
    server: Peer
    port: int
    client_said: Record
    server_said: Record


N_SENT, M_RECEIVED = 100_003, 54_321  # what the client sends and receives


def start_session(net: Net, version: int, port: int, comm: str = "tl") -> tuple[Peer, Peer]:
    """A server in the namespace and a client here, both waiting for the go-ahead (so
    that tools started now see the whole session: listen(), connect() and all)."""
    theirs = net.addresses(version)[1]
    server = Peer(
        server_code(theirs, port, receive=N_SENT, send=M_RECEIVED),
        comm=f"{comm}srv",
        netns=net.ns,
    )
    client = Peer(client_code(theirs, port, send=N_SENT, receive=M_RECEIVED), comm=f"{comm}cli")
    return client, server


def finish_session(client: Peer, server: Peer, port: int) -> Session:
    """Run a session from start_session to its end: listen, connect, exchange, close."""
    server.go()
    assert server.read()["listening"] == port
    client.go()
    client_said = client.finish()
    server_said = server.finish()
    assert client_said["err"] is None
    assert server_said["peer_port"] == client_said["port"]
    return Session(client, server, port, client_said, server_said)


def test_port_lists_and_bitmaps() -> None:
    assert parse_ports("80") == (80,)
    assert parse_ports("80, 443,0,65535") == (80, 443, 0, 65535)
    for bad in ("", "80,", "http", "-1", "65536", "1.5", "\u00b2", "\u0661"):
        with pytest.raises(ValueError, match="not a port number"):
            parse_ports(bad)
    words = port_bitmap([0, 63, 64, 65535])
    assert len(words) == 1024
    assert words[0] == 1 | 1 << 63 and words[1] == 1 and words[1023] == 1 << 63
    assert sum(bin(w).count("1") for w in words) == 4
    assert connect_result(True, 0) == "ok"
    assert [connect_result(False, e) for e in (0, 111, 110, 113, 4095)] == [
        "aborted",
        "ECONNREFUSED",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "errno 4095",
    ]


# --- tcplife ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_tcplife_reports_exact_bytes_owners_and_life(
    start_tool: Any, net: Net, version: int
) -> None:
    ours, theirs = net.addresses(version)
    port = our_port()
    run = start_tool("tcplife", "--json")
    client, server = start_session(net, version, port)
    s = finish_session(client, server, port)
    ns = netns_inode(net.ns)

    def mine(found: list[Record]) -> list[Record]:
        return [
            r for r in found if port in (r["lport"], r["rport"]) and r["laddr"] in (ours, theirs)
        ]

    wait_for(run, lambda found: len(mine(found)) == 2, "both ends of the session")
    t_seen = time.monotonic()  # both sockets had reached CLOSE before this
    found = mine(stop_clean(run))
    assert len(found) == 2, found
    cli = next(r for r in found if r["rport"] == port)
    srv = next(r for r in found if r["lport"] == port)
    family = "IPv4" if version == 4 else "IPv6"

    assert cli["pid"] == client.pid and cli["comm"] == "tlcli"
    assert (cli["laddr"], cli["lport"], cli["raddr"]) == (ours, s.client_said["port"], theirs)
    assert (cli["tx_bytes"], cli["rx_bytes"]) == (N_SENT, M_RECEIVED)
    assert (cli["tx_kb"], cli["rx_kb"]) == (N_SENT / 1024, M_RECEIVED / 1024)
    assert (cli["family"], cli["netns"]) == (family, netns_inode())

    assert srv["pid"] == server.pid and srv["comm"] == "tlsrv"
    assert (srv["laddr"], srv["raddr"], srv["rport"]) == (theirs, ours, s.client_said["port"])
    assert (srv["tx_bytes"], srv["rx_bytes"]) == (M_RECEIVED, N_SENT)
    assert (srv["family"], srv["netns"]) == (family, ns)

    # The life spans what each peer saw of it, and fits in the time the test took.
    c, v = s.client_said, s.server_said
    assert (c["t_close"] - c["t_conn"]) * 1e3 <= cli["ms"] <= (t_seen - c["t_start"]) * 1e3
    assert (v["t_close"] - v["t_accept"]) * 1e3 <= srv["ms"] <= (t_seen - c["t_start"]) * 1e3
    assert set(cli) == {
        "time", "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "netns",
        "tx_kb", "rx_kb", "ms", "tx_bytes", "rx_bytes",
    }  # fmt: skip


def test_tcplife_table(start_tool: Any, net: Net) -> None:
    port = our_port()
    run = start_tool("tcplife", "-T", "-L", str(port))
    s = finish_session(*start_session(net, 4, port), port)
    run.wait_output(f" {port} ")
    result = run.stop()
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "TIME", "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS",
    ]  # fmt: skip
    row = lines[1].split()
    assert row[1:8] == [
        str(s.server.pid),
        "tlsrv",
        net.peer4,
        str(port),
        net.local4,
        str(s.client_said["port"]),
        f"{M_RECEIVED / 1024:.2f}",
    ]
    assert row[8] == f"{N_SENT / 1024:.2f}" and len(lines) == 2


def test_tcplife_library_and_nothing_left_in_kernel(net: Net) -> None:
    port = our_port()
    before = own_bpf_ids()
    with TcpLife(rports=[port]) as tool:
        ids = {kind: own_bpf_ids()[kind] - before[kind] for kind in before}
        assert ids["prog"] and ids["map"]
        tool.attach()
        assert own_bpf_ids()["link"] - before["link"]
        s = finish_session(*start_session(net, 4, port), port)
        found: list[Record] = []
        deadline = time.monotonic() + TIMEOUT
        while not found and time.monotonic() < deadline:
            found += tool.read(timeout=0.2)
        ids["link"] = own_bpf_ids()["link"] - before["link"]
    assert [(r["pid"], r["rport"], r["tx_bytes"]) for r in found] == [(s.client.pid, port, N_SENT)]
    assert_gone_from_kernel(ids)


# --- tcpstates ----------------------------------------------------------------------------

CLIENT_STATES = [
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
]
SERVER_STATES = [
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
]
LISTENER_STATES = [("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")]


def by_socket(found: list[Record]) -> dict[str, list[tuple[str, str]]]:
    sockets: dict[str, list[tuple[str, str]]] = {}
    for r in found:
        sockets.setdefault(r["skaddr"], []).append((r["oldstate"], r["newstate"]))
    return sockets


@pytest.mark.parametrize("version", [4, 6])
def test_tcpstates_whole_sequence_of_both_sides(start_tool: Any, net: Net, version: int) -> None:
    ours, theirs = net.addresses(version)
    port = our_port()
    run = start_tool("tcpstates", "--json")
    s = finish_session(*start_session(net, version, port), port)
    ns, here = netns_inode(net.ns), netns_inode()

    def client_side(found: list[Record]) -> list[Record]:
        return [
            r for r in found if r["netns"] == here and (r["raddr"], r["rport"]) == (theirs, port)
        ]

    def server_side(found: list[Record]) -> list[Record]:
        return [r for r in found if r["netns"] == ns and r["lport"] == port]

    wait_for(
        run,
        lambda found: len(client_side(found)) == 5 and len(server_side(found)) == 7,
        "both sides' state changes",
    )
    found = stop_clean(run)
    client, server = client_side(found), server_side(found)
    assert list(by_socket(client).values()) == [CLIENT_STATES]
    sockets = by_socket(server)
    assert sorted(sockets.values()) == sorted([SERVER_STATES, LISTENER_STATES])

    # One owner throughout: the client from connect(), the server's accepted socket
    # from its listener (listen() was seen) and then accept().
    assert {(r["pid"], r["comm"]) for r in client} == {(s.client.pid, "tlcli")}
    assert {(r["pid"], r["comm"]) for r in server} == {(s.server.pid, "tlsrv")}
    assert {(r["laddr"], r["raddr"]) for r in client} == {(ours, theirs)}
    child = [r for r in server if r["skaddr"] != server[0]["skaddr"]]
    assert {(r["laddr"], r["raddr"], r["rport"]) for r in child[1:]} == {
        (theirs, ours, s.client_said["port"])
    }
    # Times in the previous state: unknown for a socket's first change, else measured.
    firsts = {r["skaddr"]: r for r in reversed(client + server)}
    for r in client + server:
        if r is firsts[r["skaddr"]]:
            assert r["ms"] is None, r
        else:
            assert r["ms"] >= 0, r
    established = next(r for r in client if r["newstate"] == "ESTABLISHED")
    assert established["ms"] <= (s.client_said["t_conn"] - s.client_said["t_start"]) * 1e3
    assert established["lport"] == s.client_said["port"]
    assert {r["oldstate"] for r in found} | {r["newstate"] for r in found} <= set(
        TCP_STATES.values()
    )


def test_owner_of_a_server_started_before_tracing(start_tool: Any, net: Net) -> None:
    """A server that called listen() before the tools started: its handshake's changes
    have no owner yet (pid 0), accept() names it for the rest, and tcplife, which
    reports at the close, has it."""
    port = our_port()
    client, server = start_session(net, 4, port, comm="lb")
    server.go()
    assert server.read()["listening"] == port
    states = start_tool("tcpstates", "--json", "-L", str(port))
    life = start_tool("tcplife", "--json", "-L", str(port))
    client.go()
    client.finish()
    server.finish()
    wait_for(states, lambda found: len(found) == 6, "the listener's close and 5 changes")
    wait_for(life, lambda found: len(found) == 1, "the server's session")
    rows = stop_clean(states)
    sessions = stop_clean(life)
    child = [r for r in rows if r["oldstate"] != "LISTEN" or r["newstate"] != "CLOSE"]
    assert [((r["oldstate"], r["newstate"]), r["pid"], r["comm"]) for r in child] == [
        (SERVER_STATES[0], 0, ""),
        (SERVER_STATES[1], 0, ""),
        *((states, server.pid, "lbsrv") for states in SERVER_STATES[2:]),
    ]
    listener = [r for r in rows if r not in child]
    assert [(r["pid"], r["ms"]) for r in listener] == [(0, None)]  # first seen at its close
    assert [(r["pid"], r["comm"], r["lport"]) for r in sessions] == [(server.pid, "lbsrv", port)]


def test_tcpstates_table(start_tool: Any, net: Net) -> None:
    port = our_port()
    run = start_tool("tcpstates", "-w", "-D", str(port))
    finish_session(*start_session(net, 6, port), port)
    run.wait_output("FIN_WAIT2   -> CLOSE")
    lines = run.stop().stdout.splitlines()
    header = "SKADDR PID COMM IP LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS"
    assert lines[0].split() == header.split()
    rows = [line.split() for line in lines[1:]]
    assert [(r[8], r[10]) for r in rows] == CLIENT_STATES
    assert {(r[2], r[3], r[4], r[6], r[7]) for r in rows} == {
        ("tlcli", "6", net.local6, net.peer6, str(port))
    }
    assert rows[0][11] == "-" and all(float(r[11]) >= 0 for r in rows[1:])


# --- tcpconnect, tcpconnlat, tcpaccept ------------------------------------------------------

DROPPED_PORT_OFFSET = 1  # the namespace drops SYNs to port + 1
REFUSED_PORT_OFFSET = 2  # nothing listens on port + 2


def drop_syns(ns: str, port: int) -> None:
    """Make connects from ``ns`` to ``port`` time out quickly: its own SYN retries
    (net.ipv4.tcp_syn_retries, per namespace) down to 1, and an nftables rule in its own
    ruleset that drops what it sends to that port."""
    in_netns(ns, "sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1")
    rules = f"""
        table inet bpfloom_test {{
            chain out {{
                type filter hook output priority 0;
                tcp dport {port} drop
            }}
        }}
    """
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True
    )


@pytest.mark.parametrize("version", [4, 6])
def test_connect_outcomes_latency_and_accepts(start_tool: Any, net: Net, version: int) -> None:
    """One run of traffic under tcpconnect, tcpconnlat and tcpaccept: a connect that
    succeeds (and is accepted), one refused by an RST, one that times out."""
    ours, theirs = net.addresses(version)
    port = our_port()
    dropped, refused = port + DROPPED_PORT_OFFSET, port + REFUSED_PORT_OFFSET
    drop_syns(net.ns, dropped)
    connect = start_tool("tcpconnect", "--json")
    connlat = start_tool("tcpconnlat", "--json")
    accept = start_tool("tcpaccept", "--json")

    client, server = start_session(net, version, port, comm="cc")
    ok = finish_session(client, server, port)
    rst = Peer(client_code(theirs, refused), comm="ccrst")
    rst.go()
    rst_said = rst.finish()
    slow = Peer(client_code(ours, dropped), comm="cctmo", netns=net.ns)  # from the namespace
    slow.go()
    slow_said = slow.finish()
    assert (rst_said["err"], slow_said["err"]) == ("ECONNREFUSED", "ETIMEDOUT")
    quit_early = Peer(  # a non-blocking connect, closed while its SYN goes unanswered
        f"""
        wait()
        s = socket.socket({family_of(ours)}, socket.SOCK_STREAM)
        s.setblocking(False)
        assert s.connect_ex(({ours!r}, {dropped})) == errno.EINPROGRESS
        s.close()
        """,
        comm="ccquit",
        netns=net.ns,
    )
    quit_early.finish()

    pids = {client.pid, rst.pid, slow.pid, quit_early.pid}
    wait_for(connect, lambda found: pids <= {r["pid"] for r in found}, "the four connects")
    wait_for(accept, lambda found: server.pid in {r["pid"] for r in found}, "the accept")
    connects = {r["pid"]: r for r in stop_clean(connect) if r["pid"] in pids}
    latencies = {r["pid"]: r for r in stop_clean(connlat) if r["pid"] in pids}
    accepts = [r for r in stop_clean(accept) if r["pid"] == server.pid]

    good, bad, lost = connects[client.pid], connects[rst.pid], connects[slow.pid]
    assert (good["comm"], good["result"], good["err"]) == ("cccli", "ok", 0)
    assert (good["ip"], good["saddr"], good["sport"]) == (version, ours, ok.client_said["port"])
    assert (good["daddr"], good["dport"]) == (theirs, port)
    assert (bad["comm"], bad["result"], bad["err"]) == ("ccrst", "ECONNREFUSED", 111)
    assert (bad["daddr"], bad["dport"]) == (theirs, refused)
    assert (lost["comm"], lost["result"], lost["err"]) == ("cctmo", "ETIMEDOUT", 110)
    assert (lost["saddr"], lost["daddr"], lost["dport"]) == (theirs, ours, dropped)
    assert lost["netns"] == netns_inode(net.ns) and good["netns"] == netns_inode()
    aborted = connects[quit_early.pid]
    assert (aborted["result"], aborted["err"], aborted["dport"]) == ("aborted", 0, dropped)
    # The time in SYN_SENT lies within the connect() call.
    for record, said in ((good, ok.client_said), (bad, rst_said), (lost, slow_said)):
        assert 0 < record["lat_ms"] <= (said["t_conn"] - said["t_start"]) * 1e3, record

    # tcpconnlat: connects that were answered (established, or refused by an RST).
    assert set(latencies) == {client.pid, rst.pid}
    assert (latencies[client.pid]["result"], latencies[rst.pid]["result"]) == ("ok", "ECONNREFUSED")
    for pid, said in ((client.pid, ok.client_said), (rst.pid, rst_said)):
        assert 0 < latencies[pid]["lat_ms"] <= (said["t_conn"] - said["t_start"]) * 1e3

    # tcpaccept: the accepting process, the connection's four-tuple, its queue time.
    assert len(accepts) == 1, accepts
    acc = accepts[0]
    assert (acc["comm"], acc["ip"], acc["netns"]) == ("ccsrv", version, netns_inode(net.ns))
    assert (acc["raddr"], acc["rport"]) == (ours, ok.client_said["port"])
    assert (acc["laddr"], acc["lport"]) == (theirs, port)
    assert acc["queue_ms"] is not None and acc["queue_ms"] >= 0


def test_tcpaccept_reports_accepts_not_handshakes(start_tool: Any, net: Net) -> None:
    """A connection accepted is reported, with the time it waited in the accept queue;
    one whose handshake completed but that the server never accepted is not."""
    port = our_port()
    run = start_tool("tcpaccept", "--json", "-P", str(port), "-4")
    server = Peer(
        f"""
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(({net.peer4!r}, {port}))
        srv.listen()
        say(listening=True)
        wait()  # the first client has connected
        conn, peer = srv.accept()
        say(t_accept=time.monotonic(), peer_port=peer[1])
        wait()  # the second client has connected too: it is never accepted
        srv.close()
        conn.close()
        """,
        comm="tasrv",
        netns=net.ns,
    )
    server.read()
    connect_and_wait = f"""
        t_start = time.monotonic()
        s = socket.create_connection(({net.peer4!r}, {port}))
        say(port=s.getsockname()[1], t_start=t_start)
        wait()
        s.close()
    """
    first = Peer(connect_and_wait, comm="tafirst")
    first_said = first.read()
    server.go()
    accepted = server.read()
    second = Peer(connect_and_wait, comm="tasecond")
    second.read()
    server.go()
    server.finish()
    first.finish()
    second.finish()
    found = stop_clean(run)
    assert accepted["peer_port"] == first_said["port"]
    assert [(r["pid"], r["comm"], r["rport"], r["lport"]) for r in found] == [
        (server.pid, "tasrv", first_said["port"], port)
    ]
    assert 0 <= found[0]["queue_ms"] <= (accepted["t_accept"] - first_said["t_start"]) * 1e3


def test_tcpconnect_failed_only_and_table(start_tool: Any, net: Net) -> None:
    port = our_port()
    refused = port + REFUSED_PORT_OFFSET
    run = start_tool("tcpconnect", "-x", "-U", "-s", "-P", f"{port},{refused}")
    finish_session(*start_session(net, 4, port, comm="tx"), port)
    rst = Peer(client_code(net.peer4, refused), comm="txrst")
    rst.go()
    rst.finish()
    run.wait_output("ECONNREFUSED")
    lines = run.stop().stdout.splitlines()
    assert lines[0].split() == [
        "UID", "PID", "COMM", "IP", "SADDR", "DADDR", "SPORT", "DPORT", "RESULT",
    ]  # fmt: skip
    assert len(lines) == 2, lines
    row = lines[1].split()
    assert (row[0], row[1], row[2], row[5], row[7], row[8]) == (
        "0",
        str(rst.pid),
        "txrst",
        net.peer4,
        str(refused),
        "ECONNREFUSED",
    )


# --- filters --------------------------------------------------------------------------------


def test_filters_hold(start_tool: Any, net: Net) -> None:
    """pid, local and remote ports and families, each in a tool of its own over the same
    traffic (an IPv4 and an IPv6 session): every record printed passes the filter, and
    what passes is there."""
    port = our_port()
    port6 = port + 3
    client, server = start_session(net, 4, port, comm="fl")
    client6, server6 = start_session(net, 6, port6, comm="fx")
    runs = {
        "pid": start_tool("tcplife", "--json", "-p", str(client.pid)),
        "lport": start_tool("tcplife", "--json", "-L", f"{port},{port6}"),
        "rport": start_tool("tcplife", "--json", "-D", str(port6)),
        "v6": start_tool("tcplife", "--json", "-6"),
        "states_pid": start_tool("tcpstates", "--json", "-p", str(server.pid), "-4"),
        "connect_v4": start_tool("tcpconnect", "--json", "-4", "-P", f"{port},{port6}"),
        "accept_pid": start_tool("tcpaccept", "--json", "-p", str(server6.pid)),
    }
    s4 = finish_session(client, server, port)
    s6 = finish_session(client6, server6, port6)
    wait_for(runs["states_pid"], lambda found: len(found) >= 7, "the server's 7 changes")
    found = {name: stop_clean(run) for name, run in runs.items()}

    assert found["pid"] and all(r["pid"] == client.pid for r in found["pid"])
    assert [r["rport"] for r in found["pid"]] == [port]
    assert all(r["lport"] in (port, port6) for r in found["lport"])
    assert {(server.pid, port), (server6.pid, port6)} <= {
        (r["pid"], r["lport"]) for r in found["lport"]
    }
    assert all(r["rport"] == port6 for r in found["rport"])
    assert client6.pid in {r["pid"] for r in found["rport"]}
    assert all(r["family"] == "IPv6" for r in found["v6"])
    assert {r["pid"] for r in found["v6"]} >= {client6.pid, server6.pid}
    assert not {r["pid"] for r in found["v6"]} & {client.pid, server.pid}
    assert all(r["pid"] == server.pid and r["family"] == "IPv4" for r in found["states_pid"])
    assert len(found["states_pid"]) == len(SERVER_STATES) + len(LISTENER_STATES)
    assert all(r["ip"] == 4 and r["dport"] in (port, port6) for r in found["connect_v4"])
    assert [r["sport"] for r in found["connect_v4"] if r["pid"] == client.pid] == [
        s4.client_said["port"]
    ]
    assert client6.pid not in {r["pid"] for r in found["connect_v4"]}
    assert [(r["pid"], r["rport"]) for r in found["accept_pid"]] == [
        (server6.pid, s6.client_said["port"])
    ]


@pytest.mark.parametrize(
    ("tool", "args", "message", "status"),
    [
        ("tcplife", ["-4", "-6"], "-4 and -6 cannot be used together", 2),
        ("tcplife", ["-L", "80,http"], "'http' is not a port number", 2),
        ("tcpstates", ["-D", "65536"], "'65536' is not a port number", 2),
        ("tcpconnect", ["-p", "0"], "0 is not in the range", 2),
        ("tcpconnect", ["-u", "-1"], "-1 is not in the range", 2),
        ("tcpconnlat", ["--", "-5"], "-5.0 is not in the range", 2),
        ("tcpconnlat", ["nan"], "nan is not a finite number", 2),
        ("tcpconnlat", ["inf"], "inf is not a finite number", 2),
        ("tcpaccept", ["-P", ""], "'' is not a port number", 2),
    ],
)
def test_bad_input_is_one_line(tool: str, args: list[str], message: str, status: int) -> None:
    one_error_line(run_tool_cli(tool, *args), message, status=status)


@pytest.mark.parametrize("tool", ["tcplife", "tcpstates", "tcpconnect", "tcpconnlat", "tcpaccept"])
def test_duration_ends_the_run_and_nothing_stays(tool: str, tmp_path: Any) -> None:
    run = ToolRun(tool, ["--duration", "1", "--json"], tmp_path).wait_ready()
    ids = own_bpf_ids(run.proc.pid)
    assert ids["prog"] and ids["map"] and ids["link"]
    result = run.finish()
    assert result.returncode == 0, result.stderr
    assert result.lost()[1:] == (0, 0)
    assert_gone_from_kernel(ids)
