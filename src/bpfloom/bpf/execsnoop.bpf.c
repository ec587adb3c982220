// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * execsnoop: one record per execve()/execveat(), with the full argv and the
 * result, after libbpf-tools' execsnoop.
 *
 * sys_enter_execve{,at} copy the file name and argv from user memory into a
 * per-thread entry of the hash map `execs` (the exec may sleep for long, and the
 * argv is gone from the caller's memory once the new image replaces it);
 * sys_exit_execve{,at} complete the entry with the result, the new comm and the
 * parent, emit it and delete it. Both ends look the entry up by thread id, but a
 * successful exec from a non-leader thread changes the caller's tid to the
 * thread group id (de_thread() in fs/exec.c): sched_process_exec, which reports
 * the old tid, moves the entry to the new key so that exit finds it and no entry
 * leaks (libbpf-tools loses those execs).
 *
 * The argv is kept in fixed slots of ARGSIZE bytes, one argument per slot, so
 * the runtime decodes every argument as its own string; a record carries only
 * the slots in use (a variable-size ring buffer record, the unused tail of
 * `struct event` left out). An argument longer than ARGSIZE - 1 bytes is cut,
 * and so is an argv longer than `max_args`; `args_truncated` says so.
 *
 * Filters are globals set before load: uid and cgroup at enter (nothing is
 * copied for other users or cgroups), comm at exit (it is the new program's
 * name), failed execs at exit. With bpfloom_prefilter (bpfloom detect), an exec no
 * rule can match is left out at exit, on its result, names and path before the
 * executable's path is walked, then on that path.
 */
#include "bpfloom.h"
#include "bpfloom_path.h"
#include "bpfloom_prefilter.h"

#define TASK_COMM_LEN 16
#define PATH_LEN 256		/* the file name argument, cut beyond 255 bytes */
#define ARGSIZE 128		/* one argv slot, as libbpf-tools' ARGSIZE */
#define TOTAL_MAX_ARGS 60	/* as libbpf-tools' TOTAL_MAX_ARGS */
#define ANY_UID ((__u32)-1)

struct event {
	__u64 ts_ns;		/* at exit, CLOCK_MONOTONIC */
	__u64 cgroup_id;	/* cgroup v2 id (directory inode) */
	__u32 pid;		/* thread group id */
	__u32 ppid;		/* real parent's thread group id, at exit */
	__u32 uid;		/* real uid at enter */
	__s32 ret;		/* 0 or -errno */
	__u32 args_count;	/* slots of `args` in use */
	bool args_truncated;	/* argv cut by max_args or ARGSIZE, or unreadable */
	char comm[TASK_COMM_LEN];	/* at exit: the new program's after a success */
	char parent_comm[TASK_COMM_LEN];	/* the parent process's (its group leader's) */
	char path[PATH_LEN];		/* the file name given to exec */
	__s32 dirfd;			/* execveat: what a relative path is relative to */
	__u32 fs_path_kind;		/* BPFLOOM_FS_PATH_*: what fs_path holds */
	__s32 fs_path_cut;		/* bpfloom_path(): 1 cut, -1 unreadable */
	char fs_path[PATH_LEN];		/* the executable as resolved, or a relative path's dir */
	char args[TOTAL_MAX_ARGS][ARGSIZE];
};
BPFLOOM_RECORD(event);

const volatile __u32 targ_uid = ANY_UID;	/* ANY_UID: every user */
const volatile bool ignore_failed = true;	/* report only successful execs */
const volatile __u32 max_args = 20;		/* argv entries copied, 1..TOTAL_MAX_ARGS */
const volatile bool filter_cg = false;		/* only tasks under cgroup_map[0] */
const volatile char targ_comm[TASK_COMM_LEN] = {};	/* substring of comm; "" : any */
/* Fill fs_path: the executable the kernel ran (its file's path), or for a failed
 * exec of a relative path, the directory it starts from. Off by default. */
const volatile bool resolve_paths = false;

/* An all-zero entry that starts each exec (too big for the 512-byte stack). */
static const struct event empty_event = {};

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cgroup_map SEC(".maps");

/*
 * Execs in flight, by thread id. Not preallocated: an entry is ~8 KiB and only
 * threads inside execve() hold one, so 10240 preallocated entries (libbpf-tools)
 * would pin ~80 MiB of kernel memory for nothing.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct event);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Copies argv[0..max_args) into e->args, marking what could not be copied. */
static __always_inline void read_args(struct event *e, const char *const *argv)
{
	const char *argp;
	char last;
	long len;
	__u32 i;

	if (!argv)
		return;		/* the kernel takes a NULL argv as an empty one */
	for (i = 0; i < TOTAL_MAX_ARGS && i < max_args; i++) {
		if (bpf_probe_read_user(&argp, sizeof(argp), &argv[i]))
			goto cut;
		if (!argp)
			return;
		len = bpf_probe_read_user_str(e->args[i], ARGSIZE, argp);
		if (len < 0)
			goto cut;
		e->args_count = i + 1;
		/*
		 * A full slot holds ARGSIZE - 1 bytes and the NUL; the argument was
		 * longer unless its byte at ARGSIZE - 1 is that NUL.
		 */
		if (len == ARGSIZE &&
		    (bpf_probe_read_user(&last, 1, argp + ARGSIZE - 1) || last))
			e->args_truncated = true;
	}
	/* Every slot allowed is used: is there one more argument? */
	if (bpf_probe_read_user(&argp, sizeof(argp), &argv[i]) || argp)
		goto cut;
	return;
cut:
	e->args_truncated = true;
}

static __always_inline int enter_exec(int dirfd, const char *filename, const char *const *argv)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	struct event *e;

	if (targ_uid != ANY_UID && uid != targ_uid)
		return 0;
	if (filter_cg && bpf_current_task_under_cgroup(&cgroup_map, 0) != 1)
		return 0;
	/* BPF_ANY: a stale entry of this thread (none is expected) is replaced. */
	if (bpf_map_update_elem(&execs, &tid, &empty_event, BPF_ANY))
		return 0;
	e = bpf_map_lookup_elem(&execs, &tid);
	if (!e)
		return 0;
	e->uid = uid;
	e->dirfd = dirfd;
	if (bpf_probe_read_user_str(e->path, sizeof(e->path), filename) < 0)
		e->path[0] = '\0';
	read_args(e, argv);
	return 0;
}

static __always_inline int exit_exec(long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct bpfloom_facts facts = {};
	struct task_struct *task;
	struct event *e;
	__u32 n;

	e = bpf_map_lookup_elem(&execs, &tid);
	if (!e)
		return 0;
	if (ret < 0 && ignore_failed)
		goto cleanup;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (!bpfloom_comm_contains(e->comm, targ_comm))
		goto cleanup;

	task = (struct task_struct *)bpf_get_current_task();
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = pid_tgid >> 32;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	/* real_parent is the forking thread; its process's name is its leader's. */
	BPF_CORE_READ_STR_INTO(&e->parent_comm, task, real_parent, group_leader, comm);
	e->ret = ret;
	if (bpfloom_prefilter) {
		facts.ret = e->ret < 0 ? BPFLOOM_RET_FAILED : BPFLOOM_RET_OK;
		bpfloom_facts_comm(&facts, e->comm, false);
		bpfloom_facts_comm(&facts, e->parent_comm, true);
		bpfloom_facts_path(&facts, e->path, BPFLOOM_KNOW_PATH);
		if (!bpfloom_prefilter_pass(&facts))
			goto filtered;
	}
	if (resolve_paths && ret == 0) {
		struct file *exe = BPF_CORE_READ(task, mm, exe_file);

		e->fs_path_kind = BPFLOOM_FS_PATH_FILE;
		e->fs_path_cut = bpfloom_path(
			exe ? (void *)exe + bpf_core_field_offset(struct file, f_path) : NULL,
			e->fs_path, sizeof(e->fs_path));
	} else if (resolve_paths && e->path[0] != '/') {
		e->fs_path_kind = BPFLOOM_FS_PATH_DIR;
		e->fs_path_cut = bpfloom_path(bpfloom_dirfd_path(e->dirfd), e->fs_path,
					      sizeof(e->fs_path));
	}

	if (bpfloom_prefilter && (bpfloom_prefilter_needs & BPFLOOM_KNOW_NPATH)) {
		/* norm_path is fs_path where the walk found the executable (tools/paths.py). */
		if (e->fs_path_kind == BPFLOOM_FS_PATH_FILE && e->fs_path_cut == 0 && e->fs_path[0])
			bpfloom_facts_path(&facts, e->fs_path, BPFLOOM_KNOW_NPATH);
		if (!bpfloom_prefilter_pass(&facts))
			goto filtered;
	}

	n = e->args_count;
	if (n > TOTAL_MAX_ARGS)
		n = TOTAL_MAX_ARGS;
	bpfloom_output(&events, e, offsetof(struct event, args) + n * ARGSIZE);
	goto cleanup;
filtered:
	bpfloom_count_filtered();
cleanup:
	bpf_map_delete_elem(&execs, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int handle_enter_execve(struct trace_event_raw_sys_enter *ctx)
{
	/* execve(filename, argv, envp) */
	return enter_exec(BPFLOOM_AT_FDCWD, (const char *)ctx->args[0],
			  (const char *const *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int handle_enter_execveat(struct trace_event_raw_sys_enter *ctx)
{
	/* execveat(dirfd, filename, argv, envp, flags) */
	return enter_exec((int)ctx->args[0], (const char *)ctx->args[1],
			  (const char *const *)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_execve")
int handle_exit_execve(struct trace_event_raw_sys_exit *ctx)
{
	return exit_exec(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int handle_exit_execveat(struct trace_event_raw_sys_exit *ctx)
{
	return exit_exec(ctx->ret);
}

/* A successful exec from a non-leader thread took over the leader's pid. */
SEC("tracepoint/sched/sched_process_exec")
int handle_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 old_tid = ctx->old_pid, tid = ctx->pid;
	struct event *e;

	if (old_tid == tid)
		return 0;
	e = bpf_map_lookup_elem(&execs, &old_tid);
	if (!e)
		return 0;
	bpf_map_update_elem(&execs, &tid, e, BPF_ANY);
	bpf_map_delete_elem(&execs, &old_tid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
