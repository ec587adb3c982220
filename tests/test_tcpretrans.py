"""tcpretrans on real connections across a veth pair into a namespace of the test's own.

Retransmits are forced: nftables in the namespace drops every segment the server sends
to the client there, so the client's data is never acknowledged and its timers send it
again, until the rule goes. How many segments went out again is the namespace's own
RetransSegs counter (nothing else runs in it), which __tcp_retransmit_skb() counts
exactly where the tracepoint fires: the tool must report exactly that many. Resets:
a connect() to a port nobody listens on (a reset sent with no socket, then received)
and an abort with SO_LINGER 0 (sent by the closing process itself). Each test runs over
IPv4 and IPv6, and every assertion looks only at the test's own flows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from bpfloom.tools.tcpretrans import TcpRetrans, TcpRetransCounts
from conftest import Veth, assert_gone_from_kernel, own_bpf_ids
from tcpnet import (
    add_ipv6,
    client,
    in_netns,
    linger_zero,
    listener,
    nft,
    port_of,
    recv_exactly,
    tcp_mib,
    wait_until,
)
from toolrun import one_error_line, run_tool_cli

RECORD_KEYS = {"time", "type", "pid", "ip", "laddr", "lport", "raddr", "rport", "state"}
RECORD_KEYS |= {"seq", "reason"}


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def ends(request: pytest.FixtureRequest, veth: Veth) -> Iterator[tuple[int, str, str, str]]:
    """(IP version, this side's address, the namespace side's, the namespace)."""
    if request.param == 4:
        yield 4, veth.local_ip, veth.peer_ip, veth.ns
    else:
        local6, peer6 = add_ipv6(veth)
        yield 6, local6, peer6, veth.ns


def flow(records: list[dict[str, Any]], laddr: str, lport: int) -> list[dict[str, Any]]:
    """The records whose local end is ``laddr:lport``."""
    return [r for r in records if (r["laddr"], r["lport"]) == (laddr, lport)]


def assert_records(records: list[dict[str, Any]], version: int, ours: set[str]) -> None:
    """Every record has the keys; ours (local address in ``ours``) are of ``version``.
    The tool sees the whole machine: other programs' retransmits may be of either."""
    for r in records:
        assert set(r) == RECORD_KEYS, r
        if r["laddr"] in ours:
            assert r["ip"] == version, r


@pytest.mark.kernel
def test_retransmits_counted_exactly(start_tool: Any, ends: tuple[int, str, str, str]) -> None:
    version, local, peer, ns = ends
    other = "-6" if version == 4 else "-4"
    server = listener(local)
    sport = port_of(server)
    traced = start_tool("tcpretrans", "--json")
    counting = start_tool("tcpretrans", "--json", "-c", f"-{version}")
    filtered = start_tool("tcpretrans", "--json", other)
    ids = own_bpf_ids(traced.proc.pid)

    conn_client = in_netns(ns, lambda: client(peer))
    conn_client.connect((local, sport))
    cport = port_of(conn_client)
    conn, _ = server.accept()
    before = tcp_mib(ns)["RetransSegs"]
    # Every segment from the server to the client's port is dropped in the namespace.
    table = f"bpfloom_{os.getpid()}"
    match = f"ip{'6' if version == 6 else ''} saddr {local} tcp sport {sport} tcp dport {cport}"
    chain = f"chain input {{\n type filter hook input priority 0\n {match} drop\n}}"
    nft(ns, f"table inet {table} {{\n{chain}\n}}")
    try:
        conn_client.sendall(b"d" * 100)
        assert recv_exactly(conn, 100) == b"d" * 100  # arrived; its ACKs do not
        wait_until("two retransmits", lambda: tcp_mib(ns)["RetransSegs"] >= before + 2)
    finally:
        nft(ns, f"delete table inet {table}")
    conn.sendall(b"ok")  # acknowledges the data: no segment is outstanding after this
    assert recv_exactly(conn_client, 2) == b"ok"
    retransmitted = tcp_mib(ns)["RetransSegs"] - before
    conn_client.close()
    conn.close()
    server.close()

    result = traced.stop()
    assert result.returncode == 0, result.stderr
    records = result.json_lines()
    assert_records(records, version, {local, peer})
    mine = flow(records, peer, cport)
    assert len(mine) == retransmitted >= 2, (retransmitted, mine)
    assert {(r["type"], r["raddr"], r["rport"], r["state"]) for r in mine} == {
        ("retransmit", local, sport, "ESTABLISHED")
    }
    # The timers fire in softirq context: no process held the socket then.
    assert {r["pid"] for r in mine} <= {0, os.getpid()}
    assert len({r["seq"] for r in mine}) == 1  # the same segment each time
    assert not flow(records, local, sport)  # the server retransmitted nothing
    events, kernel_lost, user_lost = result.lost()
    assert events >= retransmitted and (kernel_lost, user_lost) == (0, 0)
    assert_gone_from_kernel(ids)

    counts = counting.stop().json_lines()
    rows = [r for r in counts if (r["laddr"], r["lport"]) == (peer, cport)]
    assert rows == [
        {
            "interval": 1,
            "time": rows[0]["time"],
            "ip": version,
            "laddr": peer,
            "lport": cport,
            "raddr": local,
            "rport": sport,
            "retransmits": retransmitted,
            "resets_sent": 0,
            "resets_received": 0,
        }
    ]
    assert not flow(filtered.stop().json_lines(), peer, cport)  # the other family only


@pytest.mark.kernel
def test_resets_sent_and_received(start_tool: Any, ends: tuple[int, str, str, str]) -> None:
    version, local, peer, ns = ends
    traced = start_tool("tcpretrans", "--json", f"-{version}")
    text = start_tool("tcpretrans", "-s")
    quiet = start_tool("tcpretrans", "--json", "--no-resets")
    counted = start_tool("tcpretrans", "-c", "-T", f"-{version}")

    # A port nobody listens on: this side answers the SYN with a reset, no socket.
    closed = listener(local)
    closed_port = port_of(closed)
    closed.close()
    refused = in_netns(ns, lambda: client(peer))
    with pytest.raises(ConnectionRefusedError):
        refused.connect((local, closed_port))
    refused_port = port_of(refused)
    refused.close()

    # An abort: SO_LINGER 0, then close() sends a reset from the closing process.
    server = listener(local)
    sport = port_of(server)
    aborting = in_netns(ns, lambda: client(peer))
    aborting.connect((local, sport))
    aport = port_of(aborting)
    conn, _ = server.accept()
    linger_zero(aborting)
    aborting.close()
    with pytest.raises(ConnectionResetError):
        conn.recv(1)  # blocks until the reset arrives
    conn.close()
    server.close()

    records = traced.stop().json_lines()
    assert_records(records, version, {local, peer})
    pid = os.getpid()
    (no_socket,) = flow(records, local, closed_port)
    assert no_socket | {"time": 0} == {
        "time": 0,
        "type": "reset_sent",
        "pid": 0,  # sent from softirq context, with no socket to own
        "ip": version,
        "laddr": local,
        "lport": closed_port,
        "raddr": peer,
        "rport": refused_port,
        "state": None,
        "seq": None,
        "reason": "NO_SOCKET",
    }
    (refused_rst,) = flow(records, peer, refused_port)
    assert refused_rst["type"] == "reset_received" and refused_rst["state"] == "SYN_SENT"
    assert (refused_rst["raddr"], refused_rst["rport"]) == (local, closed_port)
    assert refused_rst["pid"] in (0, pid)  # connect() may still hold the socket

    (abort,) = flow(records, peer, aport)
    assert abort["type"] == "reset_sent" and abort["pid"] == pid  # close() held it
    assert (abort["raddr"], abort["rport"]) == (local, sport)
    assert abort["reason"] and abort["seq"] is None
    (aborted,) = flow(records, local, sport)
    assert aborted["type"] == "reset_received" and aborted["state"] == "ESTABLISHED"
    assert (aborted["raddr"], aborted["rport"], aborted["reason"]) == (peer, aport, None)
    assert aborted["pid"] in (0, pid)

    # The table: BCC's columns, IPv6 in brackets, no socket's state as "-".
    lines = text.stop().stdout.splitlines()
    header = ["TIME", "PID", "IP", "LADDR:LPORT", "T>", "RADDR:RPORT", "STATE", "SEQ"]
    assert lines[0].split() == header
    bracket = (lambda a: f"[{a}]") if version == 6 else (lambda a: a)
    row = rf"\d\d:\d\d:\d\d 0 +{version} +{re.escape(bracket(local))}:{closed_port} +S> "
    row += rf"{re.escape(bracket(peer))}:{refused_port} +-$"
    assert any(re.match(row, line) for line in lines), lines
    assert not flow(quiet.stop().json_lines(), local, closed_port)

    # -c at exit: a blank line, the time (-T), the table of flows.
    lines = counted.stop().stdout.splitlines()
    assert lines[0] == "" and re.fullmatch(r"\d\d:\d\d:\d\d", lines[1]), lines
    columns = ["IP", "LADDR:LPORT", "RADDR:RPORT", "RETRANSMITS", "RESETS_SENT"]
    assert lines[2].split() == [*columns, "RESETS_RECEIVED"]
    rows = {tuple(line.split()[1:3]): line.split()[3:] for line in lines[3:]}
    refusal = (f"{bracket(local)}:{closed_port}", f"{bracket(peer)}:{refused_port}")
    assert rows[refusal] == ["0", "1", "0"]
    assert rows[refusal[::-1]] == ["0", "0", "1"]
    assert rows[(f"{bracket(peer)}:{aport}", f"{bracket(local)}:{sport}")] == ["0", "1", "0"]


@pytest.mark.kernel
def test_library_leaves_nothing_in_the_kernel() -> None:
    before = own_bpf_ids()
    with TcpRetransCounts(family=6) as tool:
        tool.attach()
        made = {kind: own_bpf_ids()[kind] - before[kind] for kind in before}
        assert made["prog"] and made["link"]
        assert tool.flows() == []
    assert_gone_from_kernel(made)


@pytest.mark.parametrize(
    ("args", "needles", "status"),
    [
        (["-4", "-6"], ["-4 and -6"], 2),
        (["1"], ["go with -c"], 2),
        (["-T"], ["go with -c"], 2),
        (["-c", "-o", "x.parquet"], ["x.parquet", ".jsonl"], 2),
        (["-c", "1", "0"], ["0"], 2),
    ],
)
def test_bad_command_lines(args: list[str], needles: list[str], status: int) -> None:
    one_error_line(run_tool_cli("tcpretrans", *args), *needles, status=status)


def test_family_is_4_or_6() -> None:
    with pytest.raises(ValueError, match="family must be 4 or 6"):
        TcpRetrans(family=5)
