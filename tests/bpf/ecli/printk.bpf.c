// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * printk: a getppid() tracer in the tutorials' style, with the habits of third-party
 * objects that once tripped `bpfloom run` up:
 *   - bpf_printk without BPF_NO_GLOBAL_DATA: its format string is a function-local
 *     static in .rodata named `handle_getppid.____fmt` (not an identifier);
 *   - a function-local static scratch counter (`handle_getppid.calls` in .bss);
 *   - a plain `const` global (`folded_limit`) that clang folds into the code, so no
 *     instruction reads it and setting it changes nothing;
 *   - an enum field that takes a value no enumerator has (0).
 * Filter: target_pid (const volatile, a real option). Each call emits one event to
 * ring buffer `rb` and prints "getppid from <pid> call <n>" with bpf_printk.
 * The event struct is only in DWARF.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

const volatile int target_pid = 0;
const int folded_limit = 1000;

enum mood {
	MOOD_CALM = 1,
	MOOD_ANGRY = 2,
};

struct event {
	int pid;
	enum mood mood;      /* call % 3: 0 is no enumerator */
	long long value;     /* 1 for the first call, then 10^15 * call: widens the column */
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int handle_getppid(void *ctx)
{
	static __u64 calls;
	struct event *e;
	int pid = bpf_get_current_pid_tgid() >> 32;

	if (target_pid && pid != target_pid)
		return 0;
	calls++;
	if (calls > folded_limit)
		return 0;
	bpf_printk("getppid from %d call %llu", pid, calls);
	e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = pid;
	e->mood = calls % 3;
	e->value = calls == 1 ? 1 : 1000000000000000LL * (long long)calls;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
