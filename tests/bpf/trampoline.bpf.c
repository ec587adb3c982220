// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * trampoline.bpf.c - one program of every kind that runs through a BPF trampoline
 * (fentry, fexit, fmod_ret, sleepable fentry, lsm, sleepable lsm, lsm_cgroup), and a
 * tp_btf program that needs none.
 *
 * This kernel has no trampolines: loading any of the first seven fails with EPERM
 * although the caller is root. Tests load them one at a time (autoload) and check
 * that the LoadError names the program, its type and attach type, says it is not a
 * permission problem and suggests tp_btf/raw_tp/tracepoint; tp_btf/sched_switch loads.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("fentry/do_unlinkat")
int BPF_PROG(on_fentry, int dfd)
{
	return 0;
}

SEC("fexit/do_unlinkat")
int BPF_PROG(on_fexit, int dfd, struct filename *name, long ret)
{
	return 0;
}

SEC("fmod_ret/security_file_open")
int BPF_PROG(on_fmod_ret, struct file *file)
{
	return 0;
}

SEC("fentry.s/do_unlinkat")
int BPF_PROG(on_fentry_sleepable, int dfd)
{
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(on_lsm, struct file *file)
{
	return 0;
}

SEC("lsm.s/file_open")
int BPF_PROG(on_lsm_sleepable, struct file *file)
{
	return 0;
}

SEC("lsm_cgroup/file_open")
int BPF_PROG(on_lsm_cgroup, struct file *file)
{
	return 1;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_tp_btf, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
