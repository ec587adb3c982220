// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * flows: per-flow accounting on one interface, aggregated in the kernel.
 *
 * tc (clsact) programs on ingress and egress, or an XDP program on ingress,
 * parse each IPv4/IPv6 packet down to its transport header and add it to the
 * flow it belongs to in `flows`, a per-CPU LRU hash keyed by the 5-tuple and
 * the direction. Nothing goes through a ring buffer: user space walks the map
 * (bpfloom/tools/flows.py) and turns what grew into flow records.
 *
 * The kernel only adds. Each CPU adds to its own copy of a flow's value, so no
 * atomic operation is needed: a CPU runs one of these programs at a time (tc
 * egress runs with bottom halves disabled, tc ingress and XDP in softirq).
 * User space sums the copies, remembers what it last reported and reports the
 * difference; it removes flows that ended or idled with one
 * BPF_MAP_LOOKUP_AND_DELETE_ELEM each, whose values are the flow's final ones.
 *
 * What a packet counts (the numbers tests check exactly):
 *   bytes   - its layer 3 length: the IP header and everything after it, no
 *             link-layer header, no Ethernet padding (the length the IP header
 *             states: IPv4 total length, IPv6 40 + payload length; the bytes
 *             from the IP header on when that field is 0 or larger than them).
 *   packets - 1; a GSO/GRO super-packet (several segments in one skb, as a
 *             TCP sender hands veth or a NIC doing TSO) counts as the segments
 *             it stands for (gso_segs), and its bytes as theirs: each segment
 *             after the first repeats the IP and TCP (or UDP) headers, as the
 *             kernel's own qdisc_pkt_len_init() counts them.
 *
 * Flow keys: source and destination address (IPv4 in the first 4 bytes),
 * source and destination port (TCP, UDP, UDP-Lite, SCTP), the IP protocol
 * (after IPv6 extension headers) and the direction. ICMP and ICMPv6, as
 * NetFlow/IPFIX do: sport is the identifier of echo requests and replies
 * (0 for other messages) and dport is type * 256 + code. Other protocols and
 * fragments after the first have ports 0.
 *
 * Map full: an LRU map never refuses an insert, it evicts (the least recently
 * used flow; one looked up again since it was made gets a second chance, so
 * one-packet flows go first). An eviction is not visible here, so `flow_counts`
 * counts the flows this program created; user space counts the flows it removed
 * and the flows left in the map, and the difference is what was evicted. A
 * packet whose flow could not be created at all is counted in bpfloom_drops.
 */
#include "bpfloom.h"
#include <bpf/bpf_endian.h>

#define TC_ACT_UNSPEC (-1)	/* let the next filter (and the default action) decide */

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP_ 132
#define IPPROTO_UDPLITE_ 136

#define AF_INET_ 2
#define AF_INET6_ 10

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define MAX_IPV6_EXT 6	/* extension headers walked before giving up on ports */
#define MAX_HEADER_OFF 4096	/* headers read in place only this far in (verifier bound) */

struct flow_key {
	__u8 saddr[16];		/* IPv4: the first 4 bytes, the rest 0 */
	__u8 daddr[16];
	__u16 sport;		/* host order */
	__u16 dport;
	__u8 proto;		/* IPPROTO_* */
	__u8 family;		/* AF_INET, AF_INET6 */
	__u8 direction;		/* DIR_INGRESS, DIR_EGRESS */
	__u8 pad;
};

struct flow_value {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen;	/* ktime (CLOCK_MONOTONIC) ns of this CPU's first packet */
	__u64 last_seen;	/* and of its last one */
	__u64 tcp_flags;	/* OR of the TCP flags byte of every packet */
};

/* Resized from user space before load (--max-flows). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

/* Index 0: flows created (inserts that succeeded), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flow_counts SEC(".maps");

/*
 * Loads `len` bytes at `off` of the packet: straight from the packet when they
 * are in its linear part (headers nearly always are), else through the helper of
 * the program type, which also reads non-linear packets. `xdp` and `len` are
 * constants after inlining, so each program calls one helper only.
 */
static __always_inline long load(void *ctx, bool xdp, __u32 off, void *to, __u32 len)
{
	void *data, *data_end, *p;

	if (xdp) {
		data = (void *)(long)((struct xdp_md *)ctx)->data;
		data_end = (void *)(long)((struct xdp_md *)ctx)->data_end;
	} else {
		data = (void *)(long)((struct __sk_buff *)ctx)->data;
		data_end = (void *)(long)((struct __sk_buff *)ctx)->data_end;
	}
	if (off < MAX_HEADER_OFF) {
		p = data + off;
		if (p + len <= data_end) {
			__builtin_memcpy(to, p, len);
			return 0;
		}
	}
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	return bpf_skb_load_bytes(ctx, off, to, len);
}

static __always_inline void count_flow(struct flow_key *key, __u64 packets, __u64 bytes,
				       __u8 tcp_flags)
{
	__u64 now = bpf_ktime_get_ns();
	struct flow_value *v = bpf_map_lookup_elem(&flows, key);

	if (!v) {
		struct flow_value init = {
			.packets = packets,
			.bytes = bytes,
			.first_seen = now,
			.last_seen = now,
			.tcp_flags = tcp_flags,
		};
		long err = bpf_map_update_elem(&flows, key, &init, BPF_NOEXIST);

		if (!err) {
			__u32 zero = 0;
			__u64 *created = bpf_map_lookup_elem(&flow_counts, &zero);

			if (created)
				*created += 1;
			return;
		}
		/* -EEXIST: another CPU created it meanwhile; add to this CPU's copy. */
		v = bpf_map_lookup_elem(&flows, key);
		if (!v) {
			bpfloom_count_drop();
			return;
		}
	}
	if (!v->packets)
		v->first_seen = now;	/* this CPU's first packet of the flow */
	v->packets += packets;
	v->bytes += bytes;
	v->last_seen = now;
	v->tcp_flags |= tcp_flags;
}

/*
 * Accounts the packet whose IP header starts at `off`. `len` is the packet's
 * length from offset 0; `gso_segs` the segments it stands for (0 or 1: one).
 */
static __always_inline void account(void *ctx, bool xdp, __u8 direction, __u16 proto,
				    __u32 off, __u32 len, __u32 gso_segs)
{
	struct flow_key key;
	__u32 l3 = off, ip_len, l4;
	__u8 nexthdr;
	bool ports = true;

	__builtin_memset(&key, 0, sizeof(key));
	key.direction = direction;
	if (proto == ETH_P_IP) {
		struct iphdr ip;

		if (load(ctx, xdp, off, &ip, sizeof(ip)))
			return;
		if (ip.ihl < 5)
			return;
		key.family = AF_INET_;
		__builtin_memcpy(key.saddr, &ip.saddr, 4);
		__builtin_memcpy(key.daddr, &ip.daddr, 4);
		nexthdr = ip.protocol;
		ip_len = bpf_ntohs(ip.tot_len);
		l4 = off + ip.ihl * 4;
		/* Fragments after the first carry no transport header. */
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			ports = false;
	} else {
		struct ipv6hdr ip6;

		if (load(ctx, xdp, off, &ip6, sizeof(ip6)))
			return;
		key.family = AF_INET6_;
		__builtin_memcpy(key.saddr, &ip6.saddr, 16);
		__builtin_memcpy(key.daddr, &ip6.daddr, 16);
		nexthdr = ip6.nexthdr;
		ip_len = bpf_ntohs(ip6.payload_len);
		ip_len = ip_len ? ip_len + 40 : 0;	/* 0: a jumbogram, or GSO */
		l4 = off + 40;
		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			__u8 ext[2];

			if (nexthdr != 0 && nexthdr != 43 && nexthdr != 44 && nexthdr != 51 &&
			    nexthdr != 60)
				break;
			if (load(ctx, xdp, l4, ext, sizeof(ext))) {
				ports = false;
				break;
			}
			if (nexthdr == 44) {	/* fragment header: 8 bytes */
				__be16 frag;

				if (load(ctx, xdp, l4 + 2, &frag, sizeof(frag)) ||
				    (bpf_ntohs(frag) & 0xfff8))
					ports = false;
				l4 += 8;
			} else if (nexthdr == 51) {	/* AH: (len + 2) * 4 bytes */
				l4 += (ext[1] + 2) * 4;
			} else {	/* hop-by-hop, routing, destination options */
				l4 += (ext[1] + 1) * 8;
			}
			nexthdr = ext[0];
		}
	}
	key.proto = nexthdr;

	__u32 seg_headers = l4 - l3;	/* repeated in every GSO segment */
	__u8 tcp_flags = 0;

	if (ports) {
		if (nexthdr == IPPROTO_TCP_) {
			__u8 tcp[14];	/* ports, seq, ack_seq, data offset, flags */

			if (!load(ctx, xdp, l4, tcp, sizeof(tcp))) {
				key.sport = (tcp[0] << 8) | tcp[1];
				key.dport = (tcp[2] << 8) | tcp[3];
				seg_headers += (tcp[12] >> 4) * 4;
				tcp_flags = tcp[13];
			}
		} else if (nexthdr == IPPROTO_UDP_ || nexthdr == IPPROTO_UDPLITE_ ||
			   nexthdr == IPPROTO_SCTP_) {
			__u8 ports_raw[4];

			if (!load(ctx, xdp, l4, ports_raw, sizeof(ports_raw))) {
				key.sport = (ports_raw[0] << 8) | ports_raw[1];
				key.dport = (ports_raw[2] << 8) | ports_raw[3];
			}
			if (nexthdr == IPPROTO_UDP_)
				seg_headers += 8;
		} else if (nexthdr == IPPROTO_ICMP_ || nexthdr == IPPROTO_ICMPV6_) {
			__u8 icmp[6];	/* type, code, checksum, identifier */

			if (!load(ctx, xdp, l4, icmp, sizeof(icmp))) {
				__u8 type = icmp[0];
				bool echo = nexthdr == IPPROTO_ICMP_ ? (type == 0 || type == 8)
								    : (type == 128 || type == 129);

				key.dport = (type << 8) | icmp[1];
				if (echo)
					key.sport = (icmp[4] << 8) | icmp[5];
			}
		}
	}

	__u32 avail = len > l3 ? len - l3 : 0;	/* the bytes from the IP header on */
	__u64 packets = 1, bytes;

	if (gso_segs > 1) {
		packets = gso_segs;
		bytes = avail + (__u64)(gso_segs - 1) * seg_headers;
	} else {
		bytes = ip_len && ip_len <= avail ? ip_len : avail;
	}
	count_flow(&key, packets, bytes, tcp_flags);
}

/*
 * The Ethernet header (and up to two VLAN tags in the packet; a tag the NIC
 * took out is not in it), then the IP packet.
 */
static __always_inline void parse(void *ctx, bool xdp, __u8 direction, __u32 len,
				  __u32 gso_segs)
{
	__u32 off = ETH_HLEN;
	__be16 proto_be;
	__u16 proto;

	if (load(ctx, xdp, 12, &proto_be, sizeof(proto_be)))
		return;
	proto = bpf_ntohs(proto_be);
	for (int i = 0; i < 2; i++) {
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		if (load(ctx, xdp, off + 2, &proto_be, sizeof(proto_be)))
			return;
		proto = bpf_ntohs(proto_be);
		off += 4;
	}
	if (proto != ETH_P_IP && proto != ETH_P_IPV6)
		return;
	account(ctx, xdp, direction, proto, off, len, gso_segs);
}

SEC("tc")
int flows_ingress(struct __sk_buff *skb)
{
	parse(skb, false, DIR_INGRESS, skb->len, skb->gso_segs);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int flows_egress(struct __sk_buff *skb)
{
	parse(skb, false, DIR_EGRESS, skb->len, skb->gso_segs);
	return TC_ACT_UNSPEC;
}

SEC("xdp")
int flows_xdp(struct xdp_md *ctx)
{
	parse(ctx, true, DIR_INGRESS, bpf_xdp_get_buff_len(ctx), 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
