// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcprtt: TCP smoothed round-trip times as log2 histograms, as libbpf-tools'
 * tcprtt.
 *
 * Hook: tracepoint tcp/tcp_probe, which tcp_rcv_established() fires for every
 * segment an established socket receives (the point libbpf-tools' fentry
 * hooks); its `srtt` is the socket's smoothed RTT, tp->srtt_us >> 3, in usecs.
 * So a sample is a received segment, weighted like libbpf-tools: a socket that
 * receives more counts more. Both ends of a connection on this host give
 * samples, each its own socket's srtt.
 *
 * Filters on the local/remote port and address and the family run here, as
 * globals set before load. Addresses are compared and keyed in one 16-byte
 * form: IPv6 as is, IPv4 as its IPv4-mapped IPv6 address (::ffff:a.b.c.d), so
 * an IPv4 filter also matches a dual-stack socket talking to that IPv4 peer.
 *
 * The histograms only grow (bpfloom_hist.h); user space reads differences.
 */
#include "bpfloom.h"
#include "bpfloom_hist.h"

#define AF_INET 2
#define AF_INET6 10

#define KEY_ALL 0
#define KEY_LOCAL_ADDR 1
#define KEY_REMOTE_ADDR 2

struct tcprtt_key {
	__u8 addr[16];	/* all zero for the one histogram of every socket */
};

struct tcprtt_hist {
	__u64 total_us;	/* sum of the samples, for the average */
	__u64 slots[BPFLOOM_HIST_SLOTS];
};

const volatile __u16 targ_family = 0;	/* 0: both; AF_INET or AF_INET6 */
const volatile __u16 targ_lport = 0;	/* 0: any */
const volatile __u16 targ_rport = 0;	/* 0: any */
const volatile bool targ_laddr_set = false;
const volatile bool targ_raddr_set = false;
const volatile __u8 targ_laddr[16] = {};	/* in the 16-byte form above */
const volatile __u8 targ_raddr[16] = {};
const volatile __u32 targ_key = KEY_ALL;	/* histograms by local/remote address */
const volatile __u32 targ_unit = BPFLOOM_USECS;	/* enum bpfloom_hist_unit */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct tcprtt_key);
	__type(value, struct tcprtt_hist);
} hists SEC(".maps");

/*
 * The 16-byte form of the address in a struct sockaddr_in/sockaddr_in6 the
 * tracepoint stored in 28 bytes (TP_STORE_ADDR_PORTS in
 * include/trace/events/net_probe_common.h). Copied with a helper: the
 * verifier takes context loads only at constant offsets.
 */
static __always_inline void addr16(const __u8 *ctx_sa, __u16 family, __u8 *out)
{
	__u8 sa[28];

	bpf_probe_read_kernel(sa, sizeof(sa), ctx_sa);
	if (family == AF_INET) {
		__builtin_memset(out, 0, 10);
		out[10] = 0xff;
		out[11] = 0xff;
		__builtin_memcpy(out + 12, sa + 4, 4);
	} else {
		__builtin_memcpy(out, sa + 8, 16);
	}
}

/* Compared byte by byte: the filter is volatile, set before load. */
static __always_inline bool addr_equals(const __u8 *addr, const volatile __u8 *want)
{
	for (int i = 0; i < 16; i++)
		if (addr[i] != want[i])
			return false;
	return true;
}

SEC("tracepoint/tcp/tcp_probe")
int tcp_probe(struct trace_event_raw_tcp_probe *ctx)
{
	struct tcprtt_hist zero = {}, *hist;
	struct tcprtt_key key = {};
	__u8 laddr[16], raddr[16];
	__u16 family = ctx->family;
	__u64 srtt_us;

	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (targ_family && family != targ_family)
		return 0;
	if (targ_lport && ctx->sport != targ_lport)
		return 0;
	if (targ_rport && ctx->dport != targ_rport)
		return 0;
	addr16(ctx->saddr, family, laddr);
	addr16(ctx->daddr, family, raddr);
	if (targ_laddr_set && !addr_equals(laddr, targ_laddr))
		return 0;
	if (targ_raddr_set && !addr_equals(raddr, targ_raddr))
		return 0;

	if (targ_key == KEY_LOCAL_ADDR)
		__builtin_memcpy(key.addr, laddr, 16);
	else if (targ_key == KEY_REMOTE_ADDR)
		__builtin_memcpy(key.addr, raddr, 16);
	hist = bpfloom_lookup_or_init(&hists, &key, &zero);
	if (!hist)
		return 0;	/* the map is full: counted */
	srtt_us = ctx->srtt;
	__sync_fetch_and_add(&hist->total_us, srtt_us);
	__sync_fetch_and_add(&hist->slots[bpfloom_hist_slot(srtt_us * 1000, targ_unit)], 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
