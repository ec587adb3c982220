// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * execsnoop: report every execve() as it is entered, through a perf event
 * array. Written in the style of the eunomia-bpf tutorial, as an "object from
 * elsewhere": the event struct is only a local variable, so it is in DWARF but
 * not in BTF.
 *
 * Only the entry is traced, so retval is always 0 and is_exit always false;
 * comm is still the caller's (the new image is not loaded yet).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "execsnoop.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(u32));
	__uint(value_size, sizeof(u32));
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int tracepoint__syscalls__sys_enter_execve(struct trace_event_raw_sys_enter *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct event event = {};

	event.pid = bpf_get_current_pid_tgid() >> 32;
	event.ppid = BPF_CORE_READ(task, real_parent, tgid);
	event.uid = (u32)bpf_get_current_uid_gid();
	event.retval = 0;
	event.is_exit = false;
	bpf_get_current_comm(&event.comm, sizeof(event.comm));

	bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &event, sizeof(event));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
