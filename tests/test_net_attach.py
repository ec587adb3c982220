"""XDP and tc attach on an interface given by name, with real traffic.

The test makes its own network: a veth pair whose far end sits in a network namespace
it creates, pings across it, and checks that the programs counted the packets and that
nothing (XDP program, tc filter, clsact qdisc) stays on the interface after close.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

import bpfloom
from conftest import assert_gone_from_kernel, bpf_object, new_ids, own_bpf_ids

pytestmark = pytest.mark.kernel


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    """A veth pair: (local interface, namespace) with 10.248.0.1 <-> 10.248.0.2 in it."""
    tag = f"{os.getpid() % 100000}"
    ns, local, peer = f"bpfloom-{tag}", f"bfl{tag}a", f"bfl{tag}b"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", local, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("addr", "add", "10.248.0.1/30", "dev", local)
        _ip("link", "set", local, "up")
        _ip("-n", ns, "addr", "add", "10.248.0.2/30", "dev", peer)
        _ip("-n", ns, "link", "set", peer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield local, ns
    finally:
        subprocess.run(["ip", "link", "del", local], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _ping_from(ns: str, count: int) -> None:
    ping = ["ping", "-c", str(count), "-i", "0.05", "-W", "2", "10.248.0.1"]
    subprocess.run(
        ["ip", "netns", "exec", ns, *ping],
        check=True,
        capture_output=True,
    )


def _tc(*args: str) -> str:
    return subprocess.run(["tc", *args], check=True, capture_output=True, text=True).stdout


def test_xdp_and_tc_count_real_packets_and_leave_nothing(veth: tuple[str, str]) -> None:
    local, ns = veth
    before = own_bpf_ids()
    with bpfloom.load(bpf_object("net")) as obj:
        xdp = obj.program("count_xdp").attach_xdp(local)
        tc = obj.program("count_tc").attach_tc(local, "ingress")
        ours = new_ids(before)
        assert ours["prog"] and ours["link"]
        assert "xdp" in json.loads(_ip("-j", "link", "show", local))[0]
        assert "count_tc" in _tc("filter", "show", "dev", local, "ingress")
        _ping_from(ns, 5)
        packets = obj.map("packets")
        # Each echo request crosses XDP and then tc ingress on the local end (ARP too).
        assert packets[0] >= 5
        assert packets[1] >= 5
        xdp.close()
        tc.close()
        xdp.close()  # idempotent
        assert "xdp" not in json.loads(_ip("-j", "link", "show", local))[0]
        assert _tc("filter", "show", "dev", local, "ingress").strip() == ""
        assert "clsact" not in _tc("qdisc", "show", "dev", local)
        seen = packets[0]
        _ping_from(ns, 2)
        assert packets[0] == seen  # detached: no more counting
    assert_gone_from_kernel(ours)


def test_tc_and_xdp_released_by_object_close(veth: tuple[str, str]) -> None:
    local, _ = veth
    obj = bpfloom.load(bpf_object("net"))
    obj.program("count_xdp").attach_xdp(local)
    obj.program("count_tc").attach_tc(local, "egress")
    assert "count_tc" in _tc("filter", "show", "dev", local, "egress")
    obj.close()
    assert "xdp" not in json.loads(_ip("-j", "link", "show", local))[0]
    assert "clsact" not in _tc("qdisc", "show", "dev", local)


@pytest.mark.parametrize("kind", ["xdp", "tc"])
def test_attach_to_missing_interface_names_it(kind: str) -> None:
    with bpfloom.load(bpf_object("net")) as obj:
        prog = obj.program(f"count_{kind}")
        with pytest.raises(bpfloom.AttachError) as info:
            if kind == "xdp":
                prog.attach_xdp("nosuchif0")
            else:
                prog.attach_tc("nosuchif0")
        assert "nosuchif0" in str(info.value)
        assert "count_" in str(info.value)
