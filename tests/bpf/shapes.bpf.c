// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * shapes.bpf.c - decoding test object whose event struct is NOT in BTF.
 *
 * All the code, and the table of known values, is in shapes.h. Here
 * `struct shapes` is only a stack variable or a ring buffer slot, so clang
 * emits it in DWARF (.debug_info) but not in BTF: the decoder must fall back
 * to DWARF. shapes_btf.bpf.c is the same object with the struct in BTF.
 */
#include "shapes.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
