// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * doctor: the smallest program of each kind `bpfloom doctor` tries on this host.
 *
 * The doctor loads them one at a time (autoload off for the others) and attaches
 * the kinds whose load alone does not tell (kprobe, fentry, uprobe, perf_event,
 * the tracepoints). None reads or writes anything: a probe that loads and
 * attaches is all that is asked. No maps, so that a kernel lacking a map type
 * fails no probe here (doctor_buffers.bpf.c tries the buffers). Programs that
 * need a run-time target (kprobe, fentry: a kernel function found in this
 * kernel's BTF; uprobe; perf_event) name none in their SEC().
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_tracepoint(void *ctx)
{
	return 0;
}

SEC("raw_tp/sys_enter")
int probe_raw_tp(void *ctx)
{
	return 0;
}

SEC("tp_btf/sys_enter")
int probe_tp_btf(void *ctx)
{
	return 0;
}

SEC("kprobe")
int probe_kprobe(void *ctx)
{
	return 0;
}

SEC("fentry")
int probe_fentry(void *ctx)
{
	return 0;
}

SEC("uprobe")
int probe_uprobe(void *ctx)
{
	return 0;
}

SEC("perf_event")
int probe_perf_event(void *ctx)
{
	return 0;
}

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	return 0; /* TC_ACT_OK */
}

SEC("cgroup_skb/ingress")
int probe_cgroup(struct __sk_buff *skb)
{
	return 1; /* let the packet through */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
