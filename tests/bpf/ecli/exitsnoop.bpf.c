// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * exitsnoop: report every process exit with its lifetime, to ring buffer `rb`.
 *
 * Threads are skipped: only the exit of a thread-group leader is a process
 * exit here. exit_code is what a shell shows as $?: the exit status, or
 * 128 + signal number when the process was killed by a signal.
 * Eunomia-tutorial style; the event struct is only in DWARF.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "exitsnoop.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

SEC("tracepoint/sched/sched_process_exit")
int handle_exit(void *ctx)
{
	struct task_struct *task;
	struct event *e;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 pid = pid_tgid >> 32, tid = (u32)pid_tgid;
	unsigned code;

	if (pid != tid)
		return 0;

	e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
	if (!e)
		return 0;

	task = (struct task_struct *)bpf_get_current_task();
	/* do_exit() has stored the wait status: signal in bits 0-6, status in bits 8-15. */
	code = BPF_CORE_READ(task, exit_code);
	e->exit_code = (code & 0x7f) ? 128 + (code & 0x7f) : (code >> 8) & 0xff;
	/* start_time is CLOCK_MONOTONIC ns, the clock of bpf_ktime_get_ns(). */
	e->duration_ns = bpf_ktime_get_ns() - BPF_CORE_READ(task, start_time);
	e->pid = pid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	bpf_get_current_comm(&e->comm, sizeof(e->comm));

	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
