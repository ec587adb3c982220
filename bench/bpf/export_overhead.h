/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * export_overhead.h - the probes of bench/export.py's overhead section, the same
 * three cases as ebpf_exporter's benchmark/probes (tp_btf/sys_enter on every system
 * call): EMPTY returns at once; SIMPLE adds one to a hash map keyed by the pid;
 * COMPLEX keys it by pid, a pseudo-random number and the command name.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

static u64 zero = 0;

#if defined(SIMPLE)
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u32);
	__type(value, u64);
} syscalls_by_pid_total SEC(".maps");

static __always_inline void count(void)
{
	u32 key = bpf_get_current_pid_tgid();
	u64 *value = bpf_map_lookup_elem(&syscalls_by_pid_total, &key);

	if (!value) {
		bpf_map_update_elem(&syscalls_by_pid_total, &key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&syscalls_by_pid_total, &key);
		if (!value)
			return;
	}
	__sync_fetch_and_add(value, 1);
}
#elif defined(COMPLEX)
struct complex_key {
	u64 pid;
	u64 random;
	char command[32];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct complex_key);
	__type(value, u64);
} syscalls_by_command_total SEC(".maps");

static __always_inline void count(void)
{
	struct complex_key key = {};
	u64 *value;

	key.pid = bpf_get_current_pid_tgid();
	key.random = bpf_ktime_get_ns() % 1024;
	bpf_get_current_comm(&key.command, sizeof(key.command));
	value = bpf_map_lookup_elem(&syscalls_by_command_total, &key);
	if (!value) {
		bpf_map_update_elem(&syscalls_by_command_total, &key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&syscalls_by_command_total, &key);
		if (!value)
			return;
	}
	__sync_fetch_and_add(value, 1);
}
#else
static __always_inline void count(void)
{
}
#endif

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter)
{
	count();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
