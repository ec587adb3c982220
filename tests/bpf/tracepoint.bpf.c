// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * tracepoint.bpf.c - a tracepoint program whose section names no tracepoint.
 *
 * SEC("tracepoint") alone makes libbpf skip auto-attach; the runtime attaches
 * it explicitly (tests use syscalls/sys_enter_getppid, triggered by
 * os.getppid()). Emits `struct tp_event` {__u32 pid} (the caller's tgid) to
 * ring buffer `rb`. Filter: target_pid, a tgid; 0 = every process.
 */
#include "bpfloom.h"

struct tp_event {
	__u32 pid;
};

const volatile __u32 target_pid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} rb SEC(".maps");

SEC("tracepoint")
int on_tracepoint(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct tp_event *e;

	if (target_pid && pid != target_pid)
		return 0;
	e = bpfloom_reserve(&rb, sizeof(*e));
	if (!e)
		return 0;
	e->pid = pid;
	bpfloom_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
