// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * runqlat: run-queue (scheduler) latency as log2 histograms, as libbpf-tools'
 * runqlat: the time from a task becoming runnable (woken, or switched out while
 * still runnable) to it running on a CPU.
 *
 * tp_btf programs on sched_wakeup, sched_wakeup_new and sched_switch store the
 * time a task was enqueued per thread id; sched_switch adds the wait of the task
 * it switches to to a histogram (one in all, or per process or per thread). The
 * histograms only grow: user space reads differences.
 *
 * Unlike libbpf-tools, a task switched out by preemption counts as enqueued
 * whatever its state: one preempted while it was about to sleep (state not yet
 * TASK_RUNNING again) stays on the run queue and waits there too. So every time a
 * task is switched in after tracing saw it enqueued gives exactly one sample.
 */
#include "bpfloom.h"
#include "bpfloom_hist.h"

#define TASK_COMM_LEN 16
#define TASK_RUNNING 0
#define ALL_TASKS 0xffffffff	/* the key of the one histogram of everything */

struct runqlat_hist {
	__u64 slots[BPFLOOM_HIST_SLOTS];
	char comm[TASK_COMM_LEN];	/* per process/thread: its comm when first seen */
};

const volatile bool targ_per_process = false;	/* key: tgid */
const volatile bool targ_per_thread = false;	/* key: tid */
const volatile __u32 targ_tgid = 0;		/* 0: every process */
const volatile __u32 targ_unit = BPFLOOM_USECS;	/* enum bpfloom_hist_unit */

/* Enqueue time per thread id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);	/* ALL_TASKS, tgid or tid */
	__type(value, struct runqlat_hist);
} hists SEC(".maps");

/* task_struct's `state` before 5.14 renamed it `__state`. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)t, state);
}

static __always_inline void enqueue(struct task_struct *t)
{
	__u32 tid = BPF_CORE_READ(t, pid), tgid = BPF_CORE_READ(t, tgid);
	__u64 ts;

	if (!tid)	/* the idle task */
		return;
	if (targ_tgid && tgid != targ_tgid)
		return;
	ts = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&start, &tid, &ts, BPF_ANY))
		bpfloom_count_drop();	/* the map is full: this wait is not measured */
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup, struct task_struct *p)
{
	enqueue(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new, struct task_struct *p)
{
	enqueue(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	struct runqlat_hist zero = {}, *hist;
	__u32 tid, key;
	__u64 *tsp;
	__s64 delta;

	/* Still on the run queue: it waits from now until it runs again. */
	if (preempt || task_state(prev) == TASK_RUNNING)
		enqueue(prev);

	tid = BPF_CORE_READ(next, pid);
	tsp = bpf_map_lookup_elem(&start, &tid);
	if (!tsp)
		return 0;
	delta = (__s64)(bpf_ktime_get_ns() - *tsp);
	bpf_map_delete_elem(&start, &tid);
	if (delta < 0)
		return 0;

	if (targ_per_process)
		key = BPF_CORE_READ(next, tgid);
	else if (targ_per_thread)
		key = tid;
	else
		key = ALL_TASKS;
	hist = bpf_map_lookup_elem(&hists, &key);
	if (!hist) {
		/* NOEXIST: another CPU may have made it meanwhile; that is fine. */
		bpf_map_update_elem(&hists, &key, &zero, BPF_NOEXIST);
		hist = bpf_map_lookup_elem(&hists, &key);
		if (!hist) {
			bpfloom_count_drop();	/* the map is full */
			return 0;
		}
		/* A process is named by its main thread, as ps does. */
		if (targ_per_process)
			BPF_CORE_READ_STR_INTO(&hist->comm, next, group_leader, comm);
		else if (targ_per_thread)
			BPF_CORE_READ_STR_INTO(&hist->comm, next, comm);
	}
	__sync_fetch_and_add(&hist->slots[bpfloom_hist_slot(delta, targ_unit)], 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
