"""tcptop on real connections: exact byte counts per process and connection.

A child process (its own pid and name) connects across the veth pair to a server the
test holds in its namespace, sends N bytes and reads M; the tool must report exactly N
sent and M received for the child's connection, and the reverse for the server's (the
test's own pid), summed over however many intervals they spread across. The kernel's
counters of a socket are deleted once it is destroyed and read; the library tests look
at the maps themselves.
"""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bpfloom.sinks.table import CLEAR_SCREEN
from bpfloom.tools.tcptop import TcpTop
from conftest import Veth, assert_gone_from_kernel, own_bpf_ids
from promserver import free_port, promtool_check
from tcpnet import add_ipv6, client, in_netns, listener, port_of, recv_exactly, wait_until
from toolrun import BPFLOOM, TIMEOUT, one_error_line, run_tool_cli

SENT = 123_457  # bytes the child sends
RECEIVED = 54_321  # bytes it reads
ROW_KEYS = {"interval", "time", "pid", "comm", "ip", "laddr", "lport", "raddr", "rport"}
ROW_KEYS |= {"rx_kb", "tx_kb", "rx_bytes", "tx_bytes"}

CHILD = """
import socket
s = socket.socket(socket.AF_INET6 if ":" in {peer!r} else socket.AF_INET)
s.connect(({peer!r}, {port}))
s.sendall(b"c" * {sent})
got = 0
while got < {received}:
    got += len(s.recv(65536))
print(s.getsockname()[1], flush=True)
s.close()
"""


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def ends(request: pytest.FixtureRequest, veth: Veth) -> Iterator[tuple[int, str, str, str]]:
    """(IP version, this side's address, the namespace side's, the namespace)."""
    if request.param == 4:
        yield 4, veth.local_ip, veth.peer_ip, veth.ns
    else:
        yield 6, *add_ipv6(veth), veth.ns


def totals(rows: list[dict[str, Any]], pid: int, lport: int) -> dict[str, Any]:
    """The rows of process ``pid`` on local port ``lport``, their bytes summed over the
    intervals (every other field must be the same in each)."""
    mine = [r for r in rows if (r["pid"], r["lport"]) == (pid, lport)]
    assert mine, f"no rows of pid {pid} port {lport} in {rows}"
    for r in mine:
        assert set(r) == ROW_KEYS, r
        assert (r["rx_kb"], r["tx_kb"]) == (r["rx_bytes"] // 1024, r["tx_bytes"] // 1024)
    fixed = ("pid", "comm", "ip", "laddr", "lport", "raddr", "rport")
    assert len({tuple(r[k] for k in fixed) for r in mine}) == 1, mine
    return {k: mine[0][k] for k in fixed} | {
        "rx_bytes": sum(r["rx_bytes"] for r in mine),
        "tx_bytes": sum(r["tx_bytes"] for r in mine),
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def serve(server: socket.socket) -> None:
    """Take the child's connection: read what it sends, answer RECEIVED bytes, close
    once it has."""
    conn, _ = server.accept()
    with conn:
        recv_exactly(conn, SENT)
        conn.sendall(b"s" * RECEIVED)
        assert conn.recv(1) == b""


@pytest.mark.kernel
def test_exact_bytes_by_process_and_connection(
    start_tool: Any, gated_child: Any, ends: tuple[int, str, str, str]
) -> None:
    version, local, peer, ns = ends
    with in_netns(ns, lambda: listener(peer)) as server:
        sport = port_of(server)
        child = gated_child(
            CHILD.format(peer=peer, port=sport, sent=SENT, received=RECEIVED), comm="tt_client"
        )
        every = start_tool("tcptop", "--json", "0.2")
        port = free_port()
        one = start_tool("tcptop", "--json", "-p", str(child.pid), "--metrics-addr", str(port))
        other = start_tool("tcptop", "--json", "-6" if version == 4 else "-4")
        ids = own_bpf_ids(every.proc.pid)
        child.go()
        serve(server)
        cport = int(child.finish())

    # Prometheus gets the same rows, accumulated, labelled by what identifies them.
    labels = f'pid="{child.pid}",comm="tt_client",ip="{version}",laddr="{local}",'
    labels += f'lport="{cport}",raddr="{peer}",rport="{sport}"'
    series = f'bpfloom_tcptop_tx_bytes_total{{tool="tcptop",{labels}}} {SENT}'
    wait_until("the bytes served", lambda: series in scrape(port).splitlines())
    exposition = scrape(port)
    assert f'bpfloom_tcptop_rx_bytes_total{{tool="tcptop",{labels}}} {RECEIVED}' in exposition
    assert "_pid_total" not in exposition and "_kb_total" not in exposition
    promtool_check(exposition)

    result = every.stop()
    assert result.returncode == 0, result.stderr
    rows = result.json_lines()
    assert totals(rows, child.pid, cport) == {
        "pid": child.pid,
        "comm": "tt_client",
        "ip": version,
        "laddr": local,
        "lport": cport,
        "raddr": peer,
        "rport": sport,
        "rx_bytes": RECEIVED,
        "tx_bytes": SENT,
    }
    with open("/proc/self/comm") as f:
        comm = f.read().rstrip("\n")
    assert totals(rows, os.getpid(), sport) == {
        "pid": os.getpid(),
        "comm": comm,
        "ip": version,
        "laddr": peer,
        "lport": sport,
        "raddr": local,
        "rport": cport,
        "rx_bytes": SENT,
        "tx_bytes": RECEIVED,
    }
    assert_gone_from_kernel(ids)

    only = one.stop()
    assert {r["pid"] for r in only.json_lines()} == {child.pid}
    assert totals(only.json_lines(), child.pid, cport)["tx_bytes"] == SENT
    assert f"tcptop: {SENT} bytes sent and {RECEIVED} received counted" in only.stderr
    assert not [r for r in other.stop().json_lines() if r["lport"] in (sport, cport)]


@pytest.mark.kernel
def test_table_escapes_the_comm(start_tool: Any, gated_child: Any, veth: Veth) -> None:
    comm = "tt\x1b[2Jq\nz\t"
    with in_netns(veth.ns, lambda: listener(veth.peer_ip)) as server:
        sport = port_of(server)
        code = CHILD.format(peer=veth.peer_ip, port=sport, sent=SENT, received=1)
        child = gated_child(code, comm=comm)
        run = start_tool("tcptop", "-p", str(child.pid), "60")
        child.go()
        conn, _ = server.accept()
        with conn:
            recv_exactly(conn, SENT)
            conn.sendall(b"s")
            cport = int(child.finish())
    result = run.stop()
    lines = result.stdout.splitlines()
    # No clearing (stdout is a file): the summary line, a blank line, the table.
    assert "\x1b" not in result.stdout and "\t" not in result.stdout
    assert re.fullmatch(r"\d\d:\d\d:\d\d loadavg: [\d.]+ [\d.]+ [\d.]+ \d+/\d+ \d+", lines[0])
    assert lines[1] == ""
    assert lines[2].split() == ["PID", "COMM", "LADDR", "RADDR", "RX_KB", "TX_KB"]
    row = lines[3].split()
    assert row == [
        str(child.pid),
        "tt\\x1b[2Jq\\nz\\t",
        f"{veth.local_ip}:{cport}",
        f"{veth.peer_ip}:{sport}",
        "0",
        str(SENT // 1024),
    ]
    assert len(lines) == 4


def run_on_a_terminal(*args: str) -> bytes:
    """``bpfloom tcptop ARGS`` with stdout on a pseudo-terminal; all it wrote there."""
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [*BPFLOOM, "tcptop", *args], stdin=subprocess.DEVNULL, stdout=sub, stderr=subprocess.PIPE
    )
    os.close(sub)
    out = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        os.close(main)
    return out


@pytest.mark.kernel
def test_clears_the_screen_only_on_a_terminal() -> None:
    clear = CLEAR_SCREEN.encode()
    on_terminal = run_on_a_terminal("-p", str(os.getpid()), "0.1", "2")
    assert on_terminal.count(clear) == 2, on_terminal  # before each of the 2 intervals
    assert on_terminal.startswith(clear)
    assert clear not in run_on_a_terminal("-C", "-p", str(os.getpid()), "0.1", "2")
    piped = run_tool_cli("tcptop", "-p", str(os.getpid()), "0.1", "2")
    assert piped.returncode == 0 and "\x1b" not in piped.stdout
    assert piped.stdout.count("loadavg:") == 2


@pytest.mark.kernel
def test_library_sorts_resets_and_deletes_closed_sockets() -> None:
    before = own_bpf_ids()
    with TcpTop(pid=os.getpid()) as tool:
        tool.attach()
        made = {kind: own_bpf_ids()[kind] - before[kind] for kind in before}
        with listener("127.0.0.1") as server:
            a = client("127.0.0.1")
            a.connect(server.getsockname())
            a_peer, _ = server.accept()
            b = client("127.0.0.1")
            b.connect(server.getsockname())
            b_peer, _ = server.accept()
        a.sendall(b"a" * 3000)
        recv_exactly(a_peer, 3000)
        b_peer.sendall(b"b" * 2000)
        recv_exactly(b, 2000)
        a_port, b_port = port_of(a), port_of(b)

        def bytes_of(rows: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
            return [(r["lport"], r["tx_bytes"], r["rx_bytes"]) for r in rows]

        # Sorted by sent + received (both ends of a connection tie), sent, or received.
        a_peer_port, b_peer_port = port_of(a_peer), port_of(b_peer)
        everything = bytes_of(tool.flows(reset=False))
        assert set(everything[:2]) == {(a_port, 3000, 0), (a_peer_port, 0, 3000)}
        assert set(everything[2:]) == {(b_port, 0, 2000), (b_peer_port, 2000, 0)}
        assert bytes_of(tool.flows(sort="sent", top=2, reset=False)) == [
            (a_port, 3000, 0),
            (b_peer_port, 2000, 0),
        ]
        assert bytes_of(tool.flows(sort="received", top=2, reset=False)) == [
            (a_peer_port, 0, 3000),
            (b_port, 0, 2000),
        ]
        assert len(tool.flows()) == 4  # read and reset
        a.sendall(b"x" * 10)
        recv_exactly(a_peer, 10)
        assert set(bytes_of(tool.flows())) == {(a_port, 10, 0), (a_peer_port, 0, 10)}

        counted = {key.cookie for key, _ in tool.obj.maps["flows"].items()}
        assert len(counted) == 4
        for sock in (a, a_peer, b, b_peer):
            sock.close()
        sockets = tool.obj.maps["sockets"]
        wait_until("the sockets destroyed", lambda: all(sockets[c] == 1 for c in counted))
        assert tool.flows() == []  # nothing moved since; now the counters go
        assert list(tool.obj.maps["flows"].keys()) == []
        assert list(sockets.keys()) == []
    assert (tool.sent, tool.received) == (3000 + 2000 + 10, 3000 + 2000 + 10)
    assert_gone_from_kernel(made)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["-4", "-6"], ["-4 and -6"]),
        (["-s", "bogus"], ["'bogus' is not one of"]),
        (["-r", "0"], ["0 is not in the range"]),
        (["1", "0"], ["0 is not in the range"]),
        (["0"], ["0 is not in the range"]),
    ],
)
def test_bad_command_lines(args: list[str], needles: list[str]) -> None:
    one_error_line(run_tool_cli("tcptop", *args), *needles, status=2)


def test_family_is_4_or_6() -> None:
    with pytest.raises(ValueError, match="family must be 4 or 6"):
        TcpTop(family=5)
