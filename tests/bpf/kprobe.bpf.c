// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * kprobe.bpf.c - a kprobe program for a kernel without kprobes.
 *
 * BPF_PROG_TYPE_KPROBE is also the uprobe program type, so this loads; but
 * CONFIG_KPROBES is off on our machines, so attaching (auto-attach from the
 * section name, or explicit) fails: there is no "kprobe" PMU in
 * /sys/bus/event_source/devices and no kprobe_events in tracefs. Tests check
 * that the AttachError names the hook and suggests a tracepoint (here:
 * syscalls/sys_enter_unlinkat). Emits {pid} to ring buffer `rb` if it ever runs.
 */
#include "bpfloom.h"

struct unlink_event {
	__u32 pid;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} rb SEC(".maps");

SEC("kprobe/do_unlinkat")
int BPF_KPROBE(on_do_unlinkat, int dfd)
{
	struct unlink_event *e = bpfloom_reserve(&rb, sizeof(*e));

	if (!e)
		return 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpfloom_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
