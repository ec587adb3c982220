// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * pipeline.bpf.c - a producer with a small ring, for the pipeline tests
 * (tests/test_pipeline.py).
 *
 * `rb` is only 64 KiB (2048 records of 32 bytes with their headers), so a run
 * of many records overflows it while the reader is still draining: the kernel
 * drops are counted per CPU in bpfloom_drops (bpfloom.h), and the pipeline's
 * accounting must still add up exactly.
 *
 * `produce` runs with BPF_PROG_TEST_RUN; its ctx_in is struct pipeline_args. It
 * writes args.count `struct pipeline_event` records with bpf_loop():
 *   ts_ns  bpf_ktime_get_ns() when the record was written (CLOCK_MONOTONIC)
 *   seq    args.first_seq + i, i = 0 .. count-1 (so several runs continue it)
 *   key    seq % args.keys (0 when args.keys is 0)
 * Records are submitted with args.flags (1: BPF_RB_NO_WAKEUP).
 *
 * `on_getppid` (attached by its SEC name to syscalls/sys_enter_getppid, so
 * `bpfloom run` attaches it) writes `burst` records per getppid() call of the
 * process `target_pid` (a tgid; 0 = every process), numbered on from `next_seq`,
 * with wakeups left to the kernel (bpfloom_submit).
 */
#include "bpfloom.h"

struct pipeline_event {
	__u64 ts_ns;
	__u64 seq;
	__u32 key;
	__u32 pad;
};

struct pipeline_args {
	__u64 count;
	__u64 flags;
	__u64 keys;
	__u64 first_seq;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} rb SEC(".maps");

const volatile __u32 target_pid = 0;
const volatile __u32 burst = 1;
__u64 next_seq;

/* Puts the record layout into BTF for the decoder. */
const struct pipeline_event *unused_pipeline_event __attribute__((unused));

struct loop_state {
	__u64 flags;
	__u64 keys;
	__u64 first_seq;
	int wakeup_from_header; /* 1: bpfloom_submit (the header's flags), 0: flags */
};

static long emit_one(__u64 index, void *data)
{
	struct loop_state *state = data;
	struct pipeline_event *e;
	__u64 seq = state->first_seq + index;

	e = bpfloom_reserve(&rb, sizeof(*e));
	if (!e)
		return 0; /* counted by bpfloom_reserve; keep going */
	e->ts_ns = bpf_ktime_get_ns();
	e->seq = seq;
	e->key = state->keys ? seq % state->keys : 0;
	e->pad = 0;
	if (state->wakeup_from_header)
		bpfloom_submit(e);
	else
		bpf_ringbuf_submit(e, state->flags);
	return 0;
}

SEC("syscall")
int produce(struct pipeline_args *args)
{
	struct loop_state state = {
		.flags = args->flags,
		.keys = args->keys,
		.first_seq = args->first_seq,
	};
	long n = bpf_loop(args->count, emit_one, &state, 0);

	return n < 0 ? n : 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	struct loop_state state = { .wakeup_from_header = 1 };
	__u32 pid = bpf_get_current_pid_tgid() >> 32;

	if (target_pid && pid != target_pid)
		return 0;
	state.first_seq = __sync_fetch_and_add(&next_seq, burst);
	bpf_loop(burst, emit_one, &state, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
