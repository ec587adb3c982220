// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcpstate: the TCP life cycle from the sock:inet_sock_set_state tracepoint,
 * one object behind five tools (src/bpfloom/tools/tcp*.py). The global `emit`
 * says which records to send:
 *
 *   TCP_EV_STATE    every state change (tcpstates)
 *   TCP_EV_LIFE     one record per socket reaching CLOSE whose birth was seen,
 *                   with bytes_acked/bytes_received of its tcp_sock (tcplife)
 *   TCP_EV_CONNECT  the outcome of an active open: SYN_SENT -> ESTABLISHED, or
 *                   SYN_SENT -> CLOSE with sk_err (tcpconnect, tcpconnlat)
 *   TCP_EV_ACCEPT   a connection returned by accept()/accept4() (tcpaccept)
 *
 * Hooks: tp_btf/inet_sock_set_state (the socket itself, read directly: no
 * trace record is filled), and the exits of accept(2) and accept4(2), which
 * find the new socket through the file descriptor they return (there are no
 * kprobes here, so inet_csk_accept, BCC's tcpaccept hook, is out of reach).
 *
 * Every TCP socket gets an entry in `socks` at its first state change seen,
 * whatever the filters: the filters only decide what is emitted, so that a
 * socket's owner and birth are known even when the state change that taught
 * them was filtered out (the local port of an active open is still 0 at
 * CLOSE -> SYN_SENT). The entry goes at CLOSE, which every full TCP socket
 * reaches before it is freed.
 *
 * The owner (pid, uid, comm) of a socket is learned where the kernel is known
 * to run in the owner's context, never in a softirq, where the current task is
 * whoever was interrupted:
 *   - CLOSE -> SYN_SENT (connect) and CLOSE -> LISTEN (listen);
 *   - accept() returning it (overrides anything learned before);
 *   - a child of a listener (LISTEN -> SYN_RECV, in the softirq that completes
 *     the handshake) inherits the owner of the listener, looked up by network
 *     namespace and local port in `listeners`, if that listen() was seen;
 *   - failing all these, the first close: ESTABLISHED -> FIN_WAIT1 and
 *     CLOSE_WAIT -> LAST_ACK only happen in close()/shutdown().
 * An owner never learned is pid 0 and an empty comm.
 */
#include "bpfloom.h"
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TASK_COMM_LEN 16
#define ECONNREFUSED 111

#define TCP_EV_STATE 1
#define TCP_EV_LIFE 2
#define TCP_EV_CONNECT 4
#define TCP_EV_ACCEPT 8

/* Which connect outcomes TCP_EV_CONNECT emits (`connect_results`). */
#define CONNECT_ESTABLISHED 1
#define CONNECT_REFUSED 2	/* SYN_SENT -> CLOSE with ECONNREFUSED: an RST */
#define CONNECT_FAILED 4	/* any other SYN_SENT -> CLOSE: a timeout, an ICMP error, a close */

struct tcp_event {
	__u64 ts_ns;
	__u64 skaddr;
	__u64 span_ns;		/* see span_known */
	__u64 tx_bytes;		/* TCP_EV_LIFE: tcp_sock bytes_acked */
	__u64 rx_bytes;		/* TCP_EV_LIFE: tcp_sock bytes_received */
	__u32 pid;		/* the socket's owner (0: not known) */
	__u32 uid;
	__u32 netns;		/* inode number of the socket's network namespace */
	__s32 err;		/* TCP_EV_CONNECT: sk_err at SYN_SENT -> CLOSE */
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 kind;		/* TCP_EV_* */
	__u8 oldstate;
	__u8 newstate;
	/*
	 * Whether span_ns was measured: the time in oldstate (STATE, and the
	 * connect latency of CONNECT), the socket's life (LIFE), or the time from
	 * the end of the handshake to accept() (ACCEPT).
	 */
	__u8 span_known;
	__u8 pad[2];
	__u8 laddr[16];		/* network order: IPv4 in the first 4 bytes */
	__u8 raddr[16];
	char comm[TASK_COMM_LEN];
};
BPFLOOM_RECORD(tcp_event);

struct sock_owner {
	__u32 pid;
	__u32 uid;
	char comm[TASK_COMM_LEN];
};

/* What the state changes seen so far say about a socket (sock_state.seen). */
#define SEEN_CONNECT 1		/* in SYN_SENT: an active open */
#define SEEN_ESTABLISHED 2	/* -> ESTABLISHED */
#define SEEN_FIN_QUEUED 4	/* -> FIN_WAIT1 or LAST_ACK: tcp_close_state() queued our FIN */

struct sock_state {
	__u64 birth_ns;		/* the first of SYN_SENT/SYN_RECV/ESTABLISHED seen; 0: unknown */
	__u64 last_ns;		/* the last state change; 0: none seen yet */
	__u64 estab_ns;		/* -> ESTABLISHED */
	struct sock_owner owner;
	__u32 seen;		/* SEEN_* */
};

struct listen_port {
	__u32 netns;
	__u16 port;
	__u16 __pad;
};

struct listen_owner {
	__u64 skaddr;
	struct sock_owner owner;
};

const volatile __u32 emit = 0;			/* TCP_EV_* bits */
const volatile __u32 targ_pid = 0;		/* the owner's; 0: any */
const volatile bool filter_uid = false;
const volatile __u32 targ_uid = 0;		/* the owner's */
const volatile __u16 targ_family = 0;		/* AF_INET or AF_INET6; 0: both */
const volatile bool filter_lports = false;
const volatile bool filter_rports = false;
/* Bitmaps of the ports to report: bit p % 64 of word p / 64 stands for port p. */
const volatile __u64 lports[1024] = {};
const volatile __u64 rports[1024] = {};
const volatile __u32 connect_results = CONNECT_ESTABLISHED | CONNECT_REFUSED | CONNECT_FAILED;
const volatile __u64 min_connect_ns = 0;	/* TCP_EV_CONNECT: only slower ones */

/* Sockets that found `socks` full: their owner and times are not known. */
__u64 untracked = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct sock_state);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listen_port);
	__type(value, struct listen_owner);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

static __always_inline bool port_in(const volatile __u64 *bits, __u16 port)
{
	return bits[(port >> 6) & 1023] & (1ULL << (port & 63));
}

static __always_inline void current_owner(struct sock_owner *o)
{
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline __u32 sock_netns(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

/*
 * The local port: inet_num, or once that is 0 — a socket whose port was not bound
 * explicitly loses it on its way to CLOSE (__inet_put_port) — inet_sport, which
 * keeps it (and costs a probe read: it is past struct sock).
 */
static __always_inline __u16 local_port(const struct sock *sk)
{
	__u16 num = sk->__sk_common.skc_num;

	return num ? num : bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* Whether a record of this socket and owner passes the filters. */
static __always_inline bool wanted(const struct sock_owner *o, __u16 lport, __u16 rport)
{
	if (targ_pid && (!o || o->pid != targ_pid))
		return false;
	if (filter_uid && (!o || o->uid != targ_uid))
		return false;
	if (filter_lports && !port_in(lports, lport))
		return false;
	if (filter_rports && !port_in(rports, rport))
		return false;
	return true;
}

/* Reserves and fills the parts every record has; the caller sets the rest. */
static __always_inline struct tcp_event *
new_event(const struct sock *sk, __u8 kind, const struct sock_owner *o, __u16 lport, __u16 rport,
	  __u64 ts)
{
	struct tcp_event *e = bpfloom_reserve(&events, sizeof(*e));
	__u16 family = sk->__sk_common.skc_family;

	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = ts;
	e->skaddr = (__u64)sk;
	e->kind = kind;
	e->family = family;
	e->lport = lport;
	e->rport = rport;
	e->netns = sock_netns(sk);
	if (family == AF_INET) {
		__u32 saddr = sk->__sk_common.skc_rcv_saddr, daddr = sk->__sk_common.skc_daddr;

		__builtin_memcpy(e->laddr, &saddr, 4);
		__builtin_memcpy(e->raddr, &daddr, 4);
	} else {
		BPF_CORE_READ_INTO(&e->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	if (o) {
		e->pid = o->pid;
		e->uid = o->uid;
		__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	}
	return e;
}

/* What a state change teaches about the socket's owner (see the top). */
static __always_inline void learn_owner(struct sock_state *info, const struct sock *sk,
					int oldstate, int newstate, __u16 lport)
{
	struct listen_port key = {};
	struct listen_owner *l;

	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
		current_owner(&info->owner);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
		key.netns = sock_netns(sk);
		key.port = lport;
		l = bpf_map_lookup_elem(&listeners, &key);
		if (l)
			info->owner = l->owner;
	} else if (!info->owner.pid && (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK)) {
		current_owner(&info->owner);
	}
}

/* Keeps `listeners` in step with listen() and the close of a listener. */
static __always_inline void track_listener(const struct sock *sk, const struct sock_state *info,
					   int oldstate, int newstate, __u16 lport)
{
	struct listen_port key = {};
	struct listen_owner *l, value = {};

	key.netns = sock_netns(sk);
	key.port = lport;
	if (newstate == TCP_LISTEN && info) {
		value.skaddr = (__u64)sk;
		value.owner = info->owner;
		bpf_map_update_elem(&listeners, &key, &value, BPF_ANY);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		l = bpf_map_lookup_elem(&listeners, &key);
		if (l && l->skaddr == (__u64)sk)
			bpf_map_delete_elem(&listeners, &key);
	}
}

static __always_inline void emit_connect(const struct sock *sk, const struct sock_state *info,
					 int newstate, __u16 lport, __u16 rport, __u64 ts)
{
	struct tcp_event *e;
	__u32 result;
	int err = 0;

	/* Only attempts whose start was seen: their owner and latency are known. */
	if (!info || !info->last_ns)
		return;
	if (newstate == TCP_ESTABLISHED) {
		result = CONNECT_ESTABLISHED;
	} else {
		err = sk->sk_err;
		result = err == ECONNREFUSED ? CONNECT_REFUSED : CONNECT_FAILED;
	}
	if (!(connect_results & result) || ts - info->last_ns < min_connect_ns)
		return;
	if (!wanted(&info->owner, lport, rport))
		return;
	e = new_event(sk, TCP_EV_CONNECT, &info->owner, lport, rport, ts);
	if (!e)
		return;
	e->oldstate = TCP_SYN_SENT;
	e->newstate = newstate;
	e->err = err;
	e->span_ns = ts - info->last_ns;
	e->span_known = 1;
	bpfloom_submit(e);
}

/*
 * The bytes of data a socket sent (acknowledged by the peer) and received.
 * bytes_acked and bytes_received count sequence space: bytes_acked includes
 * our SYN when it was acknowledged (an active open: snd_una starts at the ISN,
 * where a passive open's starts past it, tcp_create_openreq_child) and our
 * FIN once acknowledged; bytes_received includes the peer's FIN (tcp_fin()
 * sets SOCK_DONE after counting it). Those are taken off, so that a session
 * that wrote N bytes shows N.
 */
static __always_inline void payload_bytes(const struct sock *sk, __u32 seen, __u64 *tx, __u64 *rx)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u64 acked = BPF_CORE_READ(tp, bytes_acked), received = BPF_CORE_READ(tp, bytes_received);
	__u32 done = bpf_core_enum_value(enum sock_flags, SOCK_DONE);

	if ((seen & SEEN_CONNECT) && (seen & SEEN_ESTABLISHED) && acked)
		acked--;
	/* Our FIN, once queued, is the last sequence number: acknowledged when
	 * snd_una has caught up with write_seq. */
	if ((seen & SEEN_FIN_QUEUED) && acked &&
	    BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		acked--;
	if ((sk->__sk_common.skc_flags >> (done & 63)) & 1 && received)
		received--;
	*tx = acked;
	*rx = received;
}

static __always_inline void emit_life(const struct sock *sk, const struct sock_state *info,
				      int oldstate, __u16 lport, __u16 rport, __u64 ts)
{
	struct tcp_event *e;

	if (!info || !info->birth_ns || !wanted(&info->owner, lport, rport))
		return;
	e = new_event(sk, TCP_EV_LIFE, &info->owner, lport, rport, ts);
	if (!e)
		return;
	e->oldstate = oldstate;
	e->newstate = TCP_CLOSE;
	e->span_ns = ts - info->birth_ns;
	e->span_known = 1;
	payload_bytes(sk, info->seen, &e->tx_bytes, &e->rx_bytes);
	bpfloom_submit(e);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct sock_state *info, fresh = {};
	const struct sock_owner *owner;
	__u64 key = (__u64)sk, ts;
	__u16 family, lport, rport;
	struct tcp_event *e;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	family = sk->__sk_common.skc_family;
	if (targ_family && family != targ_family)
		return 0;
	ts = bpf_ktime_get_ns();
	lport = local_port(sk);
	rport = bpf_ntohs(sk->__sk_common.skc_dport);

	info = bpf_map_lookup_elem(&socks, &key);
	if (!info && newstate != TCP_CLOSE) {
		if (newstate < TCP_FIN_WAIT1)
			fresh.birth_ns = ts;
		if (bpf_map_update_elem(&socks, &key, &fresh, BPF_NOEXIST) == 0)
			info = bpf_map_lookup_elem(&socks, &key);
		if (!info)
			__sync_fetch_and_add(&untracked, 1);
	}
	if (info) {
		learn_owner(info, sk, oldstate, newstate, lport);
		if (newstate == TCP_SYN_SENT || oldstate == TCP_SYN_SENT)
			info->seen |= SEEN_CONNECT;
		if (newstate == TCP_ESTABLISHED) {
			info->estab_ns = ts;
			info->seen |= SEEN_ESTABLISHED;
		}
		if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK)
			info->seen |= SEEN_FIN_QUEUED;
	}
	if (newstate == TCP_LISTEN || oldstate == TCP_LISTEN)
		track_listener(sk, info, oldstate, newstate, lport);

	owner = info ? &info->owner : NULL;
	if ((emit & TCP_EV_STATE) && wanted(owner, lport, rport)) {
		e = new_event(sk, TCP_EV_STATE, owner, lport, rport, ts);
		if (e) {
			e->oldstate = oldstate;
			e->newstate = newstate;
			if (info && info->last_ns) {
				e->span_ns = ts - info->last_ns;
				e->span_known = 1;
			}
			bpfloom_submit(e);
		}
	}
	if ((emit & TCP_EV_CONNECT) && oldstate == TCP_SYN_SENT &&
	    (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE))
		emit_connect(sk, info, newstate, lport, rport, ts);
	if ((emit & TCP_EV_LIFE) && newstate == TCP_CLOSE)
		emit_life(sk, info, oldstate, lport, rport, ts);

	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&socks, &key);
	else if (info)
		info->last_ns = ts;
	return 0;
}

/* The TCP socket of file descriptor `fd` of the current task, or NULL. */
static __always_inline const struct sock *tcp_sock_of_fd(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct socket *sock;
	struct file *file;
	struct sock *sk;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	/* accept() made this a socket, but another thread may have replaced it since. */
	if (!sk || BPF_CORE_READ(sk, sk_socket) != sock || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return NULL;
	return bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));
}

static __always_inline int on_accept(long fd)
{
	const struct sock *sk = tcp_sock_of_fd(fd);
	struct sock_state *info, fresh = {};
	__u16 family, lport, rport;
	struct tcp_event *e;
	__u64 key, ts;

	if (!sk)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (targ_family && family != targ_family)
		return 0;
	key = (__u64)sk;
	ts = bpf_ktime_get_ns();
	info = bpf_map_lookup_elem(&socks, &key);
	if (!info) {
		/* Established before tracing began; now its owner is known. */
		if (bpf_map_update_elem(&socks, &key, &fresh, BPF_NOEXIST) == 0)
			info = bpf_map_lookup_elem(&socks, &key);
		if (!info) {
			__sync_fetch_and_add(&untracked, 1);
			return 0;
		}
	}
	current_owner(&info->owner);
	if (!(emit & TCP_EV_ACCEPT))
		return 0;
	lport = local_port(sk);
	rport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (!wanted(&info->owner, lport, rport))
		return 0;
	e = new_event(sk, TCP_EV_ACCEPT, &info->owner, lport, rport, ts);
	if (!e)
		return 0;
	e->oldstate = e->newstate = sk->__sk_common.skc_state;
	if (info->estab_ns) {
		e->span_ns = ts - info->estab_ns;
		e->span_known = 1;
	}
	bpfloom_submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int sys_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int sys_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept(ctx->ret);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
