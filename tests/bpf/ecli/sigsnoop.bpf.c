// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * sigsnoop: report signals sent with kill(), tkill() and tgkill().
 *
 * The entry tracepoint stashes the arguments per thread; the exit tracepoint
 * adds the result and emits one event to ring buffer `rb`. Filters:
 *   filtered_pid   only this sender (tgid); 0 = all
 *   target_signal  only this signal; 0 = all
 *   failed_only    only calls that returned an error
 * Eunomia-tutorial style; the event struct is only in DWARF (the stash map
 * holds a separate struct, so BTF never names struct event).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "sigsnoop.h"

#define MAX_ENTRIES 10240

const volatile pid_t filtered_pid = 0;
const volatile int target_signal = 0;
const volatile bool failed_only = false;

struct sig_args {
	int pid;
	int tpid;
	int sig;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, u32);
	__type(value, struct sig_args);
} values SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

static int probe_entry(pid_t tpid, int sig)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct sig_args args = {};

	if (filtered_pid && (pid_t)(pid_tgid >> 32) != filtered_pid)
		return 0;
	if (target_signal && sig != target_signal)
		return 0;

	args.pid = pid_tgid >> 32;
	args.tpid = tpid;
	args.sig = sig;
	bpf_map_update_elem(&values, &tid, &args, BPF_ANY);
	return 0;
}

static int probe_exit(long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct sig_args *args;
	struct event *e;

	args = bpf_map_lookup_elem(&values, &tid);
	if (!args)
		return 0;
	if (failed_only && ret >= 0)
		goto cleanup;

	e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
	if (!e)
		goto cleanup;
	e->pid = args->pid;
	e->tpid = args->tpid;
	e->sig = args->sig;
	e->ret = ret;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);

cleanup:
	bpf_map_delete_elem(&values, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_kill")
int kill_entry(struct trace_event_raw_sys_enter *ctx)
{
	return probe_entry((pid_t)ctx->args[0], (int)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_exit_kill")
int kill_exit(struct trace_event_raw_sys_exit *ctx)
{
	return probe_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_tkill")
int tkill_entry(struct trace_event_raw_sys_enter *ctx)
{
	return probe_entry((pid_t)ctx->args[0], (int)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_exit_tkill")
int tkill_exit(struct trace_event_raw_sys_exit *ctx)
{
	return probe_exit(ctx->ret);
}

/* tgkill(tgid, tid, sig): the target reported is the thread. */
SEC("tracepoint/syscalls/sys_enter_tgkill")
int tgkill_entry(struct trace_event_raw_sys_enter *ctx)
{
	return probe_entry((pid_t)ctx->args[1], (int)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_tgkill")
int tgkill_exit(struct trace_event_raw_sys_exit *ctx)
{
	return probe_exit(ctx->ret);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
