// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * hardirqs: hard interrupt handlers counted and timed, per handler name, as
 * libbpf-tools' hardirqs.
 *
 * tp_btf programs on irq_handler_entry and irq_handler_exit: the entry stores
 * the time and irq number per CPU (handlers do not nest: interrupts stay off
 * while one runs); the exit adds one to the handler's count, its time to the
 * total and to a log2 histogram. Every figure is kept, whatever user space
 * prints (libbpf-tools' -C, -d); they only grow, and user space reads
 * differences.
 */
#include "bpfloom.h"
#include "bpfloom_hist.h"

#define IRQ_NAME_LEN 32

struct hardirq_key {
	char name[IRQ_NAME_LEN];	/* the irqaction's name, as /proc/interrupts */
};

struct hardirq_info {
	__u64 count;
	__u64 total_ns;
	__u64 slots[BPFLOOM_HIST_SLOTS];
};

struct hardirq_start {
	__u64 ts;
	__s64 irq;	/* -1: no handler running */
};

const volatile __s32 targ_cpu = -1;		/* -1: every CPU */
const volatile __u32 targ_unit = BPFLOOM_USECS;	/* of the histograms */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hardirq_start);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct hardirq_key);
	__type(value, struct hardirq_info);
} infos SEC(".maps");

static __always_inline bool on_target_cpu(void)
{
	return targ_cpu < 0 || (__u32)targ_cpu == bpf_get_smp_processor_id();
}

SEC("tp_btf/irq_handler_entry")
int BPF_PROG(irq_handler_entry, int irq, struct irqaction *action)
{
	__u32 zero = 0;
	struct hardirq_start *s;

	if (!on_target_cpu())
		return 0;
	s = bpf_map_lookup_elem(&start, &zero);
	if (!s)
		return 0;
	s->ts = bpf_ktime_get_ns();
	s->irq = irq;
	return 0;
}

SEC("tp_btf/irq_handler_exit")
int BPF_PROG(irq_handler_exit, int irq, struct irqaction *action, int ret)
{
	struct hardirq_info zero_info = {}, *info;
	struct hardirq_key key = {};
	struct hardirq_start *s;
	__u32 zero = 0;
	__s64 delta;

	if (!on_target_cpu())
		return 0;
	s = bpf_map_lookup_elem(&start, &zero);
	/* An exit whose entry came before tracing began is not counted. */
	if (!s || s->irq != irq || !s->ts)
		return 0;
	delta = (__s64)(bpf_ktime_get_ns() - s->ts);
	s->irq = -1;
	if (delta < 0)
		return 0;

	bpf_probe_read_kernel_str(key.name, sizeof(key.name), BPF_CORE_READ(action, name));
	info = bpf_map_lookup_elem(&infos, &key);
	if (!info) {
		bpf_map_update_elem(&infos, &key, &zero_info, BPF_NOEXIST);
		info = bpf_map_lookup_elem(&infos, &key);
		if (!info) {
			bpfloom_count_drop();	/* the map is full */
			return 0;
		}
	}
	__sync_fetch_and_add(&info->count, 1);
	__sync_fetch_and_add(&info->total_ns, delta);
	__sync_fetch_and_add(&info->slots[bpfloom_hist_slot(delta, targ_unit)], 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
