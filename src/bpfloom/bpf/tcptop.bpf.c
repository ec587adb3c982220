// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcptop: TCP bytes sent and received per process and connection, counted in
 * the kernel, as libbpf-tools' tcptop.
 *
 * Hooks (tp_btf; this kernel has no kprobes): sock/sock_send_length and
 * sock/sock_recv_length, which sock_sendmsg() and sock_recvmsg() fire with the
 * call's result in the calling process (net/socket.c), so `ret` is exactly the
 * bytes the call moved: every send/recv-family call, sendfile() and splice()
 * into a socket, io_uring's socket I/O. Calls that failed, and MSG_PEEK reads
 * (which consume nothing), add nothing. Data the kernel moves without those
 * calls (splice() out of a socket, kTLS' own reads) is not seen.
 * libbpf-tools counts tcp_sendmsg()'s requested size and tcp_cleanup_rbuf()'s
 * copied bytes instead.
 *
 * The counters are keyed by socket (its cookie) and process, and only grow:
 * user space reads differences. They would grow without bound as connections
 * come and go, so tcp/tcp_destroy_sock marks the sockets counted here as
 * closed; user space reads that mark *before* the counters, and deletes the
 * counters of closed sockets once read. A destroyed socket takes no more
 * calls, so those counters were final: nothing is lost to the deletion (as it
 * is to libbpf-tools' read-then-delete).
 */
#include "bpfloom.h"
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define MSG_PEEK 2

struct tcptop_key {
	__u64 cookie;	/* the socket's cookie (bpf_get_socket_cookie) */
	__u32 pid;	/* the process (thread group) that sent or received */
	__u32 pad;
};

struct tcptop_value {
	__u64 sent;	/* bytes */
	__u64 received;
	char comm[16];	/* the process's comm when first counted */
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u8 laddr[16];	/* IPv4: the first 4 bytes */
	__u8 raddr[16];
};

const volatile __u32 targ_tgid = 0;	/* 0: every process */
const volatile __u16 targ_family = 0;	/* 0: both; AF_INET or AF_INET6 */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct tcptop_key);
	__type(value, struct tcptop_value);
} flows SEC(".maps");

/* Sockets with counters in `flows`: cookie -> 1 once destroyed, else 0. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u8);
} sockets SEC(".maps");

static __always_inline struct tcptop_value *flow_of(struct sock *sk, __u16 family,
						    struct tcptop_key *key)
{
	struct tcptop_value *value = bpf_map_lookup_elem(&flows, key);
	struct tcptop_value init = {};
	__u8 open = 0;

	if (value)
		return value;
	init.family = family;
	init.lport = sk->__sk_common.skc_num;
	init.rport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		__builtin_memcpy(init.laddr, &sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(init.raddr, &sk->__sk_common.skc_daddr, 4);
	} else {
		BPF_CORE_READ_INTO(&init.laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&init.raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	bpf_get_current_comm(init.comm, sizeof(init.comm));
	/*
	 * The socket is registered first: counters whose socket could not be
	 * registered could never be deleted.
	 */
	if (!bpfloom_lookup_or_init(&sockets, &key->cookie, &open))
		return NULL;
	return bpfloom_lookup_or_init(&flows, key, &init);
}

static __always_inline void count(struct sock *sk, int ret, bool sent)
{
	struct tcptop_value *value;
	struct tcptop_key key = {};
	__u16 family;
	__u32 pid;

	if (ret <= 0 || !sk)
		return;
	if (sk->sk_protocol != IPPROTO_TCP)
		return;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return;
	if (targ_family && family != targ_family)
		return;
	pid = bpf_get_current_pid_tgid() >> 32;
	if (targ_tgid && pid != targ_tgid)
		return;

	key.cookie = bpf_get_socket_cookie(sk);
	key.pid = pid;
	value = flow_of(sk, family, &key);
	if (!value)
		return;	/* a map is full: these bytes are not counted (a drop, counted) */
	if (sent)
		__sync_fetch_and_add(&value->sent, ret);
	else
		__sync_fetch_and_add(&value->received, ret);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send_length, struct sock *sk, int ret, int flags)
{
	count(sk, ret, true);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sock_recv_length, struct sock *sk, int ret, int flags)
{
	if (!(flags & MSG_PEEK))
		count(sk, ret, false);
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tcp_destroy_sock, struct sock *sk)
{
	/* A socket without a cookie yet was never counted here. */
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	__u8 *closed;

	if (!cookie)
		return 0;
	closed = bpf_map_lookup_elem(&sockets, &cookie);
	if (closed)
		*closed = 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
