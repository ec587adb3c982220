// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcpretrans: TCP retransmits and resets, one record each, as BCC's tcpretrans
 * (which shows retransmits only).
 *
 * Hooks (tracepoints only; this kernel has no kprobes):
 * - tcp/tcp_retransmit_skb: __tcp_retransmit_skb() sent a segment again (RTO,
 *   fast retransmit, or a tail loss probe retransmitting the last segment).
 *   Kernels with the tracepoint's `err` field fire it for failed attempts too
 *   (the segment was still queued below, or the route failed); those sent
 *   nothing and are skipped, so a record is a segment on the wire, as the
 *   kernel's RetransSegs counter counts them.
 * - tcp/tcp_send_reset: this host sent a RST, from a socket (an abort, a
 *   linger-0 close) or with none (a segment for a closed port); the tracepoint
 *   then takes the addresses from the segment answered, reversed.
 * - tcp/tcp_receive_reset: a socket of this host received a RST.
 *
 * Every address is put into one 16-byte form: IPv6 as is, IPv4 in the first 4
 * bytes, with `family` saying which.
 *
 * PID: these events mostly run in softirq context (the retransmit timer, a
 * segment arriving), where the current task is whatever the CPU interrupted,
 * not the socket's owner. A record carries the current process only when it
 * owns the socket (sock_owned_by_user(): it holds lock_sock(), in its own
 * system call or in release_sock() running the backlog and the timers deferred
 * to it), else 0. This is exact because softirq code never works on an owned
 * socket: tcp_v4_rcv() queues to the backlog and the timers defer to
 * tcp_release_cb() instead (net/ipv4/tcp_ipv4.c, tcp_timer.c). A reset sent
 * with no full socket (a closed port, TIME_WAIT) has no owner: 0.
 */
#include "bpfloom.h"
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

enum tcpretrans_kind {
	TCPRETRANS_RETRANSMIT = 1,
	TCPRETRANS_RESET_SENT = 2,
	TCPRETRANS_RESET_RECEIVED = 3,
};

struct tcpretrans_event {
	__u64 ts_ns;
	__u32 pid;		/* the process owning the socket, else 0 */
	__u32 state;		/* TCP state of the socket; 0: a reset sent without one */
	__u32 seq;		/* retransmits: the segment's first sequence number */
	enum sk_rst_reason reason;	/* resets sent (NOT_SPECIFIED where the kernel has none) */
	__u16 family;		/* AF_INET or AF_INET6 */
	__u16 lport;
	__u16 rport;
	__u8 kind;		/* enum tcpretrans_kind */
	__u8 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};
BPFLOOM_RECORD(tcpretrans_event);

const volatile __u16 targ_family = 0;	/* 0: both; AF_INET or AF_INET6 */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* States of sockets that are not full sockets (no sk_lock): sk_fullsock(). */
#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12

/*
 * The current process if it owns full socket `sk` (see the top of this file),
 * else 0. `state` is the socket's TCP state (0: no socket).
 */
static __always_inline __u32 owner_pid(const struct sock *sk, int state)
{
	if (!sk || !state || state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return 0;
	if (!BPF_CORE_READ(sk, sk_lock.owned))
		return 0;
	return bpf_get_current_pid_tgid() >> 32;
}

static __always_inline bool family_wanted(__u16 family)
{
	if (family != AF_INET && family != AF_INET6)
		return false;
	return !targ_family || family == targ_family;
}

static __always_inline struct tcpretrans_event *reserve(__u8 kind, __u16 family)
{
	struct tcpretrans_event *e = bpfloom_reserve(&events, sizeof(*e));

	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->family = family;
	return e;
}

/*
 * Arrays in a tracepoint's context are copied with a helper: the verifier only
 * takes context loads at a constant offset from the context pointer itself.
 */
#define COPY_FIELD(dst, field, size) bpf_probe_read_kernel(dst, size, &(field))

/*
 * The address and port of a struct sockaddr_in/sockaddr_in6 the tracepoint
 * stored in 28 bytes (TP_STORE_ADDR_PORTS in include/trace/events/net_probe_common.h).
 */
static __always_inline void from_sockaddr(const __u8 *ctx_sa, __u8 *addr, __u16 *port)
{
	__u8 sa[28];

	bpf_probe_read_kernel(sa, sizeof(sa), ctx_sa);
	*port = bpf_ntohs(*(__u16 *)(sa + 2));
	if (*(__u16 *)sa == AF_INET)
		__builtin_memcpy(addr, sa + 4, 4);
	else
		__builtin_memcpy(addr, sa + 8, 16);
}

/* The addresses of the tcp_event_sk-style tracepoints (4 bytes, or 16 for IPv6). */
#define COPY_ADDRS(e, ctx)                                          \
	do {                                                        \
		if ((e)->family == AF_INET) {                       \
			COPY_FIELD((e)->laddr, (ctx)->saddr, 4);    \
			COPY_FIELD((e)->raddr, (ctx)->daddr, 4);    \
		} else {                                            \
			COPY_FIELD((e)->laddr, (ctx)->saddr_v6, 16); \
			COPY_FIELD((e)->raddr, (ctx)->daddr_v6, 16); \
		}                                                   \
	} while (0)

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit_skb(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	struct tcpretrans_event *e;
	struct sk_buff *skb;
	__u16 family = ctx->family;

	if (bpf_core_field_exists(ctx->err) && ctx->err)
		return 0;	/* nothing was sent */
	if (!family_wanted(family))
		return 0;
	e = reserve(TCPRETRANS_RETRANSMIT, family);
	if (!e)
		return 0;
	e->state = ctx->state;
	e->pid = owner_pid(ctx->skaddr, ctx->state);
	e->lport = ctx->sport;
	e->rport = ctx->dport;
	COPY_ADDRS(e, ctx);
	/* TCP_SKB_CB(skb)->seq: struct tcp_skb_cb lives in skb->cb. */
	skb = (struct sk_buff *)ctx->skbaddr;
	e->seq = BPF_CORE_READ((struct tcp_skb_cb *)&skb->cb[0], seq);
	bpfloom_submit(e);
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int tcp_send_reset(struct trace_event_raw_tcp_send_reset *ctx)
{
	struct tcpretrans_event *e;
	__u16 family;

	COPY_FIELD(&family, ctx->saddr, sizeof(family));	/* sa_family */

	if (!family_wanted(family))
		return 0;
	e = reserve(TCPRETRANS_RESET_SENT, family);
	if (!e)
		return 0;
	e->state = ctx->state;
	e->pid = owner_pid(ctx->skaddr, ctx->state);
	if (bpf_core_field_exists(ctx->reason))
		e->reason = ctx->reason;
	from_sockaddr(ctx->saddr, e->laddr, &e->lport);
	from_sockaddr(ctx->daddr, e->raddr, &e->rport);
	bpfloom_submit(e);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int tcp_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	struct tcpretrans_event *e;
	struct sock *sk;
	__u16 family = ctx->family;

	if (!family_wanted(family))
		return 0;
	e = reserve(TCPRETRANS_RESET_RECEIVED, family);
	if (!e)
		return 0;
	/* tcp_reset() fires it before it moves the socket to CLOSE. */
	sk = (struct sock *)ctx->skaddr;
	e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->pid = owner_pid(sk, e->state);
	e->lport = ctx->sport;
	e->rport = ctx->dport;
	COPY_ADDRS(e, ctx);
	bpfloom_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
