/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * bpfloom.h - the one shared header of bpfloom's own BPF programs.
 *
 * It gives the kernel types and libbpf helpers every program needs, and three
 * emit helpers that make kernel-side losses visible: a ring buffer does not
 * report the records it could not take (unlike a perf buffer's PERF_RECORD_LOST),
 * so every failed reservation or output is counted here, per CPU, in the map
 * `bpfloom_drops`. The runtime sums its per-CPU values as `dropped_kernel`.
 *
 * Include it exactly once per object (it defines a map and a global).
 */
#ifndef __BPFLOOM_H
#define __BPFLOOM_H

#include "vmlinux.h"

/*
 * Building for arm64 against another architecture's vmlinux.h (`make
 * bpf-check-arm64` on x86 passes BPFLOOM_FOREIGN_VMLINUX): libbpf's PT_REGS_*
 * macros read arm64 registers through `struct user_pt_regs`, which only arm64's
 * kernel BTF has. Its layout, as arch/arm64/include/uapi/asm/ptrace.h defines it
 * (tests/test_arm64.py compares the two); CO-RE relocates the accesses anyway.
 */
#if defined(__TARGET_ARCH_arm64) && defined(BPFLOOM_FOREIGN_VMLINUX)
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
} __attribute__((preserve_access_index));
#endif

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/*
 * Failed ring buffer reservations/outputs of this object, one counter per CPU
 * at key 0. Per-CPU so that counting a drop never contends between CPUs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bpfloom_drops SEC(".maps");

/*
 * Wakeup flags passed to every submit/output: 0 lets the kernel decide (wake
 * the reader when it has caught up), BPF_RB_NO_WAKEUP (1) never wakes it, for a
 * reader that drains on its own schedule (a wakeup per event costs the traced
 * workload more than the event), BPF_RB_FORCE_WAKEUP (2) always wakes it.
 * Set it before load: it lives in .rodata, frozen at load time.
 */
const volatile __u64 bpfloom_wakeup_flags = 0;

/*
 * BPFLOOM_RECORD(exit_event) puts `struct exit_event` into the object's BTF.
 * clang emits BTF only for types that globals, maps or CO-RE relocations use,
 * so a record type used only through bpfloom_reserve() would be in DWARF alone,
 * and parsing DWARF costs seconds for objects that use big kernel types
 * (task_struct). The runtime then finds the record type by name in BTF.
 */
#define BPFLOOM_RECORD(name) struct name *bpfloom_record_##name __attribute__((unused))

/* Counts one lost record on this CPU. */
static __always_inline void bpfloom_count_drop(void)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&bpfloom_drops, &zero);

	/*
	 * Atomic although the counter is per-CPU: a program may be interrupted on
	 * the same CPU by another one that also drops (say, a tracepoint hit from
	 * inside a softirq), and a plain `+= 1` could then lose a count.
	 */
	if (drops)
		__sync_fetch_and_add(drops, 1);
}

/*
 * Reserves `size` bytes in ring buffer map `ringbuf` (pass `&map`), like
 * bpf_ringbuf_reserve; on failure (ring full) counts a drop and returns NULL.
 * `size` must be a constant the verifier can see. The slot is NOT zeroed.
 * Every non-NULL result must reach bpfloom_submit() or bpf_ringbuf_discard().
 */
static __always_inline void *bpfloom_reserve(void *ringbuf, __u64 size)
{
	void *slot = bpf_ringbuf_reserve(ringbuf, size, 0);

	if (!slot)
		bpfloom_count_drop();
	return slot;
}

/* Publishes a slot from bpfloom_reserve() with the configured wakeup flags. */
static __always_inline void bpfloom_submit(void *slot)
{
	bpf_ringbuf_submit(slot, bpfloom_wakeup_flags);
}

/*
 * Copies `size` bytes at `data` into ring buffer map `ringbuf` (pass `&map`),
 * like bpf_ringbuf_output with the configured wakeup flags; on failure counts
 * a drop. Returns 0 or the helper's negative error. Costs one copy more than
 * reserve/submit; use it when the record is already built elsewhere.
 */
static __always_inline long bpfloom_output(void *ringbuf, void *data, __u64 size)
{
	long err = bpf_ringbuf_output(ringbuf, data, size, bpfloom_wakeup_flags);

	if (err)
		bpfloom_count_drop();
	return err;
}

#define BPFLOOM_COMM_LEN 16	/* TASK_COMM_LEN */

/*
 * Whether `comm` equals `want` (a filter global; "" matches every comm). Both
 * are NUL-terminated within BPFLOOM_COMM_LEN bytes.
 */
static __always_inline bool bpfloom_comm_equals(const char *comm, const volatile char *want)
{
	if (!want[0])
		return true;
	for (int i = 0; i < BPFLOOM_COMM_LEN; i++) {
		if (comm[i] != want[i])
			return false;
		if (!comm[i])
			return true;
	}
	return true;
}

/*
 * Whether `want` occurs in `comm` (libbpf-tools' strstr() of -n, done in the
 * kernel; "" matches every comm).
 */
static __always_inline bool bpfloom_comm_contains(const char *comm, const volatile char *want)
{
	if (!want[0])
		return true;
	for (int start = 0; start < BPFLOOM_COMM_LEN; start++) {
		for (int i = 0; start + i < BPFLOOM_COMM_LEN; i++) {
			if (!want[i])
				return true;
			if (comm[start + i] != want[i])
				break;
		}
		if (!comm[start])
			break;
	}
	return false;
}

/*
 * The value of `key` in hash map `map` (pass `&map`), inserted as a copy of
 * `*init` first when it is missing; NULL when the map is full, counted as a
 * drop. The insert is BPF_NOEXIST: another CPU may make the entry meanwhile,
 * and then that one is used.
 */
static __always_inline void *bpfloom_lookup_or_init(void *map, const void *key, const void *init)
{
	void *value = bpf_map_lookup_elem(map, key);

	if (value)
		return value;
	bpf_map_update_elem(map, key, init, BPF_NOEXIST);
	value = bpf_map_lookup_elem(map, key);
	if (!value)
		bpfloom_count_drop();
	return value;
}

#endif /* __BPFLOOM_H */
