// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * bad_verifier_long.bpf.c - the verifier rejects it at the end of a long log.
 *
 * long_then_bad runs a bounded loop of 300 steps, which the verifier walks (and
 * logs) one by one, then dereferences a map lookup without a NULL check. The verifier
 * log libbpf prints is far longer than 8 KiB; the LoadError must still quote its
 * end, where the reason is ("R0 invalid mem access 'map_value_or_null'").
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

volatile __u64 sink;

SEC("tp/syscalls/sys_enter_getpgid")
int long_then_bad(void *ctx)
{
	__u32 key = 0;
	__u64 *value;
	__u64 sum = 0;

#pragma clang loop unroll(disable)
	for (int i = 0; i < 300; i++)
		sum += sink;
	value = bpf_map_lookup_elem(&counts, &key);
	return *value + sum; /* no NULL check: rejected */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
