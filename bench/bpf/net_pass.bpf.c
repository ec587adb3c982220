// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * net_pass.bpf.c - empty tc and XDP programs, the baselines of bench/net.py: what a
 * program on the hook costs before it does anything (the flows programs return the
 * same verdicts: TC_ACT_UNSPEC, XDP_PASS).
 */
#include "bpfloom.h"

SEC("tc")
int pass_tc(struct __sk_buff *skb)
{
	return -1;	/* TC_ACT_UNSPEC */
}

SEC("xdp")
int pass_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
