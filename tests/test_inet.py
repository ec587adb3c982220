"""The network tools' shared spelling of addresses, endpoints and TCP states."""

from __future__ import annotations

import socket

import pytest

from bpfloom.tools.inet import (
    AF_INET,
    AF_INET6,
    endpoint,
    inet_addr,
    ip_proto,
    ip_version,
    mapped_addr,
    tcp_state,
)


def test_addresses_from_network_order_bytes() -> None:
    assert inet_addr(AF_INET, bytes([10, 0, 0, 1])) == "10.0.0.1"
    assert inet_addr(AF_INET, bytes([10, 0, 0, 1]) + b"\xff" * 12) == "10.0.0.1"  # a v6 slot
    six = socket.inet_pton(socket.AF_INET6, "fd00::1:2")
    assert inet_addr(AF_INET6, six) == "fd00::1:2"
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.7")
    assert inet_addr(AF_INET6, mapped) == "192.0.2.7"
    with pytest.raises(ValueError, match="family 1"):
        inet_addr(1, b"\0" * 16)


def test_endpoints_bracket_ipv6() -> None:
    assert endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert endpoint("fd00::1", 443) == "[fd00::1]:443"


def test_states_and_protocols_by_name() -> None:
    assert [tcp_state(n) for n in (1, 2, 7, 10, 12)] == [
        "ESTABLISHED",
        "SYN_SENT",
        "CLOSE",
        "LISTEN",
        "NEW_SYN_RECV",
    ]
    assert tcp_state(99) == "UNKNOWN(99)"
    assert (ip_proto(6), ip_proto(17), ip_proto(58), ip_proto(200)) == (
        "tcp",
        "udp",
        "icmpv6",
        "200",
    )


def test_mapped_addresses_for_filters() -> None:
    assert mapped_addr("192.0.2.7") == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])
    assert inet_addr(AF_INET6, mapped_addr("192.0.2.7")) == "192.0.2.7"
    assert mapped_addr("fd00::1") == socket.inet_pton(socket.AF_INET6, "fd00::1")
    for bad in ("", "10.0.0", "fd00:::1", "host.example", "10.0.0.1/24"):
        with pytest.raises(ValueError, match="is not an IPv4 or IPv6 address"):
            mapped_addr(bad)
    assert (ip_version(AF_INET), ip_version(AF_INET6)) == (4, 6)
