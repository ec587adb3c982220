// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * noprog.bpf.c - an object with one map and one global and no program.
 *
 * Loading it creates the map `counts` and the .data map holding `generation`;
 * attaching has nothing to do. Tests check that open/load/close and map
 * access work, and that asking for a program gives a clear error.
 * No licence section: without programs the kernel never asks for one.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

__u64 generation = 42;
