// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * shapes_btf.bpf.c - shapes.bpf.c with `struct shapes` in BTF.
 *
 * Identical to shapes.bpf.c (all code is in shapes.h) except for the global
 * below: a global's type goes into BTF, and with it the struct it points to.
 * It is never used; it lands in .bss next to emit_count.
 */
#include "shapes.h"

struct shapes *unused_shapes __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
