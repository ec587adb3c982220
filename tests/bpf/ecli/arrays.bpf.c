// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * arrays: one event per getpgid() call, with a char[130] and a __u8[200] of known
 * contents (both lengths need the top bit of DW_AT_count's data1 form).
 *
 *   target_pid   only this process (tgid); 0 = all
 *
 * Eunomia-tutorial style; the event struct is only in DWARF (it is only written
 * through the reserved ring buffer slot, so BTF never names struct event).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "arrays.h"

const volatile pid_t target_pid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpgid")
int handle_getpgid(struct trace_event_raw_sys_enter *ctx)
{
	pid_t pid = bpf_get_current_pid_tgid() >> 32;
	struct event *e;
	int i;

	if (target_pid && pid != target_pid)
		return 0;
	e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = pid;
	e->arg = (int)ctx->args[0];
	for (i = 0; i < FNAME_LEN; i++)
		e->fname[i] = 'a' + i % 26;
	for (i = 0; i < X_LEN; i++)
		e->x[i] = i;
	e->magic = 0xfeedf00d;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
