/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
#ifndef __COUNTERS_RB_H
#define __COUNTERS_RB_H

struct event {
	__u32 pid;
	__u32 value;
};

#endif /* __COUNTERS_RB_H */
