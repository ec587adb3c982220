/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
#ifndef __COUNTERS_H
#define __COUNTERS_H

#define TASK_COMM_LEN 16
#define MAX_SLOTS 20
#define BUCKETS 8

/* Who made the call: a block I/O pattern counter is keyed like this. */
struct counter_key {
	__u32 pid;
	char comm[TASK_COMM_LEN];
};

/* slots[i] counts values v with floor(log2(v)) == i (slot 0 also holds 0). */
struct hist {
	__u32 slots[MAX_SLOTS];
	__u64 count;
	__u64 total;
};

#endif /* __COUNTERS_H */
