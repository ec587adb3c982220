/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
#ifndef __GOROUTINE_H
#define __GOROUTINE_H

/* The goroutine states of the Go runtime (runtime/runtime2.go), same values. */
enum goroutine_state {
	IDLE,
	RUNNABLE,
	RUNNING,
	SYSCALL,
	WAITING,
	MORIBUND_UNUSED,
	DEAD,
	ENQUEUE_UNUSED,
	COPYSTACK,
	PREEMPTED,
};

struct goroutine_execute_data {
	enum goroutine_state state;
	__u64 goid;
	__u32 pid;  /* thread id */
	__u32 tgid; /* process id */
};

#endif /* __GOROUTINE_H */
