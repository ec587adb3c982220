/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
#ifndef __ARRAYS_H
#define __ARRAYS_H

/* Lengths whose DW_AT_count is a data1 with the top bit set (128-255). */
#define FNAME_LEN 130
#define X_LEN 200

struct event {
	int pid;
	int arg;                /* getpgid()'s argument */
	char fname[FNAME_LEN];  /* "abc...xyzabc...": every byte set, no NUL */
	__u8 x[X_LEN];          /* x[i] = i */
	unsigned int magic;     /* 0xfeedf00d, after both arrays */
};

#endif /* __ARRAYS_H */
