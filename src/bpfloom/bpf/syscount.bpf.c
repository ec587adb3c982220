// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * syscount: system calls counted in the kernel, per syscall number or per
 * process, with the total time spent in them; as libbpf-tools' syscount.
 *
 * Nothing goes through a ring buffer: sys_exit adds to a hash map that user
 * space reads every interval. The counts only grow (user space subtracts the
 * previous read), so no call is lost to a read racing a delete; user space
 * deletes only the keys of exited processes. A call is counted when it returns,
 * so calls that never return (exit, exit_group, a successful execve's old
 * image...) are not counted. With measure_latency, sys_enter stores the entry
 * time per thread and sys_exit counts only calls whose entry it saw (a call
 * already running at attach time is left out, as in libbpf-tools), and adds
 * each call's time to a log2 histogram in targ_unit (--histogram).
 */
#include "bpfloom.h"
#include "bpfloom_hist.h"

#define TASK_COMM_LEN 16

struct syscount_value {
	__u64 count;
	__u64 total_ns;		/* time spent in the calls; measure_latency only */
	char comm[TASK_COMM_LEN];	/* count_by_process only: the last comm seen */
	__u64 slots[BPFLOOM_HIST_SLOTS];	/* measure_latency: times in targ_unit */
};

const volatile __u32 targ_tgid = 0;		/* 0: every process */
const volatile char targ_comm[TASK_COMM_LEN] = {};	/* exact; "" : any */
const volatile bool count_by_process = false;	/* key: tgid, not syscall nr */
const volatile bool measure_latency = false;
const volatile bool filter_failed = false;	/* only calls returning < 0 */
const volatile __s32 filter_errno = 0;		/* only calls returning -errno */
const volatile __u32 targ_unit = BPFLOOM_USECS;	/* of the histogram slots */

/* Entry time per thread. LRU: a thread that exits in a syscall leaves its entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);	/* syscall nr, or tgid with count_by_process */
	__type(value, struct syscount_value);
} counts SEC(".maps");

static __always_inline bool trace_allowed(__u32 tgid)
{
	char comm[TASK_COMM_LEN];

	if (targ_tgid && tgid != targ_tgid)
		return false;
	if (!targ_comm[0])
		return true;
	bpf_get_current_comm(comm, sizeof(comm));
	return bpfloom_comm_equals(comm, targ_comm);
}

/* Attached only with measure_latency (autoload is switched off otherwise). */
SEC("tracepoint/raw_syscalls/sys_enter")
int sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u64 ts;

	if (!trace_allowed(id >> 32))
		return 0;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &tid, &ts, BPF_ANY);
	return 0;
}

SEC("tracepoint/raw_syscalls/sys_exit")
int sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct syscount_value zero = {};
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id, key;
	struct syscount_value *value;
	long ret = ctx->ret;
	__u64 *start_ns = NULL;

	/* -1: no system call (ptrace or seccomp cancelled it). */
	if (ctx->id < 0)
		return 0;
	if (!trace_allowed(tgid))
		return 0;
	if (filter_failed && ret >= 0)
		return 0;
	if (filter_errno && ret != -filter_errno)
		return 0;
	if (measure_latency) {
		start_ns = bpf_map_lookup_elem(&start, &tid);
		if (!start_ns)
			return 0;
	}

	key = count_by_process ? tgid : (__u32)ctx->id;
	value = bpf_map_lookup_elem(&counts, &key);
	if (!value) {
		/* NOEXIST: another CPU may have created it meanwhile; that is fine. */
		bpf_map_update_elem(&counts, &key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&counts, &key);
		if (!value) {
			bpfloom_count_drop();	/* the map is full */
			return 0;
		}
	}
	if (count_by_process)
		bpf_get_current_comm(value->comm, sizeof(value->comm));
	__sync_fetch_and_add(&value->count, 1);
	if (start_ns) {
		__u64 delta = bpf_ktime_get_ns() - *start_ns;

		__sync_fetch_and_add(&value->total_ns, delta);
		__sync_fetch_and_add(&value->slots[bpfloom_hist_slot(delta, targ_unit)], 1);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
