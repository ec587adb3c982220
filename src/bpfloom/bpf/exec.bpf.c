// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * exec.bpf.c - bpfloom's built-in demo: one event per successful exec().
 *
 * Hook: tracepoint sched/sched_process_exec (fires after the new image is in
 * place, so failed execs are not reported and comm is already the new one).
 * Output: ring buffer `events`, one `struct exec_event` per exec.
 * Filters (set before load, applied here in the kernel):
 *   target_uid   only this real uid; (u32)-1 = every user
 *   target_ppid  only children of this process (tgid); 0 = every parent
 */
#include "bpfloom.h"

#define TASK_COMM_LEN 16
#define EXEC_FILENAME_LEN 128

struct exec_event {
	__u64 ts_ns;			  /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;			  /* tgid that exec'd */
	__u32 ppid;			  /* tgid of its real parent */
	__u32 uid;			  /* real uid */
	char comm[TASK_COMM_LEN];	  /* comm after exec */
	char filename[EXEC_FILENAME_LEN]; /* path given to exec, NUL-terminated, may be cut */
};

const volatile __u32 target_uid = (__u32)-1;
const volatile __u32 target_ppid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/*
 * clang emits BTF only for types that a global, a map or a CO-RE relocation
 * names; the event is otherwise only written through a ring buffer slot. This
 * never-used global puts `struct exec_event` into BTF, so the runtime decodes
 * the demo from BTF alone (the DWARF fallback is covered by tests/bpf/shapes).
 */
const struct exec_event *unused_exec_event __attribute__((unused));

SEC("tp/sched/sched_process_exec")
int handle_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task;
	struct exec_event *e;
	__u32 uid, ppid;
	__u16 off;

	/* Cheapest filter first: no task walk for other users' execs. */
	uid = (__u32)bpf_get_current_uid_gid();
	if (target_uid != (__u32)-1 && uid != target_uid)
		return 0;

	task = (struct task_struct *)bpf_get_current_task();
	ppid = BPF_CORE_READ(task, real_parent, tgid);
	if (target_ppid && ppid != target_ppid)
		return 0;

	e = bpfloom_reserve(&events, sizeof(*e));
	if (!e)
		return 0;

	e->ts_ns = bpf_ktime_get_ns();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->ppid = ppid;
	e->uid = uid;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));

	/*
	 * filename is a __data_loc field: the low 16 bits are its offset from the
	 * start of the record, the high 16 bits its length (include/trace/trace_events.h).
	 */
	off = ctx->__data_loc_filename & 0xFFFF;
	if (bpf_probe_read_kernel_str(&e->filename, sizeof(e->filename), (void *)ctx + off) < 0)
		e->filename[0] = '\0';

	bpfloom_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
