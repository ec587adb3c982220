// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * drain.bpf.c - producer of the drain benchmark (bench/drain.py, bench/drain_c.c).
 *
 * The producer runs inside the kernel with BPF_PROG_TEST_RUN, so a benchmark
 * times its consumer alone. `produce` takes `struct drain_args` as ctx_in and
 * writes args.count fixed 32-byte `struct drain_event` records (40 bytes in the
 * ring with the 8-byte record header) into ring buffer `rb` with bpf_loop():
 *   ts     bpf_ktime_get_ns() when the record was written
 *   pid    tgid of the caller of BPF_PROG_TEST_RUN
 *   cpu    CPU the run executed on
 *   seq    0 .. count-1 within one run
 *   value  seq * 2654435761 (mod 2^64), so a consumer can check the payload
 * Records are submitted with args.flags (use BPF_RB_NO_WAKEUP, 1: a wakeup per
 * record would dominate the run, and the benchmark consumers poll anyway).
 * Failed reservations (ring full) are counted in `dropped` (.bss, total over
 * runs) and, as in every bpfloom object, per CPU in bpfloom_drops.
 * retval: 0, or bpf_loop()'s negative error (-E2BIG above 1 << 23 records).
 *
 * `rb` is 256 MiB, room for 6.7 M records: a consumer must drain a run before
 * the next one, or the excess is dropped.
 *
 * `produce_perf` writes the same records to perf event array `pb` with
 * bpf_perf_event_output(), on the CPU it runs on (48 bytes each in the perf
 * ring: 8-byte header, u32 size, 32 bytes, padding). It is a raw tracepoint
 * program because syscall programs are sleepable and may not use perf event
 * arrays; SEC("raw_tp") names no tracepoint, so it is never attached, only run
 * with BPF_PROG_TEST_RUN, whose ctx_in is the u64 argument array: pass
 * struct drain_args (args[0] = count, args[1] is ignored: perf wakeups are set
 * by the reader's perf_event_attr.wakeup_events). Failed outputs (per-CPU
 * buffer full) count in `dropped` too; the reader also sees them as lost samples.
 */
#include "bpfloom.h"

struct drain_event {
	__u64 ts;
	__u32 pid;
	__u32 cpu;
	__u64 seq;
	__u64 value;
};

struct drain_args {
	__u64 count;
	__u64 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 28);
} rb SEC(".maps");

__u64 dropped;

/* What every bpf_loop() iteration needs, computed once per run. */
struct loop_state {
	__u64 flags;
	void *ctx; /* produce_perf: its context, which bpf_perf_event_output() needs */
	__u32 pid;
	__u32 cpu;
};

/* Puts the record layout into BTF for the Python benchmark's numpy dtype. */
const struct drain_event *unused_drain_event __attribute__((unused));

static long emit_one(__u64 index, void *data)
{
	struct loop_state *state = data;
	struct drain_event *e;

	e = bpfloom_reserve(&rb, sizeof(*e));
	if (!e) {
		__sync_fetch_and_add(&dropped, 1);
		return 0; /* keep going: every record asked for is either written or counted */
	}
	e->ts = bpf_ktime_get_ns();
	e->pid = state->pid;
	e->cpu = state->cpu;
	e->seq = index;
	e->value = index * 2654435761ULL;
	/* The flags come from ctx_in, not bpfloom_submit(): a benchmark varies them per run. */
	bpf_ringbuf_submit(e, state->flags);
	return 0;
}

SEC("syscall")
int produce(struct drain_args *args)
{
	struct loop_state state = {
		.flags = args->flags,
		.pid = bpf_get_current_pid_tgid() >> 32,
		.cpu = bpf_get_smp_processor_id(),
	};
	long n = bpf_loop(args->count, emit_one, &state, 0);

	return n < 0 ? n : 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} pb SEC(".maps");

static long emit_one_perf(__u64 index, void *data)
{
	struct loop_state *state = data;
	struct drain_event e = {
		.ts = bpf_ktime_get_ns(),
		.pid = state->pid,
		.cpu = state->cpu,
		.seq = index,
		.value = index * 2654435761ULL,
	};

	if (bpf_perf_event_output(state->ctx, &pb, BPF_F_CURRENT_CPU, &e, sizeof(e)))
		__sync_fetch_and_add(&dropped, 1);
	return 0;
}

SEC("raw_tp")
int produce_perf(struct bpf_raw_tracepoint_args *ctx)
{
	struct loop_state state = {
		.ctx = ctx,
		.pid = bpf_get_current_pid_tgid() >> 32,
		.cpu = bpf_get_smp_processor_id(),
	};
	long n = bpf_loop(ctx->args[0], emit_one_perf, &state, 0);

	return n < 0 ? n : 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
