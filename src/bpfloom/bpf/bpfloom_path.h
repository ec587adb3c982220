/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfloom_path.h - the absolute path of a struct path, built in the kernel.
 *
 * bpf_d_path() is only for fentry/LSM programs, which this kernel cannot run, so
 * the path is assembled the way d_path() does it (fs/d_path.c prepend_path()):
 * from the dentry up through d_parent, crossing each mount at its mount point
 * (mount->mnt_mountpoint, mnt_parent) until the root of the root mount. The names
 * are written backwards into a per-CPU scratch buffer, then copied out.
 *
 * Bounded: BPFLOOM_PATH_DEPTH components are walked (a deeper path, or one longer
 * than the scratch buffer, comes back cut: the return value says so) and the
 * result is the path in the caller's mount namespace root as the kernel sees it
 * (chroots and other mount namespaces are not translated). Lockless, as every BPF
 * reader of dentries is: a rename racing the walk may give an old name.
 *
 * Include after bpfloom.h, once per object (it defines a map).
 */
#ifndef __BPFLOOM_PATH_H
#define __BPFLOOM_PATH_H

#define BPFLOOM_PATH_MAX 4096	/* scratch size: a power of two */
#define BPFLOOM_PATH_DEPTH 48	/* components walked */
#define BPFLOOM_NAME_MAX 255
#define BPFLOOM_AT_FDCWD -100

/* What fs_path of a record holds. */
#define BPFLOOM_FS_PATH_NONE 0	/* nothing: the path given was absolute and not opened */
#define BPFLOOM_FS_PATH_FILE 1	/* the file the call opened or executed, as resolved */
#define BPFLOOM_FS_PATH_DIR 2	/* the directory a relative path starts from */

/*
 * The walk's state lives in the per-CPU map value, not on the stack: the verifier
 * tracks stack values exactly, so a position on the stack would make every bpf_loop()
 * step a new state to verify (it never converges); map memory is an unknown value.
 */
struct bpfloom_path_scratch {
	__u64 dentry;	/* struct dentry * of the component to write next */
	__u64 vfsmnt;	/* struct vfsmount * it is in */
	__u64 mnt;	/* the struct mount around vfsmnt */
	__u32 off;	/* where the path written so far starts in buf */
	__s32 cut;	/* stays 1 unless the walk reaches a root */
	char buf[BPFLOOM_PATH_MAX * 2];	/* masked offsets + one name never pass the end */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfloom_path_scratch);
} bpfloom_path_scratch SEC(".maps");

/* One step up: a component written, or a mount crossed. Returns 1 to stop. */
static long bpfloom_path_step(__u32 index, void *data)
{
	__u32 zero = 0, mask = BPFLOOM_PATH_MAX - 1, len, off;
	struct bpfloom_path_scratch *s = bpf_map_lookup_elem(&bpfloom_path_scratch, &zero);
	struct dentry *dentry, *parent, *root;
	struct vfsmount *vfsmnt;
	struct mount *mnt, *up;
	struct qstr name;

	if (!s)
		return 1;
	dentry = (void *)s->dentry;
	vfsmnt = (void *)s->vfsmnt;
	mnt = (void *)s->mnt;
	root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == root) {
		up = BPF_CORE_READ(mnt, mnt_parent);
		if (up == mnt || !up) {
			s->cut = 0;	/* the root of the root mount */
			return 1;
		}
		s->dentry = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		s->mnt = (__u64)up;
		s->vfsmnt = (__u64)up + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	if (dentry == parent || !parent) {
		s->cut = 0;	/* a root that is no mount's (a detached tree) */
		return 1;
	}
	if (bpf_core_read(&name, sizeof(name), &dentry->d_name))
		return 1;
	len = name.len;
	if (len > BPFLOOM_NAME_MAX)
		len = BPFLOOM_NAME_MAX;
	off = s->off;
	if (off < len + 1 || off > mask)
		return 1;	/* longer than the scratch buffer: cut */
	off -= len + 1;
	s->buf[off & mask] = '/';
	bpf_probe_read_kernel(&s->buf[(off + 1) & mask], len & BPFLOOM_NAME_MAX, name.name);
	s->off = off;
	s->dentry = (__u64)parent;
	return 0;
}

/*
 * Write the absolute path of `path` (kernel memory) into out[size], NUL-ended.
 * Returns 0, 1 when the path was cut (too deep or too long: its top is missing),
 * or -1 when nothing could be read (out is then ""). The walk runs in bpf_loop(),
 * so the verifier checks one step, not every path through BPFLOOM_PATH_DEPTH.
 */
static __always_inline int bpfloom_path(const struct path *path, char *out, __u32 size)
{
	__u32 zero = 0, mask = BPFLOOM_PATH_MAX - 1, off;
	struct bpfloom_path_scratch *s = bpf_map_lookup_elem(&bpfloom_path_scratch, &zero);
	struct vfsmount *vfsmnt;

	out[0] = '\0';
	if (!s || !path)
		return -1;
	s->dentry = (__u64)BPF_CORE_READ(path, dentry);
	vfsmnt = BPF_CORE_READ(path, mnt);
	if (!s->dentry || !vfsmnt)
		return -1;
	s->vfsmnt = (__u64)vfsmnt;
	s->mnt = (__u64)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	s->off = BPFLOOM_PATH_MAX - 1;
	s->cut = 1;
	s->buf[BPFLOOM_PATH_MAX - 1] = '\0';
	bpf_loop(BPFLOOM_PATH_DEPTH, bpfloom_path_step, NULL, 0);
	off = s->off;
	if (off >= BPFLOOM_PATH_MAX - 1) {
		off = BPFLOOM_PATH_MAX - 2;
		s->buf[off] = '/';	/* the root itself */
	}
	if (bpf_probe_read_kernel_str(out, size, &s->buf[off & mask]) < 0)
		return -1;
	return s->cut;
}

/* The struct path of descriptor `fd` of the current task, or NULL. */
static __always_inline struct path *bpfloom_fd_path(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *file;

	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_core_read(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	return (struct path *)((void *)file + bpf_core_field_offset(struct file, f_path));
}

/* The current working directory of the current task. */
static __always_inline struct path *bpfloom_cwd(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fs_struct *fs = BPF_CORE_READ(task, fs);

	if (!fs)
		return NULL;
	return (struct path *)((void *)fs + bpf_core_field_offset(struct fs_struct, pwd));
}

/* Where a path relative to `dirfd` (an *at() call's; BPFLOOM_AT_FDCWD: the cwd) starts. */
static __always_inline struct path *bpfloom_dirfd_path(int dirfd)
{
	return dirfd == BPFLOOM_AT_FDCWD ? bpfloom_cwd() : bpfloom_fd_path(dirfd);
}

#endif /* __BPFLOOM_PATH_H */
