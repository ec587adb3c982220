// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * bad_verifier.bpf.c - compiles, but the verifier must reject it.
 *
 * bad_lookup dereferences the result of bpf_map_lookup_elem() without the
 * NULL check the verifier insists on. Loading the object fails with EACCES
 * and a verifier log ending in
 *   "R0 invalid mem access 'map_value_or_null'"
 * which the LoadError must carry. Plain C, no undefined behaviour clang could
 * optimise away: the load really is in the program.
 *
 * The map is a HASH on purpose: recent verifiers (6.18 here) know that an
 * ARRAY lookup with a constant in-range key cannot return NULL, and accept
 * the same code for an array.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("tp/syscalls/sys_enter_getpgid")
int bad_lookup(void *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&counts, &key);

	return *value; /* no NULL check: rejected */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
