// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * net.bpf.c - XDP and tc programs for the explicit-attach tests.
 *
 * Both only count the packets they see in array `packets` (index 0: XDP,
 * index 1: tc) and let every packet through. Neither SEC names an interface,
 * so both are attached at run time with attach_xdp()/attach_tc().
 */
#include "bpfloom.h"

#define TC_ACT_OK 0

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} packets SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&packets, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("xdp")
int count_xdp(struct xdp_md *ctx)
{
	count(0);
	return XDP_PASS;
}

SEC("tc")
int count_tc(struct __sk_buff *skb)
{
	count(1);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
