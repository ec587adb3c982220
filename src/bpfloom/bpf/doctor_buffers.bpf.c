// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * doctor_buffers: one record through a ring buffer and one through a perf event
 * array, for `bpfloom doctor`. On getppid(2) by process `target_tgid`, each
 * program writes `struct doctor_record` (magic, tgid) to its buffer; the doctor
 * reads them back with bpfloom's readers.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define DOCTOR_MAGIC 0x646f63746f72ULL /* "doctor" */

struct doctor_record {
	__u64 magic;
	__u32 tgid;
	__u32 pad;
};

const volatile __u32 target_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf SEC(".maps");

/* Puts the record type into BTF, where the readers find it. */
const struct doctor_record *unused_doctor_record __attribute__((unused));

static __always_inline int fill(struct doctor_record *r)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (tgid != target_tgid)
		return 0;
	r->magic = DOCTOR_MAGIC;
	r->tgid = tgid;
	r->pad = 0;
	return 1;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int to_ring(void *ctx)
{
	struct doctor_record r;

	if (fill(&r))
		bpf_ringbuf_output(&ring, &r, sizeof(r), 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int to_perf(void *ctx)
{
	struct doctor_record r;

	if (fill(&r))
		bpf_perf_event_output(ctx, &perf, BPF_F_CURRENT_CPU, &r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
