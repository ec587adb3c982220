// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * opensnoop: one record per open(2), openat(2) or openat2(2) call, with its
 * result, as libbpf-tools' opensnoop.
 *
 * The enter tracepoint remembers the user pointers (path, and for openat2 the
 * struct open_how) and the flags per thread; the exit tracepoint reads the
 * path (and openat2's how->flags) and emits the record with the return value.
 * Reading user memory at exit, not at enter, is deliberate (libbpf-tools does
 * the same): the kernel has copied the path and `how` by then, so their pages
 * are present, whereas at enter a not-yet-faulted page would make the
 * non-sleepable bpf_probe_read_user*() fail.
 *
 * Programs whose tracepoint this kernel lacks (arm64 has no open(2)) get
 * autoload = false from user space before load.
 *
 * With bpfloom_prefilter (bpfloom detect), an open no rule can match is left out:
 * first on its result and comm, before anything is read, then on its paths. The
 * record is built in a per-CPU scratch value and copied out, so an open left out
 * after its paths were read never took a ring buffer slot: it is counted as
 * filtered, never as a drop.
 */
#include "bpfloom.h"
#include "bpfloom_path.h"
#include "bpfloom_prefilter.h"

#define TASK_COMM_LEN 16
#define PATH_LEN 256		/* as libbpf-tools' NAME_MAX-sized buffer */

struct open_event {
	__u64 ts_ns;
	__u64 flags;		/* open flags; openat2: how->flags */
	__s64 ret;		/* fd, or -errno */
	__u32 pid;		/* thread group id */
	__u32 tid;
	__u32 uid;
	__u32 path_truncated;	/* the path was longer than PATH_LEN - 1 bytes */
	__u32 fs_path_kind;	/* BPFLOOM_FS_PATH_*: what fs_path holds (resolve_paths) */
	__s32 fs_path_cut;	/* bpfloom_path(): 1 cut, -1 unreadable */
	char comm[TASK_COMM_LEN];
	char path[PATH_LEN];	/* as the program passed it */
	char fs_path[PATH_LEN];	/* the opened file's path, or a relative path's directory */
};
BPFLOOM_RECORD(open_event);

/* What sys_enter_* saw, kept per thread until sys_exit_*. */
struct open_args {
	__u64 path;		/* const char __user * */
	__u64 how;		/* const struct open_how __user *, openat2 only */
	__u64 flags;		/* open/openat flags (openat2: read from `how` at exit) */
	__s64 dirfd;		/* openat/openat2: what a relative path is relative to */
};

const volatile __u32 targ_tgid = 0;		/* 0: every process */
const volatile __u32 targ_tid = 0;		/* 0: every thread */
const volatile bool filter_uid = false;
const volatile __u32 targ_uid = 0;
const volatile bool targ_failed = false;	/* only failed opens */
const volatile char targ_comm[TASK_COMM_LEN] = {};	/* substring; "" : any */
/* Fill fs_path: the file opened (as the kernel resolved it), or for a failed open
 * of a relative path, the directory it starts from. Off by default: it walks the
 * dentries of every open. */
const volatile bool resolve_paths = false;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct open_args);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* The record being built (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct open_event);
} record SEC(".maps");

static __always_inline bool trace_allowed(__u32 tgid, __u32 tid)
{
	char comm[TASK_COMM_LEN];

	if (targ_tgid && targ_tgid != tgid)
		return false;
	if (targ_tid && targ_tid != tid)
		return false;
	if (filter_uid && (__u32)bpf_get_current_uid_gid() != targ_uid)
		return false;
	if (!targ_comm[0])
		return true;
	bpf_get_current_comm(comm, sizeof(comm));
	return bpfloom_comm_contains(comm, targ_comm);
}

static __always_inline int trace_enter(__s64 dirfd, __u64 path, __u64 how, __u64 flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct open_args args = { .path = path, .how = how, .flags = flags, .dirfd = dirfd };

	if (!trace_allowed(id >> 32, tid))
		return 0;
	bpf_map_update_elem(&start, &tid, &args, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_open")
int enter_open(struct syscall_trace_enter *ctx)
{
	/* open(path, flags, mode) */
	return trace_enter(BPFLOOM_AT_FDCWD, ctx->args[0], 0, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct syscall_trace_enter *ctx)
{
	/* openat(dfd, path, flags, mode) */
	return trace_enter((int)ctx->args[0], ctx->args[1], 0, ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int enter_openat2(struct syscall_trace_enter *ctx)
{
	/* openat2(dfd, path, how, size) */
	return trace_enter((int)ctx->args[0], ctx->args[1], ctx->args[2], 0);
}

static __always_inline int trace_exit(struct syscall_trace_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, zero = 0;
	struct bpfloom_facts facts = {};
	struct open_args *args;
	struct open_event *e;
	long len, ret = ctx->ret;
	char last;

	args = bpf_map_lookup_elem(&start, &tid);
	if (!args)
		return 0;
	if (targ_failed && ret >= 0)
		goto cleanup;
	e = bpf_map_lookup_elem(&record, &zero);
	if (!e)
		goto cleanup;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (bpfloom_prefilter) {
		facts.ret = ret < 0 ? BPFLOOM_RET_FAILED : BPFLOOM_RET_OK;
		bpfloom_facts_comm(&facts, e->comm, false);
		if (!bpfloom_prefilter_pass(&facts))
			goto filtered;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->flags = args->flags;
	if (args->how &&
	    bpf_probe_read_user(&e->flags, sizeof(e->flags),
				&((struct open_how *)args->how)->flags))
		e->flags = 0;
	e->ret = ret;
	e->pid = id >> 32;
	e->tid = tid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	len = bpf_probe_read_user_str(e->path, sizeof(e->path), (void *)args->path);
	if (len < 0)
		e->path[0] = '\0';
	/*
	 * A full buffer holds PATH_LEN - 1 bytes and the NUL the helper put there;
	 * the path was cut unless the user's byte at that place is its own NUL.
	 */
	e->path_truncated = len == PATH_LEN &&
		(bpf_probe_read_user(&last, 1, (void *)(args->path + PATH_LEN - 1)) || last);
	e->fs_path_kind = BPFLOOM_FS_PATH_NONE;
	e->fs_path_cut = 0;
	e->fs_path[0] = '\0';
	if (resolve_paths && ret >= 0) {
		e->fs_path_kind = BPFLOOM_FS_PATH_FILE;
		e->fs_path_cut = bpfloom_path(bpfloom_fd_path(ret), e->fs_path, sizeof(e->fs_path));
	} else if (resolve_paths && e->path[0] != '/') {
		e->fs_path_kind = BPFLOOM_FS_PATH_DIR;
		e->fs_path_cut = bpfloom_path(bpfloom_dirfd_path(args->dirfd), e->fs_path,
					      sizeof(e->fs_path));
	}
	if (bpfloom_prefilter && (bpfloom_prefilter_needs & (BPFLOOM_KNOW_PATH | BPFLOOM_KNOW_NPATH))) {
		/* norm_path is fs_path where the walk found the opened file (tools/paths.py). */
		if (!e->path_truncated)
			bpfloom_facts_path(&facts, e->path, BPFLOOM_KNOW_PATH);
		if (e->fs_path_kind == BPFLOOM_FS_PATH_FILE && e->fs_path_cut == 0 && e->fs_path[0])
			bpfloom_facts_path(&facts, e->fs_path, BPFLOOM_KNOW_NPATH);
		if (!bpfloom_prefilter_pass(&facts))
			goto filtered;
	}
	bpfloom_output(&events, e, sizeof(*e));
	goto cleanup;
filtered:
	bpfloom_count_filtered();
cleanup:
	bpf_map_delete_elem(&start, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct syscall_trace_exit *ctx)
{
	return trace_exit(ctx);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct syscall_trace_exit *ctx)
{
	return trace_exit(ctx);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct syscall_trace_exit *ctx)
{
	return trace_exit(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
