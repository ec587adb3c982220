// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * counters_rb: events and a counter map side by side (tests/test_cli_maps.py).
 *
 * Every getpriority(cookie, v) call (an invalid `which`, so it fails with
 * EINVAL and changes nothing) emits one event {pid, v} to ring buffer `rb`
 * and adds one to `counts[pid]`. `bpfloom run` prints the events as they
 * come and the map at exit. Eunomia-tutorial style: the event struct is only
 * in DWARF.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "counters_rb.h"

const volatile int cookie = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u32);
	__type(value, u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpriority")
int handle_getpriority(struct trace_event_raw_sys_enter *ctx)
{
	struct event *e;
	u64 one = 1, *count;
	u32 pid;

	if ((int)ctx->args[0] != cookie)
		return 0;
	pid = bpf_get_current_pid_tgid() >> 32;
	count = bpf_map_lookup_elem(&counts, &pid);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&counts, &pid, &one, BPF_NOEXIST);

	e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = pid;
	e->value = (u32)ctx->args[1];
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
