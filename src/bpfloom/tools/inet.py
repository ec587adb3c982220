"""Internet addresses, endpoints and TCP states as the network tools print them.

The kernel's network tracepoints (``sock:inet_sock_set_state``, ``tcp:*``) carry
addresses as raw bytes in network order — 4 for IPv4, 16 for IPv6 — beside the address
family, and TCP states as numbers (``include/net/tcp_states.h``). The tools share these
few helpers so that every one of them spells an address, an ``addr:port`` endpoint and
a state the same way, as libbpf-tools does.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

AF_INET = int(socket.AF_INET)
AF_INET6 = int(socket.AF_INET6)

FAMILIES = {AF_INET: "IPv4", AF_INET6: "IPv6"}

# include/net/tcp_states.h; the kernel's own spelling, as the tracepoints print them.
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}
TCP_STATE_NUMBERS = {name: number for number, name in TCP_STATES.items()}

IPPROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def inet_addr(family: int, raw: bytes) -> str:
    """The text of an address of ``family`` from its bytes in network order (IPv4 from
    the first 4 bytes, IPv6 from 16). An IPv4-mapped IPv6 address prints as IPv4.

    Spellings are cached (a few thousand): a busy machine's records repeat the same
    addresses, and the network tools spell two per record."""
    if family == AF_INET:
        return _spell(family, bytes(raw[:4]))
    if family == AF_INET6:
        return _spell(family, bytes(raw[:16]))
    raise ValueError(f"address family {family} is neither AF_INET nor AF_INET6")


@functools.lru_cache(maxsize=4096)
def _spell(family: int, raw: bytes) -> str:
    if family == AF_INET or raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[-4:])
    return str(ipaddress.IPv6Address(raw))  # RFC 5952, which glibc's inet_ntop is not


_V4_MAPPED = bytes(10) + b"\xff\xff"


def endpoint(address: str, port: int) -> str:
    """``addr:port``, with IPv6 addresses in brackets (``[::1]:80``)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def tcp_state(number: int) -> str:
    """A TCP state's kernel name (``ESTABLISHED``), or ``UNKNOWN(n)``."""
    return TCP_STATES.get(number, f"UNKNOWN({number})")


def ip_proto(number: int) -> str:
    """An IP protocol's name (``tcp``), or its number as text."""
    return IPPROTO_NAMES.get(number, str(number))


def mapped_addr(text: str) -> bytes:
    """The 16 bytes of an address given as text: IPv6 as is, IPv4 as its IPv4-mapped
    IPv6 address (``::ffff:a.b.c.d``), the one form in which a BPF filter can compare
    addresses of both families (``inet_addr(AF_INET6, ...)`` prints it back as IPv4).
    Raises ``ValueError`` for anything that is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv4Address):
        return bytes(10) + b"\xff\xff" + address.packed
    return address.packed


def ip_version(family: int) -> int:
    """4 or 6, as BCC's tools print a socket's family in their ``IP`` column."""
    return 4 if family == AF_INET else 6
