// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * goroutine: trace goroutine state changes of one Go binary.
 *
 * A uprobe on runtime.casgstatus(gp *g, oldval, newval uint32). Go's register
 * ABI (Go >= 1.17 on amd64) passes integer arguments in RAX, RBX, RCX, ... and
 * not in the C registers PT_REGS_PARM* reads, so gp is ctx->ax and newval is
 * ctx->cx. The goroutine id is read at offset 0x98 of the g struct, which is
 * right for Go 1.17 only (the tutorial's hard-coded value; bpfloom's own
 * goroutine tracer reads the offset from the binary's DWARF instead).
 *
 * The attach target is baked into the section name, as in the tutorial: the
 * binary ./go-server-http/main relative to the working directory.
 * Eunomia-tutorial style; the event struct is only in DWARF.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "goroutine.h"

#define GOID_OFFSET 0x98

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

SEC("uprobe/./go-server-http/main:runtime.casgstatus")
int uprobe_runtime_casgstatus(struct pt_regs *ctx)
{
	void *gp = (void *)ctx->ax;
	int newval = (int)ctx->cx;
	struct goroutine_execute_data *data;
	u64 pid_tgid, goid = 0;

	if (bpf_probe_read_user(&goid, sizeof(goid), gp + GOID_OFFSET))
		return 0;

	data = bpf_ringbuf_reserve(&rb, sizeof(*data), 0);
	if (!data)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	data->state = newval;
	data->goid = goid;
	data->pid = (u32)pid_tgid;
	data->tgid = pid_tgid >> 32;
	bpf_ringbuf_submit(data, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
