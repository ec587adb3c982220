// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * uprobe.bpf.c - uprobe/uretprobe test object for tests/bpf/uprobe_target.c.
 *
 * The sections name no target: the runtime attaches both programs at run time
 * to bpfloom_probe_me() of a binary (and, optionally, one pid).
 *   probe_me_entry  SEC("uprobe")     emits {pid, arg = x, ret = 0, is_return = 0}
 *   probe_me_return SEC("uretprobe")  emits {pid, arg = 0, ret = 2x+1, is_return = 1}
 * Both write `struct uprobe_event` (16 bytes, DWARF only) to ring buffer `rb`.
 * Filter: target_pid, a tgid; 0 = every process.
 */
#include "bpfloom.h"

struct uprobe_event {
	__u32 pid;	 /* tgid */
	__s32 arg;	 /* first argument; 0 in return events */
	__s32 ret;	 /* return value; 0 in entry events */
	__u8 is_return;	 /* 0 = entry, 1 = return */
};

const volatile __u32 target_pid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

static __always_inline int emit(__s32 arg, __s32 ret, __u8 is_return)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct uprobe_event *e;

	if (target_pid && pid != target_pid)
		return 0;
	e = bpfloom_reserve(&rb, sizeof(*e));
	if (!e)
		return 0;
	e->pid = pid;
	e->arg = arg;
	e->ret = ret;
	e->is_return = is_return;
	bpfloom_submit(e);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(probe_me_entry, int x)
{
	return emit(x, 0, 0);
}

SEC("uretprobe")
int BPF_KRETPROBE(probe_me_return, int ret)
{
	return emit(0, ret, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
