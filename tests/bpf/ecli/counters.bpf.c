// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * counters: the map shapes `bpfloom run` prints besides events, fed by one
 * syscall the test makes on purpose (tests/test_cli_maps.py).
 *
 * Only getpriority(cookie, v) calls count, `cookie` being a global the test
 * picks (an invalid `which`: the call fails with EINVAL and changes nothing),
 * so no other process adds to the maps. Each such call with value v = `who`:
 *   counts          {pid, comm} -> number of calls (a block I/O pattern counter)
 *   hists           tgid -> log2 histogram of v, with count and total of v
 *   zero_hists      tgid -> a histogram that is created but never counted
 *   pcpu_calls      per-CPU array: index 0 counts the calls, 1..3 stay 0
 *   unused          a hash map nothing ever writes
 *   calls_by_bucket .bss array: calls by v % BUCKETS (a softirq-style counter)
 *   all_values      .bss histogram of every v
 *   last_value      .bss: the last v
 * v is divided by 1000 first with targ_ms, as runqlat does for milliseconds.
 * No events: user space reads the maps. Eunomia-tutorial style.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "counters.h"

#define MAX_ENTRIES 1024

const volatile int cookie = 0;
const volatile bool targ_ms = false;

__u64 calls_by_bucket[BUCKETS];
struct hist all_values;
__u64 last_value;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct counter_key);
	__type(value, u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, u32);
	__type(value, struct hist);
} hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, u32);
	__type(value, struct hist);
} zero_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, u32);
	__type(value, u64);
} pcpu_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, u32);
	__type(value, u64);
} unused SEC(".maps");

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

static __always_inline void add_to_hist(struct hist *hist, u64 v)
{
	u32 slot = log2_floor(v);

	if (slot >= MAX_SLOTS)
		slot = MAX_SLOTS - 1;
	__sync_fetch_and_add(&hist->slots[slot], 1);
	__sync_fetch_and_add(&hist->count, 1);
	__sync_fetch_and_add(&hist->total, v);
}

SEC("tracepoint/syscalls/sys_enter_getpriority")
int handle_getpriority(struct trace_event_raw_sys_enter *ctx)
{
	/* A function-local static: named "handle_getpriority.calls_seen" in BTF. */
	static u64 calls_seen;
	struct counter_key key = {};
	struct hist zero = {}, *hist;
	u32 tgid, index = 0;
	u64 v, one = 1, *count;

	if ((int)ctx->args[0] != cookie)
		return 0;
	v = (u32)ctx->args[1];
	if (targ_ms)
		v /= 1000;
	tgid = bpf_get_current_pid_tgid() >> 32;
	__sync_fetch_and_add(&calls_seen, 1);

	key.pid = tgid;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	count = bpf_map_lookup_elem(&counts, &key);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST);

	bpf_map_update_elem(&hists, &tgid, &zero, BPF_NOEXIST);
	hist = bpf_map_lookup_elem(&hists, &tgid);
	if (hist)
		add_to_hist(hist, v);
	bpf_map_update_elem(&zero_hists, &tgid, &zero, BPF_NOEXIST);

	count = bpf_map_lookup_elem(&pcpu_calls, &index);
	if (count)
		*count += 1;

	__sync_fetch_and_add(&calls_by_bucket[v % BUCKETS], 1);
	add_to_hist(&all_values, v);
	last_value = v;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
