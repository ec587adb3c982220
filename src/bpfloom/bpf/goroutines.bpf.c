// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * goroutines: goroutine state changes of any Go binary.
 *
 * `casgstatus` is a uprobe on runtime.casgstatus(gp *g, oldval, newval uint32),
 * through which the Go runtime moves a goroutine between most states. Its
 * section names no target: user space attaches it to the binary (and pid) it
 * is given. Everything that differs between Go builds is a global read from
 * the binary by user space (bpfloom/tools/gobinary.py), never a constant here:
 *  - stack_abi: Go's old stack calling convention (ABI0: Go < 1.17 on amd64,
 *    < 1.18 on arm64) puts the arguments at SP+8 (gp), SP+16 (oldval) and
 *    SP+20 (newval) at function entry, above the return address; the register
 *    ABI (ABIInternal) passes them in RAX, RBX, RCX on amd64 and R0, R1, R2 on
 *    arm64 - not the registers of the C convention PT_REGS_PARM* reads on x86;
 *  - goid_offset: where goid sits in struct runtime.g (from DWARF).
 *
 * `process_exit` reports the exit of the processes whose goroutines were seen
 * (their thread group leader's sched_process_exit), so user space can close
 * the last state of their goroutines at the right time.
 */
#include "bpfloom.h"

#define EVENT_STATE 0	/* a goroutine changed state */
#define EVENT_EXIT 1	/* a traced process exited */

struct goroutine_event {
	__u64 ts_ns;
	__u64 goid;
	__u64 g;		/* address of the runtime.g */
	__u32 pid;		/* the kernel's pid: the thread id */
	__u32 tgid;		/* the thread group id: the process id */
	__u32 old_state;
	__u32 new_state;
	__u32 kind;		/* EVENT_STATE or EVENT_EXIT */
	__u32 pad;
};

const volatile bool stack_abi = false;	/* arguments on the stack (ABI0) */
const volatile __u32 goid_offset = 0;	/* offset of goid in runtime.g */
const volatile __u32 targ_tgid = 0;	/* 0: every process running the binary */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/*
 * Processes whose goroutines were seen, so that process_exit reports only
 * those. LRU: a tracer that outlives many short-lived Go processes keeps
 * working; a process evicted early only loses its exit event.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} go_processes SEC(".maps");

SEC("uprobe")
int casgstatus(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct goroutine_event *e;
	__u64 gp, goid = 0;
	__u32 oldval, newval;
	__u8 seen = 1;

	if (targ_tgid && tgid != targ_tgid)
		return 0;

	if (stack_abi) {
		__u64 sp = PT_REGS_SP(ctx), states;

		/* oldval and newval share one 8-byte slot; amd64 and arm64 are little-endian */
		if (bpf_probe_read_user(&gp, sizeof(gp), (void *)(sp + 8)) ||
		    bpf_probe_read_user(&states, sizeof(states), (void *)(sp + 16)))
			return 0;
		oldval = (__u32)states;
		newval = states >> 32;
	} else {
#if defined(__TARGET_ARCH_x86)
		gp = ctx->ax;
		oldval = (__u32)ctx->bx;
		newval = (__u32)ctx->cx;
#elif defined(__TARGET_ARCH_arm64)
		gp = PT_REGS_PARM1(ctx);
		oldval = (__u32)PT_REGS_PARM2(ctx);
		newval = (__u32)PT_REGS_PARM3(ctx);
#else
#error "goroutines.bpf.c knows Go's register ABI on x86 and arm64 only"
#endif
	}
	if (bpf_probe_read_user(&goid, sizeof(goid), (void *)(gp + goid_offset)))
		return 0;

	if (!bpf_map_lookup_elem(&go_processes, &tgid))
		bpf_map_update_elem(&go_processes, &tgid, &seen, BPF_ANY);

	e = bpfloom_reserve(&events, sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->goid = goid;
	e->g = gp;
	e->pid = (__u32)pid_tgid;
	e->tgid = tgid;
	e->old_state = oldval;
	e->new_state = newval;
	e->kind = EVENT_STATE;
	e->pad = 0;
	bpfloom_submit(e);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct goroutine_event *e;

	/* The leader's exit ends the process (Go exits with exit_group). */
	if (tgid != (__u32)pid_tgid || !bpf_map_lookup_elem(&go_processes, &tgid))
		return 0;
	bpf_map_delete_elem(&go_processes, &tgid);

	e = bpfloom_reserve(&events, sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = (__u32)pid_tgid;
	e->tgid = tgid;
	e->kind = EVENT_EXIT;
	bpfloom_submit(e);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
