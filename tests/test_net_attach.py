"""XDP and tc attach on an interface given by name, with real traffic.

The test makes its own network: a veth pair whose far end sits in a network namespace
it creates, pings across it, and checks that the programs counted the packets and that
nothing (XDP program, tc filter, clsact qdisc) stays on the interface after close.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import bpfloom
from conftest import Veth, assert_gone_from_kernel, bpf_object, ip_command, new_ids, own_bpf_ids

pytestmark = pytest.mark.kernel


def _ip(*args: str) -> str:
    return ip_command(*args)


def _ping_from(veth: Veth, count: int) -> None:
    ping = ["ping", "-c", str(count), "-i", "0.05", "-W", "2", veth.local_ip]
    subprocess.run(
        ["ip", "netns", "exec", veth.ns, *ping],
        check=True,
        capture_output=True,
    )


def _tc(*args: str) -> str:
    return subprocess.run(["tc", *args], check=True, capture_output=True, text=True).stdout


def test_xdp_and_tc_count_real_packets_and_leave_nothing(veth: Veth) -> None:
    local = veth.local
    before = own_bpf_ids()
    with bpfloom.load(bpf_object("net")) as obj:
        xdp = obj.program("count_xdp").attach_xdp(local)
        tc = obj.program("count_tc").attach_tc(local, "ingress")
        ours = new_ids(before)
        assert ours["prog"] and ours["link"]
        assert "xdp" in json.loads(_ip("-j", "link", "show", local))[0]
        assert "count_tc" in _tc("filter", "show", "dev", local, "ingress")
        _ping_from(veth, 5)
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
        _ping_from(veth, 2)
        assert packets[0] == seen  # detached: no more counting
    assert_gone_from_kernel(ours)


def test_tc_and_xdp_released_by_object_close(veth: Veth) -> None:
    local = veth.local
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


def test_clsact_stays_while_another_of_our_filters_is_on_it(veth: Veth) -> None:
    """The link that created the clsact qdisc is closed first: the qdisc (and with it
    the other filter) stays until the last of our filters on the interface goes."""
    local = veth.local
    with bpfloom.load(bpf_object("net")) as obj:
        prog = obj.program("count_tc")
        creator = prog.attach_tc(local, "ingress")
        other = prog.attach_tc(local, "egress", handle=5, priority=9)
        creator.close()
        assert _tc("filter", "show", "dev", local, "ingress").strip() == ""
        egress = _tc("filter", "show", "dev", local, "egress")
        assert "count_tc" in egress and "pref 9" in egress and "handle 0x5" in egress
        other.close()
        assert "clsact" not in _tc("qdisc", "show", "dev", local)
