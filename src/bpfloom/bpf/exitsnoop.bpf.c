// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * exitsnoop: one record per process (or, with trace_threads, thread) exit.
 *
 * sched_process_exit fires in do_exit() after the exit status is stored in
 * task->exit_code as a wait status: the signal that killed the task in bits
 * 0-6, the exit status in bits 8-15. Both are sent as they are; user space
 * tells "code N" from "signal N". Filters are globals set before load; with
 * bpfloom_prefilter (bpfloom detect), an exit no rule can match (by its comm) is left
 * out and counted.
 */
#include "bpfloom.h"
#include "bpfloom_prefilter.h"

#define TASK_COMM_LEN 16

struct exit_event {
	__u64 ts_ns;
	__u64 start_ns;		/* task start, CLOCK_MONOTONIC (as ts_ns) */
	__u32 pid;		/* thread group id, the "process id" */
	__u32 tid;
	__u32 ppid;
	__u32 exit_status;	/* wait status: signal in bits 0-6, code in bits 8-15 */
	__u64 cgroup_id;
	char comm[TASK_COMM_LEN];
};
BPFLOOM_RECORD(exit_event);

const volatile __u32 targ_pid = 0;		/* 0: every process */
const volatile bool trace_threads = false;	/* also report non-leader threads */
const volatile bool trace_failed_only = false;	/* only non-zero status or signals */
const volatile char targ_comm[TASK_COMM_LEN] = {};	/* "" : every command */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

SEC("tracepoint/sched/sched_process_exit")
int handle_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	struct exit_event *e;
	char comm[TASK_COMM_LEN];
	__u32 status;

	if (targ_pid && pid != targ_pid)
		return 0;
	if (!trace_threads && pid != tid)
		return 0;
	status = BPF_CORE_READ(task, exit_code);
	if (trace_failed_only && status == 0)
		return 0;
	bpf_get_current_comm(comm, sizeof(comm));
	if (!bpfloom_comm_equals(comm, targ_comm))
		return 0;
	if (bpfloom_prefilter) {
		struct bpfloom_facts facts = { .ret = BPFLOOM_RET_ANY };

		bpfloom_facts_comm(&facts, comm, false);
		if (!bpfloom_prefilter_pass(&facts)) {
			bpfloom_count_filtered();
			return 0;
		}
	}

	e = bpfloom_reserve(&events, sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = BPF_CORE_READ(task, start_time);
	e->pid = pid;
	e->tid = tid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->exit_status = status;
	e->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(e->comm, comm, sizeof(comm));
	bpfloom_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
