// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * runqlat: run queue latency as log2 histograms, in the libbpf-tools style
 * but on classic tracepoints only (no tp_btf, no raw BTF tracepoints).
 *
 * A task's latency runs from the moment it becomes runnable (sched_wakeup,
 * sched_wakeup_new, or being preempted in sched_switch) to the sched_switch
 * that puts it on a CPU. Emits no events: user space reads the map `hists`
 * (u32 key -> struct hist), keyed by (u32)-1 for the system-wide histogram or
 * by tgid with targ_per_process, in microseconds (milliseconds with targ_ms).
 *
 * Classic tracepoints give pids, not task pointers, so the tgid of the task
 * being switched in is unknown at that moment. When a tgid is needed
 * (targ_per_process or targ_tgid), the measured latency is parked in `pending`
 * and accounted at that task's next switch-out, when it is `current` and its
 * tgid and comm can be read. Without those options it is accounted at once.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "runqlat.h"

#define MAX_ENTRIES 10240
#define ALL_KEY ((u32)-1)

/*
 * sched_switch reports prev_state through __trace_sched_switch_state(): 0
 * ("R") for a task that stays runnable, TASK_REPORT_MAX (0x100, "R+") for a
 * preempted one, otherwise one bit below 0x100 per sleeping state. So a
 * still-runnable prev has none of the low 8 bits set.
 */
#define SLEEP_STATE_MASK 0xff

const volatile bool targ_per_process = false;
const volatile bool targ_ms = false;
const volatile pid_t targ_tgid = 0;

/* tid -> time it became runnable (ns) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, u32);
	__type(value, u64);
} start SEC(".maps");

/* tid -> measured latency (ns) waiting for the task's tgid */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, u32);
	__type(value, u64);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, u32);
	__type(value, struct hist);
} hists SEC(".maps");

static __always_inline bool need_tgid(void)
{
	return targ_per_process || targ_tgid;
}

static __always_inline u32 log2_floor(u64 v)
{
	u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

static __always_inline int trace_enqueue(u32 tid)
{
	u64 ts;

	if (!tid) /* the idle task */
		return 0;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &tid, &ts, BPF_ANY);
	return 0;
}

/* Adds one latency; with targ_per_process, must run in the task's own context. */
static __always_inline void account(u32 tgid, u64 delta_ns)
{
	struct hist *hist;
	u32 key = ALL_KEY;
	u32 slot;

	if (targ_tgid && tgid != (u32)targ_tgid)
		return;
	if (targ_per_process)
		key = tgid;

	hist = bpf_map_lookup_elem(&hists, &key);
	if (!hist) {
		struct hist init = {};

		if (targ_per_process)
			bpf_get_current_comm(&init.comm, sizeof(init.comm));
		bpf_map_update_elem(&hists, &key, &init, BPF_NOEXIST);
		hist = bpf_map_lookup_elem(&hists, &key);
		if (!hist)
			return;
	}

	slot = log2_floor(targ_ms ? delta_ns / 1000000 : delta_ns / 1000);
	if (slot >= MAX_SLOTS)
		slot = MAX_SLOTS - 1;
	__sync_fetch_and_add(&hist->slots[slot], 1);
}

SEC("tracepoint/sched/sched_wakeup")
int handle_sched_wakeup(struct trace_event_raw_sched_wakeup_template *ctx)
{
	return trace_enqueue(ctx->pid);
}

SEC("tracepoint/sched/sched_wakeup_new")
int handle_sched_wakeup_new(struct trace_event_raw_sched_wakeup_template *ctx)
{
	return trace_enqueue(ctx->pid);
}

SEC("tracepoint/sched/sched_switch")
int handle_sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	u32 prev = ctx->prev_pid, next = ctx->next_pid;
	u64 *tsp, delta;

	/* The tracepoint fires before the switch: current is still prev. */
	if (need_tgid() && prev) {
		u64 *parked = bpf_map_lookup_elem(&pending, &prev);

		if (parked) {
			account(bpf_get_current_pid_tgid() >> 32, *parked);
			bpf_map_delete_elem(&pending, &prev);
		}
	}

	if (!(ctx->prev_state & SLEEP_STATE_MASK))
		trace_enqueue(prev);

	if (!next)
		return 0;
	tsp = bpf_map_lookup_elem(&start, &next);
	if (!tsp)
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	bpf_map_delete_elem(&start, &next);
	if ((s64)delta < 0)
		return 0;

	if (need_tgid())
		bpf_map_update_elem(&pending, &next, &delta, BPF_ANY);
	else
		account(ALL_KEY, delta);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
