"""flows: per-flow accounting on one network interface, aggregated in the kernel.

``bpf/flows.bpf.c`` attaches to an interface — tc (clsact) ingress and egress, or XDP
for ingress only, at the driver — and adds every IPv4/IPv6 packet to its flow in a
per-CPU LRU hash: a flow is (source and destination address, source and destination
port, IP protocol, direction), and holds packets, bytes, the OR of the TCP flags seen,
and the times of its first and last packet. That file says exactly what a packet
counts (bytes: the layer 3 length, IP header and payload; GSO super-packets as the
segments they stand for) and how ICMP is keyed (NetFlow's way: ``sport`` is the echo
identifier, ``dport`` is type * 256 + code).

User space walks the map every scan (``poll()``, one ``BPF_MAP_LOOKUP_BATCH`` walk,
per-CPU values summed) and exports a flow record

- ``active``: every ``active_timeout`` seconds while the flow has new packets, so long
  flows report while they last;
- ``end``: once a flow that saw FIN or RST has been quiet for ``END_GRACE`` seconds
  (so the last ACK of the close still belongs to it);
- ``idle``: once a flow has had no packet for ``idle_timeout`` seconds;
- ``exit``: by ``flush()``, when tracing stops, for every flow still in the map.

Records carry deltas: ``packets`` and ``bytes`` since the flow's previous record, so a
flow's records add up to its totals. The kernel only adds; user space remembers what
it last reported per flow and subtracts. A flow that ended or idled is removed with
``BPF_MAP_LOOKUP_AND_DELETE_ELEM``, whose value is the flow's final one: a packet that
arrives between the walk and the removal is in it, and one after the removal starts a
new flow. (The kernel gives no handoff finer than that: an update already running on
another CPU at the instant of removal can still land in the removed copy.)

Evictions: an LRU map evicts its least recently used flow instead of refusing a new
one, silently. The program counts the flows it creates (``flow_counts``), this class
counts the ones it removes, and a walk counts those left, so ``created - removed -
left`` flows were evicted; their packets since their previous record were not
reported. After detaching (``flush()``) that count is exact. The kernel's LRU may
start evicting slightly before the map is full, since its free entries sit in per-CPU
lists, and it gives a flow that was looked up again (a second packet) a second chance:
one-packet flows go first. A packet whose flow could not be created at all is counted
in ``dropped_kernel()``, the packets not counted.

Records (the ``--json`` output) have exactly the keys of ``RECORD_KEYS``: ``saddr``,
``daddr`` (text), ``sport``, ``dport``, ``proto`` (``tcp``, ``udp``, ``icmp``,
``icmpv6``, or the number as text), ``direction`` (``ingress``/``egress``),
``packets``, ``bytes``, ``tcp_flags`` (the OR of the TCP flags byte of every packet
of the flow so far: FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32, ECE 64, CWR 128),
``first_seen`` and ``last_seen`` (unix seconds of the flow's first packet and of its
latest one), and ``reason``.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import socket
import struct
import time
from typing import Any, ClassVar

import numpy as np

from .. import _libbpf
from .._exceptions import AttachError, MapError
from ..targets import check_interface
from .inet import AF_INET, AF_INET6, endpoint, inet_addr, ip_proto
from .tool import Column, Record, Tool, wall_time

__all__ = ["END_GRACE", "RECORD_KEYS", "Flows"]

RECORD_KEYS = (
    "saddr",
    "daddr",
    "sport",
    "dport",
    "proto",
    "direction",
    "packets",
    "bytes",
    "tcp_flags",
    "first_seen",
    "last_seen",
    "reason",
)
DIRECTIONS = ("ingress", "egress")
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
END_GRACE = 1.0  # seconds a FIN/RST flow stays quiet before it is ended
DEFAULT_MAX_FLOWS = 32768
TC_MODES = ("auto", "tcx", "clsact")
# ARPHRD_ETHER and ARPHRD_LOOPBACK (include/uapi/linux/if_arp.h): frames start with a
# 14-byte Ethernet header (loopback's addresses are zero), which the programs parse.
ETHERNET_LINK_TYPES = (1, 772)
SIOCGIFHWADDR = 0x8927
BATCH_ENTRIES = 16384

# struct flow_key and struct flow_value of bpf/flows.bpf.c
KEY = np.dtype(
    [
        ("saddr", "u1", (16,)),
        ("daddr", "u1", (16,)),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("proto", "u1"),
        ("family", "u1"),
        ("direction", "u1"),
        ("pad", "u1"),
    ]
)
VALUE = np.dtype(
    [
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("first_seen", "<u8"),
        ("last_seen", "<u8"),
        ("tcp_flags", "<u8"),
    ]
)
_VALUE = struct.Struct("<5Q")
_NEVER = np.iinfo(np.uint64).max
_ICMP = ("icmp", "icmpv6")

# What user space keeps per flow, one row per flow in contiguous columns (a walk of
# 100 000 flows is then a few vector operations; only the flows that are due become
# Python objects), in the order of the last walk: the key and its 64-bit fingerprint
# (``_fingerprints``: a walk's flows are found among the remembered ones with one
# searchsorted), the flow's first packet (ktime ns; it tells one life of a key from
# the next), what was last reported and when, what the last walk saw, and what grew
# since the last ``top()``.
STATE: dict[str, np.dtype[Any]] = {
    "fp": np.dtype(np.uint64),
    "key": np.dtype("V40"),
    "first": np.dtype(np.uint64),
    "exp_packets": np.dtype(np.uint64),
    "exp_bytes": np.dtype(np.uint64),
    "exp_time": np.dtype(np.int64),
    "seen_packets": np.dtype(np.uint64),
    "seen_bytes": np.dtype(np.uint64),
    "win_packets": np.dtype(np.uint64),
    "win_bytes": np.dtype(np.uint64),
    "win_flags": np.dtype(np.uint64),
}
# One walk: every flow in the map, per-CPU values summed (flags ORed, first the
# earliest of the CPUs that saw the flow, last the latest).
WALK: dict[str, np.dtype[Any]] = {
    "fp": np.dtype(np.uint64),
    "key": np.dtype("V40"),
    "packets": np.dtype(np.uint64),
    "bytes": np.dtype(np.uint64),
    "flags": np.dtype(np.uint64),
    "first": np.dtype(np.uint64),
    "last": np.dtype(np.uint64),
}
Columns = dict[str, np.ndarray]


def _columns(spec: dict[str, np.dtype[Any]], n: int) -> Columns:
    return {name: np.zeros(n, dtype) for name, dtype in spec.items()}


def _take(cols: Columns, index: np.ndarray) -> Columns:
    return {name: col[index] for name, col in cols.items()}


def _concat(parts: list[Columns], spec: dict[str, np.dtype[Any]]) -> Columns:
    if not parts:
        return _columns(spec, 0)
    return {name: np.concatenate([p[name] for p in parts]) for name in spec}


_MIX = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
    ],
    dtype=np.uint64,
)


def _fingerprints(keys: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each 40-byte key (``(n, 40)`` uint8): a multiply-xor
    of its five words. Equal keys have equal fingerprints; ``Flows._match`` checks the
    keys themselves, so a collision costs time, never a wrong match."""
    words = np.ascontiguousarray(keys).view("<u8")
    with np.errstate(over="ignore"):
        fp = (words * _MIX).sum(axis=1, dtype=np.uint64)
        fp ^= fp >> np.uint64(29)
        fp *= np.uint64(0xBF58476D1CE4E5B9)
        fp ^= fp >> np.uint64(32)
    return np.asarray(fp, dtype=np.uint64)


def _link_type(interface: str) -> int | None:
    """The interface's ARPHRD_* type (SIOCGIFHWADDR's address family, in this
    process's network namespace); None if the kernel will not say."""
    request = struct.pack("16s16x", interface.encode()[:15])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            answer = fcntl.ioctl(s, SIOCGIFHWADDR, request)
    except OSError:
        return None
    family: int = struct.unpack_from("=H", answer, 16)[0]
    return family


@functools.lru_cache(maxsize=65536)
def _address(family: int, raw: bytes) -> str:
    """``inet_addr`` cached: flows share addresses, and spelling one costs µs."""
    return inet_addr(family, raw)


def _key_fields(keys: np.ndarray) -> list[Record]:
    """The key fields of each raw key (``V40``) as a record starts: saddr, daddr,
    sport, dport, proto, direction."""
    k = keys.view(KEY)
    families = [AF_INET if f == AF_INET else AF_INET6 for f in k["family"].tolist()]
    saddr = k["saddr"].view("V16").ravel().tolist()
    daddr = k["daddr"].view("V16").ravel().tolist()
    protos = {p: ip_proto(p) for p in set(k["proto"].tolist())}
    return [
        {
            "saddr": _address(f, s),
            "daddr": _address(f, d),
            "sport": sport,
            "dport": dport,
            "proto": protos[p],
            "direction": DIRECTIONS[di & 1],
        }
        for f, s, d, sport, dport, p, di in zip(
            families,
            saddr,
            daddr,
            k["sport"].tolist(),
            k["dport"].tolist(),
            k["proto"].tolist(),
            k["direction"].tolist(),
            strict=True,
        )
    ]


class Flows(Tool):
    """Per-flow accounting on ``interface``: tc ingress and egress (``tc_mode``: see
    ``attach()``), or with ``xdp`` ingress only, through XDP in ``xdp_mode`` (``auto``,
    ``skb``, ``native``, ``offload``).

    ``poll()`` returns the records due now (active, ended and idle flows) and removes
    the flows that ended or idled; call it every second or so. ``top()`` gives the
    flows with the most bytes since its previous call (the table's rows). After
    ``detach()``, ``flush()`` returns the last records of every flow left. Counters:
    ``exported`` (records), ``created()``, ``removed``, ``left``, ``evicted()``,
    ``dropped_kernel()``. Not thread-safe.

    The bookkeeping is numpy arrays, one row per flow, matched to each walk by key:
    a walk of 100 000 flows costs a batch read and a few vector operations, and only
    the flows that are due become Python objects.

    Raises ``ValueError`` for bad arguments and ``AttachError`` when ``interface``
    does not exist or does not carry Ethernet frames (a tun device, WireGuard),
    before anything is loaded.
    """

    name = "flows"
    object_name = "flows"
    columns: tuple[Column, ...] = ()
    #: How top-talker rows print (``top()``).
    top_columns: ClassVar[tuple[Column, ...]] = (
        Column("DIR", 3, text=lambda r: "in" if r["direction"] == "ingress" else "out"),
        Column("PROTO", 6),
        Column("SOURCE", 21, text=lambda r: _end_text(r, source=True)),
        Column("DESTINATION", 21, text=lambda r: _end_text(r, source=False)),
        Column("PACKETS", 8, right=True),
        Column("BYTES", 10, right=True),
        Column("RATE", 11, right=True, text=lambda r: _rate_text(r["rate_bps"])),
        Column("FLAGS", 5, text=lambda r: _flags_cell(r)),
    )

    def __init__(
        self,
        interface: str,
        *,
        xdp: bool = False,
        xdp_mode: str = "auto",
        tc_mode: str = "auto",
        active_timeout: float = 5.0,
        idle_timeout: float = 15.0,
        max_flows: int = DEFAULT_MAX_FLOWS,
    ) -> None:
        if not active_timeout > 0 or not idle_timeout > 0:
            raise ValueError("the active and idle timeouts must be positive")
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        if tc_mode not in TC_MODES:
            raise ValueError(f"tc_mode must be one of {', '.join(TC_MODES)}, not {tc_mode!r}")
        self.ifindex = check_interface(interface)
        link_type = _link_type(interface)
        if link_type is not None and link_type not in ETHERNET_LINK_TYPES:
            raise AttachError(
                f"interface {interface!r} does not carry Ethernet frames (link type "
                f"{link_type}); flows parses Ethernet headers",
                hook=f"interface {interface}",
            )
        self.interface = interface
        self.xdp, self.xdp_mode, self.tc_mode = xdp, xdp_mode, tc_mode
        #: How the tc programs were attached, once they are: "tcx" or "clsact".
        self.tc_attached: str | None = None
        self.active_ns = int(active_timeout * 1e9)
        self.idle_ns = int(idle_timeout * 1e9)
        self.end_ns = int(min(END_GRACE, idle_timeout) * 1e9)
        self.max_flows = max_flows
        self.exported = 0  # flow records returned so far
        self.removed = 0  # flows this class deleted from the map (ended or idle)
        self.left = 0  # flows the last walk found in the map
        self._state = _columns(STATE, 0)
        # window rows of flows no longer in the state (removed, evicted)
        self._gone: list[Columns] = []
        self._window_start = time.monotonic_ns()
        self.window_flows = 0  # flows in the window the last top() ranked
        super().__init__()
        self._cpus = self.obj.possible_cpus
        flows = self.obj.maps["flows"]
        if flows.key_size != KEY.itemsize or flows.value_size != VALUE.itemsize:
            self.obj.close()
            raise MapError("flows.bpf.o does not match bpfloom/tools/flows.py (rebuild it)")
        self._fd = flows.fd
        self._value_buf = _libbpf.new_buffer(VALUE.itemsize * self._cpus)

    def configure(self) -> None:
        programs = self.obj.programs
        programs["flows_xdp"].autoload = self.xdp
        programs["flows_ingress"].autoload = not self.xdp
        programs["flows_egress"].autoload = not self.xdp
        self.obj.maps["flows"].max_entries = self.max_flows

    def attach(self) -> None:
        """Attach to the interface: XDP, or the tc programs on ingress and egress —
        through tcx links where the kernel has them (``tc_mode`` "auto", Linux 6.6+;
        "tcx" insists), else as clsact filters (``tc_mode`` "clsact" asks for them).
        Whatever was attached before a failure is detached before the error
        propagates."""
        programs = self.obj.programs
        if self.xdp:
            programs["flows_xdp"].attach_xdp(self.interface, self.xdp_mode)
            return
        hooks = (("flows_ingress", "ingress"), ("flows_egress", "egress"))
        if self.tc_mode != "clsact":
            try:
                for name, direction in hooks:
                    programs[name].attach_tcx(self.interface, direction)
                self.tc_attached = "tcx"
                return
            except AttachError as exc:
                self.detach()
                if self.tc_mode == "tcx" or exc.errno != errno.EINVAL:
                    raise
        try:
            for name, direction in hooks:
                programs[name].attach_tc(self.interface, direction)
            self.tc_attached = "clsact"
        except AttachError:
            self.detach()
            raise

    # --- reading the map ---------------------------------------------------------------

    def created(self) -> int:
        """Flows the kernel created so far (every key's every life)."""
        return int(sum(self.obj.maps["flow_counts"][0]))

    def evicted(self) -> int:
        """Flows the LRU map evicted: created - removed - left at the last walk (exact
        after ``flush()``, when nothing creates flows any more)."""
        return max(0, self.created() - self.removed - self.left)

    def _walk(self) -> Columns:
        """Every flow in the map now (one BPF_MAP_LOOKUP_BATCH walk), ``WALK`` columns."""
        limit = self.max_flows
        try:
            raw = _libbpf.map_lookup_all(
                self._fd,
                KEY.itemsize,
                VALUE.itemsize * self._cpus,
                min(BATCH_ENTRIES, limit),
                limit,
            )
        except OSError as exc:
            raise MapError(f"reading map 'flows' failed: {exc.strerror}", errno=exc.errno) from exc
        if raw is None:
            raise MapError("this kernel cannot read LRU per-CPU hash maps in batches (5.6+)")
        keys_raw, values_raw, n = raw
        self.left = n
        if not n:
            return _columns(WALK, 0)
        keys = np.frombuffer(keys_raw, dtype=np.uint8).reshape(n, KEY.itemsize)
        values = np.frombuffer(values_raw, dtype=VALUE).reshape(n, self._cpus)
        packets = values["packets"]
        return {
            "fp": _fingerprints(keys),
            "key": keys.view("V40").ravel(),
            "packets": packets.sum(axis=1, dtype=np.uint64),
            "bytes": values["bytes"].sum(axis=1, dtype=np.uint64),
            "flags": np.bitwise_or.reduce(values["tcp_flags"], axis=1),
            "first": np.where(packets > 0, values["first_seen"], _NEVER).min(axis=1),
            "last": values["last_seen"].max(axis=1),
        }

    def _match(self, walk: Columns) -> tuple[np.ndarray, np.ndarray]:
        """For each walked flow, its row in the state and whether it is the same life
        of the key (the same key, and the same first packet).

        The state is in the order of the previous walk, and a walk of a hash map that
        did not change comes in the same order: then no search is needed."""
        state = self._state
        n, m = len(walk["fp"]), len(state["fp"])
        if not n or not m:
            return np.zeros(n, np.intp), np.zeros(n, bool)
        if n == m and np.array_equal(state["key"], walk["key"]):
            return np.arange(n), state["first"] == walk["first"]
        order = np.argsort(state["fp"])
        fps = state["fp"][order]
        if np.any(fps[1:] == fps[:-1]):
            # Two remembered keys share a fingerprint: match on the keys themselves.
            order = np.argsort(state["key"])
            pos = np.searchsorted(state["key"][order], walk["key"])
        else:
            pos = np.searchsorted(fps, walk["fp"])
        idx = order[np.minimum(pos, m - 1)]
        same = (state["key"][idx] == walk["key"]) & (state["first"][idx] == walk["first"])
        return idx, same

    def _remove(self, keys: np.ndarray) -> tuple[Columns, np.ndarray]:
        """Delete ``keys`` (``V40``) from the map, one BPF_MAP_LOOKUP_AND_DELETE_ELEM
        each: their final values (``WALK`` columns of the keys found) and which were
        found (the others were evicted meanwhile)."""
        buf, fd, size = self._value_buf, self._fd, _VALUE.size * self._cpus
        found: list[bool] = []
        finals: list[tuple[int, int, int, int, int]] = []
        for key in keys.tolist():
            try:
                there = _libbpf.map_lookup_and_delete(fd, key, buf)
            except OSError as exc:
                raise MapError(
                    f"removing a flow from map 'flows' failed: {exc.strerror}", errno=exc.errno
                ) from exc
            found.append(there)
            if not there:
                continue
            packets = nbytes = flags = last = 0
            first = int(_NEVER)
            for p, b, f0, l0, fl in _VALUE.iter_unpack(buf.raw[:size]):
                if p:
                    packets += p
                    nbytes += b
                    flags |= fl
                    first = min(first, f0)
                    last = max(last, l0)
            finals.append((packets, nbytes, flags, first, last))
        mask = np.array(found, bool)
        self.removed += len(finals)
        values = np.array(finals, np.uint64).reshape(len(finals), 5)
        return {
            "fp": np.zeros(len(finals), np.uint64),
            "key": keys[mask],
            "packets": values[:, 0].copy(),
            "bytes": values[:, 1].copy(),
            "flags": values[:, 2].copy(),
            "first": values[:, 3].copy(),
            "last": values[:, 4].copy(),
        }, mask

    # --- bookkeeping -------------------------------------------------------------------

    def _follow(self, walk: Columns) -> Columns:
        """The state of each walked flow (what its key's remembered row says when it
        is the same life, else a new row), with what grew since the last walk added
        to its window; the rows of flows that left the map keep their window."""
        idx, same = self._match(walk)
        state = self._state
        n = len(walk["fp"])
        rows: Columns = {"fp": walk["fp"], "key": walk["key"], "first": walk["first"]}
        defaults = {"exp_time": walk["first"].astype(np.int64)}
        has_state = len(state["fp"]) > 0
        identity = has_state and n == len(state["fp"]) and bool(same.all())
        for name in list(STATE)[3:]:
            if identity:  # the same flows in the same order: nothing to look up
                rows[name] = state[name].copy()
                continue
            default = defaults.get(name)
            if default is None:
                default = np.zeros(n, STATE[name])
            rows[name] = np.where(same, state[name][idx], default) if has_state else default
        if has_state:
            followed = np.zeros(len(state["fp"]), bool)
            followed[idx[same]] = True
            left = ~followed & (state["win_packets"] > 0)
            if left.any():
                self._gone.append(_take(state, np.flatnonzero(left)))
        self._grow(rows, walk)
        return rows

    @staticmethod
    def _grow(rows: Columns, current: Columns) -> None:
        """Add to ``rows``' windows what ``current`` has beyond what they saw."""
        grew = current["packets"] > rows["seen_packets"]
        zero = np.uint64(0)
        rows["win_packets"] += np.where(grew, current["packets"] - rows["seen_packets"], zero)
        rows["win_bytes"] += np.where(grew, current["bytes"] - rows["seen_bytes"], zero)
        rows["win_flags"] |= np.where(grew, current["flags"], zero)
        rows["seen_packets"] = np.maximum(rows["seen_packets"], current["packets"])
        rows["seen_bytes"] = np.maximum(rows["seen_bytes"], current["bytes"])

    def _records(self, rows: Columns, current: Columns, reasons: list[str]) -> list[Record]:
        """Records of ``current`` (``WALK`` columns) beyond what ``rows`` (their state)
        last reported; rows with nothing new make none."""
        new = current["packets"] > rows["exp_packets"]
        if not new.all():
            keep = np.flatnonzero(new)
            rows, current = _take(rows, keep), _take(current, keep)
            reasons = [reasons[i] for i in keep.tolist()]
        if not len(reasons):
            return []
        out: list[Record] = [
            {
                **fields,
                "packets": packets,
                "bytes": nbytes,
                "tcp_flags": flags,
                "first_seen": wall_time(first),
                "last_seen": wall_time(last),
                "reason": reason,
            }
            for fields, packets, nbytes, flags, first, last, reason in zip(
                _key_fields(current["key"]),
                (current["packets"] - rows["exp_packets"]).tolist(),
                (current["bytes"] - rows["exp_bytes"]).tolist(),
                current["flags"].tolist(),
                current["first"].tolist(),
                current["last"].tolist(),
                reasons,
                strict=True,
            )
        ]
        self.exported += len(out)
        return out

    def _reasons(self, walk: Columns, now: int) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the walked flows that ended (FIN or RST, then quiet for the grace
        period) and of those that idled."""
        quiet = now - walk["last"].astype(np.int64)
        ended = ((walk["flags"] & np.uint64(FIN | RST)) != 0) & (quiet >= self.end_ns)
        idle = ~ended & (quiet >= self.idle_ns)
        return ended, idle

    def poll(self, now_ns: int | None = None) -> list[Record]:
        """The records due now, and the flows that ended or idled removed from the
        map. ``now_ns``: CLOCK_MONOTONIC ns (default: now), the kernel's clock."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        walk = self._walk()
        rows = self._follow(walk)
        ended, idle = self._reasons(walk, now)
        out: list[Record] = []
        active = np.flatnonzero(
            ~ended
            & ~idle
            & (now - rows["exp_time"] >= self.active_ns)
            & (walk["packets"] > rows["exp_packets"])
        )
        if len(active):
            out += self._records(_take(rows, active), _take(walk, active), ["active"] * len(active))
            rows["exp_packets"][active] = walk["packets"][active]
            rows["exp_bytes"][active] = walk["bytes"][active]
            rows["exp_time"][active] = now
        finished = ended | idle
        if finished.any():
            done = np.flatnonzero(finished)
            finals, found = self._remove(walk["key"][done])
            if not found.all():  # evicted between the walk and now
                self._gone.append(_take(rows, done[~found]))
            ended_rows = _take(rows, done[found])
            # A key whose entry was evicted and created again meanwhile: a new life,
            # all of whose packets are new.
            reborn = finals["first"] != ended_rows["first"]
            if reborn.any():
                self._gone.append(_take(ended_rows, np.flatnonzero(reborn)))
                for name in list(STATE)[3:]:
                    ended_rows[name][reborn] = 0
            self._grow(ended_rows, finals)
            self._gone.append(ended_rows)
            reasons = np.where(ended[done[found]], "end", "idle").tolist()
            out += self._records(ended_rows, finals, reasons)
            rows = _take(rows, np.flatnonzero(~finished))
        self._state = rows
        return out

    def flush(self, now_ns: int | None = None) -> list[Record]:
        """The last record of every flow still in the map (reason ``end`` or ``idle``
        if it is due so, else ``exit``); nothing is removed. Call it after
        ``detach()``: the eviction count (``evicted()``) is then exact."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        walk = self._walk()
        rows = self._follow(walk)
        ended, idle = self._reasons(walk, now)
        reasons = np.where(ended, "end", np.where(idle, "idle", "exit")).tolist()
        out = self._records(rows, walk, reasons)
        self._gone.append(_take(rows, np.flatnonzero(rows["win_packets"] > 0)))
        self._state = _columns(STATE, 0)
        return out

    def top(self, count: int | None = None, now_ns: int | None = None) -> list[Record]:
        """The flows with the most bytes since the previous call (as of the last
        ``poll()``/``flush()``), largest first, at most ``count``; resets. Rows have
        the record keys (no ``first_seen``/``last_seen``/``reason``) and ``rate_bps``
        (bits per second over the window); ``window_flows`` is how many were ranked."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        seconds = max((now - self._window_start) / 1e9, 1e-9)
        state = self._state
        live = _take(state, np.flatnonzero(state["win_packets"] > 0))
        window = _concat([live, *self._gone], STATE)
        self._gone = []
        for name in ("win_packets", "win_bytes", "win_flags"):
            state[name][:] = 0
        self._window_start = now
        self.window_flows = 0
        if not len(window["key"]):
            return []
        # A key can have several rows (removed and created again): one row per key.
        keys, inverse = np.unique(window["key"], return_inverse=True)
        self.window_flows = len(keys)
        packets = np.zeros(len(keys), np.uint64)
        nbytes = np.zeros(len(keys), np.uint64)
        flags = np.zeros(len(keys), np.uint64)
        np.add.at(packets, inverse, window["win_packets"])
        np.add.at(nbytes, inverse, window["win_bytes"])
        np.bitwise_or.at(flags, inverse, window["win_flags"])
        order = np.argsort(-nbytes.astype(np.float64), kind="stable")[:count]
        return [
            {**fields, "packets": p, "bytes": b, "tcp_flags": f, "rate_bps": b * 8 / seconds}
            for fields, p, b, f in zip(
                _key_fields(keys[order]),
                packets[order].tolist(),
                nbytes[order].tolist(),
                flags[order].tolist(),
                strict=True,
            )
        ]

    def exit_line(self, stats: dict[str, Any]) -> str:
        """Records exported, and what the kernel could not count or evicted."""
        return (
            f"bpfloom {self.name}: {self.exported} flow records on {self.interface}; "
            f"{self.dropped_kernel()} packets not counted, {self.evicted()} flows "
            "evicted before their last record (map full)"
        )


def _end_text(row: Record, *, source: bool) -> str:
    """An endpoint as the table shows it: ``addr:port``, or for ICMP the address with
    the echo identifier (source) or type/code (destination)."""
    address = str(row["saddr"] if source else row["daddr"])
    if row["proto"] in _ICMP:
        if source:
            return f"{address} id {row['sport']}" if row["sport"] else address
        return f"{address} {row['dport'] >> 8}/{row['dport'] & 0xFF}"
    if row["proto"] in ("tcp", "udp", "sctp") or row["sport"] or row["dport"]:
        return endpoint(address, row["sport"] if source else row["dport"])
    return address


def _flags_cell(row: Record) -> str:
    """TCP flags as letters (tcpdump's: S SYN, F FIN, R RST, P PSH, . ACK, U URG,
    E ECE, W CWR), ``-`` for other protocols."""
    if row["proto"] != "tcp":
        return "-"
    letters = ("F", "S", "R", "P", ".", "U", "E", "W")
    flags = int(row["tcp_flags"])
    return "".join(c for bit, c in enumerate(letters) if flags >> bit & 1) or "-"


def _rate_text(bps: float) -> str:
    """Bits per second with a decimal unit (``12.3Mb/s``)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.1f}{unit}b/s"
    return f"{bps:.0f}b/s"
