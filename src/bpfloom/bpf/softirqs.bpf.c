// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * softirqs: soft interrupts counted and timed, per vector (net_rx, timer...),
 * as libbpf-tools' softirqs.
 *
 * tp_btf programs on softirq_entry and softirq_exit: the entry stores the time
 * and vector per CPU (softirqs do not nest on a CPU); the exit adds one to the
 * vector's count, its time to the total and to a log2 histogram, in a per-CPU
 * array indexed by vector, so CPUs never contend. Every figure is kept,
 * whatever user space prints (-C, -d); they only grow, and user space reads
 * differences of the sums over CPUs.
 */
#include "bpfloom.h"
#include "bpfloom_hist.h"

#define NR_VECTORS 10	/* NR_SOFTIRQS: hi, timer, ..., rcu */

struct softirq_info {
	__u64 count;
	__u64 total_ns;
	__u64 slots[BPFLOOM_HIST_SLOTS];
};

struct softirq_start {
	__u64 ts;
	__s64 vec;	/* -1: none running */
};

const volatile __s32 targ_cpu = -1;		/* -1: every CPU */
const volatile __u32 targ_unit = BPFLOOM_USECS;	/* of the histograms */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirq_start);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_VECTORS);
	__type(key, __u32);
	__type(value, struct softirq_info);
} infos SEC(".maps");

static __always_inline bool on_target_cpu(void)
{
	return targ_cpu < 0 || (__u32)targ_cpu == bpf_get_smp_processor_id();
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry, unsigned int vec_nr)
{
	__u32 zero = 0;
	struct softirq_start *s;

	if (!on_target_cpu())
		return 0;
	s = bpf_map_lookup_elem(&start, &zero);
	if (!s)
		return 0;
	s->ts = bpf_ktime_get_ns();
	s->vec = vec_nr;
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirq_exit, unsigned int vec_nr)
{
	struct softirq_start *s;
	struct softirq_info *info;
	__u32 zero = 0, vec = vec_nr;
	__s64 delta;

	if (!on_target_cpu())
		return 0;
	s = bpf_map_lookup_elem(&start, &zero);
	/* An exit whose entry came before tracing began is not counted. */
	if (!s || s->vec != vec_nr || !s->ts)
		return 0;
	delta = (__s64)(bpf_ktime_get_ns() - s->ts);
	s->vec = -1;
	if (delta < 0)
		return 0;
	info = bpf_map_lookup_elem(&infos, &vec);
	if (!info) {
		bpfloom_count_drop();	/* a vector past NR_VECTORS: a newer kernel */
		return 0;
	}
	/*
	 * Plain adds: the value is this CPU's and softirqs do not nest on a CPU
	 * (a hard interrupt may come in between, but it does not touch it).
	 */
	info->count += 1;
	info->total_ns += delta;
	info->slots[bpfloom_hist_slot(delta, targ_unit)] += 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
